// Shared by test_determinism and gn_digest: one forward + backward run of a
// problem on fixed data, and engine-style parallel-fors.
#pragma once

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "test_util.hpp"

namespace gt {

struct Data {
  groupnorm::Problem p;
  Buf x, w, b, skip, skip_bias, dy;
};

inline Data make_data(const groupnorm::Problem& p, std::uint64_t seed) {
  Data d;
  d.p = p;
  Rng rng(seed);
  const std::int64_t n = p.numel();
  d.x = random_buf(p.dtype, n, rng, -3.0, 5.0);
  d.w = random_buf(p.param_dtype, p.channels, rng, 0.5, 1.5);
  d.b = random_buf(p.param_dtype, p.channels, rng, -0.5, 0.5);
  d.skip = random_buf(p.dtype, n, rng, -1.0, 1.0);
  d.skip_bias = random_buf(p.param_dtype, p.channels, rng, -0.25, 0.25);
  d.dy = random_buf(p.dtype, n, rng, -1.0, 1.0);
  return d;
}

struct Outputs {
  Buf y, sum_out, mean, rstd, dx, dw, db;
  groupnorm::Result fwd, bwd;
  bool same_bits(const Outputs& o) const {
    return y.same_bits(o.y) && sum_out.same_bits(o.sum_out) && mean.same_bits(o.mean) &&
           rstd.same_bits(o.rstd) && dx.same_bits(o.dx) && dw.same_bits(o.dw) && db.same_bits(o.db);
  }
  // Names of the outputs that differ from o.
  std::string diff(const Outputs& o) const {
    std::string s;
    if (!y.same_bits(o.y)) s += " y";
    if (!sum_out.same_bits(o.sum_out)) s += " sum_out";
    if (!mean.same_bits(o.mean)) s += " mean";
    if (!rstd.same_bits(o.rstd)) s += " rstd";
    if (!dx.same_bits(o.dx)) s += " grad_x";
    if (!dw.same_bits(o.dw)) s += " grad_weight";
    if (!db.same_bits(o.db)) s += " grad_bias";
    return s;
  }
};

// Forward (with skip when use_skip) then backward from its outputs.
inline Outputs run(const Data& d, bool use_skip, const groupnorm::Exec& e = groupnorm::Exec()) {
  const groupnorm::Problem& p = d.p;
  const std::int64_t n = p.numel(), ng = p.batch * p.groups;
  const DType st = groupnorm::stats_dtype(p.dtype);
  Outputs o;
  o.y = Buf(p.dtype, n);
  o.sum_out = Buf(p.dtype, use_skip ? n : 0);
  o.mean = Buf(st, ng);
  o.rstd = Buf(st, ng);
  o.dx = Buf(p.dtype, n);
  o.dw = Buf(p.param_dtype, p.channels);
  o.db = Buf(p.param_dtype, p.channels);
  groupnorm::ForwardArgs fa;
  fa.x = d.x.data();
  fa.weight = d.w.data();
  fa.bias = d.b.data();
  if (use_skip) {
    fa.skip = d.skip.data();
    fa.skip_bias = d.skip_bias.data();
    fa.sum_out = o.sum_out.data();
  }
  fa.y = o.y.data();
  fa.mean = o.mean.data();
  fa.rstd = o.rstd.data();
  o.fwd = groupnorm::forward(p, fa, e);
  groupnorm::BackwardArgs ba;
  ba.grad_y = d.dy.data();
  ba.x = use_skip ? o.sum_out.data() : d.x.data();
  ba.mean = o.mean.data();
  ba.rstd = o.rstd.data();
  ba.weight = d.w.data();
  ba.bias = d.b.data();
  ba.grad_x = o.dx.data();
  ba.grad_weight = o.dw.data();
  ba.grad_bias = o.db.data();
  o.bwd = groupnorm::backward(p, ba, e);
  return o;
}

// An engine's thread pool: `threads` std::threads pull task indices from a counter.
struct ThreadEngine {
  int threads = 4;
  std::atomic<long> calls{0};
  static void parallel_for(void* ctx, std::int64_t n, groupnorm::TaskFn task, void* task_ctx) {
    ThreadEngine* self = static_cast<ThreadEngine*>(ctx);
    self->calls++;
    std::atomic<std::int64_t> next{0};
    auto work = [&] {
      for (std::int64_t i; (i = next.fetch_add(1)) < n;) task(task_ctx, i);
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < self->threads; ++t) pool.emplace_back(work);
    work();
    for (auto& th : pool) th.join();
  }
};

// An engine that runs tasks serially, last first.
struct ReverseEngine {
  long calls = 0;
  static void parallel_for(void* ctx, std::int64_t n, groupnorm::TaskFn task, void* task_ctx) {
    static_cast<ReverseEngine*>(ctx)->calls++;
    for (std::int64_t i = n - 1; i >= 0; --i) task(task_ctx, i);
  }
};

// FNV-1a over bytes.
inline std::uint64_t fnv1a(const void* data, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) { h ^= p[i]; h *= 1099511628211ull; }
  return h;
}

inline std::uint64_t digest(const Outputs& o) {
  std::uint64_t h = 1469598103934665603ull;
  for (const Buf* b : {&o.y, &o.sum_out, &o.mean, &o.rstd, &o.dx, &o.dw, &o.db})
    h = fnv1a(b->bytes.data(), b->bytes.size(), h);
  return h;
}

}  // namespace gt
