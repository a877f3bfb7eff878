// Part of the generic kernels (cpu/generic/): how the channels-last kernels
// walk a tile: rows four at a time with the rows ahead prefetched, the input
// of a row, and an apply tile as one flat run. Tile rows are spatial
// positions, columns are channels (whole groups).
#pragma once

#include "../kernels.hpp"
#include "inputs.hpp"
#include "stream.hpp"

GN_KERNELS_BEGIN

// The channels-last sums (moments, backward sums) walk four rows side by side
// (one load of the per-channel accumulators serves four rows; the apply
// passes walk a tile as one flat run, cl_flat), an order the
// hardware prefetchers follow poorly: four streams at once, a new 4 KB page
// every few rows. With Tile::prefetch_rows, the lines of the four rows `ahead`
// rows further on, at column j, are requested into L2 as the walk goes
// (the plan asks for it only for data beyond the L3: walk.cpp). A hint only:
// results do not change.
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

// A channels-last tile whose rows are contiguous (stride == cols, the apply
// passes' whole-width rows) is one flat run of rows * cols elements: peeled
// once to the output's alignment, not once per row (rows of a few vectors,
// and outputs off a 64-byte boundary, as np.empty gives, paid a masked head
// and tail on every row). The channel parameters of the vector at flat index
// e start at channel e % w: each array is copied into a ring of w + L values
// (value c is channel c % w), so any L lanes are one contiguous load.
template <class A> inline const A* cl_ring(const A* p, std::int64_t w, std::int64_t L, A* out) {
  for (std::int64_t c = 0; c < w + L; ++c) out[c] = p[c % w];
  return out;
}
// f(e, k, n): the n (<= L) outputs from flat index e, whose channel is k.
template <class T, class F> inline void cl_flat(T* y, std::int64_t total, std::int64_t w, bool stream, F f) {
  typedef Ops<T> O;
  constexpr int L = O::L;
  std::int64_t e = total >= 8 * L ? align_head(y) : 0;
  if (e > total) e = total;
  if (e > 0) O::store_n(y, f(0, 0, e), e);
  std::int64_t k = e % w;
  const bool nt = stream && reinterpret_cast<std::uintptr_t>(y + e) % (sizeof(T) * L) == 0;
  for (; e + L <= total; e += L) {
    put(y + e, f(e, k, L), nt);
    k += L;
    if (k >= w) k = w >= L ? k - w : k % w;
  }
  if (e < total) O::store_n(y + e, f(e, k, total - e), total - e);
}

GN_KERNELS_END
