// The argument rules, in one place, for every entry point (C++, C, Python, CUDA).
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "groupnorm/groupnorm.hpp"

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
  }
  return "unknown status";
}

namespace {
Result fail(Status s, std::string m) { return {s, std::move(m)}; }
std::string str(std::int64_t v) { return std::to_string(v); }
bool valid_dtype(DType t) { return (int)t >= 0 && (int)t <= 3; }
}  // namespace

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
  if (!std::isfinite(p.eps)) return fail(Status::invalid_eps, "eps must be finite, got " + std::to_string(p.eps));
  if ((int)p.activation < 0 || (int)p.activation > 1)
    return fail(Status::invalid_activation, "unknown activation code " + str((int)p.activation));
  // N*C*S*elem_size (and twice that for scratch) must fit in int64
  const std::int64_t lim = std::numeric_limits<std::int64_t>::max() / 16;
  std::int64_t n = p.channels;
  for (std::int64_t f : {p.batch, p.spatial}) {
    if (f != 0 && n > lim / f)
      return fail(Status::size_overflow, "tensor of " + str(p.batch) + " x " + str(p.channels) + " x " +
                                             str(p.spatial) + " elements is too large");
    n *= f;
  }
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
  return {};
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
  return {};
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
  return {};
}

}  // namespace groupnorm
