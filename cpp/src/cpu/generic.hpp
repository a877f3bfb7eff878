// The CPU kernels, written once over 64-byte vectors (GCC/Clang vector
// extensions) and compiled once per instruction set (isa_*.cpp define
// GN_ISA_NS and include this file). Lane order, accumulation order and the
// arithmetic (no FMA contraction: -ffp-contract=off) are the same on every
// instruction set, so every path gives bitwise the same results.
//
// Moments of a tile come from one pass of shifted sums: with a shift K (the
// tile's first element, or per group of a channels-last tile), sum d = x - K
// and d*d; then
//   mean = K + sum(d)/n,  M2 = sum(d*d) - sum(d)^2/n.
// When K turns out far from the mean (shift_ok() fails: the cancellation in M2
// would cost more than 6 bits) the tile is redone with the exact two-pass sums
// (its own mean first, then deviations from it). Tiles then merge with Chan's
// formula in a fixed order (schedule.cpp).
#ifndef GN_ISA_NS
#error "define GN_ISA_NS before including generic.hpp"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"

#if defined(__SSE2__)
#include <immintrin.h>
#endif
#if defined(GN_ISA_NEON_F16)
#include <arm_neon.h>
#endif

#define GN_INLINE inline __attribute__((always_inline))

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
// IEEE binary16 <-> float. With F16C (AVX2 and AVX-512 paths) and on the NEON
// path (FCVTL/FCVTN, in every ARMv8-A CPU) the hardware converts; elsewhere the
// bit manipulation below does. All are exact one way and round to nearest even
// the other (NaNs keep their top payload bits, quieted), so every path gives
// the same bits.
inline vf half_to_float_bits(vu16 h16);
inline vu16 float_to_half_bits(vf f);
inline vf half_to_float(vu16 h16) {
#if defined(__AVX512F__)
  __m256i h;
  std::memcpy(&h, &h16, 32);
  return bitcast<vf>(_mm512_cvtph_ps(h));
#elif defined(__F16C__)
  __m128i lo, hi;
  std::memcpy(&lo, &h16, 16);
  std::memcpy(&hi, reinterpret_cast<const char*>(&h16) + 16, 16);
  const __m256 a = _mm256_cvtph_ps(lo), b = _mm256_cvtph_ps(hi);
  vf r;
  std::memcpy(&r, &a, 32);
  std::memcpy(reinterpret_cast<char*>(&r) + 32, &b, 32);
  return r;
#elif defined(GN_ISA_NEON_F16)
  vf r;
  for (int q = 0; q < 4; ++q) {
    uint16x4_t u;
    std::memcpy(&u, reinterpret_cast<const char*>(&h16) + 8 * q, 8);
    const float32x4_t f = vcvt_f32_f16(vreinterpret_f16_u16(u));
    std::memcpy(reinterpret_cast<char*>(&r) + 16 * q, &f, 16);
  }
  return r;
#else
  return half_to_float_bits(h16);
#endif
}
inline vu16 float_to_half(vf f) {
#if defined(__AVX512F__)
  const __m256i h = _mm512_cvtps_ph(bitcast<__m512>(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return bitcast<vu16>(h);
#elif defined(__F16C__)
  __m256 a, b;
  std::memcpy(&a, &f, 32);
  std::memcpy(&b, reinterpret_cast<const char*>(&f) + 32, 32);
  const __m128i lo = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m128i hi = _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vu16 r;
  std::memcpy(&r, &lo, 16);
  std::memcpy(reinterpret_cast<char*>(&r) + 16, &hi, 16);
  return r;
#elif defined(GN_ISA_NEON_F16)
  vu16 r;  // FCVTN rounds as FPCR says: to nearest even, the default
  for (int q = 0; q < 4; ++q) {
    float32x4_t v;
    std::memcpy(&v, reinterpret_cast<const char*>(&f) + 16 * q, 16);
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    std::memcpy(reinterpret_cast<char*>(&r) + 8 * q, &h, 8);
  }
  return r;
#else
  return float_to_half_bits(f);
#endif
}

inline vf half_to_float_bits(vu16 h16) {
  const vu32 h = __builtin_convertvector(h16, vu32);
  const vu32 sign = (h & 0x8000u) << 16;
  const vu32 em = h & 0x7fffu;
  // exponent/mantissa moved into place, then rescaled by 2^112 (handles subnormals exactly)
  const vf scaled = bitcast<vf>(em << 13) * 0x1p112f;
  const vu32 special = (em << 13) | 0x7f800000u;  // inf / nan
  const vu32 bits = (em >= 0x7c00u) ? special : bitcast<vu32>(scaled);
  return bitcast<vf>(bits | sign);
}

inline vu16 float_to_half_bits(vf f) {  // round to nearest even
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

// bfloat16 <-> float: the same integer operations on every path; AVX-512 spells
// them with its widening/narrowing moves (the generic vector code compiles to
// several shuffles per vector there).
inline vf bf16_to_float(vu16 h16) {
#if defined(__AVX512F__)
  return bitcast<vf>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bitcast<__m256i>(h16)), 16));
#else
  return bitcast<vf>(__builtin_convertvector(h16, vu32) << 16);
#endif
}

inline vu16 float_to_bf16(vf f) {  // round to nearest even, NaN stays NaN (quiet)
#if defined(__AVX512F__)
  const __m512i u = bitcast<__m512i>(f);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  const __m512i r = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
  return bitcast<vu16>(_mm512_cvtepi32_epi16(r));
#else
  const vu32 u = bitcast<vu32>(f);
  const vu32 is_nan = (u & 0x7fffffffu) > 0x7f800000u ? vu32{} + 1u : vu32{};
  const vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu32 quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector(is_nan != 0u ? quiet : rounded, vu16);
#endif
}

// ---------------------------------------------------------------- partial vectors
// The first n < lanes elements, the rest zero (loads) or untouched (stores):
// masked instructions where the ISA has them, a copy through a buffer elsewhere.
template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) {
  constexpr int lanes = sizeof(Vec) / sizeof(E);
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 4) {
    __m512 v = _mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
    return bitcast<Vec>(v);
  }
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 8) {
    __m512d v = _mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p);
    return bitcast<Vec>(v);
  }
  if constexpr (sizeof(Vec) == 32 && sizeof(E) == 2) {
    __m256i v = _mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), p);
    return bitcast<Vec>(v);
  }
#endif
  E buf[lanes];
  std::memset(buf, 0, sizeof(buf));
  std::memcpy(buf, p, sizeof(E) * n);
  Vec v;
  std::memcpy(&v, buf, sizeof(v));
  return v;
}

template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 4) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), bitcast<__m512>(v));
    return;
  }
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 8) {
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), bitcast<__m512d>(v));
    return;
  }
  if constexpr (sizeof(Vec) == 32 && sizeof(E) == 2) {
    _mm256_mask_storeu_epi16(p, (__mmask16)((1u << n) - 1), bitcast<__m256i>(v));
    return;
  }
#endif
  std::memcpy(p, &v, sizeof(E) * n);
}

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
  static vf load(const half* p) { vu16 h; std::memcpy(&h, p, 32); return half_to_float(h); }
  static vf load_n(const half* p, std::int64_t n) {
    return half_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  static void store(half* p, vf v) { vu16 h = float_to_half(v); std::memcpy(p, &h, 32); }
  static void store_n(half* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_half(v), n);
  }
  static vf round_trip(vf v) { return half_to_float(float_to_half(v)); }
};
template <> struct Store<bfloat16> {
  typedef float A;
  static vf load(const bfloat16* p) { vu16 h; std::memcpy(&h, p, 32); return bf16_to_float(h); }
  static vf load_n(const bfloat16* p, std::int64_t n) {
    return bf16_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  static void store(bfloat16* p, vf v) { vu16 h = float_to_bf16(v); std::memcpy(p, &h, 32); }
  static void store_n(bfloat16* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_bf16(v), n);
  }
  static vf round_trip(vf v) { return bf16_to_float(float_to_bf16(v)); }
};

template <class V, class A> GN_INLINE V splat(A a) { return a - V{}; }  // one broadcast (a - 0 keeps -0.0)

// a * b + c with one rounding, on every ISA (hardware FMA where the ISA has it,
// std::fma on the portable path), so the exp below rounds the same everywhere.
GN_INLINE vf fma_(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return bitcast<vf>(_mm512_fmadd_ps(bitcast<__m512>(a), bitcast<__m512>(b), bitcast<__m512>(c)));
#elif defined(__FMA__)
  vf r;
  for (int h = 0; h < 2; ++h) {
    __m256 x, y, z;
    std::memcpy(&x, reinterpret_cast<const char*>(&a) + 32 * h, 32);
    std::memcpy(&y, reinterpret_cast<const char*>(&b) + 32 * h, 32);
    std::memcpy(&z, reinterpret_cast<const char*>(&c) + 32 * h, 32);
    const __m256 o = _mm256_fmadd_ps(x, y, z);
    std::memcpy(reinterpret_cast<char*>(&r) + 32 * h, &o, 32);
  }
  return r;
#else
  vf r;
  for (int i = 0; i < 16; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}
GN_INLINE vd fma_(vd a, vd b, vd c) {
#if defined(__AVX512F__)
  return bitcast<vd>(_mm512_fmadd_pd(bitcast<__m512d>(a), bitcast<__m512d>(b), bitcast<__m512d>(c)));
#elif defined(__FMA__)
  vd r;
  for (int h = 0; h < 2; ++h) {
    __m256d x, y, z;
    std::memcpy(&x, reinterpret_cast<const char*>(&a) + 32 * h, 32);
    std::memcpy(&y, reinterpret_cast<const char*>(&b) + 32 * h, 32);
    std::memcpy(&z, reinterpret_cast<const char*>(&c) + 32 * h, 32);
    const __m256d o = _mm256_fmadd_pd(x, y, z);
    std::memcpy(reinterpret_cast<char*>(&r) + 32 * h, &o, 32);
  }
  return r;
#else
  vd r;
  for (int i = 0; i < 8; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}

template <class T> struct Ops {
  typedef typename Store<T>::A A;
  typedef typename VecOf<A>::type V;
  typedef typename VecOf<A>::mask M;
  static constexpr int L = VecOf<A>::lanes;

  static V load(const T* p) { return Store<T>::load(p); }
  // first n (< L) elements, the rest zero
  static V load_n(const T* p, std::int64_t n) { return Store<T>::load_n(p, n); }
  static void store(T* p, V v) { Store<T>::store(p, v); }
  static void store_n(T* p, V v, std::int64_t n) { Store<T>::store_n(p, v, n); }
  static V load_acc(const A* p) { V v; std::memcpy(&v, p, 64); return v; }
  static V load_acc_n(const A* p, std::int64_t n) { return Store<A>::load_n(p, n); }
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
  static GN_INLINE vf exp_(vf x) {
    x = x > 88.0f ? vf{} + 88.0f : x;
    x = x < -87.0f ? vf{} - 87.0f : x;
    const vf magic = vf{} + 12582912.0f;  // 1.5 * 2^23: rounds to integer
    const vf t = x * 1.44269504088896341f + magic;
    const vf n = t - magic;
    const vf r = fma_(n, splat<vf>(-1.42860682030941723e-06f), fma_(n, splat<vf>(-0.693145751953125f), x));
    vf p = splat<vf>(1.0f / 5040.0f);
    p = fma_(p, r, splat<vf>(1.0f / 720.0f));
    p = fma_(p, r, splat<vf>(1.0f / 120.0f));
    p = fma_(p, r, splat<vf>(1.0f / 24.0f));
    p = fma_(p, r, splat<vf>(1.0f / 6.0f));
    p = fma_(p, r, splat<vf>(0.5f));
    p = fma_(p, r, splat<vf>(1.0f));
    p = fma_(p, r, splat<vf>(1.0f));
    const vi32 e = (bitcast<vi32>(t) - bitcast<vi32>(magic) + 127) << 23;
    return p * bitcast<vf>(e);
  }
  static GN_INLINE vd exp_(vd x) {
    x = x > 709.0 ? vd{} + 709.0 : x;
    x = x < -708.0 ? vd{} - 708.0 : x;
    const vd magic = vd{} + 6755399441055744.0;  // 1.5 * 2^52
    const vd t = x * 1.4426950408889634074 + magic;
    const vd n = t - magic;
    const vd r = fma_(n, splat<vd>(-1.90821492927058770002e-10), fma_(n, splat<vd>(-6.93147180369123816490e-01), x));
    vd p = splat<vd>(1.0 / 479001600.0);
    const double c[] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                        1.0 / 720.0,      1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5, 1.0, 1.0};
    for (double ci : c) p = fma_(p, r, splat<vd>(ci));
    const vi64 e = (bitcast<vi64>(t) - bitcast<vi64>(magic) + 1023) << 52;
    return p * bitcast<vd>(e);
  }
  static GN_INLINE V sigmoid(V z) { return 1 / (1 + exp_(-z)); }
  static GN_INLINE V silu(V z) { return z * sigmoid(z); }
  // d silu / dz
  static GN_INLINE V dsilu(V z) {
    const V s = sigmoid(z);
    return s * (1 + z * (1 - s));
  }
};

// ---------------------------------------------------------------- streaming stores
// Outputs too big for the cache are written with non-temporal stores, so
// writing y costs one pass over memory (no read-for-ownership), like memcpy.
template <int BYTES> inline void stream_bytes(void* p, const void* v) {
#if defined(__AVX512F__)
  if (BYTES == 64) { __m512i a; std::memcpy(&a, v, 64); _mm512_stream_si512(static_cast<__m512i*>(p), a); return; }
#endif
#if defined(__AVX__)
  for (int o = 0; o < BYTES; o += 32) {
    __m256i a;
    std::memcpy(&a, static_cast<const char*>(v) + o, 32);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(p) + o), a);
  }
#elif defined(__SSE2__)
  for (int o = 0; o < BYTES; o += 16) {
    __m128i a;
    std::memcpy(&a, static_cast<const char*>(v) + o, 16);
    _mm_stream_si128(reinterpret_cast<__m128i*>(static_cast<char*>(p) + o), a);
  }
#else
  std::memcpy(p, v, BYTES);
#endif
}
inline void stream_fence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Writes one row of `cols` outputs: full(i) gives the vector at i, part(i, n)
// the first n < L. With `stream`, full vectors at 64-byte-aligned addresses
// use non-temporal stores (the unaligned head goes through the cache).
// Elements before y reaches a multiple of the vector size (64 bytes; 32 for
// 16-bit types): always fewer than one vector.
template <class T> inline std::int64_t align_head(const T* y) {
  constexpr std::uintptr_t vb = sizeof(T) * Ops<T>::L;
  const std::uintptr_t addr = reinterpret_cast<std::uintptr_t>(y);
  if (addr % sizeof(T) != 0) return 0;
  return (std::int64_t)(((vb - addr % vb) % vb) / sizeof(T));
}

// A hint to bring the line holding p into L2; never changes results.
GN_INLINE void prefetch_l2(const void* p) { __builtin_prefetch(p, 0, 2); }

template <class T> inline void put(T* y, typename Ops<T>::V v, bool stream) {
  if (stream) {
    T buf[Ops<T>::L];
    Store<T>::store(buf, v);
    stream_bytes<(int)sizeof(buf)>(y, buf);
  } else {
    Ops<T>::store(y, v);
  }
}

// Writes one row of `cols` outputs: full(i) gives the vector at i, part(i, n)
// the first n < L. The row is peeled so full vectors land on vector-size
// boundaries (no store splits two cache lines); with `stream` they use
// non-temporal stores. Elementwise outputs do not depend on this split.
template <class T, class Full, class Part>
inline void write_row(T* y, std::int64_t cols, bool stream, Full full, Part part) {
  typedef Ops<T> O;
  constexpr int L = O::L;
  std::int64_t i = cols >= 8 * L ? align_head(y) : 0;  // short rows: not worth a split
  if (i > 0) O::store_n(y, part(0, i), i);
  // non-temporal stores need aligned addresses
  if (stream && reinterpret_cast<std::uintptr_t>(y + i) % (sizeof(T) * L) == 0) {
    for (; i + L <= cols; i += L) put(y + i, full(i), true);
  } else {
    for (; i + L <= cols; i += L) O::store(y + i, full(i));
  }
  if (i < cols) O::store_n(y + i, part(i, cols - i), cols - i);
}

// x, or x + skip (+ skip_bias) rounded to T as if it had been stored.
// Full vectors; the _n forms take the first n < L elements (the rest zero).
template <class T, bool SKIP> struct In {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  // b: the channel's skip_bias, or null
  static V load(const T* x, const T* k, const V* b) {
    if (!SKIP) return O::load(x);
    V v = O::load(x) + O::load(k);
    if (b) v = v + *b;
    return Store<T>::round_trip(v);
  }
  static V load_n(const T* x, const T* k, const V* b, std::int64_t n) {
    if (!SKIP) return O::load_n(x, n);
    V v = O::load_n(x, n) + O::load_n(k, n);
    if (b) v = v + *b;
    return Store<T>::round_trip(v);
  }
  // the same, with the bias of elements [i, i + L) of tile row `row`
  template <class B> static V load_b(const T* x, const T* k, const B& bias, std::int64_t row, std::int64_t i) {
    if (!SKIP) return O::load(x);
    V v = O::load(x) + O::load(k);
    if (bias.sb) v = v + bias.at(row, i);
    return Store<T>::round_trip(v);
  }
  template <class B>
  static V load_nb(const T* x, const T* k, const B& bias, std::int64_t row, std::int64_t i, std::int64_t n) {
    if (!SKIP) return O::load_n(x, n);
    V v = O::load_n(x, n) + O::load_n(k, n);
    if (bias.sb) v = v + bias.at(row, i);
    return Store<T>::round_trip(v);
  }
};

template <class T> inline const T* at(const void* p, std::int64_t off) {
  return p ? static_cast<const T*>(p) + off : nullptr;
}
template <class T> inline T* at(void* p, std::int64_t off) { return p ? static_cast<T*>(p) + off : nullptr; }

// The skip bias of the elements [i, i + L) of a tile row: a row is one channel,
// or (flat) several whole channels of `chan_len` elements each.
template <class T> struct Bias {
  typedef typename Ops<T>::A A;
  typedef typename Ops<T>::V V;
  const A* sb;
  std::int64_t chan_len;  // 0: the row is one channel
  std::int64_t nchan;     // channels in the run (lanes past its end reuse the last)
  V at(std::int64_t row, std::int64_t i) const {
    if (!chan_len) return splat<V>(sb[row]);
    const std::int64_t c = i / chan_len;
    if (i + Ops<T>::L <= (c + 1) * chan_len) return splat<V>(sb[c]);
    V v;
    for (int j = 0; j < Ops<T>::L; ++j) {
      const std::int64_t cj = (i + j) / chan_len;
      v[j] = sb[cj < nchan ? cj : nchan - 1];
    }
    return v;
  }
};

// ================================================================ channels-first
// Tile rows are channels, each row `cols` contiguous elements.
// A channels-first tile as the moments passes walk it: whole channels are one
// contiguous run, summed as one (the order depends only on the tile's shape,
// with or without a skip bias).
template <class T, bool SKIP> struct CfRun {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  static constexpr int L = O::L;
  const T* xb;
  const T* kb;
  std::int64_t rows, cols, stride;
  Bias<T> bias;
  explicit CfRun(const Tile& t)
      : xb(static_cast<const T*>(t.x)), kb(static_cast<const T*>(t.skip)),
        rows(t.stride == t.cols ? 1 : t.rows), cols(t.stride == t.cols ? t.rows * t.cols : t.cols),
        stride(t.stride), bias{static_cast<const A*>(t.skip_bias), t.stride == t.cols ? t.cols : 0, t.rows} {}
  double count() const { return (double)rows * (double)cols; }
  V at(std::int64_t r, std::int64_t i) const {
    return I::load_b(xb + r * stride + i, SKIP ? kb + r * stride + i : nullptr, bias, r, i);
  }
  V at_n(std::int64_t r, std::int64_t i, std::int64_t n) const {
    return I::load_nb(xb + r * stride + i, SKIP ? kb + r * stride + i : nullptr, bias, r, i, n);
  }
  // sums of d = x - shift and d*d, two pairs of accumulators (no register
  // spills on 16-register ISAs)
  void dev_sums(A shift, double* sd, double* sq) const {
    const V mv = splat<V>(shift);
    V d0 = {}, d1 = {}, q0 = {}, q1 = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t i = 0;
      for (; i + 2 * L <= cols; i += 2 * L) {
        const V a0 = at(r, i) - mv, a1 = at(r, i + L) - mv;
        d0 += a0; q0 += a0 * a0;
        d1 += a1; q1 += a1 * a1;
      }
      for (; i < cols; i += L) {
        const std::int64_t n = cols - i;
        V a0 = (n >= L ? at(r, i) : at_n(r, i, n)) - mv;
        if (n < L) a0 = O::select(O::lanes_below(n), a0, V{});
        d0 += a0; q0 += a0 * a0;
      }
    }
    *sd = O::hsum(d0 + d1);
    *sq = O::hsum(q0 + q1);
  }
};

// Moments from sums of deviations from `shift`.
inline Moments shifted_moments(double n, double shift, double sd, double q) {
  Moments mo;
  mo.n = n;
  mo.mean = shift + sd / n;
  mo.m2 = q - sd * sd / n;
  if (mo.m2 < 0) mo.m2 = 0;  // rounding; NaN stays NaN
  return mo;
}

// Accept moments from sums shifted by K when the shift was close to the mean:
// n*(mean-K)^2 <= 64*M2 keeps the cancellation in M2 = q - sd^2/n below
// 6 bits. Otherwise the caller falls back to the exact two-pass sums.
inline bool shift_ok(double n, double sd, double q) {
  const double m2 = q - sd * sd / n;
  return !(sd * sd / n > 64.0 * m2);  // NaN data: accepted (stays NaN)
}

// Exact two-pass: the tile's mean first, then deviations from it.
template <class T, bool SKIP> void cf_moments_exact(const Tile& t, Moments* out) {
  typedef CfRun<T, SKIP> R;
  typedef typename R::O O;
  typedef typename R::A A;
  typedef typename R::V V;
  constexpr int L = R::L;
  const R run(t);
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  for (std::int64_t r = 0; r < run.rows; ++r) {
    std::int64_t i = 0;
    for (; i + 4 * L <= run.cols; i += 4 * L) {
      s0 += run.at(r, i);
      s1 += run.at(r, i + L);
      s2 += run.at(r, i + 2 * L);
      s3 += run.at(r, i + 3 * L);
    }
    for (; i + L <= run.cols; i += L) s0 += run.at(r, i);
    if (i < run.cols) s0 += O::select(O::lanes_below(run.cols - i), run.at_n(r, i, run.cols - i), V{});
  }
  const A m = (A)(O::hsum((s0 + s1) + (s2 + s3)) / run.count());
  double sd, sq;
  run.dev_sums(m, &sd, &sq);
  out[0] = shifted_moments(run.count(), (double)m, sd, sq);
}

// One pass of sums shifted by the tile's first element; exact two-pass when
// shift_ok() fails. Results depend only on the tile's data.
template <class T, bool SKIP> void cf_moments(const Tile& t, Moments* out) {
  const CfRun<T, SKIP> run(t);
  const typename CfRun<T, SKIP>::A k0 = run.at_n(0, 0, 1)[0];
  double sd, sq;
  run.dev_sums(k0, &sd, &sq);
  if (shift_ok(run.count(), sd, sq)) out[0] = shifted_moments(run.count(), (double)k0, sd, sq);
  else cf_moments_exact<T, SKIP>(t, out);
}

template <class T, bool SKIP, bool SILU> void cf_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* k = SKIP ? static_cast<const T*>(t.skip) + r * stride : nullptr;
    T* y = static_cast<T*>(t.y) + r * stride;
    T* so = at<T>(t.sum_out, r * stride);
    const V bias = splat<V>(sb ? sb[r] : A(0));
    const V* b = sb ? &bias : nullptr;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    std::int64_t i = 0;
    if (SKIP && so) {
      for (; i + L <= cols; i += L) {
        const V v = I::load(x + i, k + i, b);
        V z = (v - mv) * av + bv;
        if (SILU) z = O::silu(z);
        O::store(so + i, v);
        O::store(y + i, z);
      }
    } else {
      auto full = [&](std::int64_t j) {
        V z = (I::load(x + j, k + j, b) - mv) * av + bv;
        return SILU ? O::silu(z) : z;
      };
      auto part = [&](std::int64_t j, std::int64_t n) {
        V z = (I::load_n(x + j, k + j, b, n) - mv) * av + bv;
        return SILU ? O::silu(z) : z;
      };
      write_row<T>(y, cols, t.stream, full, part);
      continue;
    }
    if (i < cols) {
      const std::int64_t n = cols - i;
      const V v = I::load_n(x + i, k + i, b, n);
      V z = (v - mv) * av + bv;
      if (SILU) z = O::silu(z);
      if (so) O::store_n(so + i, v, n);
      O::store_n(y + i, z, n);
    }
  }
  if (t.stream) stream_fence();
}

template <class T, bool SILU> void cf_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* g = static_cast<const T*>(t.dy) + r * stride;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    V b0 = {}, b1 = {}, s0 = {}, s1 = {};
    std::int64_t i = 0;
    for (; i + 2 * L <= cols; i += 2 * L) {
      const V xc0 = O::load(x + i) - mv, xc1 = O::load(x + i + L) - mv;
      V g0 = O::load(g + i), g1 = O::load(g + i + L);
      if (SILU) {
        g0 = g0 * O::dsilu(xc0 * av + bv);
        g1 = g1 * O::dsilu(xc1 * av + bv);
      }
      b0 += g0; s0 += g0 * xc0;
      b1 += g1; s1 += g1 * xc1;
    }
    for (; i < cols; i += L) {
      const std::int64_t n = cols - i < L ? cols - i : L;
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      const auto live = O::lanes_below(n);
      gg = O::select(live, gg, V{});
      b0 += gg; s0 += O::select(live, gg * xc, V{});
    }
    db[r] += O::hsum(b0 + b1);
    ds[r] += O::hsum(s0 + s1);
  }
}

template <class T, bool SILU> void cf_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* c2 = static_cast<const A*>(t.c2);
  const A* c3 = static_cast<const A*>(t.c3);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* g = static_cast<const T*>(t.dy) + r * stride;
    T* dx = static_cast<T*>(t.dx) + r * stride;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    const V c2v = splat<V>(c2[r]), c3v = splat<V>(c3[r]);
    auto full = [&](std::int64_t i) {
      const V xc = O::load(x + i) - mv;
      V gg = O::load(g + i);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + c2v * xc) + c3v;
    };
    auto part = [&](std::int64_t i, std::int64_t n) {
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + c2v * xc) + c3v;
    };
    write_row<T>(dx, cols, t.stream, full, part);
  }
  if (t.stream) stream_fence();
}

// ================================================================ channels-last
// The channels-last loops walk four rows side by side (one load of the
// per-channel accumulators or parameters serves four rows), an order the
// hardware prefetchers follow poorly: four streams at once, a new 4 KB page
// every few rows. With Tile::prefetch_rows, the lines of the four rows `ahead`
// rows further on, at column j, are requested into L2 as the walk goes
// (channels-last resnet_gn forward: 1.8-2.2x -> 1.0-1.3x of a copy). A hint
// only: results do not change.
template <class T> inline std::int64_t rows_ahead(const Tile& t) {
  if (!t.prefetch_rows) return 0;
  const std::int64_t row_bytes = t.stride * (std::int64_t)sizeof(T);
  const std::int64_t blocks = 2048 / (row_bytes > 0 ? row_bytes : 1);  // at least ~8 KB ahead
  return 4 * (blocks > 2 ? blocks : 2);
}
template <class T>
GN_INLINE void prefetch_block(std::int64_t ahead, const T* base, std::int64_t r, std::int64_t rows, std::int64_t st,
                              std::int64_t j) {
  if (!ahead || r + ahead + 4 > rows) return;
  for (int u = 0; u < 4; ++u) prefetch_l2(base + (r + ahead + u) * st + j);
}

// Tile rows are spatial positions, columns are channels (whole groups).
// Per-channel sums run down the rows, four rows per visit of an accumulator
// (the order of each channel's sum is still row by row).
template <class T, bool SKIP> struct ClIn {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  const T* x;
  const T* k;
  const A* sb;
  V load(std::int64_t off, std::int64_t j) const {
    if (!SKIP) return O::load(x + off + j);
    V v = O::load(x + off + j) + O::load(k + off + j);
    if (sb) v = v + O::load_acc(sb + j);
    return Store<T>::round_trip(v);
  }
  V load_n(std::int64_t off, std::int64_t j, std::int64_t n) const {
    if (!SKIP) return O::load_n(x + off + j, n);
    V v = O::load_n(x + off + j, n) + O::load_n(k + off + j, n);
    if (sb) v = v + O::load_acc_n(sb + j, n);
    return Store<T>::round_trip(v);
  }
};

// Per-channel sums of d = x - shift[c] and d*d down the tile's rows into
// acc/acc2 (zeroed here), four rows per visit of an accumulator; each
// channel's sum still runs row by row.
template <class T, bool SKIP>
void cl_dev_sums(const Tile& t, const ClIn<T, SKIP>& in, const typename Ops<T>::A* shift, typename Ops<T>::A* acc,
                 typename Ops<T>::A* acc2) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const std::int64_t wf = w / L * L;  // full vectors
  std::memset(acc, 0, sizeof(A) * w);
  std::memset(acc2, 0, sizeof(A) * w);
  const std::int64_t pf = rows_ahead<T>(t);
  std::int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) {
      prefetch_block(pf, in.x, r, rows, st, j);
      if (SKIP) prefetch_block(pf, in.k, r, rows, st, j);
      const V m = O::load_acc(shift + j);
      V a = O::load_acc(acc + j), q = O::load_acc(acc2 + j);
      const V e0 = in.load(o, j) - m, e1 = in.load(o + st, j) - m;
      const V e2 = in.load(o + 2 * st, j) - m, e3 = in.load(o + 3 * st, j) - m;
      a += e0; q += e0 * e0;
      a += e1; q += e1 * e1;
      a += e2; q += e2 * e2;
      a += e3; q += e3 * e3;
      O::store_acc(acc + j, a);
      O::store_acc(acc2 + j, q);
    }
    if (wf < w) {
      const std::int64_t n = w - wf;
      const auto live = O::lanes_below(n);
      const V m = O::load_acc_n(shift + wf, n);
      V a = O::load_acc_n(acc + wf, n), q = O::load_acc_n(acc2 + wf, n);
      for (int u = 0; u < 4; ++u) {
        const V d = O::select(live, in.load_n(o + u * st, wf, n) - m, V{});
        a += d;
        q += d * d;
      }
      Store<A>::store_n(acc + wf, a, n);
      Store<A>::store_n(acc2 + wf, q, n);
    }
  }
  for (; r < rows; ++r) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      const auto live = O::lanes_below(n);
      const V d = O::select(live, (n == L ? in.load(o, j) : in.load_n(o, j, n)) - O::load_acc_n(shift + j, n), V{});
      Store<A>::store_n(acc + j, O::load_acc_n(acc + j, n) + d, n);
      Store<A>::store_n(acc2 + j, O::load_acc_n(acc2 + j, n) + d * d, n);
    }
  }
}

// Group g's sums of deviations over its channels, in channel order.
template <class A> inline void cl_group_sums(const A* acc, const A* acc2, std::int64_t g, std::int64_t gw, double* sd,
                                             double* sq) {
  double a = 0, q = 0;
  for (std::int64_t c = 0; c < gw; ++c) {
    a += (double)acc[g * gw + c];
    q += (double)acc2[g * gw + c];
  }
  *sd = a;
  *sq = q;
}

// Exact two-pass: per-group tile means first, then deviations from them.
template <class T, bool SKIP> void cl_moments_exact(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const std::int64_t wf = w / L * L;
  A* acc = static_cast<A*>(t.scratch);  // w
  A* acc2 = acc + w;                    // w
  A* shift = acc2 + w;                  // w
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  std::memset(acc, 0, sizeof(A) * w);
  std::int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) {
      V a = O::load_acc(acc + j);
      a += in.load(o, j);
      a += in.load(o + st, j);
      a += in.load(o + 2 * st, j);
      a += in.load(o + 3 * st, j);
      O::store_acc(acc + j, a);
    }
    if (wf < w) {
      const std::int64_t n = w - wf;
      V a = O::load_acc_n(acc + wf, n);
      for (int q = 0; q < 4; ++q) a += in.load_n(o + q * st, wf, n);
      Store<A>::store_n(acc + wf, a, n);
    }
  }
  for (; r < rows; ++r) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) O::store_acc(acc + j, O::load_acc(acc + j) + in.load(o, j));
    if (wf < w) Store<A>::store_n(acc + wf, O::load_acc_n(acc + wf, w - wf) + in.load_n(o, wf, w - wf), w - wf);
  }
  const std::int64_t gw = t.group_width, ng = w / gw;
  const double count = (double)rows * (double)gw;
  for (std::int64_t g = 0; g < ng; ++g) {
    A s = 0;
    for (std::int64_t c = 0; c < gw; ++c) s += acc[g * gw + c];
    const A m = (A)((double)s / count);
    for (std::int64_t c = 0; c < gw; ++c) shift[g * gw + c] = m;
  }
  cl_dev_sums<T, SKIP>(t, in, shift, acc, acc2);
  for (std::int64_t g = 0; g < ng; ++g) {
    double sd, sq;
    cl_group_sums(acc, acc2, g, gw, &sd, &sq);
    out[g] = shifted_moments(count, (double)shift[g * gw], sd, sq);
  }
}

// One pass of per-channel sums shifted by each group's first element (row 0);
// a group that fails shift_ok() is redone alone with the exact two-pass sums,
// so a group's result never depends on its neighbours in the tile.
template <class T, bool SKIP> void cl_moments(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  A* acc = static_cast<A*>(t.scratch);  // w
  A* acc2 = acc + w;                    // w
  A* shift = acc2 + w;                  // w
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  const std::int64_t gw = t.group_width, ng = w / gw;
  for (std::int64_t j = 0; j < w; j += L) {  // row 0 as loaded, to pick each group's shift
    const std::int64_t n = w - j < L ? w - j : L;
    Store<A>::store_n(acc + j, n == L ? in.load(0, j) : in.load_n(0, j, n), n);
  }
  for (std::int64_t g = 0; g < ng; ++g)
    for (std::int64_t c = 0; c < gw; ++c) shift[g * gw + c] = acc[g * gw];
  cl_dev_sums<T, SKIP>(t, in, shift, acc, acc2);
  const double count = (double)t.rows * (double)gw;
  for (std::int64_t g = 0; g < ng; ++g) {
    double sd, sq;
    cl_group_sums(acc, acc2, g, gw, &sd, &sq);
    if (shift_ok(count, sd, sq)) {
      out[g] = shifted_moments(count, (double)shift[g * gw], sd, sq);
    } else {
      Tile one = t;
      one.cols = gw;
      one.x = static_cast<const T*>(t.x) + g * gw;
      if (t.skip) one.skip = static_cast<const T*>(t.skip) + g * gw;
      if (t.skip_bias) one.skip_bias = static_cast<const A*>(t.skip_bias) + g * gw;
      one.scratch = shift + w;  // past this tile's arrays: 3 * gw more
      cl_moments_exact<T, SKIP>(one, out + g);
    }
  }
}

template <class T, bool SKIP, bool SILU> void cl_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  T* yb = static_cast<T*>(t.y);
  T* sob = static_cast<T*>(t.sum_out);
  auto row = [&](std::int64_t o) {
    auto full = [&](std::int64_t j) {
      V z = (in.load(o, j) - O::load_acc(mean + j)) * O::load_acc(scale + j) + O::load_acc(shift + j);
      return SILU ? O::silu(z) : z;
    };
    auto part = [&](std::int64_t j, std::int64_t n) {
      V z = (in.load_n(o, j, n) - O::load_acc_n(mean + j, n)) * O::load_acc_n(scale + j, n) +
            O::load_acc_n(shift + j, n);
      return SILU ? O::silu(z) : z;
    };
    write_row<T>(yb + o, w, t.stream, full, part);
  };
  std::int64_t r = 0;
  if (SKIP && sob) {
    // each vector is loaded once and both outputs written from it, so sum_out
    // may be x or skip itself (and y may be x or skip)
    for (; r < rows; ++r) {
      const std::int64_t o = r * st;
      T* so = sob + o;
      T* yo = yb + o;
      auto part = [&](std::int64_t j, std::int64_t n) {
        const V v = in.load_n(o, j, n);
        V z = (v - O::load_acc_n(mean + j, n)) * O::load_acc_n(scale + j, n) + O::load_acc_n(shift + j, n);
        if (SILU) z = O::silu(z);
        O::store_n(so + j, v, n);
        O::store_n(yo + j, z, n);
      };
      // full vectors of y on vector boundaries (as write_row), non-temporal
      // stores for big outputs whose addresses allow them
      std::int64_t j = w >= 8 * L ? align_head(yo) : 0;
      if (j > 0) part(0, j);
      const bool s_so = t.stream && reinterpret_cast<std::uintptr_t>(so + j) % (sizeof(T) * L) == 0;
      const bool s_y = t.stream && reinterpret_cast<std::uintptr_t>(yo + j) % (sizeof(T) * L) == 0;
      for (; j + L <= w; j += L) {
        const V v = in.load(o, j);
        V z = (v - O::load_acc(mean + j)) * O::load_acc(scale + j) + O::load_acc(shift + j);
        if (SILU) z = O::silu(z);
        put(so + j, v, s_so);
        put(yo + j, z, s_y);
      }
      if (j < w) part(j, w - j);
    }
  } else if ((st * (std::int64_t)sizeof(T)) % 64 == 0 && !(t.stream && sizeof(T) * L < 64)) {
    // every row has the same alignment: four rows per load of the channel parameters
    // (not for streamed 16-bit rows: their half-line stores must fill each line in turn)
    std::int64_t h = align_head(yb);
    if (h > w) h = w;
    const std::int64_t body_end = h + (w - h) / L * L;
    const bool stream = t.stream && reinterpret_cast<std::uintptr_t>(yb + h) % (sizeof(T) * L) == 0;
    const std::int64_t pf = rows_ahead<T>(t);
    for (; r + 4 <= rows; r += 4) {
      const std::int64_t o = r * st;
      if (h > 0)
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st;
          V z = (in.load_n(ou, 0, h) - O::load_acc_n(mean, h)) * O::load_acc_n(scale, h) + O::load_acc_n(shift, h);
          O::store_n(yb + ou, SILU ? O::silu(z) : z, h);
        }
      for (std::int64_t j = h; j < body_end; j += L) {
        prefetch_block(pf, in.x, r, rows, st, j);
        if (SKIP) prefetch_block(pf, in.k, r, rows, st, j);
        const V m = O::load_acc(mean + j), a = O::load_acc(scale + j), b = O::load_acc(shift + j);
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st;
          V z = (in.load(ou, j) - m) * a + b;
          put(yb + ou + j, SILU ? O::silu(z) : z, stream);
        }
      }
      if (body_end < w) {
        const std::int64_t n = w - body_end;
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st;
          V z = (in.load_n(ou, body_end, n) - O::load_acc_n(mean + body_end, n)) * O::load_acc_n(scale + body_end, n) +
                O::load_acc_n(shift + body_end, n);
          O::store_n(yb + ou + body_end, SILU ? O::silu(z) : z, n);
        }
      }
    }
    for (; r < rows; ++r) row(r * st);
  } else {
    for (; r < rows; ++r) row(r * st);
  }
  if (t.stream) stream_fence();
}

template <class T, bool SILU> void cl_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  A* ab = static_cast<A*>(t.scratch);
  A* as = ab + w;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const T* xb = static_cast<const T*>(t.x);
  const T* gb = static_cast<const T*>(t.dy);
  std::memset(ab, 0, sizeof(A) * 2 * w);
  const std::int64_t pf = rows_ahead<T>(t);
  for (std::int64_t r = 0; r < rows; r += 4) {
    const int nr = rows - r < 4 ? (int)(rows - r) : 4;
    for (std::int64_t j = 0; j < w; j += L) {
      prefetch_block(pf, xb, r, rows, st, j);
      prefetch_block(pf, gb, r, rows, st, j);
      const std::int64_t n = w - j < L ? w - j : L;
      const bool full = n == L;
      const auto live = O::lanes_below(n);
      auto P = [&](const A* p) { return full ? O::load_acc(p + j) : O::load_acc_n(p + j, n); };
      const V m = P(mean), a = P(scale), b = P(shift);
      V sb_ = P(ab), ss = P(as);
      for (int u = 0; u < nr; ++u) {
        const std::int64_t o = (r + u) * st + j;
        const V xc = (full ? O::load(xb + o) : O::load_n(xb + o, n)) - m;
        V gg = full ? O::load(gb + o) : O::load_n(gb + o, n);
        if (SILU) gg = gg * O::dsilu(xc * a + b);
        if (!full) gg = O::select(live, gg, V{});
        sb_ += gg;
        ss += full ? gg * xc : O::select(live, gg * xc, V{});
      }
      if (full) {
        O::store_acc(ab + j, sb_);
        O::store_acc(as + j, ss);
      } else {
        Store<A>::store_n(ab + j, sb_, n);
        Store<A>::store_n(as + j, ss, n);
      }
    }
  }
  for (std::int64_t j = 0; j < w; ++j) {
    db[j] += (double)ab[j];
    ds[j] += (double)as[j];
  }
}

template <class T, bool SILU> void cl_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* c2 = static_cast<const A*>(t.c2);
  const A* c3 = static_cast<const A*>(t.c3);
  const T* xb = static_cast<const T*>(t.x);
  const T* gb = static_cast<const T*>(t.dy);
  T* dxb = static_cast<T*>(t.dx);
  // dx for one vector, given the channel parameters of its lanes
  auto value = [&](V xv, V gv, V m, V a, V b, V k2, V k3) {
    const V xc = xv - m;
    if (SILU) gv = gv * O::dsilu(xc * a + b);
    return (a * gv + k2 * xc) + k3;
  };
  auto row = [&](std::int64_t o) {
    auto full = [&](std::int64_t j) {
      return value(O::load(xb + o + j), O::load(gb + o + j), O::load_acc(mean + j), O::load_acc(scale + j),
                   SILU ? O::load_acc(shift + j) : V{}, O::load_acc(c2 + j), O::load_acc(c3 + j));
    };
    auto part = [&](std::int64_t j, std::int64_t n) {
      return value(O::load_n(xb + o + j, n), O::load_n(gb + o + j, n), O::load_acc_n(mean + j, n),
                   O::load_acc_n(scale + j, n), SILU ? O::load_acc_n(shift + j, n) : V{},
                   O::load_acc_n(c2 + j, n), O::load_acc_n(c3 + j, n));
    };
    write_row<T>(dxb + o, w, t.stream, full, part);
  };
  std::int64_t r = 0;
  if ((st * (std::int64_t)sizeof(T)) % 64 == 0 && !(t.stream && sizeof(T) * L < 64)) {
    // every row has the same alignment: four rows per load of the channel parameters
    // (not for streamed 16-bit rows: their half-line stores must fill each line in turn)
    std::int64_t h = align_head(dxb);
    if (h > w) h = w;
    const std::int64_t body_end = h + (w - h) / L * L;
    const bool stream = t.stream && reinterpret_cast<std::uintptr_t>(dxb + h) % (sizeof(T) * L) == 0;
    const std::int64_t pf = rows_ahead<T>(t);
    for (; r + 4 <= rows; r += 4) {
      const std::int64_t o = r * st;
      auto edge = [&](std::int64_t j, std::int64_t n) {
        if (n <= 0) return;
        const V m = O::load_acc_n(mean + j, n), a = O::load_acc_n(scale + j, n);
        const V b = SILU ? O::load_acc_n(shift + j, n) : V{};
        const V k2 = O::load_acc_n(c2 + j, n), k3 = O::load_acc_n(c3 + j, n);
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st + j;
          O::store_n(dxb + ou, value(O::load_n(xb + ou, n), O::load_n(gb + ou, n), m, a, b, k2, k3), n);
        }
      };
      edge(0, h);
      for (std::int64_t j = h; j < body_end; j += L) {
        prefetch_block(pf, xb, r, rows, st, j);
        prefetch_block(pf, gb, r, rows, st, j);
        const V m = O::load_acc(mean + j), a = O::load_acc(scale + j);
        const V b = SILU ? O::load_acc(shift + j) : V{};
        const V k2 = O::load_acc(c2 + j), k3 = O::load_acc(c3 + j);
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st + j;
          put(dxb + ou, value(O::load(xb + ou), O::load(gb + ou), m, a, b, k2, k3), stream);
        }
      }
      edge(body_end, w - body_end);
    }
  }
  for (; r < rows; ++r) row(r * st);
  if (t.stream) stream_fence();
}

// ================================================================ table
template <class T> void moments(const Tile& t, Moments* out) {
  const bool skip = t.skip != nullptr;
  if (t.channels_last) (skip ? cl_moments<T, true> : cl_moments<T, false>)(t, out);
  else (skip ? cf_moments<T, true> : cf_moments<T, false>)(t, out);
}
template <class T, bool SKIP> void apply_(const Tile& t) {
  if (t.channels_last) (t.silu ? cl_apply<T, SKIP, true> : cl_apply<T, SKIP, false>)(t);
  else (t.silu ? cf_apply<T, SKIP, true> : cf_apply<T, SKIP, false>)(t);
}
template <class T> void apply(const Tile& t) { (t.skip ? apply_<T, true> : apply_<T, false>)(t); }
template <class T> void backward_sums(const Tile& t, double* db, double* ds) {
  if (t.channels_last) (t.silu ? cl_backward_sums<T, true> : cl_backward_sums<T, false>)(t, db, ds);
  else (t.silu ? cf_backward_sums<T, true> : cf_backward_sums<T, false>)(t, db, ds);
}
template <class T> void backward_apply(const Tile& t) {
  if (t.channels_last) (t.silu ? cl_backward_apply<T, true> : cl_backward_apply<T, false>)(t);
  else (t.silu ? cf_backward_apply<T, true> : cf_backward_apply<T, false>)(t);
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
