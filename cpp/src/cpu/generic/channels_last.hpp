// Part of cpu/generic.hpp: channels-last kernels: moments, apply, backward sums, backward apply.
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

// ================================================================ channels-last
// The channels-last sums (moments, backward sums) walk four rows side by side
// (one load of the per-channel accumulators serves four rows; the apply
// passes walk a tile as one flat run, cl_flat), an order the
// hardware prefetchers follow poorly: four streams at once, a new 4 KB page
// every few rows. With Tile::prefetch_rows, the lines of the four rows `ahead`
// rows further on, at column j, are requested into L2 as the walk goes
// (channels-last resnet_gn forward: 1.8-2.2x -> 1.0-1.3x of a copy). A hint
// only: results do not change.
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
    // run (wide aligned rows go row by row, below: measured 8-10% faster
    // than the flat run in float16, and a four-row walk, one load of the
    // channel parameters per four rows, 3-10% slower than both)
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
    // on rows of a few vectors it measured faster than row by row (vol3d, 32 channels:
    // 31 vs 44 ms at 1 thread), unlike the forward's apply
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
