// The avx2 target (AVX2 + FMA + F16C; flags in CMakeLists.txt): hardware FMA
// and float16 conversions on two 256-bit halves, 256-bit non-temporal stores;
// the rest as arch/fallback.hpp. Primitives listed in arch/portable.hpp.
#pragma once

#include <immintrin.h>

#include "fallback.hpp"

GN_KERNELS_BEGIN

GN_INLINE vf fma_(vf a, vf b, vf c) {
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
}
GN_INLINE vd fma_(vd a, vd b, vd c) {
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
}
GN_INLINE vf max_(vf lo, vf x) { return max_select(lo, x); }
GN_INLINE vd max_(vd lo, vd x) { return max_select(lo, x); }
GN_INLINE vf times_pow2(vf p, vf, vf t, vf magic) { return times_pow2_bits(p, t, magic); }
GN_INLINE vd times_pow2(vd p, vd, vd t, vd magic) { return times_pow2_bits(p, t, magic); }

inline vf half_to_float(vu16 h16) {
  __m128i lo, hi;
  std::memcpy(&lo, &h16, 16);
  std::memcpy(&hi, reinterpret_cast<const char*>(&h16) + 16, 16);
  const __m256 a = _mm256_cvtph_ps(lo), b = _mm256_cvtph_ps(hi);
  vf r;
  std::memcpy(&r, &a, 32);
  std::memcpy(reinterpret_cast<char*>(&r) + 32, &b, 32);
  return r;
}
inline vu16 float_to_half(vf f) {
  __m256 a, b;
  std::memcpy(&a, &f, 32);
  std::memcpy(&b, reinterpret_cast<const char*>(&f) + 32, 32);
  const __m128i lo = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m128i hi = _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vu16 r;
  std::memcpy(&r, &lo, 16);
  std::memcpy(reinterpret_cast<char*>(&r) + 16, &hi, 16);
  return r;
}
inline vf bf16_to_float(vu16 h) { return bf16_to_float_bits(h); }
inline vu16 float_to_bf16(vf f) { return float_to_bf16_bits(f); }

template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) { return load_first_copy<Vec>(p, n); }
template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) { store_first_copy(p, v, n); }

template <int BYTES> inline void stream_bytes(void* p, const void* v) {
  for (int o = 0; o < BYTES; o += 32) {
    __m256i a;
    std::memcpy(&a, static_cast<const char*>(v) + o, 32);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(p) + o), a);
  }
}
inline void stream_fence() { _mm_sfence(); }

GN_KERNELS_END
