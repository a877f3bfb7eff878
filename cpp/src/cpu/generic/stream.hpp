// Part of the generic kernels (cpu/generic/): writing outputs. Outputs too big
// for the cache are written with non-temporal stores (the target's
// stream_bytes), so writing y costs one pass over memory (no
// read-for-ownership), like memcpy; rows are peeled so that full vectors land
// on vector boundaries.
#pragma once

#include "math.hpp"

GN_KERNELS_BEGIN

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

template <class T> GN_INLINE void put(T* y, typename Ops<T>::V v, bool stream) {
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

GN_KERNELS_END
