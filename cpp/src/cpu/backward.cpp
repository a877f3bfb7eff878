// The backward pass: its hooks for the walk (walk.hpp) and its entry points,
// the one-call backward() and the split-phase backward_sums() and backward()
// with given sums (the same pass with some phases off).
//   dz = grad_y (through the SiLU's derivative when fused)
//   sums:   per (n, c), sum_dz = sum dz and sum_dz_xc = sum dz * (x - mean)
//   finish: per group, dx = scale * dz + dx_xc * (x - mean) + dx_shift
//   apply:  dx; grad_weight and grad_bias from the sums, over the batch in order
#include <algorithm>
#include <cstdint>

#include "groupnorm/groupnorm.hpp"
#include "../rules.hpp"
#include "scalar.hpp"
#include "walk.hpp"

namespace groupnorm {
namespace detail {
namespace {

// Which phases a backward call runs: all (the one-call path), the sums alone
// (written to out_*), or dx from given sums of the whole tensor (in_*, over
// total_spatial elements per channel).
struct BackwardCall {
  double *out_dz = nullptr, *out_dz_xc = nullptr;
  const double *in_dz = nullptr, *in_dz_xc = nullptr;
  std::int64_t total_spatial = 0;
  bool sums_only() const { return out_dz != nullptr; }
  bool given() const { return in_dz != nullptr; }
};

template <class A> struct BackwardPass {
  const Problem& p;
  const BackwardArgs& a;
  const Plan& pl;
  const KernelSet& k;
  const Scratch<A>& s;
  const BackwardCall& call;
  bool run_sums, run_finish, run_apply, fusable = true;
  std::int64_t* held_set;

  BackwardPass(const Problem& p_, const BackwardArgs& a_, const Plan& pl_, const KernelSet& k_,
               const Scratch<A>& s_, const BackwardCall& c)
      : p(p_), a(a_), pl(pl_), k(k_), s(s_), call(c), held_set(s_.held_set) {
    run_sums = !c.given();
    run_finish = !c.sums_only();
    run_apply = a.grad_x != nullptr && !c.sums_only();
  }

  // the sums go straight into per-channel arrays: no running moments
  Moments* set_totals(int) const { return nullptr; }
  Moments* step_totals() const { return nullptr; }

  Tile tile(const TileRef& r, int w) const {
    Tile t = base_tile<A>(p, pl, r, s, a.x, w);
    t.dy = offset_ptr(a.grad_y, r.offset, pl.elem_bytes);
    t.dx = offset_ptr(a.grad_x, r.offset, pl.elem_bytes);
    return t;
  }

  void sum(const TileRef& r, int w, Moments*) const {
    k.backward_sums(tile(r, w), s.sum_dz + r.chan0, s.sum_dz_xc + r.chan0);
  }
  void fused(const TileRef& held, const TileRef& r, int w, Moments*) const {
    k.backward_apply_sums(tile(held, w), tile(r, w), s.sum_dz + r.chan0, s.sum_dz_xc + r.chan0);
  }
  void apply(const TileRef& r, int w) const { k.backward_apply(tile(r, w)); }
  void sum_to_slot(const TileRef& r, int w, std::int64_t slot) const {
    double* dz = s.round_dz + slot * pl.max_tile_channels;
    double* dz_xc = s.round_dz_xc + slot * pl.max_tile_channels;
    std::fill(dz, dz + r.nchan, 0.0);
    std::fill(dz_xc, dz_xc + r.nchan, 0.0);
    k.backward_sums(tile(r, w), dz, dz_xc);
  }
  void merge_slot(const TileRef& r, std::int64_t slot, Moments*) const {
    for (std::int64_t c = 0; c < r.nchan; ++c) {
      s.sum_dz[r.chan0 + c] += s.round_dz[slot * pl.max_tile_channels + c];
      s.sum_dz_xc[r.chan0 + c] += s.round_dz_xc[slot * pl.max_tile_channels + c];
    }
  }

  // group ng's channel sums -> dx's coefficients
  void finish(std::int64_t ng, const Moments*) const {
    const std::int64_t n = ng / pl.G, g = ng % pl.G;
    const std::int64_t c0 = g * pl.group_channels, c1 = c0 + pl.group_channels;
    double s1 = 0, s2 = 0;
    for (std::int64_t c = c0; c < c1; ++c) {
      const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
      s1 += w * s.sum_dz[n * pl.C + c];
      s2 += w * s.sum_dz_xc[n * pl.C + c];
    }
    const double rstd = s.group_rstd[ng];
    const double D = (double)pl.group_channels * (double)(call.given() ? call.total_spatial : pl.S);
    const double dx_xc = -rstd * rstd * rstd * s2 / D;
    const double dx_shift = -rstd * s1 / D;
    for (std::int64_t c = c0; c < c1; ++c) {
      s.chan_dx_xc[n * pl.C + c] = (A)dx_xc;
      s.chan_dx_shift[n * pl.C + c] = (A)dx_shift;
    }
  }
};

// grad_weight[c] = sum_n rstd[n, g(c)] * sum_dz_xc[n, c], grad_bias[c] = sum_n
// sum_dz[n, c], in batch order: the one-call backward's and the split backward's.
void param_grads(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc) {
  if (!a.grad_weight && !a.grad_bias) return;
  const DType st = stats_dtype(p.dtype);
  const std::int64_t group_channels = p.channels / p.groups;
  for (std::int64_t c = 0; c < p.channels; ++c) {
    double gw = 0, gb = 0;
    for (std::int64_t n = 0; n < p.batch; ++n) {
      gw += load_scalar(a.rstd, st, n * p.groups + c / group_channels) * sum_dz_xc[n * p.channels + c];
      gb += sum_dz[n * p.channels + c];
    }
    if (a.grad_weight) store_scalar(a.grad_weight, p.param_dtype, c, gw);
    if (a.grad_bias) store_scalar(a.grad_bias, p.param_dtype, c, gb);
  }
}

Result run_backward(const Problem& p, const BackwardArgs& a, const Exec& e, const BackwardCall& call) {
  Plan pl = plan_call(p, resolve_threads(e), Direction::backward, call.sums_only() || call.given());
  if (overlaps(p, a.grad_x, a.grad_y) || overlaps(p, a.grad_x, a.x)) pl.stream_outputs = false;
  const KernelSet& k = active_kernels().by_dtype[(int)p.dtype];
  return with_accumulator(p.dtype, [&](auto zero) {
    typedef decltype(zero) A;
    return with_scratch<A>(pl, Direction::backward, e, [&](Scratch<A>& s) {
      const DType st = stats_dtype(p.dtype);
      for (std::int64_t ng = 0; ng < pl.N * pl.G; ++ng) {
        s.group_mean[ng] = load_scalar(a.mean, st, ng);
        s.group_rstd[ng] = load_scalar(a.rstd, st, ng);
        const std::int64_t n = ng / pl.G, g = ng % pl.G;
        for (std::int64_t c = g * pl.group_channels; c < (g + 1) * pl.group_channels; ++c) {
          const double w = a.weight ? load_scalar(a.weight, p.param_dtype, c) : 1.0;
          const double b = a.bias ? load_scalar(a.bias, p.param_dtype, c) : 0.0;
          const std::int64_t nc = n * pl.C + c;
          s.chan_mean[nc] = (A)s.group_mean[ng];
          s.chan_scale[nc] = (A)(w * s.group_rstd[ng]);
          s.chan_shift[nc] = (A)b;
          s.sum_dz[nc] = call.given() ? call.in_dz[nc] : 0.0;
          s.sum_dz_xc[nc] = call.given() ? call.in_dz_xc[nc] : 0.0;
        }
      }
      walk(pl, e, BackwardPass<A>(p, a, pl, k, s, call));
      if (call.sums_only()) {
        std::copy(s.sum_dz, s.sum_dz + pl.N * pl.C, call.out_dz);
        std::copy(s.sum_dz_xc, s.sum_dz_xc + pl.N * pl.C, call.out_dz_xc);
      }
      param_grads(p, a, s.sum_dz, s.sum_dz_xc);
    });
  });
}

}  // namespace
}  // namespace detail

using namespace detail;

Result backward(const Problem& p, const BackwardArgs& a, const Exec& e) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (p.numel() == 0) {
    for (std::int64_t c = 0; c < p.channels; ++c) {  // the caller's C entries
      if (a.grad_weight) store_scalar(a.grad_weight, p.param_dtype, c, 0.0);
      if (a.grad_bias) store_scalar(a.grad_bias, p.param_dtype, c, 0.0);
    }
    return {};
  }
  return run_backward(p, a, e, BackwardCall());
}

Result backward_sums(const Problem& p, const BackwardArgs& a, double* sum_dz, double* sum_dz_xc, const Exec& e) {
  Result r = validate_args(p, a, sum_dz, sum_dz_xc);
  if (!r) return r;
  if (p.numel() == 0) {
    std::fill(sum_dz, sum_dz + p.batch * p.channels, 0.0);
    std::fill(sum_dz_xc, sum_dz_xc + p.batch * p.channels, 0.0);
    return {};
  }
  BackwardArgs b = a;
  b.grad_x = nullptr; b.grad_weight = nullptr; b.grad_bias = nullptr;
  BackwardCall call;
  call.out_dz = sum_dz; call.out_dz_xc = sum_dz_xc;
  return run_backward(p, b, e, call);
}

Result backward(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc,
                std::int64_t total_spatial, const Exec& e) {
  Result r = validate_args(p, a, sum_dz, sum_dz_xc, total_spatial);
  if (!r) return r;
  if (p.numel() == 0) {  // no elements in this tile; it still owes the global grad_weight/grad_bias
    param_grads(p, a, sum_dz, sum_dz_xc);
    return {};
  }
  BackwardCall call;
  call.in_dz = sum_dz; call.in_dz_xc = sum_dz_xc; call.total_spatial = total_spatial;
  return run_backward(p, a, e, call);
}

}  // namespace groupnorm
