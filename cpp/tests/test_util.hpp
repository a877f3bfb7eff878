// A tiny test kit for the C++ tests: checks, 16-bit conversions, data, and a
// double-precision reference of the forward and backward passes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "groupnorm/groupnorm.hpp"

namespace gt {

inline int& failures() {
  static int n = 0;
  return n;
}
inline int& checks() {
  static int n = 0;
  return n;
}

#define GT_CHECK(cond, ...)                                              \
  do {                                                                   \
    ++::gt::checks();                                                    \
    if (!(cond)) {                                                       \
      ++::gt::failures();                                                \
      std::fprintf(stderr, "%s:%d: CHECK FAILED: %s: ", __FILE__, __LINE__, #cond); \
      std::fprintf(stderr, __VA_ARGS__);                                 \
      std::fprintf(stderr, "\n");                                        \
    }                                                                    \
  } while (0)

// Prints a summary and returns the process exit code.
inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failed\n", name, checks(), failures());
  return failures() == 0 ? 0 : 1;
}

// The schedule override of the *_small_cache reruns (ctest sets
// GROUPNORM_CACHE_BYTES=4096) must take effect: a 2-thread forward whose sets
// of 64 KB fit any real cache runs as whole sets (pipelined or not), and as
// shared steps when the cache budget is 4 KB. Without this check those reruns
// would pass even if the override were never read.
inline void check_schedule_override() {
  groupnorm::Problem p;
  p.batch = 2; p.channels = 32; p.groups = 8; p.spatial = 4096;  // groups of 64 KB
  std::vector<float> x((std::size_t)p.numel()), y(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = (float)(i % 97) * 0.25f;
  groupnorm::Exec e;
  e.num_threads = 2;
  const groupnorm::Result r = groupnorm::forward(p, x.data(), (const float*)nullptr, (const float*)nullptr,
                                                 y.data(), nullptr, nullptr, e);
  GT_CHECK(r.ok(), "schedule probe: %s", r.message.c_str());
  const groupnorm::ScheduleInfo s = groupnorm::last_schedule();
  const char* env = std::getenv("GROUPNORM_CACHE_BYTES");
  const long long budget = env ? std::atoll(env) : 0;
  const bool small = budget > 0 && budget < (32 << 10);
  const bool whole = s.schedule == groupnorm::Schedule::pipelined || s.schedule == groupnorm::Schedule::whole_sets;
  GT_CHECK(small ? s.schedule == groupnorm::Schedule::shared_steps : whole,
           "GROUPNORM_CACHE_BYTES=%s: the probe ran %s", env ? env : "(unset)", groupnorm::schedule_name(s.schedule));
}

// ------------------------------------------------------------ 16-bit types
inline std::uint32_t f2u(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float u2f(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float bf16_to_float(std::uint16_t b) { return u2f((std::uint32_t)b << 16); }
inline std::uint16_t float_to_bf16(float f) {  // round to nearest even
  std::uint32_t u = f2u(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (std::uint16_t)((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return (std::uint16_t)(u >> 16);
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t)(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1f;
  const std::uint32_t mant = h & 0x3ff;
  if (exp == 0) {  // zero / subnormal: mant * 2^-24
    const float v = std::ldexp((float)mant, -24);
    return sign ? -v : v;
  }
  if (exp == 31) return u2f(sign | 0x7f800000u | (mant << 13));
  return u2f(sign | ((std::uint32_t)(exp - 15 + 127) << 23) | (mant << 13));
}
inline std::uint16_t float_to_half(float f) {  // round to nearest even
  const std::uint32_t u = f2u(f);
  const std::uint16_t sign = (std::uint16_t)((u >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return (std::uint16_t)(sign | 0x7e00);
  if (a >= 65520.0f) return (std::uint16_t)(sign | 0x7c00);
  if (a < 6.103515625e-05f) {  // subnormal: multiples of 2^-24
    const float q = std::nearbyint(a * 16777216.0f);  // default rounding: nearest even
    return (std::uint16_t)(sign | (std::uint16_t)q);
  }
  std::uint32_t m = f2u(a);
  m += 0xfffu + ((m >> 13) & 1u);  // round to 10 mantissa bits
  const int exp = (int)(m >> 23) - 127 + 15;
  return (std::uint16_t)(sign | (exp << 10) | ((m >> 13) & 0x3ff));
}

// ------------------------------------------------------------ typed buffers
using groupnorm::DType;

// A buffer of n elements of dtype t, read and written as double.
struct Buf {
  DType t = DType::float32;
  std::vector<unsigned char> bytes;
  Buf() = default;
  Buf(DType t_, std::int64_t n) : t(t_), bytes((std::size_t)n * groupnorm::dtype_size(t_)) {}
  std::int64_t size() const { return (std::int64_t)(bytes.size() / groupnorm::dtype_size(t)); }
  void* data() { return bytes.empty() ? nullptr : bytes.data(); }
  const void* data() const { return bytes.empty() ? nullptr : bytes.data(); }
  double get(std::int64_t i) const {
    const unsigned char* p = bytes.data();
    switch (t) {
      case DType::float32: { float v; std::memcpy(&v, p + 4 * i, 4); return v; }
      case DType::float64: { double v; std::memcpy(&v, p + 8 * i, 8); return v; }
      case DType::float16: { std::uint16_t v; std::memcpy(&v, p + 2 * i, 2); return half_to_float(v); }
      case DType::bfloat16: { std::uint16_t v; std::memcpy(&v, p + 2 * i, 2); return bf16_to_float(v); }
    }
    return 0;
  }
  void set(std::int64_t i, double x) {  // rounds to the dtype
    unsigned char* p = bytes.data();
    switch (t) {
      case DType::float32: { float v = (float)x; std::memcpy(p + 4 * i, &v, 4); break; }
      case DType::float64: { std::memcpy(p + 8 * i, &x, 8); break; }
      case DType::float16: { std::uint16_t v = float_to_half((float)x); std::memcpy(p + 2 * i, &v, 2); break; }
      case DType::bfloat16: { std::uint16_t v = float_to_bf16((float)x); std::memcpy(p + 2 * i, &v, 2); break; }
    }
  }
  void fill_bytes(unsigned char b) { std::memset(bytes.data(), b, bytes.size()); }
  bool same_bits(const Buf& o) const { return bytes == o.bytes; }
};

// Deterministic pseudo-random numbers (xorshift64*), uniform in [lo, hi).
struct Rng {
  std::uint64_t s;
  explicit Rng(std::uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  double uniform(double lo, double hi) {
    s ^= s >> 12; s ^= s << 25; s ^= s >> 27;
    const std::uint64_t r = s * 2685821657736338717ull;
    return lo + (hi - lo) * (double)(r >> 11) * (1.0 / 9007199254740992.0);
  }
};

inline Buf random_buf(DType t, std::int64_t n, Rng& rng, double lo, double hi) {
  Buf b(t, n);
  for (std::int64_t i = 0; i < n; ++i) b.set(i, rng.uniform(lo, hi));
  return b;
}

// ------------------------------------------------------------ reference
// Index of element (n, c, s) in either layout.
inline std::int64_t at(const groupnorm::Problem& p, std::int64_t n, std::int64_t c, std::int64_t s) {
  return p.channels_last ? (n * p.spatial + s) * p.channels + c : (n * p.channels + c) * p.spatial + s;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

struct RefForward {
  std::vector<double> input;  // x + skip + skip_bias rounded to the dtype (what is normalized)
  std::vector<double> y, mean, rstd;
};

// Optional arrays are null Buf pointers.
inline RefForward ref_forward(const groupnorm::Problem& p, const Buf& x, const Buf* w, const Buf* b,
                              const Buf* skip, const Buf* skip_bias) {
  RefForward r;
  const std::int64_t N = p.batch, C = p.channels, G = p.groups, S = p.spatial, Cg = C / G;
  const std::int64_t total = N * C * S;
  r.input.resize(total);
  r.y.resize(total);
  r.mean.resize(N * G);
  r.rstd.resize(N * G);
  Buf rounded(p.dtype, 1);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c)
      for (std::int64_t s = 0; s < S; ++s) {
        const std::int64_t i = at(p, n, c, s);
        double v = x.get(i);
        if (skip) {
          v += skip->get(i) + (skip_bias ? skip_bias->get(c) : 0.0);
          rounded.set(0, v);
          v = rounded.get(0);
        }
        r.input[i] = v;
      }
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < G; ++g) {
      double sum = 0;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (std::int64_t s = 0; s < S; ++s) sum += r.input[at(p, n, c, s)];
      const double m = sum / (double)(Cg * S);
      double sq = 0;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c)
        for (std::int64_t s = 0; s < S; ++s) {
          const double d = r.input[at(p, n, c, s)] - m;
          sq += d * d;
        }
      const double var = sq / (double)(Cg * S);
      const double rs = 1.0 / std::sqrt(var + p.eps);
      r.mean[n * G + g] = m;
      r.rstd[n * G + g] = rs;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double wc = w ? w->get(c) : 1.0, bc = b ? b->get(c) : 0.0;
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int64_t i = at(p, n, c, s);
          double z = (r.input[i] - m) * rs * wc + bc;
          if (p.activation == groupnorm::Activation::silu) z = z * sigmoid(z);
          r.y[i] = z;
        }
      }
    }
  return r;
}

struct RefBackward {
  std::vector<double> dx, dw, db;
};

// x is the forward's input (what was normalized); mean/rstd from the forward.
inline RefBackward ref_backward(const groupnorm::Problem& p, const Buf& dy, const std::vector<double>& x,
                                const std::vector<double>& mean, const std::vector<double>& rstd,
                                const Buf* w, const Buf* b) {
  RefBackward r;
  const std::int64_t N = p.batch, C = p.channels, G = p.groups, S = p.spatial, Cg = C / G;
  r.dx.assign(N * C * S, 0.0);
  r.dw.assign(C, 0.0);
  r.db.assign(C, 0.0);
  std::vector<double> dz(N * C * S), xhat(N * C * S);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < C; ++c) {
      const std::int64_t g = c / Cg;
      const double wc = w ? w->get(c) : 1.0, bc = b ? b->get(c) : 0.0;
      for (std::int64_t s = 0; s < S; ++s) {
        const std::int64_t i = at(p, n, c, s);
        const double xh = (x[i] - mean[n * G + g]) * rstd[n * G + g];
        double d = dy.get(i);
        if (p.activation == groupnorm::Activation::silu) {
          const double z = xh * wc + bc, sg = sigmoid(z);
          d *= sg * (1.0 + z * (1.0 - sg));
        }
        dz[i] = d;
        xhat[i] = xh;
        r.db[c] += d;
        r.dw[c] += d * xh;
      }
    }
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t g = 0; g < G; ++g) {
      double m1 = 0, m2 = 0;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double wc = w ? w->get(c) : 1.0;
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int64_t i = at(p, n, c, s);
          m1 += dz[i] * wc;
          m2 += dz[i] * wc * xhat[i];
        }
      }
      const double D = (double)(Cg * S);
      m1 /= D;
      m2 /= D;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const double wc = w ? w->get(c) : 1.0;
        for (std::int64_t s = 0; s < S; ++s) {
          const std::int64_t i = at(p, n, c, s);
          r.dx[i] = rstd[n * G + g] * (dz[i] * wc - m1 - xhat[i] * m2);
        }
      }
    }
  return r;
}

// Largest |got - want| relative to max(1, max |want|).
inline double max_rel_err(const Buf& got, const std::vector<double>& want) {
  double scale = 1, err = 0;
  for (double v : want) scale = std::fmax(scale, std::fabs(v));
  for (std::int64_t i = 0; i < (std::int64_t)want.size(); ++i) {
    const double e = std::fabs(got.get(i) - want[i]);
    err = std::isnan(e) ? INFINITY : std::fmax(err, e);
  }
  return err / scale;
}

// Tolerance for outputs stored in t (one rounding plus float accumulation).
inline double tol_for(DType t) {
  switch (t) {
    case DType::float64: return 1e-10;
    case DType::float32: return 2e-5;
    case DType::float16: return 2e-3;
    case DType::bfloat16: return 1.6e-2;
  }
  return 0;
}

inline std::string describe(const groupnorm::Problem& p) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "N=%lld C=%lld G=%lld S=%lld %s %s/%s act=%d eps=%g",
                (long long)p.batch, (long long)p.channels, (long long)p.groups, (long long)p.spatial,
                p.channels_last ? "channels_last" : "channels_first", groupnorm::dtype_name(p.dtype),
                groupnorm::dtype_name(p.param_dtype), (int)p.activation, p.eps);
  return buf;
}

}  // namespace gt
