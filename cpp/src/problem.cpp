// The argument rules, in one place, for every entry point (C++, C, Python, CUDA).
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "groupnorm/groupnorm.hpp"
#include "rules.hpp"

namespace groupnorm {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::float32: return 4;
    case DType::float64: return 8;
    case DType::float16: return 2;
    case DType::bfloat16: return 2;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
  }
  return "unknown";
}

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::null_pointer: return "null pointer";
    case Status::invalid_size: return "invalid size";
    case Status::invalid_groups: return "invalid number of groups";
    case Status::size_overflow: return "size overflow";
    case Status::invalid_eps: return "invalid eps";
    case Status::invalid_dtype: return "invalid dtype";
    case Status::invalid_activation: return "invalid activation";
    case Status::invalid_combination: return "invalid combination of arguments";
    case Status::workspace_too_small: return "workspace too small";
    case Status::unsupported: return "unsupported";
    case Status::out_of_memory: return "out of memory";
    case Status::device_error: return "device error";
    case Status::internal_error: return "internal error";
    case Status::overlapping_buffers: return "overlapping buffers";
  }
  return "unknown status";
}

namespace {
constexpr std::int64_t kMaxChannels = std::numeric_limits<std::int32_t>::max();
constexpr std::int64_t kMaxElements = std::numeric_limits<std::int64_t>::max() / 128;  // 2^56
using detail::fail;
std::string str(std::int64_t v) { return std::to_string(v); }
bool valid_dtype(DType t) { return (int)t >= 0 && (int)t <= 3; }

// Byte extent of one argument: [p, p + size). Null or empty: no extent.
struct Extent {
  const char* name;
  const void* p;
  std::uint64_t size;
};
// n elements of es bytes (n >= 0 and n * es fits once validate() passed)
std::uint64_t bytes(std::int64_t n, std::size_t es) { return n > 0 ? (std::uint64_t)n * es : 0; }
bool overlap(const Extent& a, const Extent& b) {
  if (!a.p || !b.p || a.size == 0 || b.size == 0) return false;
  const std::uintptr_t a0 = reinterpret_cast<std::uintptr_t>(a.p), b0 = reinterpret_cast<std::uintptr_t>(b.p);
  // [a0, a0 + a.size) and [b0, b0 + b.size) intersect; no sum can wrap
  return a0 < b0 ? b0 - a0 < a.size : a0 - b0 < b.size;
}
// Any output overlapping an input or another output is an error, except the
// exact aliases `allowed(out, in)` accepts (the same address and size, for
// outputs computed element by element from that input).
template <std::size_t NI, std::size_t NO, class Allowed>
Result check_overlaps(const Extent (&in)[NI], const Extent (&out)[NO], Allowed allowed) {
  for (std::size_t o = 0; o < NO; ++o) {
    for (std::size_t i = 0; i < NI; ++i)
      if (overlap(out[o], in[i]) && !(out[o].p == in[i].p && allowed(out[o], in[i])))
        return fail(Status::overlapping_buffers, std::string("output ") + out[o].name + " overlaps input " + in[i].name +
                                                     (out[o].p == in[i].p ? " (this alias is not supported)"
                                                                          : " (only exact, documented aliases are allowed)"));
    for (std::size_t j = 0; j < o; ++j)
      if (overlap(out[o], out[j]))
        return fail(Status::overlapping_buffers,
                    std::string("outputs ") + out[j].name + " and " + out[o].name + " overlap");
  }
  return {};
}
}  // namespace

namespace detail {
Result check_counts(const std::int64_t* count, std::int64_t size, const std::string& what) {
  for (std::int64_t i = 0; i < size; ++i)
    if (count[i] < 0)
      return fail(Status::invalid_size, what + "[" + std::to_string(i) + "] is " + std::to_string(count[i]) +
                                            ": a count must be >= 0");
  return {};
}
}  // namespace detail

Result validate(const Problem& p) {
  if (p.batch < 0) return fail(Status::invalid_size, "batch size must be >= 0, got " + str(p.batch));
  if (p.channels <= 0) return fail(Status::invalid_size, "num_channels must be positive, got " + str(p.channels));
  if (p.spatial < 0) return fail(Status::invalid_size, "spatial size must be >= 0, got " + str(p.spatial));
  if (p.groups <= 0) return fail(Status::invalid_groups, "num_groups must be positive, got " + str(p.groups));
  if (p.channels % p.groups != 0)
    return fail(Status::invalid_groups,
                "num_channels " + str(p.channels) + " is not divisible by num_groups " + str(p.groups));
  if (!valid_dtype(p.dtype)) return fail(Status::invalid_dtype, "unknown dtype code " + str((int)p.dtype));
  if (!valid_dtype(p.param_dtype)) return fail(Status::invalid_dtype, "unknown param dtype code " + str((int)p.param_dtype));
  if (p.param_dtype != p.dtype && p.param_dtype != DType::float32)
    return fail(Status::invalid_dtype, std::string("weight/bias dtype ") + dtype_name(p.param_dtype) +
                                           " must be float32 or the input dtype " + dtype_name(p.dtype));
  if (!std::isfinite(p.eps) || p.eps < 0) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", p.eps);
    return fail(Status::invalid_eps, std::string("eps must be finite and >= 0, got ") + buf);
  }
  if ((int)p.activation < 0 || (int)p.activation > 1)
    return fail(Status::invalid_activation, "unknown activation code " + str((int)p.activation));
  // Size limits, checked whatever N or S is (an empty batch still has C
  // channels of parameters): C fits in int32, and N*C*S elements (zero factors
  // counted as one) at most 2^56, so that every byte count the library forms
  // (the data, its scratch of O(N*C), plan arithmetic) fits in int64 and size_t.
  if (p.channels > kMaxChannels)
    return fail(Status::size_overflow, "num_channels " + str(p.channels) + " is too large (at most " +
                                           str(kMaxChannels) + ")");
  std::int64_t n = p.channels;
  for (std::int64_t f : {p.batch, p.spatial}) {
    if (f > 1 && n > kMaxElements / f)
      return fail(Status::size_overflow, "tensor of " + str(p.batch) + " x " + str(p.channels) + " x " +
                                             str(p.spatial) + " elements is too large");
    if (f > 1) n *= f;
  }
  if ((std::uint64_t)n * 64u > (std::uint64_t)std::numeric_limits<std::size_t>::max())
    return fail(Status::size_overflow, "tensor of " + str(p.batch) + " x " + str(p.channels) + " x " +
                                           str(p.spatial) + " elements does not fit in this address space");
  return {};
}

Result parse_activation(const char* name, Activation* out) {
  if (!name || std::strcmp(name, "none") == 0) { if (out) *out = Activation::none; return {}; }
  if (std::strcmp(name, "silu") == 0) { if (out) *out = Activation::silu; return {}; }
  return fail(Status::invalid_activation,
              std::string("activation must be None or 'silu', got '") + name + "'");
}

Result validate_args(const Problem& p, const ForwardArgs& a) {
  Result r = validate(p);
  if (!r) return r;
  if (p.numel() > 0) {
    if (!a.x) return fail(Status::null_pointer, "x is null");
    if (!a.y) return fail(Status::null_pointer, "y is null");
  }
  if (!a.skip && a.skip_bias) return fail(Status::invalid_combination, "skip_bias needs skip");
  if (!a.skip && a.sum_out) return fail(Status::invalid_combination, "sum_out needs skip");
  const std::uint64_t data = bytes(p.numel(), dtype_size(p.dtype));
  const std::uint64_t param = bytes(p.channels, dtype_size(p.param_dtype));
  const std::uint64_t stats = bytes(p.batch * p.groups, dtype_size(stats_dtype(p.dtype)));
  const Extent in[] = {{"x", a.x, data}, {"skip", a.skip, data}, {"weight", a.weight, param},
                       {"bias", a.bias, param}, {"skip_bias", a.skip_bias, param}};
  const Extent out[] = {{"y", a.y, data}, {"sum_out", a.sum_out, data}, {"mean", a.mean, stats},
                        {"rstd", a.rstd, stats}};
  // y and sum_out are elementwise: each may be exactly x or skip
  auto allowed = [&](const Extent& o, const Extent& i) {
    return (o.p == a.y || o.p == a.sum_out) && o.size == data && (i.p == a.x || i.p == a.skip) && i.size == data;
  };
  return check_overlaps(in, out, allowed);
}

Result validate_args(const Problem& p, const BackwardArgs& a) {
  Result r = validate(p);
  if (!r) return r;
  if (p.numel() > 0) {
    if (!a.grad_y) return fail(Status::null_pointer, "grad_y is null");
    if (!a.x) return fail(Status::null_pointer, "x is null");
    if (!a.mean) return fail(Status::null_pointer, "mean is null");
    if (!a.rstd) return fail(Status::null_pointer, "rstd is null");
  }
  const std::uint64_t data = bytes(p.numel(), dtype_size(p.dtype));
  const std::uint64_t param = bytes(p.channels, dtype_size(p.param_dtype));
  const std::uint64_t stats = bytes(p.batch * p.groups, dtype_size(stats_dtype(p.dtype)));
  const Extent in[] = {{"grad_y", a.grad_y, data}, {"x", a.x, data}, {"mean", a.mean, stats},
                       {"rstd", a.rstd, stats}, {"weight", a.weight, param}, {"bias", a.bias, param}};
  const Extent out[] = {{"grad_x", a.grad_x, data}, {"grad_weight", a.grad_weight, param},
                        {"grad_bias", a.grad_bias, param}};
  // grad_x is elementwise in grad_y: it may be exactly grad_y
  auto allowed = [&](const Extent& o, const Extent& i) {
    return o.p == a.grad_x && o.size == data && i.p == a.grad_y && i.size == data && o.p == i.p;
  };
  return check_overlaps(in, out, allowed);
}

}  // namespace groupnorm

namespace groupnorm {

DType param_dtype_for(DType x, const DType* present, int n) {
  if (n <= 0 || !present) return stats_dtype(x);
  bool all_same = true, any_f64 = false;
  for (int i = 0; i < n; ++i) {
    all_same = all_same && present[i] == present[0];
    any_f64 = any_f64 || present[i] == DType::float64;
  }
  if (all_same && (present[0] == DType::float32 || present[0] == x)) return present[0];
  return x == DType::float64 && any_f64 ? DType::float64 : DType::float32;
}

// ------------------------------------------------------------ split phase

Result validate_args(const Problem& p, const MomentsArgs& a) {
  Result r = validate(p);
  if (!r) return r;
  if (p.numel() > 0 && !a.x) return fail(Status::null_pointer, "x is null");
  if (p.batch > 0 && (!a.count || !a.mean || !a.m2))
    return fail(Status::null_pointer, "the count, mean and m2 outputs are required");
  if (!a.skip && a.skip_bias) return fail(Status::invalid_combination, "skip_bias needs skip");
  const std::uint64_t data = bytes(p.numel(), dtype_size(p.dtype));
  const std::uint64_t param = bytes(p.channels, dtype_size(p.param_dtype));
  const std::uint64_t per_group = bytes(p.batch * p.groups, 8);
  const Extent in[] = {{"x", a.x, data}, {"skip", a.skip, data}, {"skip_bias", a.skip_bias, param}};
  const Extent out[] = {{"count", a.count, per_group}, {"mean", a.mean, per_group}, {"m2", a.m2, per_group}};
  return check_overlaps(in, out, [](const Extent&, const Extent&) { return false; });
}

Result validate_args(const Problem& p, const ForwardArgs& a, const GivenStats& g) {
  Result r = validate_args(p, a);
  if (!r) return r;
  const std::uint64_t data = bytes(p.numel(), dtype_size(p.dtype));
  const std::uint64_t stats = bytes(p.batch * p.groups, dtype_size(stats_dtype(p.dtype)));
  const std::uint64_t per_group = bytes(p.batch * p.groups, 8);
  const Extent in[] = {{"count", g.count, per_group}, {"given mean", g.mean, per_group},
                       {"m2", g.m2, per_group}, {"given mean", g.stats_mean, stats},
                       {"given rstd", g.stats_rstd, stats}};
  const Extent out[] = {{"y", a.y, data}, {"sum_out", a.sum_out, data}, {"mean", a.mean, stats},
                        {"rstd", a.rstd, stats}};
  // the statistics used may be written back over the given ones
  auto allowed = [&](const Extent& o, const Extent& i) {
    return (o.p == a.mean && i.p == g.stats_mean) || (o.p == a.rstd && i.p == g.stats_rstd);
  };
  r = check_overlaps(in, out, allowed);
  if (!r) return r;
  const bool by_moments = g.count || g.mean || g.m2, by_stats = g.stats_mean || g.stats_rstd;
  if (by_moments && by_stats)
    return fail(Status::invalid_combination, "give either moments (count, mean, m2) or mean/rstd, not both");
  if (p.batch > 0 && (by_moments ? !(g.count && g.mean && g.m2) : !(g.stats_mean && g.stats_rstd)))
    return fail(Status::null_pointer, by_moments ? "moments need count, mean and m2" : "stats need mean and rstd");
  if (g.count) return detail::check_counts(g.count, p.batch * p.groups, "count");
  return {};
}

Result validate_args(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc) {
  Result r = validate_args(p, a);
  if (!r) return r;
  if (p.batch > 0 && (!sum_dz || !sum_dz_xc)) return fail(Status::null_pointer, "sum_dz and sum_dz_xc are required");
  return {};
}

Result validate_args(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc,
                     std::int64_t total_spatial) {
  Result r = validate_args(p, a, sum_dz, sum_dz_xc);
  if (!r) return r;
  if (total_spatial < p.spatial)
    return fail(Status::invalid_size, "total_spatial " + str(total_spatial) +
                                          " is smaller than the tile's spatial size " + str(p.spatial));
  // a tile without elements still owes grad_weight (from rstd) and grad_bias
  if (p.numel() == 0 && p.batch > 0 && (a.grad_weight || a.grad_bias) && !a.rstd)
    return fail(Status::null_pointer, "rstd is null");
  return {};
}

}  // namespace groupnorm
