/* groupnorm from C: channels-last float16 data with a fused SiLU, then its backward. */
#include <groupnorm/groupnorm.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* float <-> IEEE binary16 bits, for the normal range this example uses */
static uint16_t to_half(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a < 0x38800000u) return (uint16_t)sign;               /* tiny: zero */
  const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);          /* round to nearest even */
  return (uint16_t)(sign | (((r >> 23) - 112u) << 10) | ((r >> 13) & 0x3ffu));
}
static float from_half(uint16_t h) {
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  float f = e ? ldexpf((float)(m | 0x400u), (int)e - 25) : ldexpf((float)m, -24);
  return (h & 0x8000u) ? -f : f;
}

enum { N = 2, S = 3 * 3, C = 8, G = 4 };

int main(void) {
  uint16_t x[N * S * C], y[N * S * C], dy[N * S * C], dx[N * S * C];
  float weight[C], bias[C], mean[N * G], rstd[N * G], dweight[C], dbias[C];
  double worst = 0;
  int i, n, g, s, c;

  for (i = 0; i < N * S * C; ++i) { x[i] = to_half(sinf(0.5f * i) * 2.0f); dy[i] = to_half(0.01f * (i % 13)); }
  for (c = 0; c < C; ++c) { weight[c] = 1.0f + 0.1f * c; bias[c] = 0.05f * c; }

  groupnorm_problem p = groupnorm_problem_default();
  p.batch = N; p.channels = C; p.groups = G; p.spatial = S;
  p.channels_last = 1;                       /* x is (N, H*W, C) */
  p.dtype = GROUPNORM_FLOAT16;               /* data: raw binary16 */
  p.param_dtype = GROUPNORM_FLOAT32;         /* weight/bias: float */
  p.activation = GROUPNORM_ACTIVATION_SILU;

  groupnorm_forward_args fa = {0};
  fa.x = x; fa.weight = weight; fa.bias = bias; fa.y = y; fa.mean = mean; fa.rstd = rstd;
  groupnorm_status st = groupnorm_forward(&p, &fa, NULL);
  if (st != GROUPNORM_OK) { fprintf(stderr, "forward: %s: %s\n", groupnorm_status_string(st), groupnorm_last_error()); return 1; }

  groupnorm_backward_args ba = {0};
  ba.grad_y = dy; ba.x = x; ba.mean = mean; ba.rstd = rstd; ba.weight = weight; ba.bias = bias;
  ba.grad_x = dx; ba.grad_weight = dweight; ba.grad_bias = dbias;
  st = groupnorm_backward(&p, &ba, NULL);
  if (st != GROUPNORM_OK) { fprintf(stderr, "backward: %s: %s\n", groupnorm_status_string(st), groupnorm_last_error()); return 1; }

  /* check y and grad_bias against a direct computation */
  for (c = 0; c < C; ++c) {
    double db = 0;
    for (n = 0; n < N; ++n) {
      g = c / (C / G);
      double m = 0, v = 0;
      for (s = 0; s < S; ++s)
        for (i = g * (C / G); i < (g + 1) * (C / G); ++i) m += from_half(x[(n * S + s) * C + i]) / (S * C / G);
      for (s = 0; s < S; ++s)
        for (i = g * (C / G); i < (g + 1) * (C / G); ++i) {
          const double d = from_half(x[(n * S + s) * C + i]) - m;
          v += d * d / (S * C / G);
        }
      for (s = 0; s < S; ++s) {
        const int k = (n * S + s) * C + c;
        const double z = (from_half(x[k]) - m) / sqrt(v + p.eps) * weight[c] + bias[c];
        const double sg = 1.0 / (1.0 + exp(-z));
        worst = fmax(worst, fabs(from_half(y[k]) - z * sg));
        db += from_half(dy[k]) * sg * (1.0 + z * (1.0 - sg));
      }
    }
    worst = fmax(worst, fabs(dbias[c] - db));
  }
  printf("groupnorm %s (%s): y[0..3] = %.4f %.4f %.4f %.4f, max error %.2e\n", groupnorm_version(),
         groupnorm_active_isa(), from_half(y[0]), from_half(y[1]), from_half(y[2]), from_half(y[3]), worst);
  if (!(worst < 1e-2)) { fprintf(stderr, "mismatch: error %g\n", worst); return 1; }
  return 0;
}
