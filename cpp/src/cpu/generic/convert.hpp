// Part of cpu/generic.hpp: conversions: float16 and bfloat16 to and from float, vector and scalar.
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

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
  const __mmask16 nan = _mm512_cmp_ps_mask(bitcast<__m512>(f), bitcast<__m512>(f), _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_or_epi32(rounded, nan, hi, _mm512_set1_epi32(0x40));
  return bitcast<vu16>(_mm512_cvtepi32_epi16(r));
#else
  const vu32 u = bitcast<vu32>(f);
  const vu32 is_nan = (u & 0x7fffffffu) > 0x7f800000u ? vu32{} + 1u : vu32{};
  const vu32 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu32 quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector(is_nan != 0u ? quiet : rounded, vu16);
#endif
}
