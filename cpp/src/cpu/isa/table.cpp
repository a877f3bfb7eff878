// One target's kernel table: the KernelSet of each dtype, from the entry
// points the other files of cpu/isa/ define (compiled once per target: entries.hpp).
// A variant target (gn_add_variant in CMakeLists.txt) defines GN_ISA_BASE_NS and
// GN_ISA_OWN_DTYPES (GN_OWN(T) for each dtype it compiles): its own kernels for
// those, its base target's for the others.
#include "entries.hpp"

#if defined(GN_ISA_BASE_NS)
namespace groupnorm {
namespace detail {
namespace GN_ISA_BASE_NS {
const IsaKernels& kernels();
}
}  // namespace detail
}  // namespace groupnorm
#endif

namespace groupnorm {
namespace detail {
namespace GN_ISA_NS {
namespace {

// the layout picks the entry point
template <class T> void moments(const Tile& t, Moments* out) { (t.channels_last ? moments_cl<T> : moments_cf<T>)(t, out); }
template <class T> void apply(const Tile& t) { (t.channels_last ? apply_cl<T> : apply_cf<T>)(t); }
template <class T> void backward_sums(const Tile& t, double* db, double* ds) {
  (t.channels_last ? backward_sums_cl<T> : backward_sums_cf<T>)(t, db, ds);
}
template <class T> void backward_apply(const Tile& t) {
  (t.channels_last ? backward_apply_cl<T> : backward_apply_cf<T>)(t);
}

template <class T> constexpr KernelSet kernel_set() {
  return KernelSet{&moments<T>,      &apply<T>,          &apply_moments_cf<T>,
                   &backward_sums<T>, &backward_apply<T>, &backward_apply_sums_cf<T>};
}

}  // namespace

const IsaKernels& kernels() {
#if defined(GN_ISA_BASE_NS)
  static const IsaKernels k = [] {
    IsaKernels r = GN_ISA_BASE_NS::kernels();
    r.name = GN_ISA_NAME;
#define GN_OWN(T) r.by_dtype[(int)dtype_of<T>()] = kernel_set<T>();
    GN_ISA_OWN_DTYPES
#undef GN_OWN
    return r;
  }();
#else
  static const IsaKernels k{GN_ISA_NAME,
                            {kernel_set<float>(), kernel_set<double>(), kernel_set<half>(), kernel_set<bfloat16>()}};
#endif
  return k;
}

}  // namespace GN_ISA_NS
}  // namespace detail
}  // namespace groupnorm
