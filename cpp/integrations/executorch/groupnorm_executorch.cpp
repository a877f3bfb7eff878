// groupnorm kernels for ExecuTorch (see groupnorm_executorch.h for what is registered).
//
// The kernels map ExecuTorch's boxed arguments onto the one groupnorm kernel
// (groupnorm::forward, the public C++ API) and report every bad argument through
// ExecuTorch's error channel: an Error log line naming the argument and
// context.fail(Error::InvalidArgument), never an abort. Tensors in either dim
// order (contiguous, or channels-last: dim order 0, 2, ..., n-1, 1) reach the
// kernel without a copy. Threads: ExecuTorch's thread pool through the core's
// parallel-for hook when the runtime ships one (ET_USE_THREADPOOL), else serial;
// the core's results are bitwise the same for any thread count.
#include "groupnorm_executorch.h"

#include <groupnorm/groupnorm.hpp>

#include <executorch/runtime/core/evalue.h>
#include <executorch/runtime/core/event_tracer_hooks.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_runtime_context.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#include <executorch/runtime/platform/log.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace et = ::executorch::runtime;
using ::executorch::aten::ScalarType;
using ::executorch::aten::Tensor;
using et::EValue;
using et::KernelRuntimeContext;
using et::Span;

constexpr const char* kCustomOp = "groupnorm::group_norm.out";
constexpr const char* kNativeOp = "aten::native_group_norm.out";

std::atomic<std::int64_t> g_calls[2];
std::atomic<std::int64_t> g_failures[2];
std::atomic<std::int64_t> g_pool_items{0};  // parallel-for items run by a pool thread, not the caller
int g_registered = 0;
thread_local std::string g_last_error;

// Thrown inside a kernel, caught at its boundary: the message goes to ET_LOG and
// the failure to context.fail().
struct BadArgument {
  std::string message;
  et::Error error;
};

[[noreturn]] void bad(et::Error error, const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  throw BadArgument{buf, error};
}

const char* dtype_name(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Int: return "int32";
    case ScalarType::Long: return "int64";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Char: return "int8";
    case ScalarType::Bool: return "bool";
    default: return "an unsupported dtype";
  }
}

bool to_gn_dtype(ScalarType t, groupnorm::DType* out) {
  switch (t) {
    case ScalarType::Float: *out = groupnorm::DType::float32; return true;
    case ScalarType::Double: *out = groupnorm::DType::float64; return true;
    case ScalarType::Half: *out = groupnorm::DType::float16; return true;
    case ScalarType::BFloat16: *out = groupnorm::DType::bfloat16; return true;
    default: return false;
  }
}

std::string shape_str(const Tensor& t) {
  std::string s = "(";
  for (ssize_t i = 0; i < t.dim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(t.size(i));
  }
  return s + (t.dim() == 1 ? ",)" : ")");
}

enum class Layout { channels_first, channels_last, other };

// channels-first: dim order 0, 1, ..., n-1; channels-last: 0, 2, ..., n-1, 1.
Layout layout_of(const Tensor& t) {
  auto order = t.dim_order();
  const size_t n = order.size();
  bool cf = true, cl = n >= 2 && order[0] == 0 && order[n - 1] == 1;
  for (size_t i = 0; i < n; ++i) cf = cf && order[i] == i;
  for (size_t i = 1; cl && i + 1 < n; ++i) cl = order[i] == i + 1;
  if (cf) return Layout::channels_first;
  if (cl) return Layout::channels_last;
  return Layout::other;
}

const char* layout_name(Layout l) {
  return l == Layout::channels_first ? "contiguous" : l == Layout::channels_last ? "channels-last" : "another";
}

const Tensor& tensor_arg(const EValue* v, const char* name) {
  if (v == nullptr || !v->isTensor()) bad(et::Error::InvalidType, "%s must be a tensor", name);
  return v->toTensor();
}

const Tensor* optional_tensor_arg(const EValue* v, const char* name) {
  if (v == nullptr || v->isNone()) return nullptr;
  return &tensor_arg(v, name);
}

std::int64_t int_arg(const EValue* v, const char* name) {
  auto r = v ? v->tryToInt() : et::Result<std::int64_t>(et::Error::InvalidType);
  if (!r.ok()) bad(et::Error::InvalidType, "%s must be an int", name);
  return *r;
}

double double_arg(const EValue* v, const char* name) {
  auto r = v ? v->tryToDouble() : et::Result<double>(et::Error::InvalidType);
  if (!r.ok()) bad(et::Error::InvalidType, "%s must be a float", name);
  return *r;
}

void resize(Tensor& t, ::executorch::aten::ArrayRef<::executorch::aten::SizesType> sizes, const char* name,
            const char* want) {
  if (et::resize_tensor(t, sizes) != et::Error::Ok) {
    bad(et::Error::InvalidArgument, "%s has shape %s and cannot be resized to %s", name, shape_str(t).c_str(),
        want);
  }
}

#if defined(ET_USE_THREADPOOL)
void et_parallel_for(void*, std::int64_t n, groupnorm::TaskFn task, void* task_ctx) {
  // one item per worker; ExecuTorch's pool runs them (the calling thread takes part)
  const std::thread::id caller = std::this_thread::get_id();
  bool ok = ::executorch::extension::parallel_for(0, n, 1, [&](std::int64_t b, std::int64_t e) {
    if (std::this_thread::get_id() != caller) g_pool_items.fetch_add(e - b, std::memory_order_relaxed);
    for (std::int64_t i = b; i < e; ++i) task(task_ctx, i);
  });
  if (!ok) {  // cannot happen for 0 <= n; run serially rather than lose work
    for (std::int64_t i = 0; i < n; ++i) task(task_ctx, i);
  }
}
int pool_threads() {
  std::int64_t n = ::executorch::extension::get_thread_count();
  return n > 0 ? (int)n : 1;
}
#else
int pool_threads() { return 1; }
#endif

// Stats in x's dtype (native_group_norm) are converted from the kernel's float ones.
template <class T>
void store_stats(const float* src, void* dst, std::int64_t n) {
  T* d = static_cast<T*>(dst);
  for (std::int64_t i = 0; i < n; ++i) d[i] = T(src[i]);
}

void store_stats(ScalarType t, const float* src, void* dst, std::int64_t n) {
  if (t == ScalarType::Half) store_stats<::executorch::aten::Half>(src, dst, n);
  else store_stats<::executorch::aten::BFloat16>(src, dst, n);
}

struct Call {
  const Tensor* x = nullptr;
  const Tensor* weight = nullptr;
  const Tensor* bias = nullptr;
  const Tensor* skip = nullptr;
  Tensor* y = nullptr;
  Tensor* mean = nullptr;
  Tensor* rstd = nullptr;
  Tensor* sum_out = nullptr;
  std::int64_t groups = 0;
  double eps = 0;
  groupnorm::Activation activation = groupnorm::Activation::none;
  const char* op = "";
};

void check_like_x(const Tensor& t, const Tensor& x, const char* name, const char* op) {
  if (t.scalar_type() != x.scalar_type()) {
    bad(et::Error::InvalidArgument, "%s: %s dtype %s differs from x dtype %s", op, name,
        dtype_name(t.scalar_type()), dtype_name(x.scalar_type()));
  }
  bool same = t.dim() == x.dim();
  for (ssize_t i = 0; same && i < x.dim(); ++i) same = t.size(i) == x.size(i);
  if (!same) {
    bad(et::Error::InvalidArgument, "%s: %s has shape %s, x has shape %s", op, name, shape_str(t).c_str(),
        shape_str(x).c_str());
  }
  if (x.dim() > 2 && layout_of(t) != layout_of(x)) {
    bad(et::Error::InvalidArgument, "%s: %s is %s, x is %s (dim orders must match)", op, name,
        layout_name(layout_of(t)), layout_name(layout_of(x)));
  }
}

void run(KernelRuntimeContext& ctx, const Call& c) {
  (void)ctx;
  const Tensor& x = *c.x;
  groupnorm::Problem p;
  if (!to_gn_dtype(x.scalar_type(), &p.dtype)) {
    bad(et::Error::InvalidArgument, "%s: x dtype %s is not supported (float32, float16, bfloat16, float64)", c.op,
        dtype_name(x.scalar_type()));
  }
  if (x.dim() < 2) {
    bad(et::Error::InvalidArgument, "%s: x must have at least 2 dims (N, C, *spatial), got shape %s", c.op,
        shape_str(x).c_str());
  }
  Layout layout = x.dim() > 2 ? layout_of(x) : Layout::channels_first;
  if (layout == Layout::other) {
    bad(et::Error::InvalidArgument, "%s: x has a dim order that is neither contiguous nor channels-last", c.op);
  }
  p.batch = x.size(0);
  p.channels = x.size(1);
  p.groups = c.groups;
  p.spatial = 1;
  for (ssize_t i = 2; i < x.dim(); ++i) p.spatial *= x.size(i);
  p.channels_last = layout == Layout::channels_last;
  p.eps = c.eps;
  p.activation = c.activation;
  if (c.groups <= 0 || p.channels % c.groups != 0) {
    bad(et::Error::InvalidArgument, "%s: num_channels %lld is not divisible by num_groups %lld", c.op,
        (long long)p.channels, (long long)c.groups);
  }

  // parameters: 1-d of C elements, one dtype (x's or float32)
  ScalarType param_type = x.scalar_type();
  bool have_param = false;
  const char* names[2] = {"weight", "bias"};
  const Tensor* params[2] = {c.weight, c.bias};
  for (int i = 0; i < 2; ++i) {
    const Tensor* t = params[i];
    if (!t) continue;
    if (t->dim() != 1 || t->size(0) != p.channels) {
      bad(et::Error::InvalidArgument, "%s: %s has shape %s, expected (%lld,) (num_channels)", c.op, names[i],
          shape_str(*t).c_str(), (long long)p.channels);
    }
    if (t->scalar_type() != x.scalar_type() && t->scalar_type() != ScalarType::Float) {
      bad(et::Error::InvalidArgument, "%s: %s dtype %s must be x's (%s) or float32", c.op, names[i],
          dtype_name(t->scalar_type()), dtype_name(x.scalar_type()));
    }
    if (have_param && t->scalar_type() != param_type) {
      bad(et::Error::InvalidArgument, "%s: weight dtype %s and bias dtype %s differ", c.op,
          dtype_name(param_type), dtype_name(t->scalar_type()));
    }
    param_type = t->scalar_type();
    have_param = true;
  }
  to_gn_dtype(param_type, &p.param_dtype);

  // outputs: resized to what they must hold, then checked like x
  resize(*c.y, x.sizes(), "y (out)", shape_str(x).c_str());
  check_like_x(*c.y, x, "y (out)", c.op);
  if (c.skip) {
    check_like_x(*c.skip, x, "skip", c.op);
    if (c.sum_out) {
      resize(*c.sum_out, x.sizes(), "sum_out", shape_str(x).c_str());
      check_like_x(*c.sum_out, x, "sum_out", c.op);
    }
  }
  ::executorch::aten::SizesType ng[2] = {(::executorch::aten::SizesType)p.batch,
                                         (::executorch::aten::SizesType)p.groups};
  std::string ng_str = "(" + std::to_string(p.batch) + ", " + std::to_string(p.groups) + ")";
  const ScalarType stats_type = x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  Tensor* stats[2] = {c.mean, c.rstd};
  const char* stat_names[2] = {"mean", "rstd"};
  bool convert_stats = false;
  for (int i = 0; i < 2; ++i) {
    if (!stats[i]) continue;
    resize(*stats[i], {ng, 2}, stat_names[i], ng_str.c_str());
    ScalarType t = stats[i]->scalar_type();
    if (t != stats_type && t != x.scalar_type()) {
      bad(et::Error::InvalidArgument, "%s: %s dtype %s must be %s or x's (%s)", c.op, stat_names[i],
          dtype_name(t), dtype_name(stats_type), dtype_name(x.scalar_type()));
    }
    if (i == 1 && convert_stats != (t != stats_type)) {
      bad(et::Error::InvalidArgument, "%s: mean and rstd dtypes differ", c.op);
    }
    convert_stats = t != stats_type;
  }

  groupnorm::ForwardArgs a;
  a.x = x.const_data_ptr();
  a.weight = c.weight ? c.weight->const_data_ptr() : nullptr;
  a.bias = c.bias ? c.bias->const_data_ptr() : nullptr;
  a.skip = c.skip ? c.skip->const_data_ptr() : nullptr;
  a.y = c.y->mutable_data_ptr();
  a.sum_out = (c.skip && c.sum_out) ? c.sum_out->mutable_data_ptr() : nullptr;
  std::vector<float> scratch;
  if (convert_stats) {
    scratch.resize(2 * (size_t)(p.batch * p.groups));
    a.mean = scratch.data();
    a.rstd = scratch.data() + p.batch * p.groups;
  } else {
    a.mean = c.mean ? c.mean->mutable_data_ptr() : nullptr;
    a.rstd = c.rstd ? c.rstd->mutable_data_ptr() : nullptr;
  }
  groupnorm::Exec e;
  e.num_threads = pool_threads();
#if defined(ET_USE_THREADPOOL)
  e.parallel_for = &et_parallel_for;
#endif
  groupnorm::Result r = groupnorm::forward(p, a, e);
  if (!r) bad(et::Error::InvalidArgument, "%s: %s", c.op, r.message.c_str());
  if (convert_stats) {
    const std::int64_t n = p.batch * p.groups;
    if (c.mean) store_stats(c.mean->scalar_type(), scratch.data(), c.mean->mutable_data_ptr(), n);
    if (c.rstd) store_stats(c.rstd->scalar_type(), scratch.data() + n, c.rstd->mutable_data_ptr(), n);
  }
}

// The names our kernels' calls carry in an ETDump profile (the portable kernel's
// is "native_call_native_group_norm.out").
constexpr const char* kProfileNames[2] = {"groupnorm::group_norm.out", "groupnorm::native_group_norm.out"};

template <class Body>
void guarded(KernelRuntimeContext& ctx, int which, Body body) {
  et::internal::EventTracerProfileOpScope profile(ctx.internal_event_tracer(), kProfileNames[which]);
  try {
    body();
    g_calls[which].fetch_add(1, std::memory_order_relaxed);
    return;
  } catch (const BadArgument& b) {
    g_last_error = b.message;
    ctx.fail(b.error);
  } catch (const std::bad_alloc&) {
    g_last_error = "groupnorm: out of memory";
    ctx.fail(et::Error::MemoryAllocationFailed);
  } catch (const std::exception& ex) {
    g_last_error = std::string("groupnorm: ") + ex.what();
    ctx.fail(et::Error::Internal);
  } catch (...) {
    g_last_error = "groupnorm: unknown exception";
    ctx.fail(et::Error::Internal);
  }
  g_failures[which].fetch_add(1, std::memory_order_relaxed);
  ET_LOG(Error, "%s", g_last_error.c_str());
}

void need_args(Span<EValue*> stack, size_t n, const char* op) {
  if (stack.size() < n) {
    bad(et::Error::InvalidProgram, "%s: %zu arguments, expected at least %zu", op, (size_t)stack.size(), n);
  }
}

// groupnorm::group_norm.out(Tensor x, SymInt num_groups, Tensor? weight, Tensor? bias, float eps,
//     str activation, Tensor? skip, *, Tensor(a!) y, Tensor(b!) mean, Tensor(c!) rstd, Tensor(d!) sum_out)
void custom_op_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  guarded(ctx, GROUPNORM_ET_CUSTOM_OP, [&] {
    need_args(stack, 11, kCustomOp);
    Call c;
    c.op = kCustomOp;
    c.x = &tensor_arg(stack[0], "x");
    c.groups = int_arg(stack[1], "num_groups");
    c.weight = optional_tensor_arg(stack[2], "weight");
    c.bias = optional_tensor_arg(stack[3], "bias");
    c.eps = double_arg(stack[4], "eps");
    auto act = stack[5] ? stack[5]->tryToString() : et::Result<std::string_view>(et::Error::InvalidType);
    if (!act.ok()) bad(et::Error::InvalidType, "%s: activation must be a string", kCustomOp);
    std::string name(act->data(), act->size());
    if (name == "none" || name.empty()) {
      c.activation = groupnorm::Activation::none;
    } else if (!groupnorm::parse_activation(name.c_str(), &c.activation)) {
      bad(et::Error::InvalidArgument, "%s: activation '%s' is not one of 'none', 'silu'", kCustomOp, name.c_str());
    }
    c.skip = optional_tensor_arg(stack[6], "skip");
    c.y = const_cast<Tensor*>(&tensor_arg(stack[7], "y (out)"));
    c.mean = const_cast<Tensor*>(&tensor_arg(stack[8], "mean (out)"));
    c.rstd = const_cast<Tensor*>(&tensor_arg(stack[9], "rstd (out)"));
    c.sum_out = const_cast<Tensor*>(&tensor_arg(stack[10], "sum_out (out)"));
    run(ctx, c);
  });
}

// aten::native_group_norm.out(Tensor input, Tensor? weight, Tensor? bias, SymInt N, SymInt C,
//     SymInt HxW, int group, float eps, *, Tensor(a!) out0, Tensor(b!) out1, Tensor(c!) out2)
void native_op_out(KernelRuntimeContext& ctx, Span<EValue*> stack) {
  guarded(ctx, GROUPNORM_ET_NATIVE_GROUP_NORM, [&] {
    need_args(stack, 11, kNativeOp);
    Call c;
    c.op = kNativeOp;
    c.x = &tensor_arg(stack[0], "input");
    c.weight = optional_tensor_arg(stack[1], "weight");
    c.bias = optional_tensor_arg(stack[2], "bias");
    const std::int64_t N = int_arg(stack[3], "N"), C = int_arg(stack[4], "C"), HxW = int_arg(stack[5], "HxW");
    c.groups = int_arg(stack[6], "group");
    c.eps = double_arg(stack[7], "eps");
    c.y = const_cast<Tensor*>(&tensor_arg(stack[8], "out0"));
    c.mean = const_cast<Tensor*>(&tensor_arg(stack[9], "out1 (mean)"));
    c.rstd = const_cast<Tensor*>(&tensor_arg(stack[10], "out2 (rstd)"));
    const Tensor& x = *c.x;
    if (x.dim() < 2 || x.size(0) != N || x.size(1) != C || x.numel() != N * C * HxW) {
      bad(et::Error::InvalidArgument, "%s: input has shape %s, but N=%lld C=%lld HxW=%lld", kNativeOp,
          shape_str(x).c_str(), (long long)N, (long long)C, (long long)HxW);
    }
    run(ctx, c);
  });
}

// ---------------------------------------------------------------- registration

// Keys of the specialized native_group_norm kernels: the tensor arguments in
// order (input, [weight, bias,] out0, out1, out2) as "dtype;dim order", the
// format of ExecuTorch's kernel keys ("v1/6;0,1,2,3|6;0|...").
std::vector<std::string>* native_keys() {
  static auto* keys = new std::vector<std::string>();  // never freed: the registry keeps pointers
  if (!keys->empty()) return keys;
  const int dtypes[] = {(int)ScalarType::Float, (int)ScalarType::Half, (int)ScalarType::BFloat16};
  for (int dt : dtypes) {
    for (int rank = 3; rank <= 5; ++rank) {
      for (int cl = 0; cl < 2; ++cl) {
        std::string order;
        for (int i = 0; i < rank; ++i) {
          int d = !cl ? i : i == 0 ? 0 : i == rank - 1 ? 1 : i + 1;
          order += (i ? "," : "") + std::to_string(d);
        }
        const std::string xs = std::to_string(dt) + ";" + order;
        const std::string ps = std::to_string(dt) + ";0";
        const std::string ss = std::to_string(dt) + ";0,1";
        for (int affine = 0; affine < 2; ++affine) {
          std::string key = "v1/" + xs + "|";
          if (affine) key += ps + "|" + ps + "|";
          key += xs + "|" + ss + "|" + ss;
          keys->push_back(key);
        }
      }
    }
  }
  return keys;
}

bool already_registered(const char* name, const et::KernelKey& key) {
  for (const et::Kernel& k : et::get_registered_kernels()) {
    if (std::strcmp(k.name_, name) == 0 && k.kernel_key_ == key) return true;
  }
  return false;
}

int register_all() {
  // skip what another library already registered: the registry aborts on a repeat
  static std::vector<et::Kernel> kernels;
  if (!already_registered(kCustomOp, et::KernelKey())) kernels.emplace_back(kCustomOp, &custom_op_out);
  for (const std::string& key : *native_keys()) {
    et::KernelKey k(key.c_str());
    if (!already_registered(kNativeOp, k)) kernels.emplace_back(kNativeOp, k, &native_op_out);
  }
  if (kernels.empty()) return 0;
  et::Error err = et::register_kernels({kernels.data(), kernels.size()});
  return err == et::Error::Ok ? (int)kernels.size() : 0;
}

const int g_registration = [] {
  g_registered = register_all();
  return g_registered;
}();

}  // namespace

extern "C" {

int64_t groupnorm_executorch_calls(int which) {
  return which == 0 || which == 1 ? g_calls[which].load() : -1;
}
int64_t groupnorm_executorch_failures(int which) {
  return which == 0 || which == 1 ? g_failures[which].load() : -1;
}
void groupnorm_executorch_reset_calls(void) {
  for (int i = 0; i < 2; ++i) {
    g_calls[i].store(0);
    g_failures[i].store(0);
  }
}
int groupnorm_executorch_registered(void) { return g_registered; }
int64_t groupnorm_executorch_pool_items(void) { return g_pool_items.load(); }
int groupnorm_executorch_threads(void) { return pool_threads(); }
int groupnorm_executorch_uses_threadpool(void) {
#if defined(ET_USE_THREADPOOL)
  return 1;
#else
  return 0;
#endif
}
const char* groupnorm_executorch_last_error(void) { return g_last_error.c_str(); }

}  // extern "C"
