// Part of the generic kernels (cpu/generic/): the channels-last backward
// kernels: per-channel sums down the rows, and dx.
#pragma once

#include "channels_last_rows.hpp"

GN_KERNELS_BEGIN

template <class T, bool SILU> void cl_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  A* ab = static_cast<A*>(t.scratch);
  A* as = ab + w;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const T* xb = static_cast<const T*>(t.x);
  const T* gb = static_cast<const T*>(t.dy);
  std::memset(ab, 0, sizeof(A) * 2 * w);
  const std::int64_t pf = rows_ahead<T>(t);
  for (std::int64_t r = 0; r < rows; r += 4) {
    const int nr = rows - r < 4 ? (int)(rows - r) : 4;
    for (std::int64_t j = 0; j < w; j += L) {
      prefetch_block(pf, xb, r, rows, st, j);
      prefetch_block(pf, gb, r, rows, st, j);
      const std::int64_t n = w - j < L ? w - j : L;
      const bool full = n == L;
      const auto live = O::lanes_below(n);
      auto P = [&](const A* p) { return full ? O::load_acc(p + j) : O::load_acc_n(p + j, n); };
      const V m = P(mean), a = P(scale), b = P(shift);
      V sb_ = P(ab), ss = P(as);
      for (int u = 0; u < nr; ++u) {
        const std::int64_t o = (r + u) * st + j;
        const V xc = (full ? O::load(xb + o) : O::load_n(xb + o, n)) - m;
        V gg = full ? O::load(gb + o) : O::load_n(gb + o, n);
        if (SILU) gg = gg * O::dsilu(xc * a + b);
        if (!full) gg = O::select(live, gg, V{});
        sb_ += gg;
        ss += full ? gg * xc : O::select(live, gg * xc, V{});
      }
      if (full) {
        O::store_acc(ab + j, sb_);
        O::store_acc(as + j, ss);
      } else {
        Store<A>::store_n(ab + j, sb_, n);
        Store<A>::store_n(as + j, ss, n);
      }
    }
  }
  for (std::int64_t j = 0; j < w; ++j) {
    db[j] += (double)ab[j];
    ds[j] += (double)as[j];
  }
}

template <class T, bool SILU> void cl_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* dx_xc = static_cast<const A*>(t.dx_xc);
  const A* dx_shift = static_cast<const A*>(t.dx_shift);
  const T* xb = static_cast<const T*>(t.x);
  const T* gb = static_cast<const T*>(t.dy);
  T* dxb = static_cast<T*>(t.dx);
  // dx for one vector, given the channel parameters of its lanes
  auto value = [&](V xv, V gv, V m, V a, V b, V kxc, V kshift) {
    const V xc = xv - m;
    if (SILU) gv = gv * O::dsilu(xc * a + b);
    return (a * gv + kxc * xc) + kshift;
  };
  auto row = [&](std::int64_t o) {
    auto full = [&](std::int64_t j) {
      return value(O::load(xb + o + j), O::load(gb + o + j), O::load_acc(mean + j), O::load_acc(scale + j),
                   SILU ? O::load_acc(shift + j) : V{}, O::load_acc(dx_xc + j), O::load_acc(dx_shift + j));
    };
    auto part = [&](std::int64_t j, std::int64_t n) {
      return value(O::load_n(xb + o + j, n), O::load_n(gb + o + j, n), O::load_acc_n(mean + j, n),
                   O::load_acc_n(scale + j, n), SILU ? O::load_acc_n(shift + j, n) : V{},
                   O::load_acc_n(dx_xc + j, n), O::load_acc_n(dx_shift + j, n));
    };
    write_row<T>(dxb + o, w, t.stream, full, part);
  };
  std::int64_t r = 0;
  if (st == w && (w < 8 * L || reinterpret_cast<std::uintptr_t>(dxb) % (sizeof(T) * L) != 0)) {  // as cl_apply
    A* ring = static_cast<A*>(t.scratch);  // the sums' scratch: they are done
    const A* rm = cl_ring(mean, w, L, ring);
    const A* rs = cl_ring(scale, w, L, ring + (w + L));
    const A* rb = SILU ? cl_ring(shift, w, L, ring + 2 * (w + L)) : nullptr;
    const A* r2 = cl_ring(dx_xc, w, L, ring + 3 * (w + L));
    const A* r3 = cl_ring(dx_shift, w, L, ring + 4 * (w + L));
    cl_flat<T>(dxb, rows * w, w, t.stream, [&](std::int64_t e, std::int64_t k, std::int64_t n) {
      const bool full = n == L;
      return value(full ? O::load(xb + e) : O::load_n(xb + e, n), full ? O::load(gb + e) : O::load_n(gb + e, n),
                   O::load_acc(rm + k), O::load_acc(rs + k), SILU ? O::load_acc(rb + k) : V{}, O::load_acc(r2 + k),
                   O::load_acc(r3 + k));
    });
    r = rows;
  } else if ((st * (std::int64_t)sizeof(T)) % 64 == 0 && !(t.stream && sizeof(T) * L < 64)) {
    // every row has the same alignment: four rows per load of the channel parameters
    // (not for streamed 16-bit rows: their half-line stores must fill each line in turn);
    // on rows of a few vectors it measured faster than row by row, unlike the
    // forward's apply (bench/results)
    std::int64_t h = w >= 8 * L ? align_head(dxb) : 0;  // short rows: not worth a split (as write_row)
    if (h > w) h = w;
    const std::int64_t body_end = h + (w - h) / L * L;
    const bool stream = t.stream && reinterpret_cast<std::uintptr_t>(dxb + h) % (sizeof(T) * L) == 0;
    const std::int64_t pf = rows_ahead<T>(t);
    for (; r + 4 <= rows; r += 4) {
      const std::int64_t o = r * st;
      auto edge = [&](std::int64_t j, std::int64_t n) {
        if (n <= 0) return;
        const V m = O::load_acc_n(mean + j, n), a = O::load_acc_n(scale + j, n);
        const V b = SILU ? O::load_acc_n(shift + j, n) : V{};
        const V kxc = O::load_acc_n(dx_xc + j, n), kshift = O::load_acc_n(dx_shift + j, n);
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st + j;
          O::store_n(dxb + ou, value(O::load_n(xb + ou, n), O::load_n(gb + ou, n), m, a, b, kxc, kshift), n);
        }
      };
      edge(0, h);
      for (std::int64_t j = h; j < body_end; j += L) {
        prefetch_block(pf, xb, r, rows, st, j);
        prefetch_block(pf, gb, r, rows, st, j);
        const V m = O::load_acc(mean + j), a = O::load_acc(scale + j);
        const V b = SILU ? O::load_acc(shift + j) : V{};
        const V kxc = O::load_acc(dx_xc + j), kshift = O::load_acc(dx_shift + j);
        for (int u = 0; u < 4; ++u) {
          const std::int64_t ou = o + u * st + j;
          put(dxb + ou, value(O::load(xb + ou), O::load(gb + ou), m, a, b, kxc, kshift), stream);
        }
      }
      edge(body_end, w - body_end);
    }
  }
  for (; r < rows; ++r) row(r * st);
  if (t.stream) stream_fence();
}

GN_KERNELS_END
