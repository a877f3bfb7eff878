// The neon target (aarch64; flags in CMakeLists.txt). GCC turns the generic
// 64-byte vector code into 128-bit NEON (and std::fma into FMLA) on any
// aarch64 build, portable included; what this target adds is the hardware
// float16 conversion (FCVTL/FCVTN, part of ARMv8-A Advanced SIMD, so every
// aarch64 CPU runs it) in place of the bit manipulation. .ci/aarch64.sh checks
// under qemu that it gives the portable bits. Primitives listed in
// arch/portable.hpp.
#pragma once

#include <arm_neon.h>

#include "fallback.hpp"

GN_KERNELS_BEGIN

GN_INLINE vf fma_(vf a, vf b, vf c) { return fma_lanes(a, b, c); }
GN_INLINE vd fma_(vd a, vd b, vd c) { return fma_lanes(a, b, c); }
GN_INLINE vf max_(vf lo, vf x) { return max_select(lo, x); }
GN_INLINE vd max_(vd lo, vd x) { return max_select(lo, x); }
GN_INLINE vf times_pow2(vf p, vf, vf t, vf magic) { return times_pow2_bits(p, t, magic); }
GN_INLINE vd times_pow2(vd p, vd, vd t, vd magic) { return times_pow2_bits(p, t, magic); }

inline vf half_to_float(vu16 h16) {
  vf r;
  for (int q = 0; q < 4; ++q) {
    uint16x4_t u;
    std::memcpy(&u, reinterpret_cast<const char*>(&h16) + 8 * q, 8);
    const float32x4_t f = vcvt_f32_f16(vreinterpret_f16_u16(u));
    std::memcpy(reinterpret_cast<char*>(&r) + 16 * q, &f, 16);
  }
  return r;
}
inline vu16 float_to_half(vf f) {
  vu16 r;  // FCVTN rounds as FPCR says: to nearest even, the default
  for (int q = 0; q < 4; ++q) {
    float32x4_t v;
    std::memcpy(&v, reinterpret_cast<const char*>(&f) + 16 * q, 16);
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    std::memcpy(reinterpret_cast<char*>(&r) + 8 * q, &h, 8);
  }
  return r;
}
inline vf bf16_to_float(vu16 h) { return bf16_to_float_bits(h); }
inline vu16 float_to_bf16(vf f) { return float_to_bf16_bits(f); }

template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) { return load_first_copy<Vec>(p, n); }
template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) { store_first_copy(p, v, n); }

// no non-temporal stores: plain ones
template <int BYTES> inline void stream_bytes(void* p, const void* v) { std::memcpy(p, v, BYTES); }
inline void stream_fence() {}

GN_KERNELS_END
