/* The C API, from strict C99: results against a double-precision reference,
 * an engine's parallel-for, caller workspaces, and every status code the CPU
 * build can return, each with outputs that must stay untouched. */
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

/* ------------------------------------------------------------ 16-bit types */
static float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float bf16_to_float(uint16_t b) { return u2f((uint32_t)b << 16); }
static uint16_t float_to_bf16(float f) {
  uint32_t u = f2u(f);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
static float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  const int e = (h >> 10) & 0x1f;
  const uint32_t m = h & 0x3ff;
  if (e == 0) { const float v = ldexpf((float)m, -24); return sign ? -v : v; }
  if (e == 31) return u2f(sign | 0x7f800000u | (m << 13));
  return u2f(sign | ((uint32_t)(e - 15 + 127) << 23) | (m << 13));
}
static uint16_t float_to_half(float f) { /* normal range only: the test data stays there */
  const uint16_t sign = (uint16_t)((f2u(f) >> 16) & 0x8000);
  uint32_t m = f2u(fabsf(f));
  if (fabsf(f) < 6.103515625e-05f) return sign;
  m += 0xfffu + ((m >> 13) & 1u);
  return (uint16_t)(sign | ((((m >> 23) - 127 + 15) & 0x1f) << 10) | ((m >> 13) & 0x3ff));
}

static size_t dtype_size(int dt) { return dt == GROUPNORM_FLOAT64 ? 8 : dt == GROUPNORM_FLOAT32 ? 4 : 2; }
static double get(const void* p, int dt, int64_t i) {
  switch (dt) {
    case GROUPNORM_FLOAT32: return ((const float*)p)[i];
    case GROUPNORM_FLOAT64: return ((const double*)p)[i];
    case GROUPNORM_FLOAT16: return half_to_float(((const uint16_t*)p)[i]);
    default: return bf16_to_float(((const uint16_t*)p)[i]);
  }
}
static void set(void* p, int dt, int64_t i, double v) {
  switch (dt) {
    case GROUPNORM_FLOAT32: ((float*)p)[i] = (float)v; break;
    case GROUPNORM_FLOAT64: ((double*)p)[i] = v; break;
    case GROUPNORM_FLOAT16: ((uint16_t*)p)[i] = float_to_half((float)v); break;
    default: ((uint16_t*)p)[i] = float_to_bf16((float)v); break;
  }
}
static double tol(int dt) {
  return dt == GROUPNORM_FLOAT64 ? 1e-10 : dt == GROUPNORM_FLOAT32 ? 2e-5 : dt == GROUPNORM_FLOAT16 ? 2e-3 : 1.6e-2;
}

static uint64_t g_rng = 88172645463325252ull;
static double uniform(double lo, double hi) {
  g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
  return lo + (hi - lo) * (double)(g_rng >> 11) / 9007199254740992.0;
}
static void* random_array(int dt, int64_t n, double lo, double hi) {
  int64_t i;
  void* p = malloc((size_t)n * dtype_size(dt) + 1);
  for (i = 0; i < n; ++i) set(p, dt, i, uniform(lo, hi));
  return p;
}
static void* poisoned(size_t bytes) {
  void* p = malloc(bytes + 1);
  memset(p, 0xA5, bytes + 1);
  return p;
}
static int untouched(const void* p, size_t bytes) {
  const unsigned char* c = (const unsigned char*)p;
  size_t i;
  for (i = 0; i < bytes; ++i)
    if (c[i] != 0xA5) return 0;
  return 1;
}

static int64_t at(const groupnorm_problem* p, int64_t n, int64_t c, int64_t s) {
  return p->channels_last ? (n * p->spatial + s) * p->channels + c : (n * p->channels + c) * p->spatial + s;
}

/* ------------------------------------------------------------ numerics */
/* Forward and backward of one problem through the C API against a double
 * reference; returns nothing, counts failures. */
static void check_numerics(groupnorm_problem p, int with_params) {
  const int64_t N = p.batch, C = p.channels, G = p.groups, S = p.spatial, Cg = C / G, total = N * C * S;
  const int silu = p.activation == GROUPNORM_ACTIVATION_SILU;
  void* x = random_array(p.dtype, total, -2.0, 3.0);
  void* w = with_params ? random_array(p.param_dtype, C, 0.5, 1.5) : NULL;
  void* b = with_params ? random_array(p.param_dtype, C, -0.5, 0.5) : NULL;
  void* dy = random_array(p.dtype, total, -1.0, 1.0);
  void* y = poisoned((size_t)total * dtype_size(p.dtype));
  void* dx = poisoned((size_t)total * dtype_size(p.dtype));
  void* dw = poisoned((size_t)C * dtype_size(p.param_dtype));
  void* db = poisoned((size_t)C * dtype_size(p.param_dtype));
  float* mean = (float*)poisoned((size_t)(N * G) * sizeof(float));
  float* rstd = (float*)poisoned((size_t)(N * G) * sizeof(float));
  double *rdz = (double*)malloc((size_t)total * sizeof(double)), *rxh = (double*)malloc((size_t)total * sizeof(double));
  double ey = 0, edx = 0, edw = 0, edb = 0, scale_y = 1, scale_dx = 1, scale_dw = 1, scale_db = 1;
  int64_t n, g, c, s;
  groupnorm_forward_args fa;
  groupnorm_backward_args ba;
  groupnorm_status st;

  memset(&fa, 0, sizeof fa);
  fa.x = x; fa.weight = w; fa.bias = b; fa.y = y; fa.mean = mean; fa.rstd = rstd;
  st = groupnorm_forward(&p, &fa, NULL);
  CHECK(st == GROUPNORM_OK, "forward: %s (%s)", groupnorm_status_string(st), groupnorm_last_error());
  memset(&ba, 0, sizeof ba);
  ba.grad_y = dy; ba.x = x; ba.mean = mean; ba.rstd = rstd; ba.weight = w; ba.bias = b;
  ba.grad_x = dx; ba.grad_weight = dw; ba.grad_bias = db;
  st = groupnorm_backward(&p, &ba, NULL);
  CHECK(st == GROUPNORM_OK, "backward: %s (%s)", groupnorm_status_string(st), groupnorm_last_error());

  {
    double* rdw = (double*)calloc((size_t)C, sizeof(double));
    double* rdb = (double*)calloc((size_t)C, sizeof(double));
    for (n = 0; n < N; ++n)
      for (g = 0; g < G; ++g) {
        double sum = 0, sq = 0, m, rs, m1 = 0, m2 = 0;
        for (c = g * Cg; c < (g + 1) * Cg; ++c)
          for (s = 0; s < S; ++s) sum += get(x, p.dtype, at(&p, n, c, s));
        m = sum / (double)(Cg * S);
        for (c = g * Cg; c < (g + 1) * Cg; ++c)
          for (s = 0; s < S; ++s) {
            const double d = get(x, p.dtype, at(&p, n, c, s)) - m;
            sq += d * d;
          }
        rs = 1.0 / sqrt(sq / (double)(Cg * S) + p.eps);
        CHECK(fabs(mean[n * G + g] - m) <= 1e-5 * (1 + fabs(m)), "mean %g vs %g", mean[n * G + g], m);
        CHECK(fabs(rstd[n * G + g] - rs) <= 1e-5 * (1 + fabs(rs)), "rstd %g vs %g", rstd[n * G + g], rs);
        for (c = g * Cg; c < (g + 1) * Cg; ++c) {
          const double wc = w ? get(w, p.param_dtype, c) : 1.0, bc = b ? get(b, p.param_dtype, c) : 0.0;
          for (s = 0; s < S; ++s) {
            const int64_t i = at(&p, n, c, s);
            const double xh = (get(x, p.dtype, i) - m) * rs, z = xh * wc + bc, sg = 1.0 / (1.0 + exp(-z));
            const double want = silu ? z * sg : z;
            double d = get(dy, p.dtype, i);
            if (silu) d *= sg * (1.0 + z * (1.0 - sg));
            ey = fmax(ey, fabs(get(y, p.dtype, i) - want));
            scale_y = fmax(scale_y, fabs(want));
            rdz[i] = d;
            rxh[i] = xh;
            rdb[c] += d;
            rdw[c] += d * xh;
            m1 += d * wc;
            m2 += d * wc * xh;
          }
        }
        m1 /= (double)(Cg * S);
        m2 /= (double)(Cg * S);
        for (c = g * Cg; c < (g + 1) * Cg; ++c) {
          const double wc = w ? get(w, p.param_dtype, c) : 1.0;
          for (s = 0; s < S; ++s) {
            const int64_t i = at(&p, n, c, s);
            const double want = rs * (rdz[i] * wc - m1 - rxh[i] * m2);
            edx = fmax(edx, fabs(get(dx, p.dtype, i) - want));
            scale_dx = fmax(scale_dx, fabs(want));
          }
        }
      }
    for (c = 0; c < C; ++c) {
      edw = fmax(edw, fabs(get(dw, p.param_dtype, c) - rdw[c]));
      edb = fmax(edb, fabs(get(db, p.param_dtype, c) - rdb[c]));
      scale_dw = fmax(scale_dw, fabs(rdw[c]));
      scale_db = fmax(scale_db, fabs(rdb[c]));
    }
    free(rdw);
    free(rdb);
  }
  CHECK(ey / scale_y <= tol(p.dtype), "dtype %d cl %d silu %d: y error %g", p.dtype, p.channels_last, silu, ey / scale_y);
  CHECK(edx / scale_dx <= 2 * tol(p.dtype), "dtype %d cl %d: grad_x error %g", p.dtype, p.channels_last, edx / scale_dx);
  CHECK(edw / scale_dw <= fmax(tol(p.param_dtype), 1e-5), "dtype %d: grad_weight error %g", p.dtype, edw / scale_dw);
  CHECK(edb / scale_db <= fmax(tol(p.param_dtype), 1e-5), "dtype %d: grad_bias error %g", p.dtype, edb / scale_db);
  free(x); free(w); free(b); free(dy); free(y); free(dx); free(dw); free(db); free(mean); free(rstd);
  free(rdz); free(rxh);
}

/* ------------------------------------------------------------ engine */
typedef struct { long calls; long tasks; } reverse_engine;
static void reverse_parallel_for(void* ctx, int64_t n, groupnorm_task_fn task, void* task_ctx) {
  reverse_engine* e = (reverse_engine*)ctx;
  int64_t i;
  e->calls++;
  for (i = n - 1; i >= 0; --i) {
    e->tasks++;
    task(task_ctx, i);
  }
}

static void check_engine_and_workspace(void) {
  groupnorm_problem p = groupnorm_problem_default();
  const int64_t total = 4 * 64 * 1024;
  float* x = (float*)random_array(GROUPNORM_FLOAT32, total, -2, 3);
  float* y0 = (float*)malloc(total * sizeof(float));
  float* y1 = (float*)malloc(total * sizeof(float));
  float* y2 = (float*)poisoned(total * sizeof(float));
  float mean0[64], rstd0[64], mean1[64], rstd1[64];
  groupnorm_forward_args fa;
  groupnorm_exec ex;
  reverse_engine eng = {0, 0};
  groupnorm_status st;
  size_t ws_bytes;
  void* ws;

  p.batch = 4; p.channels = 64; p.groups = 16; p.spatial = 1024; p.activation = GROUPNORM_ACTIVATION_SILU;
  memset(&fa, 0, sizeof fa);
  fa.x = x; fa.y = y0; fa.mean = mean0; fa.rstd = rstd0;
  st = groupnorm_forward(&p, &fa, NULL);
  CHECK(st == GROUPNORM_OK, "default forward: %s", groupnorm_last_error());

  memset(&ex, 0, sizeof ex);
  ex.num_threads = 3;
  ex.parallel_for = reverse_parallel_for;
  ex.parallel_ctx = &eng;
  fa.y = y1; fa.mean = mean1; fa.rstd = rstd1;
  st = groupnorm_forward(&p, &fa, &ex);
  CHECK(st == GROUPNORM_OK, "engine forward: %s", groupnorm_last_error());
  CHECK(eng.calls > 0 && eng.tasks >= 3, "the engine's parallel-for was not used (%ld calls)", eng.calls);
  CHECK(memcmp(y0, y1, total * sizeof(float)) == 0 && memcmp(mean0, mean1, sizeof mean0) == 0 &&
            memcmp(rstd0, rstd1, sizeof rstd0) == 0,
        "engine parallel-for changes the results");

  /* caller workspace: exact size works, one byte less is refused and writes nothing */
  ws_bytes = groupnorm_forward_workspace_bytes(&p, 3);
  CHECK(ws_bytes > 0, "forward workspace of a real problem is 0");
  ws = malloc(ws_bytes);
  ex.workspace = ws;
  ex.workspace_bytes = ws_bytes - 1;
  fa.y = y2; fa.mean = mean1; fa.rstd = rstd1;
  memset(mean1, 0xA5, sizeof mean1);
  memset(rstd1, 0xA5, sizeof rstd1);
  st = groupnorm_forward(&p, &fa, &ex);
  CHECK(st == GROUPNORM_WORKSPACE_TOO_SMALL, "workspace one byte short: got %s", groupnorm_status_string(st));
  CHECK(untouched(y2, total * sizeof(float)) && untouched(mean1, sizeof mean1) && untouched(rstd1, sizeof rstd1),
        "workspace_too_small wrote to outputs");
  ex.workspace_bytes = ws_bytes;
  st = groupnorm_forward(&p, &fa, &ex);
  CHECK(st == GROUPNORM_OK, "exact workspace: %s", groupnorm_last_error());
  CHECK(memcmp(y0, y2, total * sizeof(float)) == 0, "caller workspace changes the results");
  /* the workspace may be unaligned */
  free(ws);
  ws = malloc(ws_bytes + 3);
  ex.workspace = (char*)ws + 3;
  st = groupnorm_forward(&p, &fa, &ex);
  CHECK(st == GROUPNORM_OK && memcmp(y0, y2, total * sizeof(float)) == 0, "unaligned workspace: %s",
        groupnorm_status_string(st));
  free(ws);
  {
    groupnorm_backward_args ba;
    float* dx0 = (float*)malloc(total * sizeof(float));
    float* dx1 = (float*)poisoned(total * sizeof(float));
    float dw[64], dbias[64];
    const size_t bws = groupnorm_backward_workspace_bytes(&p, 2);
    memset(&ba, 0, sizeof ba);
    ba.grad_y = x; ba.x = x; ba.mean = mean0; ba.rstd = rstd0; ba.grad_x = dx0;
    st = groupnorm_backward(&p, &ba, NULL);
    CHECK(st == GROUPNORM_OK, "backward: %s", groupnorm_last_error());
    CHECK(bws > 0, "backward workspace of a real problem is 0");
    ws = malloc(bws);
    memset(&ex, 0, sizeof ex);
    ex.num_threads = 2;
    ex.workspace = ws;
    ex.workspace_bytes = bws - 1;
    ba.grad_x = dx1;
    ba.grad_weight = dw;
    ba.grad_bias = dbias;
    memset(dw, 0xA5, sizeof dw);
    memset(dbias, 0xA5, sizeof dbias);
    st = groupnorm_backward(&p, &ba, &ex);
    CHECK(st == GROUPNORM_WORKSPACE_TOO_SMALL, "backward workspace one byte short: got %s", groupnorm_status_string(st));
    CHECK(untouched(dx1, total * sizeof(float)) && untouched(dw, sizeof dw) && untouched(dbias, sizeof dbias),
          "backward workspace_too_small wrote to outputs");
    ex.workspace_bytes = bws;
    st = groupnorm_backward(&p, &ba, &ex);
    CHECK(st == GROUPNORM_OK && memcmp(dx0, dx1, total * sizeof(float)) == 0, "backward with workspace: %s",
          groupnorm_status_string(st));
    free(ws);
    free(dx0);
    free(dx1);
  }
  free(x); free(y0); free(y1); free(y2);
}

/* ------------------------------------------------------------ status codes */
enum { kN = 2, kC = 6, kG = 3, kS = 5, kTotal = kN * kC * kS };

typedef struct {
  float x[kTotal], w[kC], b[kC], skip[kTotal], sb[kC], dy[kTotal];
  float *y, *sum_out, *mean, *rstd, *dx, *dw, *db;
} buffers;

static void fill_buffers(buffers* B) {
  int i;
  for (i = 0; i < kTotal; ++i) { B->x[i] = (float)uniform(-1, 1); B->skip[i] = (float)uniform(-1, 1); B->dy[i] = (float)uniform(-1, 1); }
  for (i = 0; i < kC; ++i) { B->w[i] = 1.0f + 0.1f * i; B->b[i] = 0.05f * i; B->sb[i] = 0.01f * i; }
  B->y = (float*)poisoned(sizeof(float) * kTotal);
  B->sum_out = (float*)poisoned(sizeof(float) * kTotal);
  B->dx = (float*)poisoned(sizeof(float) * kTotal);
  B->mean = (float*)poisoned(sizeof(float) * kN * kG);
  B->rstd = (float*)poisoned(sizeof(float) * kN * kG);
  B->dw = (float*)poisoned(sizeof(float) * kC);
  B->db = (float*)poisoned(sizeof(float) * kC);
}
static int all_untouched(const buffers* B) {
  return untouched(B->y, sizeof(float) * kTotal) && untouched(B->sum_out, sizeof(float) * kTotal) &&
         untouched(B->dx, sizeof(float) * kTotal) && untouched(B->mean, sizeof(float) * kN * kG) &&
         untouched(B->rstd, sizeof(float) * kN * kG) && untouched(B->dw, sizeof(float) * kC) &&
         untouched(B->db, sizeof(float) * kC);
}
static void free_buffers(buffers* B) {
  free(B->y); free(B->sum_out); free(B->dx); free(B->mean); free(B->rstd); free(B->dw); free(B->db);
}

static groupnorm_problem good_problem(void) {
  groupnorm_problem p = groupnorm_problem_default();
  p.batch = kN; p.channels = kC; p.groups = kG; p.spatial = kS;
  return p;
}
static groupnorm_forward_args fwd_args(buffers* B) {
  groupnorm_forward_args a;
  memset(&a, 0, sizeof a);
  a.x = B->x; a.weight = B->w; a.bias = B->b; a.y = B->y; a.mean = B->mean; a.rstd = B->rstd;
  return a;
}
static groupnorm_backward_args bwd_args(buffers* B, const float* mean, const float* rstd) {
  groupnorm_backward_args a;
  memset(&a, 0, sizeof a);
  a.grad_y = B->dy; a.x = B->x; a.mean = mean; a.rstd = rstd; a.weight = B->w; a.bias = B->b;
  a.grad_x = B->dx; a.grad_weight = B->dw; a.grad_bias = B->db;
  return a;
}

static int g_seen[15];

/* One failing call: the expected code, a message, and every output untouched. */
#define EXPECT_FAIL(expected, call, B, label)                                                         \
  do {                                                                                              \
    const groupnorm_status got_ = (call);                                                           \
    CHECK(got_ == (expected), "%s: expected %s, got %s (%s)", label, groupnorm_status_string(expected), \
          groupnorm_status_string(got_), groupnorm_last_error());                                   \
    CHECK(strlen(groupnorm_last_error()) > 0, "%s: no error message", label);                       \
    CHECK(all_untouched(B), "%s: outputs were written on error", label);                            \
    if (got_ == (expected)) g_seen[expected] = 1;                                                   \
  } while (0)

static void check_errors(void) {
  buffers B;
  float mean[kN * kG], rstd[kN * kG];
  groupnorm_problem p;
  groupnorm_forward_args fa;
  groupnorm_backward_args ba;
  groupnorm_exec ex;
  groupnorm_status st;
  char msg[256];

  fill_buffers(&B);
  /* stats for the backward cases */
  p = good_problem();
  {
    groupnorm_forward_args a;
    memset(&a, 0, sizeof a);
    a.x = B.x; a.y = B.sum_out; a.mean = mean; a.rstd = rstd; /* sum_out used as scratch, re-poisoned below */
    st = groupnorm_forward(&p, &a, NULL);
    CHECK(st == GROUPNORM_OK, "stats: %s", groupnorm_last_error());
    memset(B.sum_out, 0xA5, sizeof(float) * kTotal);
  }

  /* GROUPNORM_NULL_POINTER */
  fa = fwd_args(&B);
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_forward(NULL, &fa, NULL), &B, "forward problem NULL");
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_forward(&p, NULL, NULL), &B, "forward args NULL");
  fa.x = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_forward(&p, &fa, NULL), &B, "forward x NULL");
  fa = fwd_args(&B);
  fa.y = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_forward(&p, &fa, NULL), &B, "forward y NULL");
  ba = bwd_args(&B, mean, rstd);
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(NULL, &ba, NULL), &B, "backward problem NULL");
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(&p, NULL, NULL), &B, "backward args NULL");
  ba.grad_y = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(&p, &ba, NULL), &B, "backward grad_y NULL");
  ba = bwd_args(&B, mean, rstd);
  ba.x = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(&p, &ba, NULL), &B, "backward x NULL");
  ba = bwd_args(&B, mean, rstd);
  ba.mean = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(&p, &ba, NULL), &B, "backward mean NULL");
  ba = bwd_args(&B, mean, rstd);
  ba.rstd = NULL;
  EXPECT_FAIL(GROUPNORM_NULL_POINTER, groupnorm_backward(&p, &ba, NULL), &B, "backward rstd NULL");
  CHECK(groupnorm_validate(NULL, msg, sizeof msg) == GROUPNORM_NULL_POINTER, "validate(NULL)");
  CHECK(groupnorm_set_isa(NULL) == GROUPNORM_NULL_POINTER, "set_isa(NULL)");

  /* GROUPNORM_INVALID_SIZE: negative or zero sizes */
  fa = fwd_args(&B);
  ba = bwd_args(&B, mean, rstd);
  p = good_problem(); p.batch = -1;
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_forward(&p, &fa, NULL), &B, "batch -1");
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_backward(&p, &ba, NULL), &B, "backward batch -1");
  p = good_problem(); p.channels = 0;
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_forward(&p, &fa, NULL), &B, "channels 0");
  p = good_problem(); p.channels = -6;
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_forward(&p, &fa, NULL), &B, "channels -6");
  p = good_problem(); p.spatial = -5;
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_forward(&p, &fa, NULL), &B, "spatial -5");
  EXPECT_FAIL(GROUPNORM_INVALID_SIZE, groupnorm_backward(&p, &ba, NULL), &B, "backward spatial -5");

  /* GROUPNORM_INVALID_GROUPS */
  p = good_problem(); p.groups = 0;
  EXPECT_FAIL(GROUPNORM_INVALID_GROUPS, groupnorm_forward(&p, &fa, NULL), &B, "groups 0");
  p = good_problem(); p.groups = -3;
  EXPECT_FAIL(GROUPNORM_INVALID_GROUPS, groupnorm_forward(&p, &fa, NULL), &B, "groups -3");
  p = good_problem(); p.groups = 4;
  EXPECT_FAIL(GROUPNORM_INVALID_GROUPS, groupnorm_forward(&p, &fa, NULL), &B, "C 6 % G 4");
  EXPECT_FAIL(GROUPNORM_INVALID_GROUPS, groupnorm_backward(&p, &ba, NULL), &B, "backward C 6 % G 4");
  st = groupnorm_validate(&p, msg, sizeof msg);
  CHECK(st == GROUPNORM_INVALID_GROUPS && strstr(msg, "6") && strstr(msg, "4"), "validate message: %s", msg);

  /* GROUPNORM_SIZE_OVERFLOW */
  p = good_problem(); p.batch = (int64_t)1 << 40; p.channels = (int64_t)1 << 20; p.groups = 1; p.spatial = (int64_t)1 << 20;
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_forward(&p, &fa, NULL), &B, "N*C*S overflows");
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_backward(&p, &ba, NULL), &B, "backward N*C*S overflows");
  p = good_problem(); p.batch = INT64_MAX; p.channels = 2; p.groups = 1; p.spatial = 2;
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_forward(&p, &fa, NULL), &B, "batch INT64_MAX");
  CHECK(groupnorm_forward_workspace_bytes(&p, 1) == 0, "workspace bytes of an overflowing problem");

  /* GROUPNORM_INVALID_EPS */
  p = good_problem(); p.eps = NAN;
  EXPECT_FAIL(GROUPNORM_INVALID_EPS, groupnorm_forward(&p, &fa, NULL), &B, "eps NaN");
  p = good_problem(); p.eps = INFINITY;
  EXPECT_FAIL(GROUPNORM_INVALID_EPS, groupnorm_forward(&p, &fa, NULL), &B, "eps inf");
  EXPECT_FAIL(GROUPNORM_INVALID_EPS, groupnorm_backward(&p, &ba, NULL), &B, "backward eps inf");

  /* GROUPNORM_INVALID_DTYPE */
  p = good_problem(); p.dtype = 4;
  EXPECT_FAIL(GROUPNORM_INVALID_DTYPE, groupnorm_forward(&p, &fa, NULL), &B, "dtype 4");
  p = good_problem(); p.dtype = -1;
  EXPECT_FAIL(GROUPNORM_INVALID_DTYPE, groupnorm_forward(&p, &fa, NULL), &B, "dtype -1");
  p = good_problem(); p.param_dtype = 17;
  EXPECT_FAIL(GROUPNORM_INVALID_DTYPE, groupnorm_forward(&p, &fa, NULL), &B, "param_dtype 17");
  p = good_problem(); p.dtype = GROUPNORM_BFLOAT16; p.param_dtype = GROUPNORM_FLOAT16;
  EXPECT_FAIL(GROUPNORM_INVALID_DTYPE, groupnorm_forward(&p, &fa, NULL), &B, "bfloat16 data, float16 params");
  EXPECT_FAIL(GROUPNORM_INVALID_DTYPE, groupnorm_backward(&p, &ba, NULL), &B, "backward bf16/f16");

  /* GROUPNORM_INVALID_ACTIVATION */
  p = good_problem(); p.activation = 2;
  EXPECT_FAIL(GROUPNORM_INVALID_ACTIVATION, groupnorm_forward(&p, &fa, NULL), &B, "activation 2");
  p = good_problem(); p.activation = -1;
  EXPECT_FAIL(GROUPNORM_INVALID_ACTIVATION, groupnorm_backward(&p, &ba, NULL), &B, "backward activation -1");

  /* GROUPNORM_INVALID_COMBINATION */
  p = good_problem();
  fa = fwd_args(&B);
  fa.skip_bias = B.sb;
  EXPECT_FAIL(GROUPNORM_INVALID_COMBINATION, groupnorm_forward(&p, &fa, NULL), &B, "skip_bias without skip");
  fa = fwd_args(&B);
  fa.sum_out = B.sum_out;
  EXPECT_FAIL(GROUPNORM_INVALID_COMBINATION, groupnorm_forward(&p, &fa, NULL), &B, "sum_out without skip");

  /* GROUPNORM_WORKSPACE_TOO_SMALL */
  fa = fwd_args(&B);
  ba = bwd_args(&B, mean, rstd);
  memset(&ex, 0, sizeof ex);
  ex.num_threads = 1;
  {
    static char ws[1 << 16];
    ex.workspace = ws;
    ex.workspace_bytes = groupnorm_forward_workspace_bytes(&p, 1) - 1;
    EXPECT_FAIL(GROUPNORM_WORKSPACE_TOO_SMALL, groupnorm_forward(&p, &fa, &ex), &B, "forward workspace short");
    ex.workspace_bytes = 0;
    EXPECT_FAIL(GROUPNORM_WORKSPACE_TOO_SMALL, groupnorm_forward(&p, &fa, &ex), &B, "forward workspace 0 bytes");
    ex.workspace_bytes = groupnorm_backward_workspace_bytes(&p, 1) - 1;
    EXPECT_FAIL(GROUPNORM_WORKSPACE_TOO_SMALL, groupnorm_backward(&p, &ba, &ex), &B, "backward workspace short");
  }

  /* GROUPNORM_UNSUPPORTED: an ISA this build or CPU cannot run */
  st = groupnorm_set_isa("no-such-isa");
  CHECK(st == GROUPNORM_UNSUPPORTED, "set_isa(no-such-isa): %s", groupnorm_status_string(st));
  if (st == GROUPNORM_UNSUPPORTED) g_seen[GROUPNORM_UNSUPPORTED] = 1;
  CHECK(strlen(groupnorm_last_error()) > 0, "set_isa failure has no message");

  /* GROUPNORM_OUT_OF_MEMORY: a valid problem whose scratch cannot be allocated
   * (about 2^46 (sample, channel) pairs: more than any address space). The data
   * pointers are never read: the scratch is allocated first. */
  p = good_problem(); p.batch = (int64_t)1 << 44; p.channels = 4; p.groups = 2; p.spatial = 1;
  /* y in place of x and no other output: at this size any two distinct
   * buffers would overlap (and be refused before the allocation) */
  memset(&fa, 0, sizeof fa);
  fa.x = B.x; fa.y = B.x;
  memset(&ba, 0, sizeof ba);
  ba.grad_y = B.dy; ba.x = B.x; ba.mean = mean; ba.rstd = rstd;  /* inputs may overlap each other */
  EXPECT_FAIL(GROUPNORM_OUT_OF_MEMORY, groupnorm_forward(&p, &fa, NULL), &B, "forward scratch too large");
  EXPECT_FAIL(GROUPNORM_OUT_OF_MEMORY, groupnorm_backward(&p, &ba, NULL), &B, "backward scratch too large");

  /* GROUPNORM_OVERLAPPING_BUFFERS: an output sharing bytes with an input or
   * another output, other than the exact aliases documented in groupnorm.h */
  p = good_problem();
  fa = fwd_args(&B); fa.y = B.x + 1;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "y one element past x");
  CHECK(strstr(groupnorm_last_error(), "y") && strstr(groupnorm_last_error(), "x"), "message names y and x: %s",
        groupnorm_last_error());
  fa = fwd_args(&B); fa.y = (float*)((char*)B.x + 2);
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "y two bytes past x");
  fa = fwd_args(&B); fa.x = B.y + kTotal - 1;  /* x's first element is y's last: one shared element */
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "x starts at y's last element");
  fa = fwd_args(&B); fa.mean = B.y + 3;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "mean inside y");
  fa = fwd_args(&B); fa.rstd = B.mean;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "rstd is mean");
  fa = fwd_args(&B); fa.mean = (float*)B.w;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "mean is weight");
  CHECK(strstr(groupnorm_last_error(), "mean") && strstr(groupnorm_last_error(), "weight"),
        "message names mean and weight: %s", groupnorm_last_error());
  fa = fwd_args(&B); fa.skip = B.skip; fa.sum_out = B.y;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "sum_out is y");
  fa = fwd_args(&B); fa.skip = B.skip; fa.y = B.skip + 2;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "y partly over skip");
  fa = fwd_args(&B); fa.skip = B.skip; fa.skip_bias = B.sb; fa.sum_out = (float*)B.sb;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_forward(&p, &fa, NULL), &B, "sum_out over skip_bias");
  ba = bwd_args(&B, mean, rstd); ba.grad_x = B.dy + 1;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_backward(&p, &ba, NULL), &B, "grad_x one past grad_y");
  ba = bwd_args(&B, mean, rstd); ba.grad_x = B.x;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_backward(&p, &ba, NULL), &B, "grad_x is x");
  ba = bwd_args(&B, mean, rstd); ba.grad_weight = B.w;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_backward(&p, &ba, NULL), &B, "grad_weight is weight");
  ba = bwd_args(&B, mean, rstd); ba.grad_bias = B.dw + 1;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_backward(&p, &ba, NULL), &B, "grad_bias over grad_weight");
  ba = bwd_args(&B, mean, rstd); ba.grad_weight = mean;
  EXPECT_FAIL(GROUPNORM_OVERLAPPING_BUFFERS, groupnorm_backward(&p, &ba, NULL), &B, "grad_weight over mean");
  CHECK(strstr(groupnorm_last_error(), "grad_weight") && strstr(groupnorm_last_error(), "mean"),
        "message names grad_weight and mean: %s", groupnorm_last_error());
  /* neighbours that touch without sharing a byte are fine */
  {
    float* two = (float*)malloc(sizeof(float) * 2 * kTotal);
    memcpy(two, B.x, sizeof(float) * kTotal);
    memset(&fa, 0, sizeof fa);
    fa.x = two; fa.y = two + kTotal;
    CHECK(groupnorm_forward(&p, &fa, NULL) == GROUPNORM_OK, "adjacent x and y: %s", groupnorm_last_error());
    free(two);
  }

  /* sizes are checked even when there is nothing to do: an empty batch still
   * has C channels of grad_weight, and must not loop or write C = 2^63 of them */
  p = good_problem(); p.batch = 0; p.channels = INT64_MAX; p.groups = 1;
  ba = bwd_args(&B, mean, rstd);
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_backward(&p, &ba, NULL), &B, "batch 0, channels INT64_MAX");
  fa = fwd_args(&B);
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_forward(&p, &fa, NULL), &B, "forward batch 0, channels INT64_MAX");
  p = good_problem(); p.batch = 0; p.channels = (int64_t)1 << 31; p.groups = 1;
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_backward(&p, &ba, NULL), &B, "batch 0, channels 2^31");
  p = good_problem(); p.spatial = 0; p.channels = (int64_t)1 << 30; p.batch = (int64_t)1 << 40; p.groups = 1;
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_forward(&p, &fa, NULL), &B, "spatial 0, N*C 2^70");
  p = good_problem(); p.batch = 0; p.spatial = (int64_t)1 << 40; p.channels = (int64_t)1 << 30; p.groups = 1;
  EXPECT_FAIL(GROUPNORM_SIZE_OVERFLOW, groupnorm_forward(&p, &fa, NULL), &B, "batch 0, C*S 2^70");
  /* workspace sizes of the largest valid problems: no wrap-around (UBSan) and
   * either 0 (invalid) or a size at least as large as the per-(n, c) scratch */
  {
    static const int dts[] = {GROUPNORM_FLOAT32, GROUPNORM_FLOAT64, GROUPNORM_BFLOAT16};
    int d;
    for (d = 0; d < 3; ++d) {
      size_t f, b;
      p = groupnorm_problem_default(); p.dtype = dts[d]; p.param_dtype = dts[d];
      p.batch = (int64_t)1 << 35; p.channels = (int64_t)1 << 20; p.groups = 1 << 10; p.spatial = 1;
      f = groupnorm_forward_workspace_bytes(&p, 8);
      b = groupnorm_backward_workspace_bytes(&p, 8);
      CHECK(f >= ((size_t)1 << 55) && b >= f, "workspace of 2^55 (n, c) pairs: %zu / %zu", f, b);
      p.batch = (int64_t)1 << 36;
      CHECK(groupnorm_forward_workspace_bytes(&p, 8) == 0 && groupnorm_backward_workspace_bytes(&p, 8) == 0,
            "workspace of a too-large problem");
      p.batch = (int64_t)1 << 15; p.channels = (int64_t)1 << 20; p.spatial = (int64_t)1 << 20;
      f = groupnorm_forward_workspace_bytes(&p, 1 << 30);
      b = groupnorm_backward_workspace_bytes(&p, 1 << 30);
      CHECK(f >= ((size_t)1 << 35) && b >= f, "workspace of 2^55 elements, huge thread count: %zu / %zu", f, b);
    }
  }

  /* every code the CPU build can return was produced */
  {
    int s;
    for (s = GROUPNORM_NULL_POINTER; s <= GROUPNORM_OVERLAPPING_BUFFERS; ++s)
      if (s < GROUPNORM_DEVICE_ERROR || s > GROUPNORM_INTERNAL_ERROR) /* not from a CPU build */
      CHECK(g_seen[s], "status %d (%s) was never produced", s, groupnorm_status_string((groupnorm_status)s));
  }

  /* valid edge cases: nothing to do is OK (even with NULL data when there is no data) */
  p = good_problem(); p.batch = 0;
  memset(&fa, 0, sizeof fa);
  CHECK(groupnorm_forward(&p, &fa, NULL) == GROUPNORM_OK, "batch 0 with NULL data: %s", groupnorm_last_error());
  memset(&ba, 0, sizeof ba);
  CHECK(groupnorm_backward(&p, &ba, NULL) == GROUPNORM_OK, "backward batch 0 with NULL data: %s", groupnorm_last_error());
  fa = fwd_args(&B);
  ba = bwd_args(&B, mean, rstd);
  p = good_problem(); p.eps = -1e-9;
  EXPECT_FAIL(GROUPNORM_INVALID_EPS, groupnorm_forward(&p, &fa, NULL), &B, "eps -1e-9");
  p = good_problem(); p.eps = -1.0;
  EXPECT_FAIL(GROUPNORM_INVALID_EPS, groupnorm_backward(&p, &ba, NULL), &B, "backward eps -1");
  p = good_problem(); p.eps = 0.0;
  CHECK(groupnorm_forward(&p, &fa, NULL) == GROUPNORM_OK, "eps 0 is allowed: %s", groupnorm_last_error());
  free_buffers(&B);
}

/* ------------------------------------------------------------ small functions */
static void check_misc(void) {
  char msg[8];
  groupnorm_problem p = groupnorm_problem_default();
  groupnorm_problem q = GROUPNORM_PROBLEM_INIT;
  int s, t;
  CHECK(strcmp(groupnorm_version(), GN_EXPECTED_VERSION) == 0, "version %s", groupnorm_version());
  CHECK(p.batch == 0 && p.channels == 0 && p.groups == 0 && p.spatial == 1 && p.channels_last == 0 &&
            p.activation == GROUPNORM_ACTIVATION_NONE && p.dtype == GROUPNORM_FLOAT32 &&
            p.param_dtype == GROUPNORM_FLOAT32 && p.eps == 1e-5,
        "groupnorm_problem_default");
  CHECK(memcmp(&p, &q, sizeof p) == 0 || (q.spatial == 1 && q.eps == 1e-5), "GROUPNORM_PROBLEM_INIT");
  for (s = 0; s <= 14; ++s) {
    const char* a = groupnorm_status_string((groupnorm_status)s);
    CHECK(a && strlen(a) > 0 && strcmp(a, "unknown status") != 0, "status %d has no name", s);
    for (t = 0; t < s; ++t)
      CHECK(strcmp(a, groupnorm_status_string((groupnorm_status)t)) != 0, "statuses %d and %d share a name", s, t);
  }
  CHECK(strcmp(groupnorm_status_string(GROUPNORM_OK), "ok") == 0, "ok");
  CHECK(strcmp(groupnorm_status_string((groupnorm_status)99), "unknown status") == 0, "99");
  CHECK(strcmp(groupnorm_status_string((groupnorm_status)-1), "unknown status") == 0, "-1");

  /* validate: ok clears the message; errors are truncated and NUL-terminated */
  p.channels = 6; p.groups = 4; p.batch = 1;
  memset(msg, 'x', sizeof msg);
  CHECK(groupnorm_validate(&p, msg, sizeof msg) == GROUPNORM_INVALID_GROUPS, "validate 6/4");
  CHECK(strlen(msg) == sizeof msg - 1, "message not truncated to %d: '%s'", (int)sizeof msg - 1, msg);
  CHECK(groupnorm_validate(&p, NULL, 0) == GROUPNORM_INVALID_GROUPS, "validate without a buffer");
  msg[0] = 'x';
  CHECK(groupnorm_validate(&p, msg, 1) == GROUPNORM_INVALID_GROUPS && msg[0] == '\0', "validate, 1-byte buffer");
  p.groups = 3;
  memset(msg, 'x', sizeof msg);
  CHECK(groupnorm_validate(&p, msg, sizeof msg) == GROUPNORM_OK && msg[0] == '\0', "validate ok: '%s'", msg);
  CHECK(groupnorm_forward_workspace_bytes(NULL, 1) == 0, "workspace bytes of NULL");
  p.batch = 0;
  CHECK(groupnorm_forward_workspace_bytes(&p, 1) == 0 && groupnorm_backward_workspace_bytes(&p, 1) == 0,
        "workspace of an empty problem");

  /* threads */
  groupnorm_set_num_threads(3);
  CHECK(groupnorm_get_num_threads() == 3, "set_num_threads(3) -> %d", groupnorm_get_num_threads());
  groupnorm_set_num_threads(0);
  CHECK(groupnorm_get_num_threads() >= 1, "default threads %d", groupnorm_get_num_threads());
  t = groupnorm_get_num_threads();
  CHECK(groupnorm_max_threads() >= 4 && groupnorm_max_threads() <= 65536, "max threads %d", groupnorm_max_threads());
  groupnorm_set_num_threads(INT32_MAX);
  CHECK(groupnorm_get_num_threads() == groupnorm_max_threads(), "set_num_threads(INT32_MAX) -> %d, cap %d",
        groupnorm_get_num_threads(), groupnorm_max_threads());
  groupnorm_set_num_threads(-5);
  CHECK(groupnorm_get_num_threads() == t, "set_num_threads(-5) restores the default %d: %d", t,
        groupnorm_get_num_threads());

  /* ISAs: each available one can be selected; portable always */
  {
    char names[128];
    char* tok;
    const char* first;
    strncpy(names, groupnorm_available_isas(), sizeof names - 1);
    names[sizeof names - 1] = '\0';
    CHECK(strstr(names, "portable") != NULL, "portable not available: %s", names);
    first = groupnorm_active_isa();
    CHECK(first && strlen(first) > 0, "active isa");
    for (tok = strtok(names, ","); tok; tok = strtok(NULL, ",")) {
      CHECK(groupnorm_set_isa(tok) == GROUPNORM_OK && strcmp(groupnorm_active_isa(), tok) == 0, "set_isa(%s)", tok);
    }
    strncpy(names, first, sizeof names - 1);
    CHECK(groupnorm_set_isa(names) == GROUPNORM_OK, "restore isa %s", names);
  }
}

int main(void) {
  static const int dtypes[] = {GROUPNORM_FLOAT32, GROUPNORM_FLOAT16, GROUPNORM_BFLOAT16};
  int i, cl;
  printf("groupnorm %s, isa %s (available: %s)\n", groupnorm_version(), groupnorm_active_isa(),
         groupnorm_available_isas());
  check_misc();
  for (i = 0; i < 3; ++i)
    for (cl = 0; cl < 2; ++cl) {
      groupnorm_problem p = groupnorm_problem_default();
      p.batch = 2; p.channels = 12; p.groups = 4; p.spatial = 35; p.channels_last = cl;
      p.dtype = dtypes[i];
      p.param_dtype = (i == 1) ? GROUPNORM_FLOAT16 : GROUPNORM_FLOAT32;
      check_numerics(p, 1);
      p.activation = GROUPNORM_ACTIVATION_SILU;
      check_numerics(p, 1);
      p.activation = GROUPNORM_ACTIVATION_NONE;
      p.spatial = 1;
      check_numerics(p, 0);
    }
  check_engine_and_workspace();
  check_errors();
  printf("test_c_api: %d checks, %d failed\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
