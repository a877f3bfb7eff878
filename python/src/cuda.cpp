// The CUDA entry points. GPU arrays arrive as raw device pointers (from
// __cuda_array_interface__, checked in python/groupnorm/_cuda.py, or a torch
// tensor's data_ptr()) with their geometry, and run on the caller's stream.
// In a CPU-only build the core's CUDA functions report that there is no backend.
#include "core_call.hpp"
#include "groupnorm/cuda.hpp"

namespace groupnorm_py {

namespace {

void* device(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

void forward_cuda(std::uintptr_t x, std::int64_t n, std::int64_t c, std::int64_t s, std::int64_t groups,
                  std::uintptr_t weight, std::uintptr_t bias, double eps, bool channels_last, int activation,
                  int dtype, int param_dtype, std::uintptr_t y, std::uintptr_t mean, std::uintptr_t rstd,
                  std::uintptr_t skip, std::uintptr_t skip_bias, std::uintptr_t sum_out, std::uintptr_t stream) {
  const gn::Problem p = problem(n, c, s, groups, eps, channels_last, activation, dtype, param_dtype);
  const gn::ForwardArgs a = forward_args(device(x), device(weight), device(bias), device(skip), device(skip_bias),
                                         device(y), device(sum_out), device(mean), device(rstd));
  run_released([&] { return gn::cuda::forward(p, a, (gn::cuda::Stream)stream); });
}

void backward_cuda(std::uintptr_t grad_y, std::uintptr_t x, std::uintptr_t mean, std::uintptr_t rstd, std::int64_t n,
                   std::int64_t c, std::int64_t s, std::int64_t groups, std::uintptr_t weight, std::uintptr_t bias,
                   bool channels_last, int activation, int dtype, int param_dtype, std::uintptr_t grad_x,
                   std::uintptr_t grad_weight, std::uintptr_t grad_bias, std::uintptr_t stream) {
  const gn::Problem p = problem(n, c, s, groups, 0.0, channels_last, activation, dtype, param_dtype);
  const gn::BackwardArgs a = backward_args(device(grad_y), device(x), device(mean), device(rstd), device(weight),
                                           device(bias), device(grad_x), device(grad_weight), device(grad_bias));
  run_released([&] { return gn::cuda::backward(p, a, (gn::cuda::Stream)stream); });
}

}  // namespace

void def_cuda(py::module_& m) {
  // pointers: 0 for an absent optional array
  m.def("forward_cuda", &forward_cuda, py::arg("x"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("groups"),
        py::arg("weight"), py::arg("bias"), py::arg("eps"), py::arg("channels_last"), py::arg("activation"),
        py::arg("dtype"), py::arg("param_dtype"), py::arg("y"), py::arg("mean"), py::arg("rstd"), py::arg("skip"),
        py::arg("skip_bias"), py::arg("sum_out"), py::arg("stream"));
  m.def("backward_cuda", &backward_cuda, py::arg("grad_y"), py::arg("x"), py::arg("mean"), py::arg("rstd"),
        py::arg("n"), py::arg("c"), py::arg("s"), py::arg("groups"), py::arg("weight"), py::arg("bias"),
        py::arg("channels_last"), py::arg("activation"), py::arg("dtype"), py::arg("param_dtype"),
        py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("stream"));
#if defined(GROUPNORM_WITH_CUDA)
  m.attr("HAS_CUDA") = true;
#else
  m.attr("HAS_CUDA") = false;
#endif
  m.def("cuda_available", &gn::cuda::available);
}

}  // namespace groupnorm_py
