// The split-phase C++ API: moments of tiles, merge, apply with given stats,
// backward sums; against the one-call path (bitwise for one tile, within
// float32 rounding for many) and over thread counts and ISAs (bitwise).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace gn = groupnorm;

namespace {

// rows [r0, r1) of every sample of a channels-last (N, S, C) tensor, or spatial
// columns [r0, r1) of every channel of a channels-first (N, C, S) one, contiguous
template <class T>
std::vector<T> tile_of(const std::vector<T>& x, std::int64_t N, std::int64_t C, std::int64_t S, bool cl,
                       std::int64_t r0, std::int64_t r1) {
  std::vector<T> t;
  for (std::int64_t n = 0; n < N; ++n) {
    if (cl) {
      t.insert(t.end(), x.begin() + (n * S + r0) * C, x.begin() + (n * S + r1) * C);
    } else {
      for (std::int64_t c = 0; c < C; ++c)
        t.insert(t.end(), x.begin() + (n * C + c) * S + r0, x.begin() + (n * C + c) * S + r1);
    }
  }
  return t;
}

template <class T>
void put_tile(std::vector<T>& y, const std::vector<T>& t, std::int64_t N, std::int64_t C, std::int64_t S, bool cl,
              std::int64_t r0, std::int64_t r1) {
  const std::int64_t L = r1 - r0;
  for (std::int64_t n = 0; n < N; ++n) {
    if (cl) {
      std::copy(t.begin() + n * L * C, t.begin() + (n + 1) * L * C, y.begin() + (n * S + r0) * C);
    } else {
      for (std::int64_t c = 0; c < C; ++c)
        std::copy(t.begin() + (n * C + c) * L, t.begin() + (n * C + c + 1) * L, y.begin() + (n * C + c) * S + r0);
    }
  }
}

template <class T> bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <class T> double max_rel(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0, scale = 1;
  for (std::size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs((double)b[i]));
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs((double)a[i] - (double)b[i]));
  return m / scale;
}

template <class T> void run_case(bool cl, std::int64_t N, std::int64_t C, std::int64_t G, std::int64_t S, int ntiles,
                                 unsigned seed) {
  typedef typename std::conditional<std::is_same<T, double>::value, double, float>::type St;
  const double tol = std::is_same<T, double>::value ? 1e-12 : 3e-5;
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(5.0, 2.0);
  std::vector<T> x(N * C * S), dy(N * C * S), w(C), b(C);
  for (auto& v : x) v = (T)nd(rng);
  for (auto& v : dy) v = (T)(nd(rng) - 5.0);
  for (auto& v : w) v = (T)(nd(rng) / 4.0);
  for (auto& v : b) v = (T)(nd(rng) / 4.0 - 1.0);
  gn::Problem p;
  p.batch = N; p.channels = C; p.groups = G; p.spatial = S; p.channels_last = cl;
  p.activation = gn::Activation::silu;
  p.dtype = p.param_dtype = gn::dtype_of<T>();
  const std::string what = std::string(cl ? "cl " : "cf ") + gn::dtype_name(p.dtype) + " S=" + std::to_string(S) +
                           " tiles=" + std::to_string(ntiles);

  // the one-call forward and backward
  std::vector<T> y1(x.size()), gx1(x.size()), gw1(C), gb1(C);
  std::vector<St> mean1(N * G), rstd1(N * G);
  gn::ForwardArgs fa;
  fa.x = x.data(); fa.weight = w.data(); fa.bias = b.data(); fa.y = y1.data(); fa.mean = mean1.data();
  fa.rstd = rstd1.data();
  GT_CHECK(gn::forward(p, fa).ok(), "forward %s", what.c_str());
  gn::BackwardArgs ba;
  ba.grad_y = dy.data(); ba.x = x.data(); ba.mean = mean1.data(); ba.rstd = rstd1.data(); ba.weight = w.data();
  ba.bias = b.data(); ba.grad_x = gx1.data(); ba.grad_weight = gw1.data(); ba.grad_bias = gb1.data();
  GT_CHECK(gn::backward(p, ba).ok(), "backward %s", what.c_str());

  // tiles: uneven cuts of the spatial extent (some may be empty)
  std::vector<std::int64_t> edges{0, S};
  std::uniform_int_distribution<std::int64_t> cut(0, S);
  for (int i = 1; i < ntiles; ++i) edges.push_back(cut(rng));
  std::sort(edges.begin(), edges.end());
  const std::int64_t NG = N * G;
  std::vector<std::vector<std::int64_t>> cnt(ntiles, std::vector<std::int64_t>(NG));
  std::vector<std::vector<double>> mu(ntiles, std::vector<double>(NG)), m2(ntiles, std::vector<double>(NG));
  std::vector<const std::int64_t*> pc;
  std::vector<const double*> pm, pq;
  for (int i = 0; i < ntiles; ++i) {
    gn::Problem q = p;
    q.spatial = edges[i + 1] - edges[i];
    const std::vector<T> xt = tile_of(x, N, C, S, cl, edges[i], edges[i + 1]);
    gn::MomentsArgs ma;
    ma.x = xt.data(); ma.count = cnt[i].data(); ma.mean = mu[i].data(); ma.m2 = m2[i].data();
    GT_CHECK(gn::moments(q, ma).ok(), "moments %s", what.c_str());
    pc.push_back(cnt[i].data()); pm.push_back(mu[i].data()); pq.push_back(m2[i].data());
  }
  std::vector<std::int64_t> count(NG);
  std::vector<double> mean(NG), msq(NG);
  GT_CHECK(gn::merge_moments(NG, ntiles, pc.data(), pm.data(), pq.data(), count.data(), mean.data(), msq.data()).ok(),
           "merge %s", what.c_str());
  std::vector<St> smean(NG), srstd(NG);
  GT_CHECK(gn::mean_rstd(NG, count.data(), mean.data(), msq.data(), p.eps, p.dtype, smean.data(), srstd.data()).ok(),
           "mean_rstd");
  GT_CHECK(max_rel(smean, mean1) <= tol && max_rel(srstd, rstd1) <= tol, "merged stats %s: %g %g", what.c_str(),
           max_rel(smean, mean1), max_rel(srstd, rstd1));
  if (ntiles == 1) GT_CHECK(same_bits(smean, mean1) && same_bits(srstd, rstd1), "one tile stats bitwise %s", what.c_str());

  // apply each tile with the merged moments; backward sums, merge, dx
  std::vector<T> y(x.size(), (T)NAN), gx(x.size(), (T)NAN);
  gn::GivenStats gs;
  gs.count = count.data(); gs.mean = mean.data(); gs.m2 = msq.data();
  std::vector<std::vector<double>> sd(ntiles, std::vector<double>(N * C)), sq(ntiles, std::vector<double>(N * C));
  std::vector<const double*> psd, psq;
  for (int i = 0; i < ntiles; ++i) {
    gn::Problem q = p;
    q.spatial = edges[i + 1] - edges[i];
    const std::vector<T> xt = tile_of(x, N, C, S, cl, edges[i], edges[i + 1]);
    const std::vector<T> dyt = tile_of(dy, N, C, S, cl, edges[i], edges[i + 1]);
    std::vector<T> yt(xt.size());
    gn::ForwardArgs ta = fa;
    ta.x = xt.data(); ta.y = yt.data(); ta.mean = nullptr; ta.rstd = nullptr;
    GT_CHECK(gn::forward(q, ta, gs).ok(), "apply %s", what.c_str());
    put_tile(y, yt, N, C, S, cl, edges[i], edges[i + 1]);
    gn::BackwardArgs tb = ba;
    tb.grad_y = dyt.data(); tb.x = xt.data(); tb.mean = smean.data(); tb.rstd = srstd.data();
    GT_CHECK(gn::backward_sums(q, tb, sd[i].data(), sq[i].data()).ok(), "backward_sums %s", what.c_str());
    psd.push_back(sd[i].data()); psq.push_back(sq[i].data());
  }
  std::vector<double> dz(N * C), dzx(N * C);
  GT_CHECK(gn::merge_backward_sums(N * C, ntiles, psd.data(), psq.data(), dz.data(), dzx.data()).ok(), "merge sums");
  std::vector<T> gw(C), gb(C);
  for (int i = 0; i < ntiles; ++i) {
    gn::Problem q = p;
    q.spatial = edges[i + 1] - edges[i];
    const std::vector<T> xt = tile_of(x, N, C, S, cl, edges[i], edges[i + 1]);
    const std::vector<T> dyt = tile_of(dy, N, C, S, cl, edges[i], edges[i + 1]);
    std::vector<T> gxt(xt.size());
    gn::BackwardArgs tb = ba;
    tb.grad_y = dyt.data(); tb.x = xt.data(); tb.mean = smean.data(); tb.rstd = srstd.data();
    tb.grad_x = gxt.data(); tb.grad_weight = gw.data(); tb.grad_bias = gb.data();
    GT_CHECK(gn::backward(q, tb, dz.data(), dzx.data(), S).ok(), "backward with sums %s", what.c_str());
    put_tile(gx, gxt, N, C, S, cl, edges[i], edges[i + 1]);
  }
  if (ntiles == 1) {
    GT_CHECK(same_bits(y, y1), "one tile y bitwise %s", what.c_str());
    GT_CHECK(same_bits(gx, gx1) && same_bits(gw, gw1) && same_bits(gb, gb1), "one tile grads bitwise %s",
             what.c_str());
  }
  GT_CHECK(max_rel(y, y1) <= tol, "tiled y %s: %g", what.c_str(), max_rel(y, y1));
  GT_CHECK(max_rel(gx, gx1) <= 10 * tol, "tiled grad_x %s: %g", what.c_str(), max_rel(gx, gx1));
  GT_CHECK(max_rel(gw, gw1) <= 10 * tol && max_rel(gb, gb1) <= 10 * tol, "tiled grad_w/b %s: %g %g", what.c_str(),
           max_rel(gw, gw1), max_rel(gb, gb1));
}

// moments of one tile are bitwise the same for any thread count and ISA
void determinism() {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(1.0f, 3.0f);
  gn::Problem p;
  p.batch = 2; p.channels = 64; p.groups = 8; p.spatial = 3000;
  std::vector<float> x(p.numel());
  for (auto& v : x) v = nd(rng);
  std::vector<std::int64_t> c0(16), c1(16);
  std::vector<double> m0(16), m1(16), q0(16), q1(16);
  gn::MomentsArgs a;
  a.x = x.data(); a.count = c0.data(); a.mean = m0.data(); a.m2 = q0.data();
  GT_CHECK(gn::moments(p, a).ok(), "moments");
  {  // a caller workspace of forward_workspace_bytes() serves moments and apply
    for (int t : {1, 2, 4}) {
      std::vector<char> ws(gn::forward_workspace_bytes(p, t));
      gn::Exec ex;
      ex.num_threads = t; ex.workspace = ws.data(); ex.workspace_bytes = ws.size();
      a.count = c1.data(); a.mean = m1.data(); a.m2 = q1.data();
      GT_CHECK(gn::moments(p, a, ex).ok(), "moments in a workspace, %d threads", t);
      GT_CHECK(same_bits(m0, m1) && same_bits(q0, q1), "moments in a workspace");
      std::vector<float> y(x.size());
      gn::ForwardArgs f;
      f.x = x.data(); f.y = y.data();
      gn::GivenStats g;
      g.count = c1.data(); g.mean = m1.data(); g.m2 = q1.data();
      GT_CHECK(gn::forward(p, f, g, ex).ok(), "apply in a workspace, %d threads", t);
    }
  }
  std::string isas = gn::available_isas();
  for (std::size_t s = 0; s <= isas.size();) {
    const std::size_t e = std::min(isas.find(',', s), isas.size());
    const std::string isa = isas.substr(s, e - s);
    s = e + 1;
    GT_CHECK(gn::set_isa(isa.c_str()), "set_isa %s", isa.c_str());
    for (int t : {1, 2, 3, 5}) {
      gn::Exec ex;
      ex.num_threads = t;
      a.count = c1.data(); a.mean = m1.data(); a.m2 = q1.data();
      GT_CHECK(gn::moments(p, a, ex).ok(), "moments");
      GT_CHECK(same_bits(c0, c1) && same_bits(m0, m1) && same_bits(q0, q1), "moments bitwise (%s, %d threads)",
               isa.c_str(), t);
    }
  }
}

void dtype_rules() {
  using D = gn::DType;
  const D f32 = D::float32, f64 = D::float64, f16 = D::float16, bf = D::bfloat16;
  GT_CHECK(gn::param_dtype_for(f16, nullptr, 0) == f32 && gn::param_dtype_for(f64, nullptr, 0) == f64, "none");
  const D a[] = {f16, f16}, b[] = {f32, f16}, c[] = {f64, f32}, d[] = {bf, f16}, e[] = {f64};
  GT_CHECK(gn::param_dtype_for(f16, a, 2) == f16, "all x's dtype");
  GT_CHECK(gn::param_dtype_for(f16, b, 2) == f32, "mixed f32/f16 -> f32");
  GT_CHECK(gn::param_dtype_for(f64, c, 2) == f64, "float64 data with a float64 parameter");
  GT_CHECK(gn::param_dtype_for(f32, c, 2) == f32, "float32 data: float32");
  GT_CHECK(gn::param_dtype_for(f16, d, 2) == f32, "two half types -> f32");
  GT_CHECK(gn::param_dtype_for(bf, e, 1) == f32, "float64 params of bfloat16 data -> f32");
  for (D x : {f32, f64, f16, bf}) {  // whatever the rule picks, validate() accepts
    for (const D* p : {a, b, c, d, e}) {
      gn::Problem q;
      q.batch = 1; q.channels = 2; q.groups = 1; q.dtype = x;
      q.param_dtype = gn::param_dtype_for(x, p, p == e ? 1 : 2);
      GT_CHECK(gn::validate(q).ok(), "param dtype %s for %s data", gn::dtype_name(q.param_dtype), gn::dtype_name(x));
    }
  }
}

// Counts merge as integers: exact above 2^53, an overflow is an error, a
// negative count is rejected, and nothing is written on error.
void counts() {
  const std::int64_t big = (std::int64_t(1) << 53) + 1, huge = std::int64_t(1) << 62;
  std::int64_t c1[2] = {big, 3}, c2[2] = {big, 4};
  double m1[2] = {1.0, 2.0}, q1[2] = {0.0, 1.0};
  const std::int64_t* pc[2] = {c1, c2};
  const double* pm[2] = {m1, m1};
  const double* pq[2] = {q1, q1};
  std::int64_t out_c[2] = {-7, -7};
  double out_m[2] = {-7, -7}, out_q[2] = {-7, -7};
  GT_CHECK(gn::merge_moments(2, 2, pc, pm, pq, out_c, out_m, out_q).ok(), "merge big counts");
  GT_CHECK(out_c[0] == 2 * big && out_c[1] == 7, "merged counts are exact integers");
  std::int64_t h[2] = {huge, 1};
  const std::int64_t* ph[2] = {h, h};
  out_c[0] = out_c[1] = -7;
  GT_CHECK(gn::merge_moments(2, 2, ph, pm, pq, out_c, out_m, out_q).status == gn::Status::size_overflow,
           "a merged count past int64 is an error");
  GT_CHECK(out_c[0] == -7 && out_c[1] == -7, "nothing written on overflow");
  std::int64_t neg[2] = {3, -1};
  const std::int64_t* pn[1] = {neg};
  GT_CHECK(gn::merge_moments(2, 1, pn, pm, pq, out_c, out_m, out_q).status == gn::Status::invalid_size,
           "a negative count is an error");
  GT_CHECK(out_c[0] == -7, "nothing written on a negative count");
  double mo[2], ro[2];
  GT_CHECK(gn::mean_rstd(2, neg, m1, q1, 1e-5, gn::DType::float64, mo, ro).status == gn::Status::invalid_size,
           "mean_rstd rejects a negative count");
}

void errors() {
  gn::Problem p;
  p.batch = 1; p.channels = 4; p.groups = 2; p.spatial = 5;
  std::vector<float> x(20), y(20, NAN);
  std::int64_t cnt[2];
  double mu[2], q[2];
  gn::MomentsArgs a;
  a.x = x.data();
  GT_CHECK(gn::moments(p, a).status == gn::Status::null_pointer, "moments without outputs");
  a.count = cnt; a.mean = mu; a.m2 = q;
  p.groups = 3;
  GT_CHECK(gn::moments(p, a).status == gn::Status::invalid_groups, "bad groups");
  p.groups = 2;
  GT_CHECK(gn::moments(p, a).ok(), "moments");
  gn::ForwardArgs f;
  f.x = x.data(); f.y = y.data();
  gn::GivenStats g;
  float sm[2] = {0, 0}, sr[2] = {1, 1};
  g.count = cnt; g.mean = mu; g.m2 = q; g.stats_mean = sm; g.stats_rstd = sr;
  GT_CHECK(gn::forward(p, f, g).status == gn::Status::invalid_combination, "both kinds of stats");
  g.count = nullptr;
  g.mean = nullptr; g.m2 = nullptr; g.stats_rstd = nullptr;
  GT_CHECK(gn::forward(p, f, g).status == gn::Status::null_pointer, "rstd missing");
  GT_CHECK(std::isnan(y[0]) && std::isnan(y[19]), "nothing written on error");
  const std::int64_t* pc[1] = {nullptr};
  const double* pm[1] = {mu};
  GT_CHECK(gn::merge_moments(2, 1, pc, pm, pm, cnt, mu, q).status == gn::Status::null_pointer, "merge null part");
  counts();
  double d[4], e[4];
  gn::BackwardArgs b;
  b.grad_y = x.data(); b.x = x.data(); b.mean = sm; b.rstd = sr;
  GT_CHECK(gn::backward(p, b, d, e, 4).status == gn::Status::invalid_size, "total_spatial < spatial");
}

}  // namespace

int main() {
  for (bool cl : {false, true}) {
    for (int nt : {1, 2, 5, 17}) {
      run_case<float>(cl, 2, 12, 3, 301, nt, 100 + nt);
      run_case<double>(cl, 3, 8, 4, 97, nt, 200 + nt);
    }
    run_case<float>(cl, 1, 8, 1, 70000, 3, 300);  // groups over many kernel tiles
  }
  determinism();
  dtype_rules();
  errors();
  gt::check_schedule_override();
  return gt::finish("test_split");
}
