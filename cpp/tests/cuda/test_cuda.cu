// CUDA backend test: forward and backward against a double-precision host
// reference, for many shapes, both layouts, all dtypes and options; plus
// bitwise repeatability, caller vs cached workspace, the edge cases, and the
// call's environment (earlier errors, host pointers, graph capture, host threads).
// Exits 0 printing a SKIP line when no CUDA device is present.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "groupnorm/cuda.hpp"
#include "groupnorm/groupnorm.hpp"

using namespace groupnorm;
typedef std::int64_t i64;

// ---------------------------------------------------------------- host storage conversions
static float bits_f(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static std::uint32_t f_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }

static float half_to_f(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
  if (em >= 0x7c00u) return bits_f(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
  return bits_f(sign | f_bits(bits_f(em << 13) * 0x1p112f));
}
static std::uint16_t f_to_half(float f) {  // round to nearest even
  const std::uint32_t u = f_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  std::uint32_t r;
  if (a >= 0x477ff000u) r = a > 0x7f800000u ? 0x7e00u : 0x7c00u;
  else if (a < 0x38800000u) r = f_bits(bits_f(a) + 0.5f) - 0x3f000000u;
  else r = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  return (std::uint16_t)(r | sign);
}
static float bf_to_f(std::uint16_t h) { return bits_f((std::uint32_t)h << 16); }
static std::uint16_t f_to_bf(float f) {
  const std::uint32_t u = f_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (std::uint16_t)((u >> 16) | 0x40u);
  return (std::uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// A host array of a given dtype, kept as bytes.
struct HostArr {
  DType t = DType::float32;
  std::vector<unsigned char> bytes;
  HostArr() {}
  HostArr(DType t_, i64 n) : t(t_), bytes((std::size_t)n * dtype_size(t_)) {}
  i64 size() const { return (i64)(bytes.size() / dtype_size(t)); }
  double get(i64 i) const {
    switch (t) {
      case DType::float32: { float v; std::memcpy(&v, &bytes[i * 4], 4); return v; }
      case DType::float64: { double v; std::memcpy(&v, &bytes[i * 8], 8); return v; }
      case DType::float16: { std::uint16_t v; std::memcpy(&v, &bytes[i * 2], 2); return half_to_f(v); }
      case DType::bfloat16: { std::uint16_t v; std::memcpy(&v, &bytes[i * 2], 2); return bf_to_f(v); }
    }
    return 0;
  }
  void set(i64 i, double d) {  // rounds to nearest even
    switch (t) {
      case DType::float32: { float v = (float)d; std::memcpy(&bytes[i * 4], &v, 4); break; }
      case DType::float64: { std::memcpy(&bytes[i * 8], &d, 8); break; }
      case DType::float16: { std::uint16_t v = f_to_half((float)d); std::memcpy(&bytes[i * 2], &v, 2); break; }
      case DType::bfloat16: { std::uint16_t v = f_to_bf((float)d); std::memcpy(&bytes[i * 2], &v, 2); break; }
    }
  }
};

static std::uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand() {  // [-1, 1)
  g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
  return (double)(g_rng >> 11) * 0x1p-52 - 1.0;
}

static int g_fail = 0;
#define CHECK_CUDA(x)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (x);                                                                    \
    if (e_ != cudaSuccess) {                                                                 \
      std::printf("FAIL: %s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                          \
    }                                                                                        \
  } while (0)

// Device buffer with an optional element offset (to exercise unaligned pointers).
struct DevArr {
  void* base = nullptr;
  void* p = nullptr;
  std::size_t bytes = 0;
  DevArr() {}
  DevArr(const DevArr&) = delete;
  DevArr& operator=(const DevArr&) = delete;
  ~DevArr() { if (base) cudaFree(base); }
  void alloc(const HostArr& h, int offset_elems) {
    bytes = h.bytes.size();
    const std::size_t off = (std::size_t)offset_elems * dtype_size(h.t);
    CHECK_CUDA(cudaMalloc(&base, bytes + off + 16));
    p = static_cast<char*>(base) + off;
    if (bytes) CHECK_CUDA(cudaMemcpy(p, h.bytes.data(), bytes, cudaMemcpyHostToDevice));
  }
  void fill_garbage() { CHECK_CUDA(cudaMemset(p, 0x7f, bytes)); }
  void to_host(HostArr& h) const { CHECK_CUDA(cudaMemcpy(h.bytes.data(), p, bytes, cudaMemcpyDeviceToHost)); }
};

struct Case {
  i64 N, C, G, S;
  bool cl;
  DType dt, pt;
  bool silu, skip, skip_bias, weight, bias, sum_out;
  int offset;  // element offset of the data pointers (1: unaligned)
};

static const char* dn(DType t) { return dtype_name(t); }

static std::string describe(const Case& c) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "N=%lld C=%lld G=%lld S=%lld %s %s/%s%s%s%s%s%s%s off=%d", (long long)c.N,
                (long long)c.C, (long long)c.G, (long long)c.S, c.cl ? "cl" : "cf", dn(c.dt), dn(c.pt),
                c.silu ? " silu" : "", c.skip ? " skip" : "", c.skip_bias ? " skip_bias" : "", c.weight ? " w" : "",
                c.bias ? " b" : "", c.sum_out ? " sum_out" : "", c.offset);
  return buf;
}

struct Tol {
  double out, stat, grad;
};
static Tol tol_of(DType t) {
  switch (t) {
    case DType::float64: return {1e-10, 1e-11, 1e-9};
    case DType::float32: return {2e-5, 2e-5, 2e-4};
    case DType::float16: return {4e-3, 2e-5, 1.5e-2};
    case DType::bfloat16: return {2e-2, 2e-5, 6e-2};
  }
  return {0, 0, 0};
}

static double accum_round(DType t, double v) {  // a value computed in the accumulation type
  return t == DType::float64 ? v : (double)(float)v;
}

// compare b (device) to a (reference): |b-a| <= tol * (|a| + scale)
static bool close_all(const char* what, const Case& c, const std::vector<double>& ref, const HostArr& got, double tol,
                      double scale) {
  i64 bad = 0, first = -1;
  double worst = 0;
  for (i64 i = 0; i < (i64)ref.size(); ++i) {
    const double r = ref[i], g = got.get(i);
    const double err = std::fabs(g - r), lim = tol * (std::fabs(r) + scale);
    if (!(err <= lim) && !(std::isnan(r) && std::isnan(g))) {
      if (first < 0) first = i;
      ++bad;
    }
    if (err / (std::fabs(r) + scale) > worst) worst = err / (std::fabs(r) + scale);
  }
  if (bad) {
    std::printf("FAIL: %s [%s]: %lld of %lld elements off (first at %lld: got %.9g want %.9g; worst rel %.3g)\n", what,
                describe(c).c_str(), (long long)bad, (long long)ref.size(), (long long)first, got.get(first),
                ref[first], worst);
    ++g_fail;
    return false;
  }
  return true;
}

static double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double d : v) m = std::max(m, std::fabs(d));
  return m;
}

static bool same_bytes(const DevArr& a, const DevArr& b) {
  std::vector<unsigned char> ha(a.bytes), hb(b.bytes);
  CHECK_CUDA(cudaMemcpy(ha.data(), a.p, a.bytes, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hb.data(), b.p, b.bytes, cudaMemcpyDeviceToHost));
  return ha == hb;
}

static void run_case(const Case& c, cudaStream_t stream) {
  Problem p;
  p.batch = c.N; p.channels = c.C; p.groups = c.G; p.spatial = c.S; p.channels_last = c.cl;
  p.eps = 1e-5; p.activation = c.silu ? Activation::silu : Activation::none;
  p.dtype = c.dt; p.param_dtype = c.pt;
  const i64 N = c.N, C = c.C, G = c.G, S = c.S, Cg = C / G, total = N * C * S;
  const DType st = stats_dtype(c.dt);
  auto idx = [&](i64 n, i64 ch, i64 s) { return c.cl ? (n * S + s) * C + ch : (n * C + ch) * S + s; };

  // inputs: per-group offsets so the mean is not small compared with the spread
  HostArr x(c.dt, total), k(c.dt, total), w(c.pt, C), b(c.pt, C), sb(c.pt, C), dy(c.dt, total);
  for (i64 n = 0; n < N; ++n)
    for (i64 ch = 0; ch < C; ++ch) {
      const double off = 3.0 * (double)((n * 7 + ch / Cg * 3) % 5) - 4.0;
      for (i64 s = 0; s < S; ++s) x.set(idx(n, ch, s), off + urand());
    }
  for (i64 i = 0; i < total; ++i) { k.set(i, 0.5 * urand()); dy.set(i, urand()); }
  for (i64 ch = 0; ch < C; ++ch) { w.set(ch, 1.0 + 0.5 * urand()); b.set(ch, 0.3 * urand()); sb.set(ch, 0.2 * urand()); }

  // ---------------- reference forward
  std::vector<double> s_ref(total), y_ref(total), mean_ref(N * G), rstd_ref(N * G);
  for (i64 i = 0; i < total; ++i) s_ref[i] = x.get(i);
  if (c.skip) {
    HostArr tmp(c.dt, 1);
    for (i64 n = 0; n < N; ++n)
      for (i64 ch = 0; ch < C; ++ch)
        for (i64 s = 0; s < S; ++s) {
          const i64 i = idx(n, ch, s);
          double v = accum_round(c.dt, x.get(i) + k.get(i));
          if (c.skip_bias) v = accum_round(c.dt, v + accum_round(c.dt, sb.get(ch)));
          tmp.set(0, v);
          s_ref[i] = tmp.get(0);
        }
  }
  for (i64 n = 0; n < N; ++n)
    for (i64 g = 0; g < G; ++g) {
      double sum = 0;
      for (i64 ch = g * Cg; ch < (g + 1) * Cg; ++ch)
        for (i64 s = 0; s < S; ++s) sum += s_ref[idx(n, ch, s)];
      const double D = (double)Cg * S, m = sum / D;
      double m2 = 0;
      for (i64 ch = g * Cg; ch < (g + 1) * Cg; ++ch)
        for (i64 s = 0; s < S; ++s) m2 += (s_ref[idx(n, ch, s)] - m) * (s_ref[idx(n, ch, s)] - m);
      mean_ref[n * G + g] = m;
      rstd_ref[n * G + g] = 1.0 / std::sqrt(m2 / D + p.eps);
      for (i64 ch = g * Cg; ch < (g + 1) * Cg; ++ch) {
        const double ww = c.weight ? w.get(ch) : 1.0, bb = c.bias ? b.get(ch) : 0.0;
        for (i64 s = 0; s < S; ++s) {
          const i64 i = idx(n, ch, s);
          double z = ww * (s_ref[i] - m) * rstd_ref[n * G + g] + bb;
          if (c.silu) z = z / (1.0 + std::exp(-z));
          y_ref[i] = z;
        }
      }
    }

  // ---------------- device forward
  DevArr dx_, dk, dw, db, dsb, dyv, dso, dmean, drstd;
  dx_.alloc(x, c.offset);
  dk.alloc(k, c.offset);
  dw.alloc(w, 0); db.alloc(b, 0); dsb.alloc(sb, 0);
  HostArr yh(c.dt, total), soh(c.dt, total), meanh(st, N * G), rstdh(st, N * G);
  dyv.alloc(yh, c.offset); dyv.fill_garbage();
  dso.alloc(soh, c.offset); dso.fill_garbage();
  dmean.alloc(meanh, 0); drstd.alloc(rstdh, 0);
  ForwardArgs fa;
  fa.x = dx_.p; fa.y = dyv.p; fa.mean = dmean.p; fa.rstd = drstd.p;
  if (c.weight) fa.weight = dw.p;
  if (c.bias) fa.bias = db.p;
  if (c.skip) fa.skip = dk.p;
  if (c.skip && c.skip_bias) fa.skip_bias = dsb.p;
  if (c.skip && c.sum_out) fa.sum_out = dso.p;
  Result r = cuda::forward(p, fa, stream);
  if (!r) { std::printf("FAIL: forward [%s]: %s\n", describe(c).c_str(), r.message.c_str()); ++g_fail; return; }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  dyv.to_host(yh); dmean.to_host(meanh); drstd.to_host(rstdh);
  const Tol tol = tol_of(c.dt);
  close_all("forward y", c, y_ref, yh, tol.out, 1.0);
  close_all("forward mean", c, mean_ref, meanh, tol.stat, 1.0);
  close_all("forward rstd", c, rstd_ref, rstdh, tol.stat * 10, 0.0);
  if (c.skip && c.sum_out) {
    dso.to_host(soh);
    close_all("forward sum_out", c, s_ref, soh, 0.0, 0.0);  // exact: same rounding as specified
  }
  // repeatability, and a caller-provided workspace gives the same bits
  {
    DevArr y2;
    y2.alloc(yh, c.offset);
    y2.fill_garbage();
    ForwardArgs fb = fa;
    fb.y = y2.p;
    fb.sum_out = nullptr;
    if (c.skip && c.sum_out) fb.sum_out = dso.p;  // same values rewritten
    const std::size_t wsb = cuda::forward_workspace_bytes(p);
    void* ws = nullptr;
    if (wsb) CHECK_CUDA(cudaMalloc(&ws, wsb + 3));
    // deliberately misaligned start: the backend aligns inside its slack
    r = cuda::forward(p, fb, stream, ws ? static_cast<char*>(ws) + 3 : nullptr, wsb);
    CHECK_CUDA(cudaStreamSynchronize(stream));
    if (ws) cudaFree(ws);
    if (!r) { std::printf("FAIL: forward(ws) [%s]: %s\n", describe(c).c_str(), r.message.c_str()); ++g_fail; }
    else if (!same_bytes(dyv, y2)) { std::printf("FAIL: forward not repeatable [%s]\n", describe(c).c_str()); ++g_fail; }
    if (wsb > 1024) {
      void* small = nullptr;
      CHECK_CUDA(cudaMalloc(&small, 1024));
      r = cuda::forward(p, fb, stream, small, 1024);
      CHECK_CUDA(cudaStreamSynchronize(stream));
      cudaFree(small);
      if (r.status != Status::workspace_too_small) {
        std::printf("FAIL: small workspace not rejected [%s]\n", describe(c).c_str());
        ++g_fail;
      }
    }
  }

  // ---------------- reference backward (x = s, mean/rstd as the device stored them)
  std::vector<double> gx_ref(total), gw_ref(C, 0.0), gb_ref(C, 0.0);
  std::vector<double> mean_in(N * G), rstd_in(N * G);
  for (i64 i = 0; i < N * G; ++i) { mean_in[i] = meanh.get(i); rstd_in[i] = rstdh.get(i); }
  HostArr sx(c.dt, total);
  for (i64 i = 0; i < total; ++i) sx.set(i, s_ref[i]);
  for (i64 n = 0; n < N; ++n)
    for (i64 g = 0; g < G; ++g) {
      const double m = mean_in[n * G + g], rs = rstd_in[n * G + g], D = (double)Cg * S;
      double S1 = 0, S2 = 0;
      std::vector<double> dbc(Cg), dsc(Cg);
      for (i64 j = 0; j < Cg; ++j) {
        const i64 ch = g * Cg + j;
        const double ww = c.weight ? w.get(ch) : 1.0, bb = c.bias ? b.get(ch) : 0.0;
        double sdb = 0, sds = 0;
        for (i64 s = 0; s < S; ++s) {
          const i64 i = idx(n, ch, s);
          const double xc = sx.get(i) - m;
          double dz = dy.get(i);
          if (c.silu) {
            const double z = xc * rs * ww + bb, sg = 1.0 / (1.0 + std::exp(-z));
            dz *= sg * (1.0 + z * (1.0 - sg));
          }
          sdb += dz;
          sds += dz * xc;
        }
        dbc[j] = sdb; dsc[j] = sds;
        S1 += ww * sdb; S2 += ww * sds;
        gb_ref[ch] += sdb;
        gw_ref[ch] += rs * sds;
      }
      for (i64 j = 0; j < Cg; ++j) {
        const i64 ch = g * Cg + j;
        const double ww = c.weight ? w.get(ch) : 1.0, bb = c.bias ? b.get(ch) : 0.0;
        for (i64 s = 0; s < S; ++s) {
          const i64 i = idx(n, ch, s);
          const double xc = sx.get(i) - m;
          double dz = dy.get(i);
          if (c.silu) {
            const double z = xc * rs * ww + bb, sg = 1.0 / (1.0 + std::exp(-z));
            dz *= sg * (1.0 + z * (1.0 - sg));
          }
          gx_ref[i] = ww * rs * dz - rs * S1 / D - rs * rs * rs * S2 / D * xc;
        }
      }
    }

  // ---------------- device backward
  DevArr dsx, ddy, dgx, dgw, dgb;
  dsx.alloc(sx, c.offset);
  ddy.alloc(dy, c.offset);
  HostArr gxh(c.dt, total), gwh(c.pt, C), gbh(c.pt, C);
  dgx.alloc(gxh, c.offset); dgx.fill_garbage();
  dgw.alloc(gwh, 0); dgw.fill_garbage();
  dgb.alloc(gbh, 0); dgb.fill_garbage();
  BackwardArgs ba;
  ba.grad_y = ddy.p; ba.x = dsx.p; ba.mean = dmean.p; ba.rstd = drstd.p;
  if (c.weight) ba.weight = dw.p;
  if (c.bias) ba.bias = db.p;
  ba.grad_x = dgx.p; ba.grad_weight = dgw.p; ba.grad_bias = dgb.p;
  r = cuda::backward(p, ba, stream);
  if (!r) { std::printf("FAIL: backward [%s]: %s\n", describe(c).c_str(), r.message.c_str()); ++g_fail; return; }
  CHECK_CUDA(cudaStreamSynchronize(stream));
  dgx.to_host(gxh); dgw.to_host(gwh); dgb.to_host(gbh);
  close_all("backward grad_x", c, gx_ref, gxh, tol.grad, max_abs(gx_ref) + 1e-30);
  const double gtol = c.pt == DType::float32 && c.dt != DType::float64 ? std::max(tol.grad, 1e-3) : tol.grad;
  close_all("backward grad_weight", c, gw_ref, gwh, gtol, max_abs(gw_ref) + 1e-30);
  close_all("backward grad_bias", c, gb_ref, gbh, gtol, max_abs(gb_ref) + 1e-30);
  {
    DevArr gx2;
    gx2.alloc(gxh, c.offset);
    BackwardArgs bb2 = ba;
    bb2.grad_x = gx2.p;
    r = cuda::backward(p, bb2, stream);
    CHECK_CUDA(cudaStreamSynchronize(stream));
    if (!r || !same_bytes(dgx, gx2)) { std::printf("FAIL: backward not repeatable [%s]\n", describe(c).c_str()); ++g_fail; }
  }
}

static void edge_cases(cudaStream_t stream) {
  // empty spatial: NaN stats; empty batch: zero parameter gradients; errors
  Problem p;
  p.batch = 2; p.channels = 4; p.groups = 2; p.spatial = 0;
  float* stats = nullptr;
  CHECK_CUDA(cudaMalloc(&stats, 8 * sizeof(float)));
  ForwardArgs fa;
  fa.mean = stats; fa.rstd = stats + 4;
  Result r = cuda::forward(p, fa, stream);
  float h[8];
  CHECK_CUDA(cudaMemcpy(h, stats, sizeof h, cudaMemcpyDeviceToHost));
  bool ok = r.ok();
  for (float v : h) ok = ok && std::isnan(v);
  if (!ok) { std::printf("FAIL: S == 0 should give NaN stats\n"); ++g_fail; }
  p.batch = 0; p.spatial = 5;
  BackwardArgs ba;
  ba.grad_weight = stats; ba.grad_bias = stats + 4;
  r = cuda::backward(p, ba, stream);
  CHECK_CUDA(cudaMemcpy(h, stats, sizeof h, cudaMemcpyDeviceToHost));
  ok = r.ok();
  for (float v : h) ok = ok && v == 0.0f;
  if (!ok) { std::printf("FAIL: N == 0 should give zero parameter gradients\n"); ++g_fail; }
  p.batch = 1; p.channels = 6; p.groups = 4;
  if (cuda::forward(p, ForwardArgs(), stream).status != Status::invalid_groups) {
    std::printf("FAIL: invalid groups not reported\n");
    ++g_fail;
  }
  p.groups = 3;
  if (cuda::forward(p, ForwardArgs(), stream).status != Status::null_pointer) {
    std::printf("FAIL: null x not reported\n");
    ++g_fail;
  }
  cudaFree(stats);
}

// The call's environment: an error left by an earlier, unrelated call is not
// reported as ours; host pointers are refused (where the device cannot read
// pageable memory); a call that needs scratch under graph capture asks for a
// workspace, and with one the graph replays the eager result bitwise; host
// threads sharing a stream and the cached workspace get bitwise the same y.
static bool same_dev(const float* a, const float* b, std::size_t n) {
  std::vector<float> ha(n), hb(n);
  CHECK_CUDA(cudaMemcpy(ha.data(), a, n * 4, cudaMemcpyDeviceToHost));
  CHECK_CUDA(cudaMemcpy(hb.data(), b, n * 4, cudaMemcpyDeviceToHost));
  return std::memcmp(ha.data(), hb.data(), n * 4) == 0;
}

static void environment_cases(cudaStream_t stream) {
  Problem p;
  p.batch = 1; p.channels = 32; p.groups = 2; p.spatial = 70000;  // the split path: needs scratch
  const std::size_t n = 32 * 70000;
  std::vector<float> hx(n);
  for (float& v : hx) v = (float)(3 + urand());
  float *x = nullptr, *y = nullptr, *y2 = nullptr;
  CHECK_CUDA(cudaMalloc(&x, n * 4));
  CHECK_CUDA(cudaMalloc(&y, n * 4));
  CHECK_CUDA(cudaMalloc(&y2, n * 4));
  CHECK_CUDA(cudaMemcpy(x, hx.data(), n * 4, cudaMemcpyHostToDevice));
  ForwardArgs a;
  a.x = x; a.y = y;
  Result r = cuda::forward(p, a, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  if (!r) { std::printf("FAIL: environment reference call: %s\n", r.message.c_str()); ++g_fail; }

  (void)cudaSetDevice(-1);  // leaves cudaErrorInvalidDevice pending
  a.y = y2;
  CHECK_CUDA(cudaMemset(y2, 0x7f, n * 4));
  r = cuda::forward(p, a, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
  if (!r || !same_dev(y, y2, n)) {
    std::printf("FAIL: an earlier unrelated error changed the call: %s\n", r.message.c_str());
    ++g_fail;
  }

  int dev = 0, pageable = 0;
  CHECK_CUDA(cudaGetDevice(&dev));
  CHECK_CUDA(cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev));
  if (!pageable) {
    ForwardArgs h = a;
    h.x = hx.data();
    r = cuda::forward(p, h, stream);
    if (r.status != Status::invalid_combination || r.message.find("x ") != 0) {
      std::printf("FAIL: a host x was not refused: %s\n", r.message.c_str());
      ++g_fail;
    }
  }

  cudaStream_t cs;
  CHECK_CUDA(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
  const std::size_t wsb = cuda::forward_workspace_bytes(p);
  void* ws = nullptr;
  CHECK_CUDA(cudaMalloc(&ws, wsb));
  CHECK_CUDA(cudaMemset(y2, 0x7f, n * 4));
  CHECK_CUDA(cudaDeviceSynchronize());
  CHECK_CUDA(cudaStreamBeginCapture(cs, cudaStreamCaptureModeGlobal));
  const Result refused = cuda::forward(p, a, cs);
  const Result captured = cuda::forward(p, a, cs, ws, wsb);
  cudaGraph_t graph = nullptr;
  CHECK_CUDA(cudaStreamEndCapture(cs, &graph));
  if (refused.status != Status::unsupported || refused.message.find("workspace") == std::string::npos) {
    std::printf("FAIL: capture without a workspace: %s\n", refused.message.c_str());
    ++g_fail;
  }
  if (!captured) { std::printf("FAIL: capture with a workspace: %s\n", captured.message.c_str()); ++g_fail; }
  cudaGraphExec_t exec = nullptr;
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, cs));
  CHECK_CUDA(cudaStreamSynchronize(cs));
  if (!same_dev(y, y2, n)) { std::printf("FAIL: the captured graph's y differs from the eager y\n"); ++g_fail; }
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  CHECK_CUDA(cudaStreamDestroy(cs));
  cudaFree(ws);

  // host threads on one stream, growing and using the cached workspace
  const int T = 6;
  std::vector<float*> ys(T);
  for (float*& yt : ys) {
    CHECK_CUDA(cudaMalloc(&yt, n * 4));
    CHECK_CUDA(cudaMemset(yt, 0x7f, n * 4));
  }
  std::vector<Result> rs(T);
  std::vector<std::thread> threads;
  for (int t = 0; t < T; ++t)
    threads.emplace_back([&, t] {
      Problem q = p;
      for (int k = 0; k < 4; ++k) {
        q.spatial = 70000 - 10000 * ((t + k) % 4);  // different sizes: the cache grows under the others
        ForwardArgs b;
        b.x = x; b.y = ys[t];
        Result rr = cuda::forward(q, b, stream);
        if (!rr) rs[t] = rr;
      }
      ForwardArgs b;
      b.x = x; b.y = ys[t];
      Result rr = cuda::forward(p, b, stream);
      if (!rr) rs[t] = rr;
    });
  for (std::thread& th : threads) th.join();
  CHECK_CUDA(cudaStreamSynchronize(stream));
  for (int t = 0; t < T; ++t) {
    if (!rs[t] || !same_dev(y, ys[t], n)) {
      std::printf("FAIL: host thread %d sharing the stream: %s\n", t, rs[t].message.c_str());
      ++g_fail;
    }
    cudaFree(ys[t]);
  }
  cudaFree(x);
  cudaFree(y);
  cudaFree(y2);
}

int main() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || !cuda::available()) {
    std::printf("SKIP: no CUDA device\n");
    return 0;
  }
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreate(&stream));
  std::vector<Case> cases;
  const DType dts[] = {DType::float32, DType::float64, DType::float16, DType::bfloat16};
  struct Shape { i64 N, C, G, S; };
  const Shape shapes[] = {
      {2, 8, 2, 64},       {1, 4, 1, 1},         {3, 6, 3, 7},        {2, 32, 8, 49},       // small, odd
      {2, 320, 32, 256},   {1, 64, 32, 4096},    {4, 96, 3, 33},      {1, 2048, 1, 3},      // UNet-like, wide
      {1, 32, 2, 70000},   {1, 8, 1, 300001},    {2, 1536, 32, 16},   {5, 30, 5, 1},        // split path, S=1
      {1, 4096, 2, 2},     {300, 16, 4, 8},      {1, 24, 24, 1000},                          // big Cg, many groups
  };
  for (const Shape& s : shapes)
    for (int cl = 0; cl < 2; ++cl)
      for (DType dt : dts) {
        Case c{s.N, s.C, s.G, s.S, cl == 1, dt, dt, false, false, false, true, true, false, 0};
        cases.push_back(c);
      }
  // options on a few shapes and dtypes
  const Shape opt_shapes[] = {{2, 64, 8, 100}, {1, 32, 2, 70000}, {3, 12, 4, 9}};
  for (const Shape& s : opt_shapes)
    for (int cl = 0; cl < 2; ++cl)
      for (DType dt : dts)
        for (int v = 0; v < 6; ++v) {
          Case c{s.N, s.C, s.G, s.S, cl == 1, dt, dt, false, false, false, true, true, false, 0};
          switch (v) {
            case 0: c.silu = true; break;
            case 1: c.skip = true; c.sum_out = true; break;
            case 2: c.skip = true; c.skip_bias = true; c.sum_out = true; c.silu = true; break;
            case 3: c.weight = false; c.bias = false; c.skip = true; c.skip_bias = true; break;
            case 4: c.pt = DType::float32; c.silu = true; c.skip = true; c.skip_bias = true; break;
            case 5: c.offset = 1; c.skip = true; c.sum_out = true; c.silu = true; break;  // unaligned
          }
          cases.push_back(c);
        }
  for (const Case& c : cases) run_case(c, stream);
  edge_cases(stream);
  environment_cases(stream);
  CHECK_CUDA(cudaStreamDestroy(stream));
  if (g_fail) {
    std::printf("%d failures in %zu cases\n", g_fail, cases.size());
    return 1;
  }
  std::printf("OK: %zu cases\n", cases.size());
  return 0;
}
