// Part of cpu/generic.hpp: streaming stores: non-temporal writes of outputs bigger than the cache.
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

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
