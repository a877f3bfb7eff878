// Part of the generic kernels (cpu/generic/): the input the kernels
// normalize: x, or x + skip (+ skip_bias) as stored, and per-row skip bias.
#pragma once

#include "math.hpp"

GN_KERNELS_BEGIN

// x, or x + skip (+ skip_bias) rounded to T as if it had been stored.
// Full vectors; the _n forms take the first n < L elements (the rest zero).
template <class T, bool SKIP> struct In {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  // b: the channel's skip_bias, or null
  static V load(const T* x, const T* k, const V* b) {
    if (!SKIP) return O::load(x);
    V v = O::load(x) + O::load(k);
    if (b) v = v + *b;
    return Store<T>::round_trip(v);
  }
  static V load_n(const T* x, const T* k, const V* b, std::int64_t n) {
    if (!SKIP) return O::load_n(x, n);
    V v = O::load_n(x, n) + O::load_n(k, n);
    if (b) v = v + *b;
    return Store<T>::round_trip(v);
  }
  // the same, with the bias of elements [i, i + L) of tile row `row`
  template <class B> static V load_b(const T* x, const T* k, const B& bias, std::int64_t row, std::int64_t i) {
    if (!SKIP) return O::load(x);
    V v = O::load(x) + O::load(k);
    if (bias.sb) v = v + bias.at(row, i);
    return Store<T>::round_trip(v);
  }
  template <class B>
  static V load_nb(const T* x, const T* k, const B& bias, std::int64_t row, std::int64_t i, std::int64_t n) {
    if (!SKIP) return O::load_n(x, n);
    V v = O::load_n(x, n) + O::load_n(k, n);
    if (bias.sb) v = v + bias.at(row, i);
    return Store<T>::round_trip(v);
  }
};

template <class T> inline const T* at(const void* p, std::int64_t off) {
  return p ? static_cast<const T*>(p) + off : nullptr;
}
template <class T> inline T* at(void* p, std::int64_t off) { return p ? static_cast<T*>(p) + off : nullptr; }

// The skip bias of the elements [i, i + L) of a tile row: a row is one channel,
// or (flat) several whole channels of `chan_len` elements each.
template <class T> struct Bias {
  typedef typename Ops<T>::A A;
  typedef typename Ops<T>::V V;
  const A* sb;
  std::int64_t chan_len;  // 0: the row is one channel
  std::int64_t nchan;     // channels in the run (lanes past its end reuse the last)
  V at(std::int64_t row, std::int64_t i) const {
    if (!chan_len) return splat<V>(sb[row]);
    const std::int64_t c = i / chan_len;
    if (i + Ops<T>::L <= (c + 1) * chan_len) return splat<V>(sb[c]);
    V v;
    for (int j = 0; j < Ops<T>::L; ++j) {
      const std::int64_t cj = (i + j) / chan_len;
      v[j] = sb[cj < nchan ? cj : nchan - 1];
    }
    return v;
  }
};

GN_KERNELS_END
