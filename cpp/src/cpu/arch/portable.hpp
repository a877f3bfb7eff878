// The portable target: plain C++ (arch/fallback.hpp) for every primitive,
// compiled for the build's baseline (x86-64: SSE2, whose non-temporal stores
// it uses; aarch64: the compiler's NEON). Every target defines:
//   fma_(a, b, c)            a * b + c, one rounding (vf, vd)
//   max_(lo, x)              lo > x ? lo : x (vf, vd)
//   times_pow2(p, n, t, magic)  p * 2^n, t = n + magic (the exp's last step)
//   half_to_float, float_to_half, bf16_to_float, float_to_bf16   (16 lanes)
//   load_first<Vec>(p, n), store_first(p, v, n)   the first n < lanes elements
//   stream_bytes<BYTES>(p, v), stream_fence()     non-temporal stores
#pragma once

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "fallback.hpp"

GN_KERNELS_BEGIN

GN_INLINE vf fma_(vf a, vf b, vf c) { return fma_lanes(a, b, c); }
GN_INLINE vd fma_(vd a, vd b, vd c) { return fma_lanes(a, b, c); }
GN_INLINE vf max_(vf lo, vf x) { return max_select(lo, x); }
GN_INLINE vd max_(vd lo, vd x) { return max_select(lo, x); }
GN_INLINE vf times_pow2(vf p, vf, vf t, vf magic) { return times_pow2_bits(p, t, magic); }
GN_INLINE vd times_pow2(vd p, vd, vd t, vd magic) { return times_pow2_bits(p, t, magic); }

inline vf half_to_float(vu16 h) { return half_to_float_bits(h); }
inline vu16 float_to_half(vf f) { return float_to_half_bits(f); }
inline vf bf16_to_float(vu16 h) { return bf16_to_float_bits(h); }
inline vu16 float_to_bf16(vf f) { return float_to_bf16_bits(f); }

template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) { return load_first_copy<Vec>(p, n); }
template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) { store_first_copy(p, v, n); }

template <int BYTES> inline void stream_bytes(void* p, const void* v) {
#if defined(__SSE2__)
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

GN_KERNELS_END
