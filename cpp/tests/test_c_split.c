/* The split-phase C API from strict C99: two tiles of a channels-last tensor
 * (contiguous row blocks), their moments merged, each applied, the backward
 * from merged sums; against groupnorm_forward/backward. One tile is bitwise
 * the one-call result. Errors write nothing. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <groupnorm/groupnorm.h>

static int g_checks = 0, g_failures = 0;

#define CHECK(cond, ...)                                                  \
  do {                                                                    \
    ++g_checks;                                                           \
    if (!(cond)) {                                                        \
      ++g_failures;                                                       \
      fprintf(stderr, "%s:%d: CHECK FAILED: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                       \
      fprintf(stderr, "\n");                                              \
    }                                                                     \
  } while (0)

enum { S = 200, C = 16, G = 4, CUT = 73 };

static double max_diff(const float* a, const float* b, int n) {
  double m = 0;
  int i;
  for (i = 0; i < n; ++i) {
    const double d = fabs((double)a[i] - (double)b[i]);
    if (!(d <= m)) m = d;
  }
  return m;
}

int main(void) {
  static float x[S * C], dy[S * C], y1[S * C], y[S * C], gx1[S * C], gx[S * C];
  float w[C], b[C], mean1[G], rstd1[G], mean[G], rstd[G], gw1[C], gb1[C], gw[C], gb[C];
  int64_t cnt[2][G], count[G];
  double mu[2][G], m2[2][G], mmean[G], mm2[G], sdz[2][C], sdx[2][C], dz[C], dzx[C];
  const int64_t* pc[2];
  const double *pm[2], *pq[2], *pd[2], *px[2];
  groupnorm_problem p = groupnorm_problem_default(), q;
  groupnorm_forward_args fa;
  groupnorm_backward_args ba;
  groupnorm_status st;
  int i, t;
  unsigned seed = 12345u;
  for (i = 0; i < S * C; ++i) {
    seed = seed * 1103515245u + 12345u;
    x[i] = 3.0f + (float)((seed >> 8) & 0xffff) / 8192.0f;
    seed = seed * 1103515245u + 12345u;
    dy[i] = (float)((seed >> 8) & 0xffff) / 32768.0f - 1.0f;
  }
  for (i = 0; i < C; ++i) { w[i] = 0.5f + 0.05f * (float)i; b[i] = 0.1f * (float)(i % 5) - 0.2f; }
  p.batch = 1; p.channels = C; p.groups = G; p.spatial = S; p.channels_last = 1;
  p.activation = GROUPNORM_ACTIVATION_SILU;

  memset(&fa, 0, sizeof fa);
  fa.x = x; fa.weight = w; fa.bias = b; fa.y = y1; fa.mean = mean1; fa.rstd = rstd1;
  CHECK(groupnorm_forward(&p, &fa, NULL) == GROUPNORM_OK, "forward: %s", groupnorm_last_error());
  memset(&ba, 0, sizeof ba);
  ba.grad_y = dy; ba.x = x; ba.mean = mean1; ba.rstd = rstd1; ba.weight = w; ba.bias = b;
  ba.grad_x = gx1; ba.grad_weight = gw1; ba.grad_bias = gb1;
  CHECK(groupnorm_backward(&p, &ba, NULL) == GROUPNORM_OK, "backward: %s", groupnorm_last_error());

  /* one tile: bitwise the one-call forward */
  CHECK(groupnorm_moments(&p, x, NULL, NULL, cnt[0], mu[0], m2[0], NULL) == GROUPNORM_OK, "moments");
  fa.y = y; fa.mean = NULL; fa.rstd = NULL;
  CHECK(groupnorm_forward_with_moments(&p, &fa, cnt[0], mu[0], m2[0], NULL) == GROUPNORM_OK, "apply");
  CHECK(memcmp(y, y1, sizeof y) == 0, "one tile: y not bitwise the one-call y");

  /* two tiles: rows [0, CUT) and [CUT, S) */
  for (t = 0; t < 2; ++t) {
    q = p;
    q.spatial = t == 0 ? CUT : S - CUT;
    CHECK(groupnorm_moments(&q, x + (t ? CUT * C : 0), NULL, NULL, cnt[t], mu[t], m2[t], NULL) == GROUPNORM_OK,
          "moments of tile %d", t);
    pc[t] = cnt[t]; pm[t] = mu[t]; pq[t] = m2[t];
  }
  CHECK(groupnorm_merge_moments(G, 2, pc, pm, pq, count, mmean, mm2) == GROUPNORM_OK, "merge");
  CHECK(groupnorm_mean_rstd(G, count, mmean, mm2, p.eps, p.dtype, mean, rstd) == GROUPNORM_OK, "mean_rstd");
  {  /* a negative count is rejected, an int64 overflow of the merged count too; nothing is written */
    int64_t neg[G], hc[G], out_c[G];
    const int64_t* pn[1];
    const int64_t* ph[2];
    for (i = 0; i < G; ++i) { neg[i] = i == G - 1 ? -1 : 1; hc[i] = (int64_t)1 << 62; out_c[i] = 7; }
    pn[0] = neg; ph[0] = hc; ph[1] = hc;
    CHECK(groupnorm_merge_moments(G, 1, pn, pm, pq, out_c, mmean, mm2) == GROUPNORM_INVALID_SIZE, "negative count");
    CHECK(groupnorm_merge_moments(G, 2, ph, pm, pq, out_c, mmean, mm2) == GROUPNORM_SIZE_OVERFLOW, "count overflow");
    for (i = 0; i < G; ++i) CHECK(out_c[i] == 7, "count %d written on error", i);
  }
  for (i = 0; i < G; ++i) {
    CHECK(count[i] == S * C / G, "count %d", (int)count[i]);
    CHECK(fabs(mean[i] - mean1[i]) <= 1e-5 * fabs(mean1[i]) && fabs(rstd[i] - rstd1[i]) <= 3e-5 * rstd1[i],
          "group %d: %g %g vs %g %g", i, mean[i], rstd[i], mean1[i], rstd1[i]);
  }
  for (t = 0; t < 2; ++t) {
    q = p;
    q.spatial = t == 0 ? CUT : S - CUT;
    fa.x = x + (t ? CUT * C : 0);
    fa.y = y + (t ? CUT * C : 0);
    CHECK(groupnorm_forward_with_stats(&q, &fa, mean, rstd, NULL) == GROUPNORM_OK, "apply tile %d", t);
    ba.grad_y = dy + (t ? CUT * C : 0);
    ba.x = fa.x; ba.mean = mean; ba.rstd = rstd;
    CHECK(groupnorm_backward_sums(&q, &ba, sdz[t], sdx[t], NULL) == GROUPNORM_OK, "sums of tile %d", t);
    pd[t] = sdz[t]; px[t] = sdx[t];
  }
  CHECK(max_diff(y, y1, S * C) <= 3e-5, "tiled y: %g", max_diff(y, y1, S * C));
  CHECK(groupnorm_merge_backward_sums(C, 2, pd, px, dz, dzx) == GROUPNORM_OK, "merge sums");
  for (t = 0; t < 2; ++t) {
    q = p;
    q.spatial = t == 0 ? CUT : S - CUT;
    ba.grad_y = dy + (t ? CUT * C : 0);
    ba.x = x + (t ? CUT * C : 0);
    ba.grad_x = gx + (t ? CUT * C : 0); ba.grad_weight = gw; ba.grad_bias = gb;
    CHECK(groupnorm_backward_with_sums(&q, &ba, dz, dzx, S, NULL) == GROUPNORM_OK, "backward tile %d", t);
  }
  CHECK(max_diff(gx, gx1, S * C) <= 1e-4, "tiled grad_x: %g", max_diff(gx, gx1, S * C));
  CHECK(max_diff(gw, gw1, C) <= 1e-3 && max_diff(gb, gb1, C) <= 1e-3, "grad_w/b: %g %g", max_diff(gw, gw1, C),
        max_diff(gb, gb1, C));

  /* errors: status and message, nothing written */
  for (i = 0; i < G; ++i) count[i] = -7;
  st = groupnorm_moments(NULL, x, NULL, NULL, count, mmean, mm2, NULL);
  CHECK(st == GROUPNORM_NULL_POINTER && count[0] == -7, "null problem: %d", (int)st);
  q = p;
  q.groups = 3;
  st = groupnorm_moments(&q, x, NULL, NULL, count, mmean, mm2, NULL);
  CHECK(st == GROUPNORM_INVALID_GROUPS && count[0] == -7, "bad groups: %d", (int)st);
  CHECK(strstr(groupnorm_last_error(), "not divisible") != NULL, "message: %s", groupnorm_last_error());
  fa.x = x; fa.y = y;
  memset(y, 0x7f, sizeof y);
  st = groupnorm_forward_with_stats(&p, &fa, mean, NULL, NULL);
  CHECK(st == GROUPNORM_NULL_POINTER, "missing rstd: %d", (int)st);
  for (i = 0; i < (int)sizeof y; ++i)
    if (((const unsigned char*)y)[i] != 0x7f) break;
  CHECK(i == (int)sizeof y, "a failed call wrote y (byte %d)", i);
  st = groupnorm_backward_with_sums(&p, &ba, dz, dzx, S - 1, NULL);
  CHECK(st == GROUPNORM_INVALID_SIZE, "total_spatial smaller than the tile: %d", (int)st);

  printf("test_c_split: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
