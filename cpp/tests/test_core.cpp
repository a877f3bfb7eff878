// Forward and backward against a double-precision reference: both layouts,
// spatial sizes from 1 to large, every dtype, parameters absent or present (in
// float32 or the data's dtype), SiLU, and the fused skip connection.
#include <cstdio>
#include <vector>

#include "test_util.hpp"

namespace gn = groupnorm;
using gt::Buf;
using gt::Rng;
using groupnorm::DType;

namespace {

struct Shape {
  std::int64_t N, C, G, S;
};

enum Params { kNone = 0, kWeightBias = 1, kWeightOnly = 2 };

struct Options {
  Params params = kWeightBias;
  bool silu = false;
  bool skip = false;
  bool skip_bias = false;
  bool param_same = false;  // param_dtype = dtype (else float32)
  double eps = 1e-5;
};

void run_case(const Shape& sh, bool cl, DType dt, const Options& o, std::uint64_t seed) {
  gn::Problem p;
  p.batch = sh.N; p.channels = sh.C; p.groups = sh.G; p.spatial = sh.S;
  p.channels_last = cl;
  p.eps = o.eps;
  p.activation = o.silu ? gn::Activation::silu : gn::Activation::none;
  p.dtype = dt;
  p.param_dtype = o.param_same ? dt : DType::float32;
  const std::string what = gt::describe(p) + (o.params == kNone ? " no-params" : o.params == kWeightOnly ? " weight-only" : "") +
                           (o.skip ? (o.skip_bias ? " skip+bias" : " skip") : "");
  const DType st = gn::stats_dtype(dt);
  const std::int64_t total = p.numel(), NG = p.batch * p.groups;
  Rng rng(seed);

  Buf x = gt::random_buf(dt, total, rng, -2.0, 3.0);
  Buf w = gt::random_buf(p.param_dtype, p.channels, rng, 0.5, 1.5);
  Buf b = gt::random_buf(p.param_dtype, p.channels, rng, -0.5, 0.5);
  Buf skip = gt::random_buf(dt, total, rng, -1.0, 1.0);
  Buf sb = gt::random_buf(p.param_dtype, p.channels, rng, -0.25, 0.25);
  Buf y(dt, total), sum_out(dt, total), mean(st, NG), rstd(st, NG);
  const Buf* wp = o.params != kNone ? &w : nullptr;
  const Buf* bp = o.params == kWeightBias ? &b : nullptr;

  gn::ForwardArgs fa;
  fa.x = x.data();
  fa.weight = wp ? w.data() : nullptr;
  fa.bias = bp ? b.data() : nullptr;
  fa.y = y.data();
  fa.mean = mean.data();
  fa.rstd = rstd.data();
  if (o.skip) {
    fa.skip = skip.data();
    fa.skip_bias = o.skip_bias ? sb.data() : nullptr;
    fa.sum_out = sum_out.data();
  }
  gn::Result r = gn::forward(p, fa);
  GT_CHECK(r.ok(), "%s: forward failed: %s", what.c_str(), r.message.c_str());
  if (!r.ok()) return;

  // What was normalized: x, or the rounded x + skip (+ skip_bias) from sum_out.
  const Buf* input = &x;
  if (o.skip) {
    double err = 0;
    for (std::int64_t n = 0; n < p.batch; ++n)
      for (std::int64_t c = 0; c < p.channels; ++c)
        for (std::int64_t s = 0; s < p.spatial; ++s) {
          const std::int64_t i = gt::at(p, n, c, s);
          const double want = x.get(i) + skip.get(i) + (o.skip_bias ? sb.get(c) : 0.0);
          err = std::fmax(err, std::fabs(sum_out.get(i) - want) / 4.0);
        }
    GT_CHECK(err <= gt::tol_for(dt), "%s: sum_out error %g", what.c_str(), err);
    input = &sum_out;
  }
  const gt::RefForward ref = gt::ref_forward(p, *input, wp, bp, nullptr, nullptr);
  const double ey = gt::max_rel_err(y, ref.y);
  const double em = gt::max_rel_err(mean, ref.mean);
  const double er = gt::max_rel_err(rstd, ref.rstd);
  GT_CHECK(ey <= gt::tol_for(dt), "%s: y error %g", what.c_str(), ey);
  GT_CHECK(em <= gt::tol_for(st), "%s: mean error %g", what.c_str(), em);
  GT_CHECK(er <= gt::tol_for(st), "%s: rstd error %g", what.c_str(), er);

  // Backward from the forward's own mean/rstd.
  Buf dy = gt::random_buf(dt, total, rng, -1.0, 1.0);
  Buf dx(dt, total), dw(p.param_dtype, p.channels), db(p.param_dtype, p.channels);
  dw.fill_bytes(0x7f);
  db.fill_bytes(0x7f);
  gn::BackwardArgs ba;
  ba.grad_y = dy.data();
  ba.x = input->data();
  ba.mean = mean.data();
  ba.rstd = rstd.data();
  ba.weight = wp ? w.data() : nullptr;
  ba.bias = bp ? b.data() : nullptr;
  ba.grad_x = dx.data();
  ba.grad_weight = dw.data();
  ba.grad_bias = db.data();
  r = gn::backward(p, ba);
  GT_CHECK(r.ok(), "%s: backward failed: %s", what.c_str(), r.message.c_str());
  if (!r.ok()) return;
  std::vector<double> m(NG), rs(NG), in(total);
  for (std::int64_t i = 0; i < NG; ++i) { m[i] = mean.get(i); rs[i] = rstd.get(i); }
  for (std::int64_t i = 0; i < total; ++i) in[i] = input->get(i);
  const gt::RefBackward rb = gt::ref_backward(p, dy, in, m, rs, wp, bp);
  const double edx = gt::max_rel_err(dx, rb.dx);
  const double edw = gt::max_rel_err(dw, rb.dw);
  const double edb = gt::max_rel_err(db, rb.db);
  // dx: the data's rounding; dw/db: the parameter dtype's rounding of a sum.
  const double tsum = std::fmax(gt::tol_for(p.param_dtype), 1e-5);
  GT_CHECK(edx <= 2 * gt::tol_for(dt), "%s: grad_x error %g", what.c_str(), edx);
  GT_CHECK(edw <= tsum, "%s: grad_weight error %g", what.c_str(), edw);
  GT_CHECK(edb <= tsum, "%s: grad_bias error %g", what.c_str(), edb);

  // Optional outputs really are optional: grad_x alone, then the sums alone.
  Buf dx2(dt, total), dw2(p.param_dtype, p.channels), db2(p.param_dtype, p.channels);
  gn::BackwardArgs only_dx = ba;
  only_dx.grad_x = dx2.data();
  only_dx.grad_weight = only_dx.grad_bias = nullptr;
  r = gn::backward(p, only_dx);
  GT_CHECK(r.ok() && dx2.same_bits(dx), "%s: grad_x alone differs (%s)", what.c_str(), r.message.c_str());
  gn::BackwardArgs only_sums = ba;
  only_sums.grad_x = nullptr;
  only_sums.grad_weight = dw2.data();
  only_sums.grad_bias = db2.data();
  r = gn::backward(p, only_sums);
  GT_CHECK(r.ok() && dw2.same_bits(dw) && db2.same_bits(db), "%s: grad_weight/bias alone differ (%s)",
           what.c_str(), r.message.c_str());

  // y may alias x; mean/rstd may be omitted.
  Buf inplace = x;
  gn::ForwardArgs fa2 = fa;
  fa2.x = inplace.data();
  fa2.y = inplace.data();
  fa2.mean = fa2.rstd = nullptr;
  if (o.skip) fa2.sum_out = nullptr;
  r = gn::forward(p, fa2);
  GT_CHECK(r.ok() && inplace.same_bits(y), "%s: in-place forward differs (%s)", what.c_str(), r.message.c_str());
}

}  // namespace

int main() {
  std::printf("isa %s (available: %s), %d threads\n", gn::active_isa(), gn::available_isas(), gn::get_num_threads());
  const Shape shapes[] = {
      {3, 6, 3, 1},      // no spatial dims
      {2, 8, 4, 7},      // small
      {2, 12, 3, 25},    // 5x5
      {1, 5, 5, 9},      // one channel per group (instance norm)
      {2, 7, 1, 3},      // one group (layer norm)
      {2, 64, 32, 33},
      {1, 3, 1, 1},      // one sample, one group, no spatial dims
  };
  const DType dtypes[] = {DType::float32, DType::float16, DType::bfloat16, DType::float64};
  std::uint64_t seed = 1;
  for (const Shape& sh : shapes)
    for (bool cl : {false, true})
      for (DType dt : dtypes) {
        Options o;
        run_case(sh, cl, dt, o, seed++);
        o.params = kNone;
        run_case(sh, cl, dt, o, seed++);
        o.params = kWeightOnly;
        o.silu = true;
        run_case(sh, cl, dt, o, seed++);
        o.params = kWeightBias;
        o.param_same = true;
        run_case(sh, cl, dt, o, seed++);
        o.skip = true;
        run_case(sh, cl, dt, o, seed++);
        o.skip_bias = true;
        o.silu = false;
        o.param_same = false;
        o.eps = 1e-3;
        run_case(sh, cl, dt, o, seed++);
      }
  // Large: many channels, long spatial, groups bigger than a tile.
  const Shape large[] = {
      {2, 32, 8, 4096},   // 64x64
      {1, 4, 2, 20000},   // spatial beyond one tile
      {2, 512, 32, 64},   // wide channels-last rows
      {1, 96, 3, 1},      // wide, no spatial dims
  };
  for (const Shape& sh : large)
    for (bool cl : {false, true})
      for (DType dt : {DType::float32, DType::float16, DType::bfloat16}) {
        Options o;
        o.silu = dt == DType::float16;
        o.skip = dt == DType::bfloat16;
        run_case(sh, cl, dt, o, seed++);
      }
  // Scratch is O(N*C + threads), never O(x): four times the spatial size must not
  // need more workspace (the many-tile schedules sum a chunk of tiles at a time).
  for (bool cl : {false, true})
    for (int threads : {1, 2, 3}) {
      groupnorm::Problem p;
      p.batch = 1; p.channels = 1024; p.groups = 1024; p.channels_last = cl;
      p.spatial = 1 << 18;
      const std::size_t f1 = groupnorm::forward_workspace_bytes(p, threads);
      const std::size_t b1 = groupnorm::backward_workspace_bytes(p, threads);
      p.spatial = 1 << 20;
      const std::size_t f4 = groupnorm::forward_workspace_bytes(p, threads);
      const std::size_t b4 = groupnorm::backward_workspace_bytes(p, threads);
      GT_CHECK(f4 <= f1 + 4096 && b4 <= b1 + 4096 && f4 < (8u << 20) && b4 < (16u << 20),
               "workspace grows with x (cl=%d, %d threads): forward %zu -> %zu, backward %zu -> %zu", (int)cl,
               threads, f1, f4, b1, b4);
    }
  gt::check_schedule_override();
  return gt::finish("test_core");
}
