// The avx512 target (AVX-512 F/BW/VL/DQ; flags in CMakeLists.txt): one
// instruction for each primitive where AVX-512 has one (FMA, max, scalef,
// float16 and bfloat16 conversions, masked loads and stores of a row's
// tail, 512-bit non-temporal stores). Primitives listed in arch/portable.hpp.
// Also the avx512bf16 target's primitives (arch/avx512bf16.hpp: the same
// with AVX512_BF16's float -> bfloat16 conversion).
#pragma once

#include <immintrin.h>

#include "fallback.hpp"

GN_KERNELS_BEGIN

GN_INLINE vf fma_(vf a, vf b, vf c) {
  return bitcast<vf>(_mm512_fmadd_ps(bitcast<__m512>(a), bitcast<__m512>(b), bitcast<__m512>(c)));
}
GN_INLINE vd fma_(vd a, vd b, vd c) {
  return bitcast<vd>(_mm512_fmadd_pd(bitcast<__m512d>(a), bitcast<__m512d>(b), bitcast<__m512d>(c)));
}
// lo > x ? lo : x
GN_INLINE vf max_(vf lo, vf x) { return bitcast<vf>(_mm512_max_ps(bitcast<__m512>(lo), bitcast<__m512>(x))); }
GN_INLINE vd max_(vd lo, vd x) { return bitcast<vd>(_mm512_max_pd(bitcast<__m512d>(lo), bitcast<__m512d>(x))); }
GN_INLINE vf times_pow2(vf p, vf n, vf, vf) {
  return bitcast<vf>(_mm512_scalef_ps(bitcast<__m512>(p), bitcast<__m512>(n)));
}
GN_INLINE vd times_pow2(vd p, vd n, vd, vd) {
  return bitcast<vd>(_mm512_scalef_pd(bitcast<__m512d>(p), bitcast<__m512d>(n)));
}

GN_INLINE vf half_to_float(vu16 h16) {
  __m256i h;
  std::memcpy(&h, &h16, 32);
  return bitcast<vf>(_mm512_cvtph_ps(h));
}
GN_INLINE vu16 float_to_half(vf f) {
  const __m256i h = _mm512_cvtps_ph(bitcast<__m512>(f), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return bitcast<vu16>(h);
}
// bfloat16: fallback.hpp's integer operations, spelled with AVX-512's
// widening/narrowing moves (the generic vector code compiles to several
// shuffles per vector here)
GN_INLINE vf bf16_to_float(vu16 h16) {
  return bitcast<vf>(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bitcast<__m256i>(h16)), 16));
}
inline vu16 float_to_bf16_int(vf f) {
  const __m512i u = bitcast<__m512i>(f);
  const __m512i hi = _mm512_srli_epi32(u, 16);
  const __m512i lsb = _mm512_and_si512(hi, _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(bitcast<__m512>(f), bitcast<__m512>(f), _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_or_epi32(rounded, nan, hi, _mm512_set1_epi32(0x40));
  return bitcast<vu16>(_mm512_cvtepi32_epi16(r));
}
#if defined(__AVX512BF16__)
// The avx512bf16 target (arch/avx512bf16.hpp): VCVTNEPS2BF16 rounds to
// nearest even and quiets NaNs as the integer operations do (x[31:16] | 0x40),
// but takes denormal inputs as zero (Intel SDM; cpp/tests/test_convert checks
// all 2^32 inputs): a vector with a denormal lane (VFPCLASSPS) takes the
// integer operations, so the bits are the same as on every other target.
__attribute__((noinline, cold)) vu16 float_to_bf16_denormal(vf f) { return float_to_bf16_int(f); }
GN_INLINE vu16 float_to_bf16(vf f) {
  const __m512 x = bitcast<__m512>(f);
  if (__builtin_expect(_mm512_fpclass_ps_mask(x, 0x20) != 0, 0)) return float_to_bf16_denormal(f);  // 0x20: denormal
  return bitcast<vu16>(_mm512_cvtneps_pbh(x));
}
#else
GN_INLINE vu16 float_to_bf16(vf f) { return float_to_bf16_int(f); }
#endif

template <class Vec, class E> inline Vec load_first(const E* p, std::int64_t n) {
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 4) {
    return bitcast<Vec>(_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p));
  } else if constexpr (sizeof(Vec) == 64 && sizeof(E) == 8) {
    return bitcast<Vec>(_mm512_maskz_loadu_pd((__mmask8)((1u << n) - 1), p));
  } else if constexpr (sizeof(Vec) == 32 && sizeof(E) == 2) {
    return bitcast<Vec>(_mm256_maskz_loadu_epi16((__mmask16)((1u << n) - 1), p));
  } else {
    return load_first_copy<Vec>(p, n);
  }
}
template <class Vec, class E> inline void store_first(E* p, const Vec& v, std::int64_t n) {
  if constexpr (sizeof(Vec) == 64 && sizeof(E) == 4) {
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), bitcast<__m512>(v));
  } else if constexpr (sizeof(Vec) == 64 && sizeof(E) == 8) {
    _mm512_mask_storeu_pd(p, (__mmask8)((1u << n) - 1), bitcast<__m512d>(v));
  } else if constexpr (sizeof(Vec) == 32 && sizeof(E) == 2) {
    _mm256_mask_storeu_epi16(p, (__mmask16)((1u << n) - 1), bitcast<__m256i>(v));
  } else {
    store_first_copy(p, v, n);
  }
}

template <int BYTES> inline void stream_bytes(void* p, const void* v) {
  if (BYTES == 64) {
    __m512i a;
    std::memcpy(&a, v, 64);
    _mm512_stream_si512(static_cast<__m512i*>(p), a);
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
