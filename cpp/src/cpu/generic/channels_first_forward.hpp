// Part of the generic kernels (cpu/generic/): the channels-first forward
// kernels: moments, apply, and the two in one walk (pipelined). Tile rows are
// channels, each row `cols` contiguous elements.
#pragma once

#include "../kernels.hpp"
#include "inputs.hpp"
#include "moments.hpp"
#include "stream.hpp"

GN_KERNELS_BEGIN

// A channels-first tile as the moments passes walk it: whole channels are one
// contiguous run, summed as one (the order depends only on the tile's shape,
// with or without a skip bias).
template <class T, bool SKIP> struct CfRun {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  static constexpr int L = O::L;
  const T* xb;
  const T* kb;
  std::int64_t rows, cols, stride;
  Bias<T> bias;
  explicit CfRun(const Tile& t)
      : xb(static_cast<const T*>(t.x)), kb(static_cast<const T*>(t.skip)),
        rows(t.stride == t.cols ? 1 : t.rows), cols(t.stride == t.cols ? t.rows * t.cols : t.cols),
        stride(t.stride), bias{static_cast<const A*>(t.skip_bias), t.stride == t.cols ? t.cols : 0, t.rows} {}
  double count() const { return (double)rows * (double)cols; }
  V at(std::int64_t r, std::int64_t i) const {
    return I::load_b(xb + r * stride + i, SKIP ? kb + r * stride + i : nullptr, bias, r, i);
  }
  V at_n(std::int64_t r, std::int64_t i, std::int64_t n) const {
    return I::load_nb(xb + r * stride + i, SKIP ? kb + r * stride + i : nullptr, bias, r, i, n);
  }
  // Sums of d = x - shift and d*d over elements [i0, i1) of row r into two
  // pairs of accumulators (no register spills on 16-register ISAs): vector
  // pairs, then the row's tail when i1 is the row's end. i0 is a multiple of
  // 2L, so a row summed in consecutive spans gets the order of one walk.
  GN_INLINE void dev_span(V mv, std::int64_t r, std::int64_t i0, std::int64_t i1, V& d0, V& d1, V& q0, V& q1) const {
    std::int64_t i = i0;
    for (; i + 2 * L <= i1; i += 2 * L) {
      const V a0 = at(r, i) - mv, a1 = at(r, i + L) - mv;
      d0 += a0; q0 += a0 * a0;
      d1 += a1; q1 += a1 * a1;
    }
    if (i1 < cols) return;
    for (; i < cols; i += L) {
      const std::int64_t n = cols - i;
      V a0 = (n >= L ? at(r, i) : at_n(r, i, n)) - mv;
      if (n < L) a0 = O::select(O::lanes_below(n), a0, V{});
      d0 += a0; q0 += a0 * a0;
    }
  }
  void dev_sums(A shift, double* sd, double* sq) const {
    const V mv = splat<V>(shift);
    V d0 = {}, d1 = {}, q0 = {}, q1 = {};
    for (std::int64_t r = 0; r < rows; ++r) dev_span(mv, r, 0, cols, d0, d1, q0, q1);
    *sd = O::hsum(d0 + d1);
    *sq = O::hsum(q0 + q1);
  }
};

// Exact two-pass: the tile's mean first, then deviations from it.
template <class T, bool SKIP> void cf_moments_exact(const Tile& t, Moments* out) {
  typedef CfRun<T, SKIP> R;
  typedef typename R::O O;
  typedef typename R::A A;
  typedef typename R::V V;
  constexpr int L = R::L;
  const R run(t);
  V s0 = {}, s1 = {}, s2 = {}, s3 = {};
  for (std::int64_t r = 0; r < run.rows; ++r) {
    std::int64_t i = 0;
    for (; i + 4 * L <= run.cols; i += 4 * L) {
      s0 += run.at(r, i);
      s1 += run.at(r, i + L);
      s2 += run.at(r, i + 2 * L);
      s3 += run.at(r, i + 3 * L);
    }
    for (; i + L <= run.cols; i += L) s0 += run.at(r, i);
    if (i < run.cols) s0 += O::select(O::lanes_below(run.cols - i), run.at_n(r, i, run.cols - i), V{});
  }
  const A m = (A)(O::hsum((s0 + s1) + (s2 + s3)) / run.count());
  double sd, sq;
  run.dev_sums(m, &sd, &sq);
  out[0] = shifted_moments(run.count(), (double)m, sd, sq);
}

// One pass of sums shifted by the tile's first element; exact two-pass when
// shift_ok() fails. Results depend only on the tile's data.
template <class T, bool SKIP> void cf_moments(const Tile& t, Moments* out) {
  const CfRun<T, SKIP> run(t);
  const typename CfRun<T, SKIP>::A k0 = run.at_n(0, 0, 1)[0];
  double sd, sq;
  run.dev_sums(k0, &sd, &sq);
  if (shift_ok(run.count(), sd, sq)) out[0] = shifted_moments(run.count(), (double)k0, sd, sq);
  else cf_moments_exact<T, SKIP>(t, out);
}

// y = act((x - mean) * scale + shift) for elements [i0, i1) of row r (no sum_out).
template <class T, bool SKIP, bool SILU> GN_INLINE void cf_apply_span(const Tile& t, std::int64_t r, std::int64_t i0,
                                                                      std::int64_t i1) {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const std::int64_t off = r * t.stride + i0;
  const T* x = static_cast<const T*>(t.x) + off;
  const T* k = SKIP ? static_cast<const T*>(t.skip) + off : nullptr;
  T* y = static_cast<T*>(t.y) + off;
  const V bias = splat<V>(sb ? sb[r] : A(0));
  const V* b = sb ? &bias : nullptr;
  const V mv = splat<V>(static_cast<const A*>(t.mean)[r]), av = splat<V>(static_cast<const A*>(t.scale)[r]);
  const V bv = splat<V>(static_cast<const A*>(t.shift)[r]);
  auto full = [&](std::int64_t j) {
    V z = (I::load(x + j, k + j, b) - mv) * av + bv;
    return SILU ? O::silu(z) : z;
  };
  auto part = [&](std::int64_t j, std::int64_t n) {
    V z = (I::load_n(x + j, k + j, b, n) - mv) * av + bv;
    return SILU ? O::silu(z) : z;
  };
  write_row<T>(y, i1 - i0, t.stream, full, part);
}

template <class T, bool SKIP, bool SILU> void cf_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  if (!(SKIP && t.sum_out)) {
    for (std::int64_t r = 0; r < rows; ++r) cf_apply_span<T, SKIP, SILU>(t, r, 0, cols);
    if (t.stream) stream_fence();
    return;
  }
  // x + skip written to sum_out as well: each vector is loaded once and both
  // outputs written from it, so sum_out may be x or skip itself
  const A* sb = static_cast<const A*>(t.skip_bias);
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* k = static_cast<const T*>(t.skip) + r * stride;
    T* y = static_cast<T*>(t.y) + r * stride;
    T* so = static_cast<T*>(t.sum_out) + r * stride;
    const V bias = splat<V>(sb ? sb[r] : A(0));
    const V* b = sb ? &bias : nullptr;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    std::int64_t i = 0;
    for (; i + L <= cols; i += L) {
      const V v = I::load(x + i, k + i, b);
      V z = (v - mv) * av + bv;
      if (SILU) z = O::silu(z);
      O::store(so + i, v);
      O::store(y + i, z);
    }
    if (i < cols) {
      const std::int64_t n = cols - i;
      const V v = I::load_n(x + i, k + i, b, n);
      V z = (v - mv) * av + bv;
      if (SILU) z = O::silu(z);
      O::store_n(so + i, v, n);
      O::store_n(y + i, z, n);
    }
  }
}

// The apply of tile `a` and the moments of tile `m` in one walk, a span of m
// then the same span of a: m's data streams in from memory while a's (summed
// just before, so in cache) is normalized, and the loads of one overlap the
// arithmetic of the other. The two tiles have the same geometry (rows, cols,
// stride); a has no sum_out. m's sums run in dev_sums' order, so its moments
// are bitwise cf_moments'; a's outputs are elementwise, in any order.
template <class T, bool SKIP, bool SILU> void cf_apply_moments(const Tile& a, const Tile& m, Moments* out) {
  typedef CfRun<T, SKIP> R;
  typedef typename R::O O;
  typedef typename R::A A;
  typedef typename R::V V;
  constexpr std::int64_t kSpan = 32 * R::L;  // a multiple of 2L
  const R run(m);
  const A k0 = run.at_n(0, 0, 1)[0];
  const V mv = splat<V>(k0);
  V d0 = {}, d1 = {}, q0 = {}, q1 = {};
  constexpr int L = R::L;
  if (run.rows == 1 && (a.rows == 1 || a.cols % (2 * L) == 0)) {
    // m is one contiguous run and each of a's rows starts on a pair of m's
    // walk: every step sums a pair of m and normalizes a pair of a, so the
    // loads of one overlap the arithmetic of the other at the finest grain
    typedef In<T, SKIP> I;
    const std::int64_t cols2 = a.cols / (2 * L) * (2 * L);
    const A* sb = static_cast<const A*>(a.skip_bias);
    for (std::int64_t r = 0; r < a.rows; ++r) {
      const std::int64_t off = r * a.stride, e0 = r * a.cols;
      const T* x = static_cast<const T*>(a.x) + off;
      const T* k = SKIP ? static_cast<const T*>(a.skip) + off : nullptr;
      T* y = static_cast<T*>(a.y) + off;
      const V bias = splat<V>(sb ? sb[r] : A(0));
      const V* b = sb ? &bias : nullptr;
      const V ma = splat<V>(static_cast<const A*>(a.mean)[r]), sa = splat<V>(static_cast<const A*>(a.scale)[r]);
      const V ba = splat<V>(static_cast<const A*>(a.shift)[r]);
      const bool stream = a.stream && reinterpret_cast<std::uintptr_t>(y) % (sizeof(T) * L) == 0;
      for (std::int64_t i = 0; i < cols2; i += 2 * L) {
        const V m0 = run.at(0, e0 + i) - mv, m1 = run.at(0, e0 + i + L) - mv;
        d0 += m0; q0 += m0 * m0;
        d1 += m1; q1 += m1 * m1;
        V z0 = (I::load(x + i, k + i, b) - ma) * sa + ba, z1 = (I::load(x + i + L, k + i + L, b) - ma) * sa + ba;
        if (SILU) { z0 = O::silu(z0); z1 = O::silu(z1); }
        put(y + i, z0, stream);
        put(y + i + L, z1, stream);
      }
    }
    if (cols2 < a.cols) {  // one row: its last elements, and m's tail
      run.dev_span(mv, 0, cols2, run.cols, d0, d1, q0, q1);
      cf_apply_span<T, SKIP, SILU>(a, 0, cols2, a.cols);
    }
    if (a.stream) stream_fence();
    const double sd = O::hsum(d0 + d1), sq = O::hsum(q0 + q1);
    if (shift_ok(run.count(), sd, sq)) out[0] = shifted_moments(run.count(), (double)k0, sd, sq);
    else cf_moments_exact<T, SKIP>(m, out);
    return;
  }
  std::int64_t ar = 0, ai = 0;  // a's next element (row, column)
  auto apply_to = [&](std::int64_t e) {  // a's elements before flat index e
    while (ar < a.rows && ar * a.cols + ai < e) {
      const std::int64_t stop = std::min(a.cols, e - ar * a.cols);
      cf_apply_span<T, SKIP, SILU>(a, ar, ai, stop);
      ai = stop;
      if (ai == a.cols) { ++ar; ai = 0; }
    }
  };
  for (std::int64_t r = 0; r < run.rows; ++r)
    for (std::int64_t i = 0; i < run.cols; i += kSpan) {
      const std::int64_t i1 = std::min(run.cols, i + kSpan);
      run.dev_span(mv, r, i, i1, d0, d1, q0, q1);
      apply_to(r * run.cols + i1);
    }
  apply_to(a.rows * a.cols);
  if (a.stream) stream_fence();
  const double sd = O::hsum(d0 + d1), sq = O::hsum(q0 + q1);
  if (shift_ok(run.count(), sd, sq)) out[0] = shifted_moments(run.count(), (double)k0, sd, sq);
  else cf_moments_exact<T, SKIP>(m, out);
}

GN_KERNELS_END
