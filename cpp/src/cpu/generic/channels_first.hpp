// Part of cpu/generic.hpp: channels-first kernels: moments, apply, backward sums, backward apply.
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

// ================================================================ channels-first
// Tile rows are channels, each row `cols` contiguous elements.
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

// Moments from sums of deviations from `shift`.
inline Moments shifted_moments(double n, double shift, double sd, double q) {
  Moments mo;
  mo.n = n;
  mo.mean = shift + sd / n;
  mo.m2 = q - sd * sd / n;
  if (mo.m2 < 0) mo.m2 = 0;  // rounding; NaN stays NaN
  return mo;
}

// Accept moments from sums shifted by K when the shift was close to the mean:
// n*(mean-K)^2 <= 64*M2 keeps the cancellation in M2 = q - sd^2/n below
// 6 bits. Otherwise the caller falls back to the exact two-pass sums.
inline bool shift_ok(double n, double sd, double q) {
  const double m2 = q - sd * sd / n;
  return !(sd * sd / n > 64.0 * m2);  // NaN data: accepted (stays NaN)
}

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
