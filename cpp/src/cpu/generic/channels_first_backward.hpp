// Part of the generic kernels (cpu/generic/): the channels-first backward
// kernels: per-channel sums, dx, and the two in one walk (pipelined). Tile
// rows are channels, each row `cols` contiguous elements.
#pragma once

#include "../kernels.hpp"
#include "math.hpp"
#include "stream.hpp"

GN_KERNELS_BEGIN

// Backward sums of row r over elements [i0, i1) into two pairs of
// accumulators: vector pairs, then the row's tail when i1 is the row's end
// (i0 a multiple of 2L: a row summed in consecutive spans gets one walk's order).
template <class T, bool SILU> struct CfGrad {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  static constexpr int L = O::L;
  const Tile& t;
  std::int64_t r;
  const T* x;
  const T* g;
  V mv, av, bv;
  CfGrad(const Tile& tile, std::int64_t row)
      : t(tile), r(row), x(static_cast<const T*>(tile.x) + row * tile.stride),
        g(static_cast<const T*>(tile.dy) + row * tile.stride),
        mv(splat<V>(static_cast<const A*>(tile.mean)[row])), av(splat<V>(static_cast<const A*>(tile.scale)[row])),
        bv(splat<V>(static_cast<const A*>(tile.shift)[row])) {}
  GN_INLINE void sums(std::int64_t i0, std::int64_t i1, V& b0, V& b1, V& s0, V& s1) const {
    std::int64_t i = i0;
    for (; i + 2 * L <= i1; i += 2 * L) {
      const V xc0 = O::load(x + i) - mv, xc1 = O::load(x + i + L) - mv;
      V g0 = O::load(g + i), g1 = O::load(g + i + L);
      if (SILU) {
        g0 = g0 * O::dsilu(xc0 * av + bv);
        g1 = g1 * O::dsilu(xc1 * av + bv);
      }
      b0 += g0; s0 += g0 * xc0;
      b1 += g1; s1 += g1 * xc1;
    }
    if (i1 < t.cols) return;
    for (; i < t.cols; i += L) {
      const std::int64_t n = t.cols - i < L ? t.cols - i : L;
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      const auto live = O::lanes_below(n);
      gg = O::select(live, gg, V{});
      b0 += gg; s0 += O::select(live, gg * xc, V{});
    }
  }
  // dx = scale * dz + dx_xc * (x - mean) + dx_shift over elements [i0, i1)
  GN_INLINE void apply(std::int64_t i0, std::int64_t i1) const {
    const V xc_coef = splat<V>(static_cast<const A*>(t.dx_xc)[r]), dx_const = splat<V>(static_cast<const A*>(t.dx_shift)[r]);
    const T* xs = x + i0;
    const T* gs = g + i0;
    auto full = [&](std::int64_t i) {
      const V xc = O::load(xs + i) - mv;
      V gg = O::load(gs + i);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + xc_coef * xc) + dx_const;
    };
    auto part = [&](std::int64_t i, std::int64_t n) {
      const V xc = O::load_n(xs + i, n) - mv;
      V gg = O::load_n(gs + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + xc_coef * xc) + dx_const;
    };
    write_row<T>(static_cast<T*>(t.dx) + r * t.stride + i0, i1 - i0, t.stream, full, part);
  }
};

template <class T, bool SILU> void cf_backward_sums(const Tile& t, double* db, double* ds) {
  typedef typename Ops<T>::V V;
  for (std::int64_t r = 0; r < t.rows; ++r) {
    V b0 = {}, b1 = {}, s0 = {}, s1 = {};
    CfGrad<T, SILU>(t, r).sums(0, t.cols, b0, b1, s0, s1);
    db[r] += Ops<T>::hsum(b0 + b1);
    ds[r] += Ops<T>::hsum(s0 + s1);
  }
}

template <class T, bool SILU> void cf_backward_apply(const Tile& t) {
  for (std::int64_t r = 0; r < t.rows; ++r) CfGrad<T, SILU>(t, r).apply(0, t.cols);
  if (t.stream) stream_fence();
}

// dx of tile `a` and the backward sums of tile `m` in one walk, row by row
// (the two tiles have the same geometry, as for cf_apply_moments). m's sums
// are bitwise cf_backward_sums'.
template <class T, bool SILU> void cf_backward_apply_sums(const Tile& a, const Tile& m, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  for (std::int64_t r = 0; r < m.rows; ++r) {
    const CfGrad<T, SILU> gm(m, r), ga(a, r);
    V b0 = {}, b1 = {}, s0 = {}, s1 = {};
    // a pair of m's sums and a pair of a's dx per step (the loads of one
    // overlap the arithmetic of the other), then the row's last elements
    const std::int64_t cols2 = m.cols / (2 * L) * (2 * L);
    const V xc_coef = splat<V>(static_cast<const A*>(a.dx_xc)[r]), dx_const = splat<V>(static_cast<const A*>(a.dx_shift)[r]);
    T* dx = static_cast<T*>(a.dx) + r * a.stride;
    const bool stream = a.stream && reinterpret_cast<std::uintptr_t>(dx) % (sizeof(T) * L) == 0;
    auto value = [&](std::int64_t i) {
      const V xc = O::load(ga.x + i) - ga.mv;
      V gg = O::load(ga.g + i);
      if (SILU) gg = gg * O::dsilu(xc * ga.av + ga.bv);
      return (ga.av * gg + xc_coef * xc) + dx_const;
    };
    for (std::int64_t i = 0; i < cols2; i += 2 * L) {
      gm.sums(i, i + 2 * L, b0, b1, s0, s1);
      put(dx + i, value(i), stream);
      put(dx + i + L, value(i + L), stream);
    }
    gm.sums(cols2, m.cols, b0, b1, s0, s1);
    if (cols2 < m.cols) ga.apply(cols2, m.cols);
    db[r] += O::hsum(b0 + b1);
    ds[r] += O::hsum(s0 + s1);
  }
  if (a.stream) stream_fence();
}

GN_KERNELS_END
