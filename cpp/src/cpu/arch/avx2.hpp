// The avx2 target (AVX2 + FMA + F16C; flags in CMakeLists.txt): hardware FMA
// and float16 conversions on two 256-bit halves, 256-bit non-temporal stores;
// the rest as arch/fallback.hpp. Primitives listed in arch/portable.hpp.
#pragma once

#include <immintrin.h>

#include "fallback.hpp"

GN_KERNELS_BEGIN

// A 64-byte vector as two 256-bit halves and back, lane by lane: GCC keeps
// these in registers (halves copied through memory, as memcpy spells it,
// cost a store-forwarding stall per vector: avx2 ran 3x slower than portable)
typedef float vf8 __attribute__((vector_size(32)));
typedef double vd4 __attribute__((vector_size(32)));
typedef std::uint16_t vu16x8 __attribute__((vector_size(16)));
GN_INLINE __m256 lo8(vf v) { return (__m256)vf8{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]}; }
GN_INLINE __m256 hi8(vf v) { return (__m256)vf8{v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]}; }
GN_INLINE vf join8(__m256 a, __m256 b) {
  const vf8 x = (vf8)a, y = (vf8)b;
  return vf{x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], y[0], y[1], y[2], y[3], y[4], y[5], y[6], y[7]};
}
GN_INLINE __m256d lo4(vd v) { return (__m256d)vd4{v[0], v[1], v[2], v[3]}; }
GN_INLINE __m256d hi4(vd v) { return (__m256d)vd4{v[4], v[5], v[6], v[7]}; }
GN_INLINE vd join4(__m256d a, __m256d b) {
  const vd4 x = (vd4)a, y = (vd4)b;
  return vd{x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[3]};
}

GN_INLINE vf fma_(vf a, vf b, vf c) {
  return join8(_mm256_fmadd_ps(lo8(a), lo8(b), lo8(c)), _mm256_fmadd_ps(hi8(a), hi8(b), hi8(c)));
}
GN_INLINE vd fma_(vd a, vd b, vd c) {
  return join4(_mm256_fmadd_pd(lo4(a), lo4(b), lo4(c)), _mm256_fmadd_pd(hi4(a), hi4(b), hi4(c)));
}
GN_INLINE vf max_(vf lo, vf x) { return max_select(lo, x); }
GN_INLINE vd max_(vd lo, vd x) { return max_select(lo, x); }
GN_INLINE vf times_pow2(vf p, vf, vf t, vf magic) { return times_pow2_bits(p, t, magic); }
GN_INLINE vd times_pow2(vd p, vd, vd t, vd magic) { return times_pow2_bits(p, t, magic); }

GN_INLINE vf half_to_float(vu16 h) {
  const vu16x8 a{h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]};
  const vu16x8 b{h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]};
  return join8(_mm256_cvtph_ps((__m128i)a), _mm256_cvtph_ps((__m128i)b));
}
GN_INLINE vu16 float_to_half(vf f) {
  const vu16x8 a = (vu16x8)_mm256_cvtps_ph(lo8(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const vu16x8 b = (vu16x8)_mm256_cvtps_ph(hi8(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return vu16{a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]};
}
inline vf bf16_to_float(vu16 h) { return bf16_to_float_bits(h); }
inline vu16 float_to_bf16(vf f) { return float_to_bf16_bits(f); }

template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) { return load_first_copy<Vec>(p, n); }
template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) { store_first_copy(p, v, n); }

template <int BYTES> inline void stream_bytes(void* p, const void* v) {
  if (BYTES == 64) {  // a float vector: read as one, stored as halves (see lo8)
    vf x;
    std::memcpy(&x, v, 64);
    _mm256_stream_ps(static_cast<float*>(p), lo8(x));
    _mm256_stream_ps(static_cast<float*>(p) + 8, hi8(x));
    return;
  }
  for (int o = 0; o < BYTES; o += 32) {
    __m256i a;
    std::memcpy(&a, static_cast<const char*>(v) + o, 32);
    _mm256_stream_si256(reinterpret_cast<__m256i*>(static_cast<char*>(p) + o), a);
  }
}
inline void stream_fence() { _mm_sfence(); }

GN_KERNELS_END
