// Part of the generic kernels (cpu/generic/): the channels-last forward
// kernels: moments (per-channel sums down the rows, four rows per visit of an
// accumulator; each channel's sum still runs row by row) and apply.
#pragma once

#include "channels_last_rows.hpp"
#include "moments.hpp"

GN_KERNELS_BEGIN

// Per-channel sums of d = x - shift[c] and d*d down the tile's rows into
// acc/acc2 (zeroed here), four rows per visit of an accumulator; each
// channel's sum still runs row by row.
template <class T, bool SKIP>
void cl_dev_sums(const Tile& t, const ClIn<T, SKIP>& in, const typename Ops<T>::A* shift, typename Ops<T>::A* acc,
                 typename Ops<T>::A* acc2) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const std::int64_t wf = w / L * L;  // full vectors
  std::memset(acc, 0, sizeof(A) * w);
  std::memset(acc2, 0, sizeof(A) * w);
  const std::int64_t pf = rows_ahead<T>(t);
  std::int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) {
      prefetch_block(pf, in.x, r, rows, st, j);
      if (SKIP) prefetch_block(pf, in.k, r, rows, st, j);
      const V m = O::load_acc(shift + j);
      V a = O::load_acc(acc + j), q = O::load_acc(acc2 + j);
      const V e0 = in.load(o, j) - m, e1 = in.load(o + st, j) - m;
      const V e2 = in.load(o + 2 * st, j) - m, e3 = in.load(o + 3 * st, j) - m;
      a += e0; q += e0 * e0;
      a += e1; q += e1 * e1;
      a += e2; q += e2 * e2;
      a += e3; q += e3 * e3;
      O::store_acc(acc + j, a);
      O::store_acc(acc2 + j, q);
    }
    if (wf < w) {
      const std::int64_t n = w - wf;
      const auto live = O::lanes_below(n);
      const V m = O::load_acc_n(shift + wf, n);
      V a = O::load_acc_n(acc + wf, n), q = O::load_acc_n(acc2 + wf, n);
      for (int u = 0; u < 4; ++u) {
        const V d = O::select(live, in.load_n(o + u * st, wf, n) - m, V{});
        a += d;
        q += d * d;
      }
      Store<A>::store_n(acc + wf, a, n);
      Store<A>::store_n(acc2 + wf, q, n);
    }
  }
  for (; r < rows; ++r) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < w; j += L) {
      const std::int64_t n = w - j < L ? w - j : L;
      const auto live = O::lanes_below(n);
      const V d = O::select(live, (n == L ? in.load(o, j) : in.load_n(o, j, n)) - O::load_acc_n(shift + j, n), V{});
      Store<A>::store_n(acc + j, O::load_acc_n(acc + j, n) + d, n);
      Store<A>::store_n(acc2 + j, O::load_acc_n(acc2 + j, n) + d * d, n);
    }
  }
}

// Group g's sums of deviations over its channels, in channel order.
template <class A> inline void cl_group_sums(const A* acc, const A* acc2, std::int64_t g, std::int64_t gw, double* sd,
                                             double* sq) {
  double a = 0, q = 0;
  for (std::int64_t c = 0; c < gw; ++c) {
    a += (double)acc[g * gw + c];
    q += (double)acc2[g * gw + c];
  }
  *sd = a;
  *sq = q;
}

// Exact two-pass: per-group tile means first, then deviations from them.
template <class T, bool SKIP> void cl_moments_exact(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const std::int64_t wf = w / L * L;
  A* acc = static_cast<A*>(t.scratch);  // w
  A* acc2 = acc + w;                    // w
  A* shift = acc2 + w;                  // w
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  std::memset(acc, 0, sizeof(A) * w);
  std::int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) {
      V a = O::load_acc(acc + j);
      a += in.load(o, j);
      a += in.load(o + st, j);
      a += in.load(o + 2 * st, j);
      a += in.load(o + 3 * st, j);
      O::store_acc(acc + j, a);
    }
    if (wf < w) {
      const std::int64_t n = w - wf;
      V a = O::load_acc_n(acc + wf, n);
      for (int q = 0; q < 4; ++q) a += in.load_n(o + q * st, wf, n);
      Store<A>::store_n(acc + wf, a, n);
    }
  }
  for (; r < rows; ++r) {
    const std::int64_t o = r * st;
    for (std::int64_t j = 0; j < wf; j += L) O::store_acc(acc + j, O::load_acc(acc + j) + in.load(o, j));
    if (wf < w) Store<A>::store_n(acc + wf, O::load_acc_n(acc + wf, w - wf) + in.load_n(o, wf, w - wf), w - wf);
  }
  const std::int64_t gw = t.group_width, ng = w / gw;
  const double count = (double)rows * (double)gw;
  for (std::int64_t g = 0; g < ng; ++g) {
    A s = 0;
    for (std::int64_t c = 0; c < gw; ++c) s += acc[g * gw + c];
    const A m = (A)((double)s / count);
    for (std::int64_t c = 0; c < gw; ++c) shift[g * gw + c] = m;
  }
  cl_dev_sums<T, SKIP>(t, in, shift, acc, acc2);
  for (std::int64_t g = 0; g < ng; ++g) {
    double sd, sq;
    cl_group_sums(acc, acc2, g, gw, &sd, &sq);
    out[g] = shifted_moments(count, (double)shift[g * gw], sd, sq);
  }
}

// One pass of per-channel sums shifted by each group's first element (row 0);
// a group that fails shift_ok() is redone alone with the exact two-pass sums,
// so a group's result never depends on its neighbours in the tile.
template <class T, bool SKIP> void cl_moments(const Tile& t, Moments* out) {
  typedef Ops<T> O;
  typedef typename O::A A;
  constexpr int L = O::L;
  const std::int64_t w = t.cols;
  A* acc = static_cast<A*>(t.scratch);  // w
  A* acc2 = acc + w;                    // w
  A* shift = acc2 + w;                  // w
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  const std::int64_t gw = t.group_width, ng = w / gw;
  for (std::int64_t j = 0; j < w; j += L) {  // row 0 as loaded, to pick each group's shift
    const std::int64_t n = w - j < L ? w - j : L;
    Store<A>::store_n(acc + j, n == L ? in.load(0, j) : in.load_n(0, j, n), n);
  }
  for (std::int64_t g = 0; g < ng; ++g)
    for (std::int64_t c = 0; c < gw; ++c) shift[g * gw + c] = acc[g * gw];
  cl_dev_sums<T, SKIP>(t, in, shift, acc, acc2);
  const double count = (double)t.rows * (double)gw;
  for (std::int64_t g = 0; g < ng; ++g) {
    double sd, sq;
    cl_group_sums(acc, acc2, g, gw, &sd, &sq);
    if (shift_ok(count, sd, sq)) {
      out[g] = shifted_moments(count, (double)shift[g * gw], sd, sq);
    } else {
      Tile one = t;
      one.cols = gw;
      one.x = static_cast<const T*>(t.x) + g * gw;
      if (t.skip) one.skip = static_cast<const T*>(t.skip) + g * gw;
      if (t.skip_bias) one.skip_bias = static_cast<const A*>(t.skip_bias) + g * gw;
      one.scratch = shift + w;  // past this tile's arrays: 3 * gw more
      cl_moments_exact<T, SKIP>(one, out + g);
    }
  }
}

template <class T, bool SKIP, bool SILU> void cl_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const std::int64_t w = t.cols, rows = t.rows, st = t.stride;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const ClIn<T, SKIP> in{static_cast<const T*>(t.x), static_cast<const T*>(t.skip),
                         static_cast<const A*>(t.skip_bias)};
  T* yb = static_cast<T*>(t.y);
  T* sob = static_cast<T*>(t.sum_out);
  auto row = [&](std::int64_t o) {
    auto full = [&](std::int64_t j) {
      V z = (in.load(o, j) - O::load_acc(mean + j)) * O::load_acc(scale + j) + O::load_acc(shift + j);
      return SILU ? O::silu(z) : z;
    };
    auto part = [&](std::int64_t j, std::int64_t n) {
      V z = (in.load_n(o, j, n) - O::load_acc_n(mean + j, n)) * O::load_acc_n(scale + j, n) +
            O::load_acc_n(shift + j, n);
      return SILU ? O::silu(z) : z;
    };
    write_row<T>(yb + o, w, t.stream, full, part);
  };
  std::int64_t r = 0;
  if (SKIP && sob) {
    // each vector is loaded once and both outputs written from it, so sum_out
    // may be x or skip itself (and y may be x or skip)
    for (; r < rows; ++r) {
      const std::int64_t o = r * st;
      T* so = sob + o;
      T* yo = yb + o;
      auto part = [&](std::int64_t j, std::int64_t n) {
        const V v = in.load_n(o, j, n);
        V z = (v - O::load_acc_n(mean + j, n)) * O::load_acc_n(scale + j, n) + O::load_acc_n(shift + j, n);
        if (SILU) z = O::silu(z);
        O::store_n(so + j, v, n);
        O::store_n(yo + j, z, n);
      };
      // full vectors of y on vector boundaries (as write_row), non-temporal
      // stores for big outputs whose addresses allow them
      std::int64_t j = w >= 8 * L ? align_head(yo) : 0;
      if (j > 0) part(0, j);
      const bool s_so = t.stream && reinterpret_cast<std::uintptr_t>(so + j) % (sizeof(T) * L) == 0;
      const bool s_y = t.stream && reinterpret_cast<std::uintptr_t>(yo + j) % (sizeof(T) * L) == 0;
      for (; j + L <= w; j += L) {
        const V v = in.load(o, j);
        V z = (v - O::load_acc(mean + j)) * O::load_acc(scale + j) + O::load_acc(shift + j);
        if (SILU) z = O::silu(z);
        put(so + j, v, s_so);
        put(yo + j, z, s_y);
      }
      if (j < w) part(j, w - j);
    }
  } else if (st == w && (w < 8 * L || reinterpret_cast<std::uintptr_t>(yb) % (sizeof(T) * L) != 0)) {
    // rows of a few vectors, or an output off the vector boundary: one flat
    // run (wide aligned rows go row by row, below: that measured faster than
    // the flat run in float16, and a four-row walk, one load of the channel
    // parameters per four rows, slower than both)
    A* ring = static_cast<A*>(t.scratch);
    const A* rm = cl_ring(mean, w, L, ring);
    const A* rs = cl_ring(scale, w, L, ring + (w + L));
    const A* rb = cl_ring(shift, w, L, ring + 2 * (w + L));
    const A* rk = in.sb ? cl_ring(in.sb, w, L, ring + 3 * (w + L)) : nullptr;
    cl_flat<T>(yb, rows * w, w, t.stream, [&](std::int64_t e, std::int64_t k, std::int64_t n) {
      const bool full = n == L;
      V v = full ? O::load(in.x + e) : O::load_n(in.x + e, n);
      if (SKIP) {
        v = v + (full ? O::load(in.k + e) : O::load_n(in.k + e, n));
        if (rk) v = v + O::load_acc(rk + k);
        v = Store<T>::round_trip(v);
      }
      V z = (v - O::load_acc(rm + k)) * O::load_acc(rs + k) + O::load_acc(rb + k);
      return SILU ? O::silu(z) : z;
    });
  } else {
    for (; r < rows; ++r) row(r * st);
  }
  if (t.stream) stream_fence();
}

GN_KERNELS_END
