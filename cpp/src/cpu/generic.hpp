// The CPU kernels, written once over 64-byte vectors (GCC/Clang vector
// extensions) and compiled once per instruction set (isa_*.cpp define
// GN_ISA_NS and include this file). Lane order, accumulation order and the
// arithmetic (no FMA contraction: -ffp-contract=off) are the same on every
// instruction set, so every path gives bitwise the same results.
//
// Moments use a corrected two-pass scheme per tile: pass 1 sums the tile to get
// a provisional mean m; pass 2 sums d = x - m and d*d; then
//   mean = m + sum(d)/n,  M2 = sum(d*d) - sum(d)^2/n
// which is exact to rounding whatever the offset of the data. Tiles then merge
// with Chan's formula in a fixed order (scheduler).
#ifndef GN_ISA_NS
#error "define GN_ISA_NS before including generic.hpp"
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {
namespace {

typedef float vf __attribute__((vector_size(64)));
typedef double vd __attribute__((vector_size(64)));
typedef std::int32_t vi32 __attribute__((vector_size(64)));
typedef std::uint32_t vu32 __attribute__((vector_size(64)));
typedef std::int64_t vi64 __attribute__((vector_size(64)));
typedef std::uint16_t vu16 __attribute__((vector_size(32)));

template <class A> struct VecOf;
template <> struct VecOf<float> { typedef vf type; typedef vi32 mask; static constexpr int lanes = 16; };
template <> struct VecOf<double> { typedef vd type; typedef vi64 mask; static constexpr int lanes = 8; };

template <class To, class From> inline To bitcast(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "size");
  To t;
  std::memcpy(&t, &f, sizeof(To));
  return t;
}

// ---------------------------------------------------------------- 16-bit formats
inline vf half_to_float(vu16 h16) {
  const vu32 h = __builtin_convertvector(h16, vu32);
  const vu32 sign = (h & 0x8000u) << 16;
  const vu32 em = h & 0x7fffu;
  // exponent/mantissa moved into place, then rescaled by 2^112 (handles subnormals exactly)
  const vf scaled = bitcast<vf>(em << 13) * 0x1p112f;
  const vu32 special = (em << 13) | 0x7f800000u;  // inf / nan
  const vu32 bits = (em >= 0x7c00u) ? special : bitcast<vu32>(scaled);
  return bitcast<vf>(bits | sign);
}

inline vu16 float_to_half(vf f) {  // round to nearest even
  const vu32 u = bitcast<vu32>(f);
  const vu32 sign = (u >> 16) & 0x8000u;
  const vu32 a = u & 0x7fffffffu;
  const vu32 nan = 0x7e00u | ((a >> 13) & 0x3ffu);
  const vu32 big = (a > 0x7f800000u) ? nan : vu32{} + 0x7c00u;
  // subnormal results: let the FPU round by adding 0.5 (its ulp is 2^-24)
  const vu32 sub = bitcast<vu32>(bitcast<vf>(a) + 0.5f) - 0x3f000000u;
  const vu32 odd = (a >> 13) & 1u;
  const vu32 norm = (a - 0x38000000u + 0xfffu + odd) >> 13;
  vu32 r = (a >= 0x477ff000u) ? big : ((a < 0x38800000u) ? sub : norm);
  return __builtin_convertvector(r | sign, vu16);
}

inline vf bf16_to_float(vu16 h16) { return bitcast<vf>(__builtin_convertvector(h16, vu32) << 16); }

inline vu16 float_to_bf16(vf f) {  // round to nearest even, NaN stays NaN (quiet)
  const vu32 u = bitcast<vu32>(f);
  const vu32 is_nan = (u & 0x7fffffffu) > 0x7f800000u ? vu32{} + 1u : vu32{};
  const vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu32 quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector(is_nan != 0u ? quiet : rounded, vu16);
}

// ---------------------------------------------------------------- storage traits
template <class T> struct Store;
template <> struct Store<float> {
  typedef float A;
  static vf load(const float* p) { vf v; std::memcpy(&v, p, 64); return v; }
  static void store(float* p, vf v) { std::memcpy(p, &v, 64); }
  static vf round_trip(vf v) { return v; }
  static float to_acc(float v) { return v; }
};
template <> struct Store<double> {
  typedef double A;
  static vd load(const double* p) { vd v; std::memcpy(&v, p, 64); return v; }
  static void store(double* p, vd v) { std::memcpy(p, &v, 64); }
  static vd round_trip(vd v) { return v; }
};
template <> struct Store<half> {
  typedef float A;
  static vf load(const half* p) { vu16 h; std::memcpy(&h, p, 32); return half_to_float(h); }
  static void store(half* p, vf v) { vu16 h = float_to_half(v); std::memcpy(p, &h, 32); }
  static vf round_trip(vf v) { return half_to_float(float_to_half(v)); }
};
template <> struct Store<bfloat16> {
  typedef float A;
  static vf load(const bfloat16* p) { vu16 h; std::memcpy(&h, p, 32); return bf16_to_float(h); }
  static void store(bfloat16* p, vf v) { vu16 h = float_to_bf16(v); std::memcpy(p, &h, 32); }
  static vf round_trip(vf v) { return bf16_to_float(float_to_bf16(v)); }
};

template <class T> struct Ops {
  typedef typename Store<T>::A A;
  typedef typename VecOf<A>::type V;
  typedef typename VecOf<A>::mask M;
  static constexpr int L = VecOf<A>::lanes;

  static V splat(A a) { return V{} + a; }
  static V load(const T* p) { return Store<T>::load(p); }
  // first n (< L) elements, the rest zero
  static V load_n(const T* p, std::int64_t n) {
    T buf[L];
    std::memset(buf, 0, sizeof(buf));
    std::memcpy(buf, p, sizeof(T) * n);
    return Store<T>::load(buf);
  }
  static void store(T* p, V v) { Store<T>::store(p, v); }
  static void store_n(T* p, V v, std::int64_t n) {
    T buf[L];
    Store<T>::store(buf, v);
    std::memcpy(p, buf, sizeof(T) * n);
  }
  static V load_acc(const A* p) { V v; std::memcpy(&v, p, 64); return v; }
  static V load_acc_n(const A* p, std::int64_t n) {
    A buf[L] = {};
    std::memcpy(buf, p, sizeof(A) * n);
    return load_acc(buf);
  }
  static void store_acc(A* p, V v) { std::memcpy(p, &v, 64); }
  static M lanes_below(std::int64_t n) {
    M idx;
    for (int i = 0; i < L; ++i) idx[i] = i;
    return idx < (typename std::remove_reference<decltype(idx[0])>::type)n;
  }
  static V select(M m, V a, V b) { return m ? a : b; }
  // fixed-order horizontal sum (pairwise halves)
  static double hsum(V v) {
    A t[L];
    std::memcpy(t, &v, 64);
    for (int w = L / 2; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) t[i] = t[i] + t[i + w];
    return (double)t[0];
  }

  // exp, sigmoid and silu from the same operations on every ISA
  static vf exp_(vf x) {
    x = x > 88.0f ? vf{} + 88.0f : x;
    x = x < -87.0f ? vf{} - 87.0f : x;
    const vf magic = vf{} + 12582912.0f;  // 1.5 * 2^23: rounds to integer
    const vf t = x * 1.44269504088896341f + magic;
    const vf n = t - magic;
    const vf r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-06f;
    vf p = vf{} + (1.0f / 5040.0f);
    p = p * r + (1.0f / 720.0f);
    p = p * r + (1.0f / 120.0f);
    p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vi32 e = (bitcast<vi32>(t) - bitcast<vi32>(magic) + 127) << 23;
    return p * bitcast<vf>(e);
  }
  static vd exp_(vd x) {
    x = x > 709.0 ? vd{} + 709.0 : x;
    x = x < -708.0 ? vd{} - 708.0 : x;
    const vd magic = vd{} + 6755399441055744.0;  // 1.5 * 2^52
    const vd t = x * 1.4426950408889634074 + magic;
    const vd n = t - magic;
    const vd r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;
    vd p = vd{} + (1.0 / 479001600.0);
    const double c[] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                        1.0 / 720.0,      1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5, 1.0, 1.0};
    for (double ci : c) p = p * r + ci;
    const vi64 e = (bitcast<vi64>(t) - bitcast<vi64>(magic) + 1023) << 52;
    return p * bitcast<vd>(e);
  }
  static V sigmoid(V z) { return 1 / (1 + exp_(-z)); }
  static V silu(V z) { return z * sigmoid(z); }
  // d silu / dz
  static V dsilu(V z) {
    const V s = sigmoid(z);
    return s * (1 + z * (1 - s));
  }
};

// x, or x + skip (+ skip_bias) rounded to T as if it had been stored
template <class T>
inline typename Ops<T>::V load_input(const T* x, const T* skip, typename Ops<T>::A skip_bias, bool has_skip,
                                     std::int64_t n) {
  typedef Ops<T> O;
  const bool full = n >= O::L;
  typename O::V v = full ? O::load(x) : O::load_n(x, n);
  if (has_skip) {
    v = v + (full ? O::load(skip) : O::load_n(skip, n));
    v = v + skip_bias;
    v = Store<T>::round_trip(v);
  }
  return v;
}

template <class T>
inline typename Ops<T>::V load_input_cl(const T* x, const T* skip, const typename Ops<T>::A* skip_bias,
                                        std::int64_t n) {
  typedef Ops<T> O;
  const bool full = n >= O::L;
  typename O::V v = full ? O::load(x) : O::load_n(x, n);
  if (skip) {
    v = v + (full ? O::load(skip) : O::load_n(skip, n));
    if (skip_bias) v = v + (full ? O::load_acc(skip_bias) : O::load_acc_n(skip_bias, n));
    v = Store<T>::round_trip(v);
  }
  return v;
}

template <class T> inline const T* at(const void* p, std::int64_t off) {
  return p ? static_cast<const T*>(p) + off : nullptr;
}
template <class T> inline T* at(void* p, std::int64_t off) { return p ? static_cast<T*>(p) + off : nullptr; }

// ================================================================ channels-first
// Tile rows are channels, each row `cols` contiguous elements.
template <class T> void cf_moments(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const bool has_skip = t.skip != nullptr;
  const double count = (double)t.rows * (double)t.cols;
  // pass 1: provisional mean
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const T* x = at<T>(t.x, r * t.stride);
    const T* k = at<T>(t.skip, r * t.stride);
    const A b = sb ? sb[r] : A(0);
    std::int64_t i = 0;
    for (; i + 4 * L <= t.cols; i += 4 * L) {
      s0 += load_input<T>(x + i, k ? k + i : k, b, has_skip, L);
      s1 += load_input<T>(x + i + L, k ? k + i + L : k, b, has_skip, L);
      s2 += load_input<T>(x + i + 2 * L, k ? k + i + 2 * L : k, b, has_skip, L);
      s3 += load_input<T>(x + i + 3 * L, k ? k + i + 3 * L : k, b, has_skip, L);
    }
    for (; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      V v = load_input<T>(x + i, k ? k + i : k, b, has_skip, n);
      if (n < L) v = O::select(O::lanes_below(n), v, V{});
      s0 += v;
    }
  }
  const A m = (A)(O::hsum((s0 + s1) + (s2 + s3)) / count);
  // pass 2: deviations from m
  V d0 = {}, d1 = {}, q0 = {}, q1 = {};
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const T* x = at<T>(t.x, r * t.stride);
    const T* k = at<T>(t.skip, r * t.stride);
    const A b = sb ? sb[r] : A(0);
    std::int64_t i = 0;
    for (; i + 2 * L <= t.cols; i += 2 * L) {
      const V a0 = load_input<T>(x + i, k ? k + i : k, b, has_skip, L) - m;
      const V a1 = load_input<T>(x + i + L, k ? k + i + L : k, b, has_skip, L) - m;
      d0 += a0; q0 += a0 * a0;
      d1 += a1; q1 += a1 * a1;
    }
    for (; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      V a0 = load_input<T>(x + i, k ? k + i : k, b, has_skip, n) - m;
      if (n < L) a0 = O::select(O::lanes_below(n), a0, V{});
      d0 += a0; q0 += a0 * a0;
    }
  }
  const double sd = O::hsum(d0 + d1), sq = O::hsum(q0 + q1);
  Moments mo;
  mo.n = count;
  mo.mean = (double)m + sd / count;
  mo.m2 = sq - sd * sd / count;
  if (!(mo.m2 >= 0)) mo.m2 = mo.m2 < 0 ? 0 : mo.m2;  // keep NaN, clamp rounding below 0
  out[0] = mo;
}

template <class T> void cf_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const bool has_skip = t.skip != nullptr;
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const T* x = at<T>(t.x, r * t.stride);
    const T* k = at<T>(t.skip, r * t.stride);
    T* y = at<T>(t.y, r * t.stride);
    T* so = at<T>(t.sum_out, r * t.stride);
    const A b = sb ? sb[r] : A(0);
    const V mv = O::splat(mean[r]), av = O::splat(scale[r]), bv = O::splat(shift[r]);
    for (std::int64_t i = 0; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      const V v = load_input<T>(x + i, k ? k + i : k, b, has_skip, n);
      V z = (v - mv) * av + bv;
      if (t.silu) z = O::silu(z);
      if (n == L) {
        if (so) O::store(so + i, v);
        O::store(y + i, z);
      } else {
        if (so) O::store_n(so + i, v, n);
        O::store_n(y + i, z, n);
      }
    }
  }
}

template <class T> void cf_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const T* x = at<T>(t.x, r * t.stride);
    const T* g = at<T>(t.dy, r * t.stride);
    const V mv = O::splat(mean[r]), av = O::splat(scale[r]), bv = O::splat(shift[r]);
    V b0 = {}, b1 = {}, s0 = {}, s1 = {};
    std::int64_t i = 0;
    for (; i + 2 * L <= t.cols; i += 2 * L) {
      const V xc0 = O::load(x + i) - mv, xc1 = O::load(x + i + L) - mv;
      V g0 = O::load(g + i), g1 = O::load(g + i + L);
      if (t.silu) {
        g0 = g0 * O::dsilu(xc0 * av + bv);
        g1 = g1 * O::dsilu(xc1 * av + bv);
      }
      b0 += g0; s0 += g0 * xc0;
      b1 += g1; s1 += g1 * xc1;
    }
    for (; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);  // zero beyond n
      if (t.silu) gg = gg * O::dsilu(xc * av + bv);
      if (n < L) gg = O::select(O::lanes_below(n), gg, V{});
      b0 += gg; s0 += gg * xc;
    }
    db[r] += O::hsum(b0 + b1);
    ds[r] += O::hsum(s0 + s1);
  }
}

template <class T> void cf_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* c2 = static_cast<const A*>(t.c2);
  const A* c3 = static_cast<const A*>(t.c3);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const T* x = at<T>(t.x, r * t.stride);
    const T* g = at<T>(t.dy, r * t.stride);
    T* dx = at<T>(t.dx, r * t.stride);
    const V mv = O::splat(mean[r]), av = O::splat(scale[r]), bv = O::splat(shift[r]);
    const V c2v = O::splat(c2[r]), c3v = O::splat(c3[r]);
    for (std::int64_t i = 0; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      const bool full = n == L;
      const V xc = (full ? O::load(x + i) : O::load_n(x + i, n)) - mv;
      V gg = full ? O::load(g + i) : O::load_n(g + i, n);
      if (t.silu) gg = gg * O::dsilu(xc * av + bv);
      const V out = (av * gg + c2v * xc) + c3v;
      if (full) O::store(dx + i, out); else O::store_n(dx + i, out, n);
    }
  }
}

// ================================================================ channels-last
// Tile rows are spatial positions, columns are channels (whole groups).
// Per-channel sums run down the rows, four rows per visit of the accumulator.
template <class T> void cl_moments(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  A* acc = static_cast<A*>(t.scratch);   // w
  A* acc2 = acc + w;                     // w
  A* shift = acc2 + w;                   // w
  const A* sb = static_cast<const A*>(t.skip_bias);
  const T* skip = static_cast<const T*>(t.skip);
  const T* xb = static_cast<const T*>(t.x);
  std::memset(acc, 0, sizeof(A) * w);
  std::int64_t r = 0;
  for (; r + 4 <= t.rows; r += 4) {
    const T* x0 = xb + r * t.stride;
    const T* k0 = skip ? skip + r * t.stride : nullptr;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      const A* sbj = sb ? sb + j : nullptr;
      V a = n == L ? O::load_acc(acc + j) : O::load_acc_n(acc + j, n);
      for (int q = 0; q < 4; ++q)
        a += load_input_cl<T>(x0 + q * t.stride + j, k0 ? k0 + q * t.stride + j : k0, sbj, n);
      if (n == L) O::store_acc(acc + j, a); else { A buf[L]; O::store_acc(buf, a); std::memcpy(acc + j, buf, sizeof(A) * n); }
    }
  }
  for (; r < t.rows; ++r) {
    const T* x0 = xb + r * t.stride;
    const T* k0 = skip ? skip + r * t.stride : nullptr;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      V a = n == L ? O::load_acc(acc + j) : O::load_acc_n(acc + j, n);
      a += load_input_cl<T>(x0 + j, k0 ? k0 + j : k0, sb ? sb + j : nullptr, n);
      if (n == L) O::store_acc(acc + j, a); else { A buf[L]; O::store_acc(buf, a); std::memcpy(acc + j, buf, sizeof(A) * n); }
    }
  }
  const std::int64_t gw = t.group_width, ng = w / gw;
  const double count = (double)t.rows * (double)gw;
  for (std::int64_t g = 0; g < ng; ++g) {
    A s = 0;
    for (std::int64_t c = 0; c < gw; ++c) s += acc[g * gw + c];
    const A m = (A)((double)s / count);
    for (std::int64_t c = 0; c < gw; ++c) shift[g * gw + c] = m;
  }
  std::memset(acc, 0, sizeof(A) * 2 * w);
  for (r = 0; r < t.rows; ++r) {
    const T* x0 = xb + r * t.stride;
    const T* k0 = skip ? skip + r * t.stride : nullptr;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      if (n == L) {
        const V d = load_input_cl<T>(x0 + j, k0 ? k0 + j : k0, sb ? sb + j : nullptr, L) - O::load_acc(shift + j);
        O::store_acc(acc + j, O::load_acc(acc + j) + d);
        O::store_acc(acc2 + j, O::load_acc(acc2 + j) + d * d);
      } else {
        V d = load_input_cl<T>(x0 + j, k0 ? k0 + j : k0, sb ? sb + j : nullptr, n) - O::load_acc_n(shift + j, n);
        d = O::select(O::lanes_below(n), d, V{});
        A b1[L], b2[L];
        O::store_acc(b1, O::load_acc_n(acc + j, n) + d);
        O::store_acc(b2, O::load_acc_n(acc2 + j, n) + d * d);
        std::memcpy(acc + j, b1, sizeof(A) * n);
        std::memcpy(acc2 + j, b2, sizeof(A) * n);
      }
    }
  }
  for (std::int64_t g = 0; g < ng; ++g) {
    double sd = 0, sq = 0;
    for (std::int64_t c = 0; c < gw; ++c) {
      sd += (double)acc[g * gw + c];
      sq += (double)acc2[g * gw + c];
    }
    Moments mo;
    mo.n = count;
    mo.mean = (double)shift[g * gw] + sd / count;
    mo.m2 = sq - sd * sd / count;
    if (mo.m2 < 0) mo.m2 = 0;
    out[g] = mo;
  }
}

template <class T> void cl_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const T* skip = static_cast<const T*>(t.skip);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const std::int64_t off = r * t.stride;
    const T* x = static_cast<const T*>(t.x) + off;
    const T* k = skip ? skip + off : nullptr;
    T* y = static_cast<T*>(t.y) + off;
    T* so = at<T>(t.sum_out, off);
    std::int64_t j = 0;
    for (; j + L <= w; j += L) {
      const V v = load_input_cl<T>(x + j, k ? k + j : k, sb ? sb + j : nullptr, L);
      V z = (v - O::load_acc(mean + j)) * O::load_acc(scale + j) + O::load_acc(shift + j);
      if (t.silu) z = O::silu(z);
      if (so) O::store(so + j, v);
      O::store(y + j, z);
    }
    if (j < w) {
      const std::int64_t n = w - j;
      const V v = load_input_cl<T>(x + j, k ? k + j : k, sb ? sb + j : nullptr, n);
      V z = (v - O::load_acc_n(mean + j, n)) * O::load_acc_n(scale + j, n) + O::load_acc_n(shift + j, n);
      if (t.silu) z = O::silu(z);
      if (so) O::store_n(so + j, v, n);
      O::store_n(y + j, z, n);
    }
  }
}

template <class T> void cl_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  A* ab = static_cast<A*>(t.scratch);
  A* as = ab + w;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  std::memset(ab, 0, sizeof(A) * 2 * w);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const std::int64_t off = r * t.stride;
    const T* x = static_cast<const T*>(t.x) + off;
    const T* g = static_cast<const T*>(t.dy) + off;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      const bool full = n == L;
      const V xc = (full ? O::load(x + j) : O::load_n(x + j, n)) - (full ? O::load_acc(mean + j) : O::load_acc_n(mean + j, n));
      V gg = full ? O::load(g + j) : O::load_n(g + j, n);
      if (t.silu) {
        const V z = xc * (full ? O::load_acc(scale + j) : O::load_acc_n(scale + j, n)) +
                    (full ? O::load_acc(shift + j) : O::load_acc_n(shift + j, n));
        gg = gg * O::dsilu(z);
      }
      if (full) {
        O::store_acc(ab + j, O::load_acc(ab + j) + gg);
        O::store_acc(as + j, O::load_acc(as + j) + gg * xc);
      } else {
        gg = O::select(O::lanes_below(n), gg, V{});
        A b1[L], b2[L];
        O::store_acc(b1, O::load_acc_n(ab + j, n) + gg);
        O::store_acc(b2, O::load_acc_n(as + j, n) + gg * xc);
        std::memcpy(ab + j, b1, sizeof(A) * n);
        std::memcpy(as + j, b2, sizeof(A) * n);
      }
    }
  }
  for (std::int64_t j = 0; j < w; ++j) {
    db[j] += (double)ab[j];
    ds[j] += (double)as[j];
  }
}

template <class T> void cl_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* c2 = static_cast<const A*>(t.c2);
  const A* c3 = static_cast<const A*>(t.c3);
  for (std::int64_t r = 0; r < t.rows; ++r) {
    const std::int64_t off = r * t.stride;
    const T* x = static_cast<const T*>(t.x) + off;
    const T* g = static_cast<const T*>(t.dy) + off;
    T* dx = static_cast<T*>(t.dx) + off;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      const bool full = n == L;
      auto P = [&](const A* p) { return full ? O::load_acc(p + j) : O::load_acc_n(p + j, n); };
      const V xc = (full ? O::load(x + j) : O::load_n(x + j, n)) - P(mean);
      const V av = P(scale);
      V gg = full ? O::load(g + j) : O::load_n(g + j, n);
      if (t.silu) gg = gg * O::dsilu(xc * av + P(shift));
      const V out = (av * gg + P(c2) * xc) + P(c3);
      if (full) O::store(dx + j, out); else O::store_n(dx + j, out, n);
    }
  }
}

// ================================================================ table
template <class T> void moments(const Tile& t, Moments* out) {
  if (t.channels_last) cl_moments<T>(t, out); else cf_moments<T>(t, out);
}
template <class T> void apply(const Tile& t) {
  if (t.channels_last) cl_apply<T>(t); else cf_apply<T>(t);
}
template <class T> void backward_sums(const Tile& t, double* db, double* ds) {
  if (t.channels_last) cl_backward_sums<T>(t, db, ds); else cf_backward_sums<T>(t, db, ds);
}
template <class T> void backward_apply(const Tile& t) {
  if (t.channels_last) cl_backward_apply<T>(t); else cf_backward_apply<T>(t);
}
template <class T> constexpr KernelSet kernel_set() {
  return KernelSet{&moments<T>, &apply<T>, &backward_sums<T>, &backward_apply<T>};
}

}  // namespace

const IsaKernels& kernels() {
  static const IsaKernels k{GN_ISA_NAME,
                            {kernel_set<float>(), kernel_set<double>(), kernel_set<half>(), kernel_set<bfloat16>()}};
  return k;
}

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
