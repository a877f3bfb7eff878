// The C API (groupnorm.h): a thin translation to the C++ API (groupnorm.hpp).
// The argument rules are not repeated here: groupnorm::validate/validate_args
// own them. This file only maps types, catches every exception and keeps the
// last error message per thread.
#include "groupnorm/groupnorm.h"

#include <cstddef>
#include <cstring>
#include <exception>
#include <new>

#include "groupnorm/groupnorm.hpp"

#ifndef GROUPNORM_VERSION
#define GROUPNORM_VERSION "unknown"
#endif

namespace gn = groupnorm;

#define GN_SAME(c, cpp) static_assert((int)(c) == (int)(cpp), #c " differs from " #cpp)
GN_SAME(GROUPNORM_OK, gn::Status::ok);
GN_SAME(GROUPNORM_NULL_POINTER, gn::Status::null_pointer);
GN_SAME(GROUPNORM_INVALID_SIZE, gn::Status::invalid_size);
GN_SAME(GROUPNORM_INVALID_GROUPS, gn::Status::invalid_groups);
GN_SAME(GROUPNORM_SIZE_OVERFLOW, gn::Status::size_overflow);
GN_SAME(GROUPNORM_INVALID_EPS, gn::Status::invalid_eps);
GN_SAME(GROUPNORM_INVALID_DTYPE, gn::Status::invalid_dtype);
GN_SAME(GROUPNORM_INVALID_ACTIVATION, gn::Status::invalid_activation);
GN_SAME(GROUPNORM_INVALID_COMBINATION, gn::Status::invalid_combination);
GN_SAME(GROUPNORM_WORKSPACE_TOO_SMALL, gn::Status::workspace_too_small);
GN_SAME(GROUPNORM_UNSUPPORTED, gn::Status::unsupported);
GN_SAME(GROUPNORM_OUT_OF_MEMORY, gn::Status::out_of_memory);
GN_SAME(GROUPNORM_DEVICE_ERROR, gn::Status::device_error);
GN_SAME(GROUPNORM_INTERNAL_ERROR, gn::Status::internal_error);
GN_SAME(GROUPNORM_OVERLAPPING_BUFFERS, gn::Status::overlapping_buffers);
GN_SAME(GROUPNORM_FLOAT32, gn::DType::float32);
GN_SAME(GROUPNORM_FLOAT64, gn::DType::float64);
GN_SAME(GROUPNORM_FLOAT16, gn::DType::float16);
GN_SAME(GROUPNORM_BFLOAT16, gn::DType::bfloat16);
GN_SAME(GROUPNORM_ACTIVATION_NONE, gn::Activation::none);
GN_SAME(GROUPNORM_ACTIVATION_SILU, gn::Activation::silu);
#undef GN_SAME
static_assert(sizeof(gn::half) == 2 && sizeof(gn::bfloat16) == 2, "16-bit storage types");
// The C structs are ABI: fixed-width fields, no hidden padding.
static_assert(sizeof(groupnorm_problem) == 4 * 8 + 4 * 4 + 8, "groupnorm_problem layout");
static_assert(offsetof(groupnorm_problem, eps) == 48, "groupnorm_problem layout");
static_assert(sizeof(groupnorm_forward_args) == 9 * sizeof(void*), "groupnorm_forward_args layout");
static_assert(sizeof(groupnorm_backward_args) == 9 * sizeof(void*), "groupnorm_backward_args layout");

namespace {

// Fixed-size, per-thread: recording an error never allocates.
thread_local char g_last_error[256];

void copy_message(const char* msg, char* buf, std::size_t len) {
  if (!buf || len == 0) return;
  std::size_t n = msg ? std::strlen(msg) : 0;
  if (n > len - 1) n = len - 1;
  if (n) std::memcpy(buf, msg, n);
  buf[n] = '\0';
}

groupnorm_status record(groupnorm_status s, const char* msg) {
  if (s != GROUPNORM_OK) copy_message(msg, g_last_error, sizeof g_last_error);
  return s;
}

groupnorm_status record(const gn::Result& r) {
  return record(static_cast<groupnorm_status>(r.status), r.message.c_str());
}

// Any exception that reaches the C boundary ends here.
groupnorm_status record_exception() {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return record(GROUPNORM_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return record(GROUPNORM_INTERNAL_ERROR, e.what());
  } catch (...) {
    return record(GROUPNORM_INTERNAL_ERROR, "unknown exception");
  }
}

gn::Problem to_cpp(const groupnorm_problem& p) {
  gn::Problem q;
  q.batch = p.batch;
  q.channels = p.channels;
  q.groups = p.groups;
  q.spatial = p.spatial;
  q.channels_last = p.channels_last != 0;
  q.eps = p.eps;
  // Out-of-range codes pass through: validate() reports them.
  q.activation = static_cast<gn::Activation>(p.activation);
  q.dtype = static_cast<gn::DType>(p.dtype);
  q.param_dtype = static_cast<gn::DType>(p.param_dtype);
  return q;
}

// The argument structs: the C and C++ layouts are the same field for field
// (asserted below), so each converts in one place.
#define GN_SAME_FIELD(CT, CPPT, field) \
  static_assert(offsetof(CT, field) == offsetof(CPPT, field), #CT "." #field " layout");
#define GN_FORWARD_FIELDS(X) X(x) X(weight) X(bias) X(skip) X(skip_bias) X(y) X(sum_out) X(mean) X(rstd)
#define GN_BACKWARD_FIELDS(X) X(grad_y) X(x) X(mean) X(rstd) X(weight) X(bias) X(grad_x) X(grad_weight) X(grad_bias)
#define GN_F(f) GN_SAME_FIELD(groupnorm_forward_args, gn::ForwardArgs, f)
#define GN_B(f) GN_SAME_FIELD(groupnorm_backward_args, gn::BackwardArgs, f)
GN_FORWARD_FIELDS(GN_F)
GN_BACKWARD_FIELDS(GN_B)
#undef GN_F
#undef GN_B
static_assert(sizeof(gn::ForwardArgs) == sizeof(groupnorm_forward_args), "ForwardArgs layout");
static_assert(sizeof(gn::BackwardArgs) == sizeof(groupnorm_backward_args), "BackwardArgs layout");

gn::ForwardArgs to_cpp(const groupnorm_forward_args& c) {
  gn::ForwardArgs a;
#define GN_COPY(field) a.field = c.field;
  GN_FORWARD_FIELDS(GN_COPY)
  return a;
}

gn::BackwardArgs to_cpp(const groupnorm_backward_args& c) {
  gn::BackwardArgs a;
  GN_BACKWARD_FIELDS(GN_COPY)
#undef GN_COPY
  return a;
}
#undef GN_FORWARD_FIELDS
#undef GN_BACKWARD_FIELDS
#undef GN_SAME_FIELD

// The engine's parallel-for is a C function taking a C task; the core hands a
// C++ task. Two stack-allocated trampolines bridge the linkages.
struct EngineBridge {
  groupnorm_parallel_for_fn parallel_for;
  void* engine_ctx;
};
struct TaskBridge {
  gn::TaskFn task;
  void* task_ctx;
};

extern "C" void gn_c_task_trampoline(void* ctx, int64_t i) {
  const TaskBridge* t = static_cast<const TaskBridge*>(ctx);
  t->task(t->task_ctx, i);
}

void engine_parallel_for(void* ctx, std::int64_t n, gn::TaskFn task, void* task_ctx) {
  const EngineBridge* b = static_cast<const EngineBridge*>(ctx);
  TaskBridge t{task, task_ctx};
  b->parallel_for(b->engine_ctx, n, &gn_c_task_trampoline, &t);
}

gn::Exec to_cpp(const groupnorm_exec* e, EngineBridge* bridge) {
  gn::Exec x;
  if (!e) return x;
  x.num_threads = e->num_threads > 0 ? e->num_threads : 0;
  if (e->parallel_for) {
    bridge->parallel_for = e->parallel_for;
    bridge->engine_ctx = e->parallel_ctx;
    x.parallel_for = &engine_parallel_for;
    x.parallel_ctx = bridge;
  }
  x.workspace = e->workspace;
  x.workspace_bytes = e->workspace_bytes;
  return x;
}

}  // namespace

extern "C" {

groupnorm_problem groupnorm_problem_default(void) {
  groupnorm_problem p = GROUPNORM_PROBLEM_INIT;
  return p;
}

groupnorm_status groupnorm_validate(const groupnorm_problem* problem, char* msg_buf, size_t msg_len) {
  try {
    if (!problem) {
      copy_message("problem is null", msg_buf, msg_len);
      return record(GROUPNORM_NULL_POINTER, "problem is null");
    }
    const gn::Result r = gn::validate(to_cpp(*problem));
    copy_message(r.message.c_str(), msg_buf, msg_len);
    return record(r);
  } catch (...) {
    copy_message("out of memory", msg_buf, msg_len);
    return record_exception();
  }
}

size_t groupnorm_forward_workspace_bytes(const groupnorm_problem* problem, int32_t num_threads) {
  if (!problem) return 0;
  try {
    return gn::forward_workspace_bytes(to_cpp(*problem), num_threads > 0 ? num_threads : 0);
  } catch (...) {
    return 0;
  }
}

size_t groupnorm_backward_workspace_bytes(const groupnorm_problem* problem, int32_t num_threads) {
  if (!problem) return 0;
  try {
    return gn::backward_workspace_bytes(to_cpp(*problem), num_threads > 0 ? num_threads : 0);
  } catch (...) {
    return 0;
  }
}

groupnorm_status groupnorm_forward(const groupnorm_problem* problem, const groupnorm_forward_args* args,
                                   const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    EngineBridge bridge{};
    return record(gn::forward(to_cpp(*problem), to_cpp(*args), to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_backward(const groupnorm_problem* problem, const groupnorm_backward_args* args,
                                    const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    EngineBridge bridge{};
    return record(gn::backward(to_cpp(*problem), to_cpp(*args), to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

const char* groupnorm_last_error(void) { return g_last_error; }

const char* groupnorm_status_string(groupnorm_status status) {
  const int s = static_cast<int>(status);
  if (s < GROUPNORM_OK || s > GROUPNORM_OVERLAPPING_BUFFERS) return "unknown status";
  return gn::status_name(static_cast<gn::Status>(s));
}

void groupnorm_set_num_threads(int32_t n) { gn::set_num_threads(n > 0 ? n : 0); }

int32_t groupnorm_get_num_threads(void) { return gn::get_num_threads(); }

int32_t groupnorm_max_threads(void) { return gn::max_threads(); }

const char* groupnorm_active_isa(void) { return gn::active_isa(); }

groupnorm_status groupnorm_set_isa(const char* name) {
  if (!name) return record(GROUPNORM_NULL_POINTER, "isa name is null");
  if (!gn::set_isa(name)) return record(GROUPNORM_UNSUPPORTED, "this CPU or build cannot run the requested ISA");
  return GROUPNORM_OK;
}

const char* groupnorm_available_isas(void) {
  try {
    return gn::available_isas();
  } catch (...) {
    return "";
  }
}

const char* groupnorm_version(void) { return GROUPNORM_VERSION; }

}  // extern "C"

// ------------------------------------------------------------ split phase

extern "C" {

groupnorm_status groupnorm_moments(const groupnorm_problem* problem, const void* x, const void* skip,
                                   const void* skip_bias, int64_t* count, double* mean, double* m2,
                                   const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    gn::MomentsArgs a;
    a.x = x; a.skip = skip; a.skip_bias = skip_bias; a.count = count; a.mean = mean; a.m2 = m2;
    EngineBridge bridge{};
    return record(gn::moments(to_cpp(*problem), a, to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_merge_moments(int64_t size, int64_t parts, const int64_t* const* counts,
                                         const double* const* means, const double* const* m2s,
                                         int64_t* count, double* mean, double* m2) {
  try {
    return record(gn::merge_moments(size, parts, counts, means, m2s, count, mean, m2));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_mean_rstd(int64_t size, const int64_t* count, const double* mean, const double* m2,
                                     double eps, int32_t dtype, void* mean_out, void* rstd_out) {
  try {
    return record(gn::mean_rstd(size, count, mean, m2, eps, static_cast<gn::DType>(dtype), mean_out, rstd_out));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_forward_with_moments(const groupnorm_problem* problem,
                                                const groupnorm_forward_args* args, const int64_t* count,
                                                const double* mean, const double* m2,
                                                const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    gn::GivenStats g;
    g.count = count; g.mean = mean; g.m2 = m2;
    if (!count && !mean && !m2 && problem->batch > 0) return record(GROUPNORM_NULL_POINTER, "moments are null");
    EngineBridge bridge{};
    return record(gn::forward(to_cpp(*problem), to_cpp(*args), g, to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_forward_with_stats(const groupnorm_problem* problem, const groupnorm_forward_args* args,
                                              const void* mean, const void* rstd, const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    gn::GivenStats g;
    g.stats_mean = mean; g.stats_rstd = rstd;
    if (!mean && !rstd && problem->batch > 0) return record(GROUPNORM_NULL_POINTER, "mean and rstd are null");
    EngineBridge bridge{};
    return record(gn::forward(to_cpp(*problem), to_cpp(*args), g, to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_backward_sums(const groupnorm_problem* problem, const groupnorm_backward_args* args,
                                         double* sum_dz, double* sum_dz_xc, const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    EngineBridge bridge{};
    return record(gn::backward_sums(to_cpp(*problem), to_cpp(*args), sum_dz, sum_dz_xc,
                                    to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_merge_backward_sums(int64_t size, int64_t parts, const double* const* sum_dz,
                                               const double* const* sum_dz_xc, double* out_dz,
                                               double* out_dz_xc) {
  try {
    return record(gn::merge_backward_sums(size, parts, sum_dz, sum_dz_xc, out_dz, out_dz_xc));
  } catch (...) {
    return record_exception();
  }
}

groupnorm_status groupnorm_backward_with_sums(const groupnorm_problem* problem,
                                              const groupnorm_backward_args* args, const double* sum_dz,
                                              const double* sum_dz_xc, int64_t total_spatial,
                                              const groupnorm_exec* exec) {
  try {
    if (!problem) return record(GROUPNORM_NULL_POINTER, "problem is null");
    if (!args) return record(GROUPNORM_NULL_POINTER, "args is null");
    EngineBridge bridge{};
    return record(gn::backward(to_cpp(*problem), to_cpp(*args), sum_dz, sum_dz_xc, total_spatial,
                               to_cpp(exec, &bridge)));
  } catch (...) {
    return record_exception();
  }
}

}  // extern "C"
