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
  // sums of d = x - shift and d*d, two pairs of accumulators (no register
  // spills on 16-register ISAs)
  void dev_sums(A shift, double* sd, double* sq) const {
    const V mv = splat<V>(shift);
    V d0 = {}, d1 = {}, q0 = {}, q1 = {};
    for (std::int64_t r = 0; r < rows; ++r) {
      std::int64_t i = 0;
      for (; i + 2 * L <= cols; i += 2 * L) {
        const V a0 = at(r, i) - mv, a1 = at(r, i + L) - mv;
        d0 += a0; q0 += a0 * a0;
        d1 += a1; q1 += a1 * a1;
      }
      for (; i < cols; i += L) {
        const std::int64_t n = cols - i;
        V a0 = (n >= L ? at(r, i) : at_n(r, i, n)) - mv;
        if (n < L) a0 = O::select(O::lanes_below(n), a0, V{});
        d0 += a0; q0 += a0 * a0;
      }
    }
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

template <class T, bool SKIP, bool SILU> void cf_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef In<T, SKIP> I;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* sb = static_cast<const A*>(t.skip_bias);
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* k = SKIP ? static_cast<const T*>(t.skip) + r * stride : nullptr;
    T* y = static_cast<T*>(t.y) + r * stride;
    T* so = at<T>(t.sum_out, r * stride);
    const V bias = splat<V>(sb ? sb[r] : A(0));
    const V* b = sb ? &bias : nullptr;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    std::int64_t i = 0;
    if (SKIP && so) {
      for (; i + L <= cols; i += L) {
        const V v = I::load(x + i, k + i, b);
        V z = (v - mv) * av + bv;
        if (SILU) z = O::silu(z);
        O::store(so + i, v);
        O::store(y + i, z);
      }
    } else {
      auto full = [&](std::int64_t j) {
        V z = (I::load(x + j, k + j, b) - mv) * av + bv;
        return SILU ? O::silu(z) : z;
      };
      auto part = [&](std::int64_t j, std::int64_t n) {
        V z = (I::load_n(x + j, k + j, b, n) - mv) * av + bv;
        return SILU ? O::silu(z) : z;
      };
      write_row<T>(y, cols, t.stream, full, part);
      continue;
    }
    if (i < cols) {
      const std::int64_t n = cols - i;
      const V v = I::load_n(x + i, k + i, b, n);
      V z = (v - mv) * av + bv;
      if (SILU) z = O::silu(z);
      if (so) O::store_n(so + i, v, n);
      O::store_n(y + i, z, n);
    }
  }
  if (t.stream) stream_fence();
}

template <class T, bool SILU> void cf_backward_sums(const Tile& t, double* db, double* ds) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* g = static_cast<const T*>(t.dy) + r * stride;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    V b0 = {}, b1 = {}, s0 = {}, s1 = {};
    std::int64_t i = 0;
    for (; i + 2 * L <= cols; i += 2 * L) {
      const V xc0 = O::load(x + i) - mv, xc1 = O::load(x + i + L) - mv;
      V g0 = O::load(g + i), g1 = O::load(g + i + L);
      if (SILU) {
        g0 = g0 * O::dsilu(xc0 * av + bv);
        g1 = g1 * O::dsilu(xc1 * av + bv);
      }
      b0 += g0; s0 += g0 * xc0;
      b1 += g1; s1 += g1 * xc1;
    }
    for (; i < cols; i += L) {
      const std::int64_t n = cols - i < L ? cols - i : L;
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      const auto live = O::lanes_below(n);
      gg = O::select(live, gg, V{});
      b0 += gg; s0 += O::select(live, gg * xc, V{});
    }
    db[r] += O::hsum(b0 + b1);
    ds[r] += O::hsum(s0 + s1);
  }
}

template <class T, bool SILU> void cf_backward_apply(const Tile& t) {
  typedef Ops<T> O;
  typedef typename O::A A;
  typedef typename O::V V;
  constexpr int L = O::L;
  const A* mean = static_cast<const A*>(t.mean);
  const A* scale = static_cast<const A*>(t.scale);
  const A* shift = static_cast<const A*>(t.shift);
  const A* c2 = static_cast<const A*>(t.c2);
  const A* c3 = static_cast<const A*>(t.c3);
  const std::int64_t rows = t.rows, cols = t.cols, stride = t.stride;
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = static_cast<const T*>(t.x) + r * stride;
    const T* g = static_cast<const T*>(t.dy) + r * stride;
    T* dx = static_cast<T*>(t.dx) + r * stride;
    const V mv = splat<V>(mean[r]), av = splat<V>(scale[r]), bv = splat<V>(shift[r]);
    const V c2v = splat<V>(c2[r]), c3v = splat<V>(c3[r]);
    auto full = [&](std::int64_t i) {
      const V xc = O::load(x + i) - mv;
      V gg = O::load(g + i);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + c2v * xc) + c3v;
    };
    auto part = [&](std::int64_t i, std::int64_t n) {
      const V xc = O::load_n(x + i, n) - mv;
      V gg = O::load_n(g + i, n);
      if (SILU) gg = gg * O::dsilu(xc * av + bv);
      return (av * gg + c2v * xc) + c3v;
    };
    write_row<T>(dx, cols, t.stream, full, part);
  }
  if (t.stream) stream_fence();
}
