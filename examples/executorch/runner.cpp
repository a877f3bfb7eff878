// Runs an ExecuTorch program (.pte) and says which kernel served its GroupNorm calls.
//
//   groupnorm_et_runner model.pte [--kernels libgroupnorm_executorch.so] [--iters N]
//
// Without --kernels the runtime's own kernels run the program (the portable
// native_group_norm); with it, the groupnorm kernel library is loaded first
// (dlopen: its kernels register with ExecuTorch's registry as it loads), and the
// runner prints how many GroupNorm calls it served. Inputs are filled with a
// fixed pseudo-random sequence in each input's dtype and dim order; the runner
// prints a checksum of the first output and the median time of a run.
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>
#include <executorch/runtime/kernel/operator_registry.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

namespace {

float next_value(std::uint32_t& s) {  // xorshift32 -> [-2, 2)
  s ^= s << 13; s ^= s >> 17; s ^= s << 5;
  return (float)((s >> 8) * (1.0 / 16777216.0) * 4.0 - 2.0);
}

void list_group_norm_kernels() {
  for (const auto& k : executorch::runtime::get_registered_kernels()) {
    if (std::strstr(k.name_, "group_norm")) {
      std::printf("  registered: %s [%s]\n", k.name_, k.kernel_key_.is_fallback() ? "any dtype / dim order"
                                                                                     : k.kernel_key_.data());
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s model.pte [--kernels libgroupnorm_executorch.so] [--iters N]\n", argv[0]);
    return 2;
  }
  const char* pte = argv[1];
  const char* kernels = nullptr;
  int iters = 5;
  for (int i = 2; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--kernels") && i + 1 < argc) kernels = argv[++i];
    else if (!std::strcmp(argv[i], "--iters") && i + 1 < argc) iters = std::max(1, std::atoi(argv[++i]));
    else { std::fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
  }

  typedef long long (*CountFn)(int);
  CountFn calls = nullptr, failures = nullptr;
  if (kernels) {
    void* h = dlopen(kernels, RTLD_NOW | RTLD_GLOBAL);
    if (!h) { std::fprintf(stderr, "cannot load %s: %s\n", kernels, dlerror()); return 1; }
    calls = (CountFn)dlsym(h, "groupnorm_executorch_calls");
    failures = (CountFn)dlsym(h, "groupnorm_executorch_failures");
    if (!calls || !failures) { std::fprintf(stderr, "%s is not the groupnorm kernel library\n", kernels); return 1; }
  }
  std::printf("GroupNorm kernels in the registry:\n");
  list_group_norm_kernels();

  Module module(pte);
  auto meta = module.method_meta("forward");
  if (!meta.ok()) { std::fprintf(stderr, "cannot load %s (error 0x%x)\n", pte, (unsigned)meta.error()); return 1; }

  std::vector<executorch::extension::TensorPtr> tensors;
  std::vector<EValue> inputs;
  std::uint32_t seed = 12345;
  for (size_t i = 0; i < meta->num_inputs(); ++i) {
    auto info = meta->input_tensor_meta(i);
    if (!info.ok()) { std::fprintf(stderr, "input %zu is not a tensor\n", i); return 1; }
    std::vector<executorch::aten::SizesType> sizes(info->sizes().begin(), info->sizes().end());
    std::vector<executorch::aten::DimOrderType> order(info->dim_order().begin(), info->dim_order().end());
    size_t n = 1;
    for (auto s : sizes) n *= (size_t)s;
    auto t = executorch::extension::empty(sizes, info->scalar_type());  // contiguous storage
    t = executorch::extension::make_tensor_ptr(sizes, t->mutable_data_ptr(), order, {}, info->scalar_type(),
                                               executorch::aten::Device(executorch::aten::DeviceType::CPU),
                                               executorch::aten::TensorShapeDynamism::DYNAMIC_BOUND,
                                               [keep = t](void*) {});
    for (size_t j = 0; j < n; ++j) {
      float v = next_value(seed);
      switch (info->scalar_type()) {
        case ScalarType::Float: t->mutable_data_ptr<float>()[j] = v; break;
        case ScalarType::Half: t->mutable_data_ptr<executorch::aten::Half>()[j] = v; break;
        case ScalarType::BFloat16: t->mutable_data_ptr<executorch::aten::BFloat16>()[j] = v; break;
        default: std::fprintf(stderr, "input %zu: dtype %d not handled by this runner\n", i,
                              (int)info->scalar_type()); return 1;
      }
    }
    tensors.push_back(t);
    inputs.emplace_back(*t);
  }

  std::vector<double> ms;
  std::vector<EValue> outputs;
  for (int it = 0; it < iters; ++it) {
    auto t0 = std::chrono::steady_clock::now();
    auto out = module.execute("forward", inputs);
    auto t1 = std::chrono::steady_clock::now();
    if (!out.ok()) {
      std::fprintf(stderr, "forward failed (error 0x%x)\n", (unsigned)out.error());
      return 1;
    }
    outputs = *out;
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  double sum = 0;
  const auto& y = outputs.at(0).toTensor();
  for (ssize_t j = 0; j < y.numel(); ++j) {
    sum += y.scalar_type() == ScalarType::Float ? y.const_data_ptr<float>()[j]
         : y.scalar_type() == ScalarType::Half ? (float)y.const_data_ptr<executorch::aten::Half>()[j]
                                                : (float)y.const_data_ptr<executorch::aten::BFloat16>()[j];
  }
  std::printf("output 0: %zd elements, sum %.6g; median run %.3f ms over %d runs\n", (ssize_t)y.numel(), sum,
              ms[ms.size() / 2], iters);
  if (calls) {
    std::printf("served by groupnorm: groupnorm::group_norm.out %lld calls, aten::native_group_norm.out %lld calls"
                " (%lld failed)\n", calls(0), calls(1), failures(0) + failures(1));
  } else {
    std::printf("served by the runtime's own kernels (no --kernels)\n");
  }
  return 0;
}
