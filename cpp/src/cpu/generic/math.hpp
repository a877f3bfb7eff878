// Part of the generic kernels (cpu/generic/): storage traits (loads and
// stores of each dtype as vectors of its accumulation type) and the vector
// operations the kernels use (Ops), built on the target's primitives
// (cpu/arch/).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "groupnorm/groupnorm.hpp"
#include "namespace.hpp"
#include GN_ARCH_HEADER

GN_KERNELS_BEGIN

// ---------------------------------------------------------------- storage traits
template <class T> struct Store;
template <> struct Store<float> {
  typedef float A;
  static vf load(const float* p) { vf v; std::memcpy(&v, p, 64); return v; }
  static vf load_n(const float* p, std::int64_t n) { return load_first<vf>(p, n); }
  static void store(float* p, vf v) { std::memcpy(p, &v, 64); }
  static void store_n(float* p, vf v, std::int64_t n) { store_first(p, v, n); }
  static vf round_trip(vf v) { return v; }
};
template <> struct Store<double> {
  typedef double A;
  static vd load(const double* p) { vd v; std::memcpy(&v, p, 64); return v; }
  static vd load_n(const double* p, std::int64_t n) { return load_first<vd>(p, n); }
  static void store(double* p, vd v) { std::memcpy(p, &v, 64); }
  static void store_n(double* p, vd v, std::int64_t n) { store_first(p, v, n); }
  static vd round_trip(vd v) { return v; }
};
template <> struct Store<half> {
  typedef float A;
  GN_INLINE static vf load(const half* p) { vu16 h; std::memcpy(&h, p, 32); return half_to_float(h); }
  GN_INLINE static vf load_n(const half* p, std::int64_t n) {
    return half_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  GN_INLINE static void store(half* p, vf v) { vu16 h = float_to_half(v); std::memcpy(p, &h, 32); }
  GN_INLINE static void store_n(half* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_half(v), n);
  }
  GN_INLINE static vf round_trip(vf v) { return half_to_float(float_to_half(v)); }
};
template <> struct Store<bfloat16> {
  typedef float A;
  GN_INLINE static vf load(const bfloat16* p) { vu16 h; std::memcpy(&h, p, 32); return bf16_to_float(h); }
  GN_INLINE static vf load_n(const bfloat16* p, std::int64_t n) {
    return bf16_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  GN_INLINE static void store(bfloat16* p, vf v) { vu16 h = float_to_bf16(v); std::memcpy(p, &h, 32); }
  GN_INLINE static void store_n(bfloat16* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_bf16(v), n);
  }
  GN_INLINE static vf round_trip(vf v) { return bf16_to_float(float_to_bf16(v)); }
};

template <class V, class A> GN_INLINE V splat(A a) { return a - V{}; }  // one broadcast (a - 0 keeps -0.0)

// fma_ (a * b + c with one rounding, hardware FMA where the target has it,
// std::fma elsewhere), max_ and times_pow2 come from the target, so the exp
// below rounds the same on every target.

template <class T> struct Ops {
  typedef typename Store<T>::A A;
  typedef typename VecOf<A>::type V;
  typedef typename VecOf<A>::mask M;
  static constexpr int L = VecOf<A>::lanes;

  GN_INLINE static V load(const T* p) { return Store<T>::load(p); }
  // first n (< L) elements, the rest zero
  GN_INLINE static V load_n(const T* p, std::int64_t n) { return Store<T>::load_n(p, n); }
  GN_INLINE static void store(T* p, V v) { Store<T>::store(p, v); }
  GN_INLINE static void store_n(T* p, V v, std::int64_t n) { Store<T>::store_n(p, v, n); }
  GN_INLINE static V load_acc(const A* p) { V v; std::memcpy(&v, p, 64); return v; }
  GN_INLINE static V load_acc_n(const A* p, std::int64_t n) { return Store<A>::load_n(p, n); }
  GN_INLINE static void store_acc(A* p, V v) { std::memcpy(p, &v, 64); }
  static M lanes_below(std::int64_t n) {
    M idx;
    for (int i = 0; i < L; ++i) idx[i] = i;
    return idx < (typename std::remove_reference<decltype(idx[0])>::type)n;
  }
  static V select(M m, V a, V b) { return m ? a : b; }
  // fixed-order horizontal sum (pairwise halves: lane i += lane i + w for
  // w = L/2, ..., 1), as whole-vector shuffles and adds (lanes past w carry
  // values no one reads)
  static double hsum(V v) {
    if constexpr (L == 16) {
      v = v + __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
      v = v + __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
      v = v + __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
      v = v + __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    } else {
      static_assert(L == 8, "lanes");
      v = v + __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7);
      v = v + __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3);
      v = v + __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1);
    }
    return (double)v[0];
  }

  // exp, sigmoid and silu from the same operations on every target. The
  // sigmoid needs exp(-|z|) only: arguments <= 0, clamped below where exp's
  // result leaves the normal range (NaN stays NaN: max_ keeps x unless x < lo).
  GN_INLINE static vf neg_abs(vf x) { return bitcast<vf>(bitcast<vu32>(x) | 0x80000000u); }  // -|x|
  GN_INLINE static vd neg_abs(vd x) { return bitcast<vd>(bitcast<vu64>(x) | (vu64{} + 0x8000000000000000ull)); }
  // exp(x) for x <= 0: x = n ln2 + r (two-part ln2), e^r from a degree-6
  // polynomial fitted on |r| <= ln2/2 (0.52 ulp), times 2^n from the exponent bits
  static GN_INLINE vf exp_neg(vf x) {
    x = max_(splat<vf>(-87.0f), x);
    const vf magic = splat<vf>(12582912.0f);  // 1.5 * 2^23: rounds to integer
    const vf t = fma_(x, splat<vf>(1.44269504088896341f), magic);
    const vf n = t - magic;
    const vf r = fma_(n, splat<vf>(-1.42860682030941723e-06f), fma_(n, splat<vf>(-0.693145751953125f), x));
    vf p = splat<vf>(0.0013814606936648488f);
    p = fma_(p, r, splat<vf>(0.0083687175065279f));
    p = fma_(p, r, splat<vf>(0.04166838899254799f));
    p = fma_(p, r, splat<vf>(0.1666652113199234f));
    p = fma_(p, r, splat<vf>(0.4999999403953552f));
    p = fma_(p, r, splat<vf>(1.0f));
    p = fma_(p, r, splat<vf>(1.0f));
    // p * 2^n is exact and normal here (n >= -126, and p > 1 when n = -126)
    return times_pow2(p, n, t, magic);
  }
  static GN_INLINE vd exp_neg(vd x) {
    x = max_(splat<vd>(-708.0), x);
    const vd magic = splat<vd>(6755399441055744.0);  // 1.5 * 2^52
    const vd t = fma_(x, splat<vd>(1.4426950408889634074), magic);
    const vd n = t - magic;
    const vd r = fma_(n, splat<vd>(-1.90821492927058770002e-10), fma_(n, splat<vd>(-6.93147180369123816490e-01), x));
    vd p = splat<vd>(1.0 / 479001600.0);
    const double c[] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                        1.0 / 720.0,      1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5, 1.0, 1.0};
    for (double ci : c) p = fma_(p, r, splat<vd>(ci));
    return times_pow2(p, n, t, magic);
  }
  // sigmoid(z) and 1 - sigmoid(z), from e = exp(-|z|) and r = 1 / (1 + e):
  // r and e*r, which is which by z's sign (neither loses bits to 1 - s)
  static GN_INLINE void sigmoid2(V z, V& s, V& sc) {
    const V e = exp_neg(neg_abs(z));
    const V r = 1 / (1 + e), er = e * r;
    const auto pos = z >= 0;
    s = pos ? r : er;
    sc = pos ? er : r;
  }
  static GN_INLINE V silu(V z) {
    const V e = exp_neg(neg_abs(z));
    const V r = z / (1 + e);
    return z >= 0 ? r : e * r;
  }
  // d silu / dz = s (1 + z (1 - s))
  static GN_INLINE V dsilu(V z) {
    V s, sc;
    sigmoid2(z, s, sc);
    return s * (1 + z * sc);
  }
};

GN_KERNELS_END
