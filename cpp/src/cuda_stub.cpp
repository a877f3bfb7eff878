// CPU-only build: the CUDA entry points exist and say clearly that they are not built.
#include "groupnorm/cuda.hpp"

namespace groupnorm {
namespace cuda {
namespace {
Result not_built() {
  return {Status::unsupported, "groupnorm was built without CUDA (rebuild with -DGROUPNORM_CUDA=ON)"};
}
}  // namespace
bool available() { return false; }
std::size_t forward_workspace_bytes(const Problem&) { return 0; }
std::size_t backward_workspace_bytes(const Problem&) { return 0; }
Result forward(const Problem&, const ForwardArgs&, Stream, void*, std::size_t) { return not_built(); }
Result backward(const Problem&, const BackwardArgs&, Stream, void*, std::size_t) { return not_built(); }
}  // namespace cuda
}  // namespace groupnorm
