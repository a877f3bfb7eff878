// Instruction-set dispatch: the generic kernels are compiled once per ISA
// (isa_*.cpp); the best one this CPU runs is chosen once per process.
// GROUPNORM_ISA=<name> caps the choice (e.g. to test the portable path).
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "groupnorm/groupnorm.hpp"
#include "kernels.hpp"

namespace groupnorm {
namespace detail {

namespace isa_portable { const IsaKernels& kernels(); }
#if defined(GROUPNORM_HAVE_X86)
namespace isa_avx2 { const IsaKernels& kernels(); }
namespace isa_avx512 { const IsaKernels& kernels(); }
#endif
#if defined(GROUPNORM_HAVE_NEON)
namespace isa_neon { const IsaKernels& kernels(); }
#endif

namespace {

struct Entry {
  const char* name;
  const IsaKernels& (*get)();
  bool (*supported)();
};

bool always() { return true; }
#if defined(GROUPNORM_HAVE_X86)
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  __builtin_cpu_init();
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// best first
const Entry kEntries[] = {
#if defined(GROUPNORM_HAVE_X86)
    {"avx512", &isa_avx512::kernels, &has_avx512},
    {"avx2", &isa_avx2::kernels, &has_avx2},
#endif
#if defined(GROUPNORM_HAVE_NEON)
    {"neon", &isa_neon::kernels, &always},
#endif
    {"portable", &isa_portable::kernels, &always},
};
constexpr int kCount = sizeof(kEntries) / sizeof(kEntries[0]);

int find(const char* name) {
  for (int i = 0; i < kCount; ++i)
    if (name && std::strcmp(kEntries[i].name, name) == 0) return i;
  return -1;
}

int initial_choice() {
  int cap = 0;
  if (const char* env = std::getenv("GROUPNORM_ISA")) {
    const int i = find(env);
    if (i >= 0) cap = i;
  }
  for (int i = cap; i < kCount; ++i)
    if (kEntries[i].supported()) return i;
  return kCount - 1;
}

std::atomic<int>& current() {
  static std::atomic<int> c{initial_choice()};
  return c;
}

}  // namespace

const IsaKernels& active_kernels() { return kEntries[current().load(std::memory_order_relaxed)].get(); }

}  // namespace detail

const char* active_isa() { return detail::kEntries[detail::current().load()].name; }

bool set_isa(const char* name) {
  const int i = detail::find(name);
  if (i < 0 || !detail::kEntries[i].supported()) return false;
  detail::current().store(i);
  return true;
}

const char* available_isas() {
  static const std::string names = [] {
    std::string s;
    for (int i = 0; i < detail::kCount; ++i)
      if (detail::kEntries[i].supported()) s += (s.empty() ? "" : ",") + std::string(detail::kEntries[i].name);
    return s;
  }();
  return names.c_str();
}

}  // namespace groupnorm
