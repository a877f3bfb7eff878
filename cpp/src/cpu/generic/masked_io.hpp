// Part of cpu/generic.hpp: masked I/O: loads and stores of the first n lanes (row tails).
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

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
