// Bitwise reproducibility. For each problem, every run must give exactly the
// bits of the first one (ISA of highest rank, one thread, default parallel-for):
//   - every instruction set this CPU and build can run (set_isa),
//   - 1, 2, 3 and 4 threads,
//   - an engine's own parallel-for: a std::thread pool, and a serial loop that
//     runs the tasks last first,
//   - one sample at a time instead of the whole batch (y, mean, rstd, grad_x).
#include <sstream>
#include <string>
#include <vector>

#include "run_util.hpp"

namespace gn = groupnorm;
using gt::Buf;
using gt::Data;
using gt::Outputs;
using groupnorm::DType;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string t; std::getline(ss, t, ',');) out.push_back(t);
  return out;
}

// The slice of sample n of a per-sample array (elements per sample: per).
Buf slice(const Buf& b, std::int64_t n, std::int64_t per) {
  Buf s(b.t, per);
  const std::size_t es = gn::dtype_size(b.t);
  std::copy(b.bytes.begin() + n * per * es, b.bytes.begin() + (n + 1) * per * es, s.bytes.begin());
  return s;
}

Data sample(const Data& d, std::int64_t n) {
  Data s = d;
  s.p.batch = 1;
  const std::int64_t per = d.p.channels * d.p.spatial;
  s.x = slice(d.x, n, per);
  s.skip = slice(d.skip, n, per);
  s.dy = slice(d.dy, n, per);
  return s;
}

void check_problem(const gn::Problem& p, bool use_skip, const std::vector<std::string>& isas, std::uint64_t seed) {
  const Data d = gt::make_data(p, seed);
  const std::string what = gt::describe(p) + (use_skip ? " skip" : "");
  GT_CHECK(gn::set_isa(isas[0].c_str()), "set_isa(%s)", isas[0].c_str());
  gn::Exec one;
  one.num_threads = 1;
  const Outputs base = gt::run(d, use_skip, one);
  GT_CHECK(base.fwd.ok() && base.bwd.ok(), "%s: %s / %s", what.c_str(), base.fwd.message.c_str(),
           base.bwd.message.c_str());
  if (!base.fwd.ok() || !base.bwd.ok()) return;

  for (const std::string& isa : isas) {
    GT_CHECK(gn::set_isa(isa.c_str()), "set_isa(%s)", isa.c_str());
    GT_CHECK(isa == gn::active_isa(), "active_isa %s after set_isa(%s)", gn::active_isa(), isa.c_str());
    for (int t = 1; t <= 4; ++t) {
      gn::Exec e;
      e.num_threads = t;
      const Outputs o = gt::run(d, use_skip, e);
      GT_CHECK(o.fwd.ok() && o.bwd.ok() && o.same_bits(base), "%s: isa %s, %d threads differ:%s", what.c_str(),
               isa.c_str(), t, o.diff(base).c_str());
    }
    gt::ThreadEngine pool;
    pool.threads = 4;
    gn::Exec ep;
    ep.num_threads = 4;
    ep.parallel_for = &gt::ThreadEngine::parallel_for;
    ep.parallel_ctx = &pool;
    const Outputs op = gt::run(d, use_skip, ep);
    GT_CHECK(op.fwd.ok() && op.bwd.ok() && op.same_bits(base), "%s: isa %s, thread-pool engine differs:%s",
             what.c_str(), isa.c_str(), op.diff(base).c_str());
    gt::ReverseEngine rev;
    gn::Exec er;
    er.num_threads = 3;
    er.parallel_for = &gt::ReverseEngine::parallel_for;
    er.parallel_ctx = &rev;
    const Outputs orv = gt::run(d, use_skip, er);
    GT_CHECK(orv.fwd.ok() && orv.bwd.ok() && orv.same_bits(base), "%s: isa %s, reverse engine differs:%s",
             what.c_str(), isa.c_str(), orv.diff(base).c_str());
  }

  // Batch invariance: each sample alone gives the same bits as in the batch.
  GT_CHECK(gn::set_isa(isas[0].c_str()), "set_isa(%s)", isas[0].c_str());
  if (p.batch > 1) {
    const std::int64_t per = p.channels * p.spatial;
    for (std::int64_t n = 0; n < p.batch; ++n) {
      const Outputs o = gt::run(sample(d, n), use_skip);
      const bool same = o.y.same_bits(slice(base.y, n, per)) && o.mean.same_bits(slice(base.mean, n, p.groups)) &&
                        o.rstd.same_bits(slice(base.rstd, n, p.groups)) && o.dx.same_bits(slice(base.dx, n, per));
      GT_CHECK(o.fwd.ok() && o.bwd.ok() && same, "%s: sample %lld alone differs from the batch", what.c_str(),
               (long long)n);
    }
  }
}

}  // namespace

int main() {
  const std::vector<std::string> isas = split(gn::available_isas());
  std::printf("available isas: %s\n", gn::available_isas());
  GT_CHECK(!isas.empty() && isas.back() == "portable", "portable is always available: %s", gn::available_isas());
  GT_CHECK(!gn::set_isa("no-such-isa"), "set_isa accepts an unknown name");
  GT_CHECK(!gn::set_isa(nullptr), "set_isa accepts null");

  struct Shape { std::int64_t N, C, G, S; };
  const Shape shapes[] = {
      {5, 64, 16, 1},      // small: runs on the calling thread
      {2, 32, 8, 1024},    // a few sets per thread
      {1, 8, 2, 20000},    // groups larger than a tile: split over threads
      {3, 96, 12, 49},     // odd sizes
      {4, 320, 32, 256},   // wide channels-last bands
      {64, 512, 32, 1},    // no spatial dims, many samples
  };
  std::uint64_t seed = 100;
  int k = 0;
  for (const Shape& sh : shapes)
    for (bool cl : {false, true})
      for (DType dt : {DType::float32, DType::float16, DType::bfloat16, DType::float64}) {
        gn::Problem p;
        p.batch = sh.N; p.channels = sh.C; p.groups = sh.G; p.spatial = sh.S;
        p.channels_last = cl;
        p.dtype = dt;
        p.param_dtype = (k % 2) ? dt : DType::float32;
        p.activation = (k % 3 == 1) ? gn::Activation::silu : gn::Activation::none;
        check_problem(p, /*use_skip=*/k % 4 == 2, isas, seed++);
        ++k;
      }
  gn::set_isa(isas[0].c_str());
  gt::check_schedule_override();
  return gt::finish("test_determinism");
}
