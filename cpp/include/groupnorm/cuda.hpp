// groupnorm CUDA backend (device pointers, caller's stream).
// Built only with -DGROUPNORM_CUDA=ON; otherwise every call returns Status::unsupported.
// Same Problem, same validate() rules, same ForwardArgs/BackwardArgs as the CPU API;
// every pointer in the args is a device pointer. No hidden synchronization and no
// allocation on the hot path: scratch comes from the caller's workspace (size it with
// *_workspace_bytes) or, when workspace is null, from a per-device cache grown once.
#pragma once

#include "groupnorm/groupnorm.hpp"

struct CUstream_st;

namespace groupnorm {
namespace cuda {

typedef CUstream_st* Stream;  // same type as cudaStream_t

// True when this build has the CUDA backend and a device is visible.
bool available();

std::size_t forward_workspace_bytes(const Problem& p);
std::size_t backward_workspace_bytes(const Problem& p);

Result forward(const Problem& p, const ForwardArgs& a, Stream stream,
               void* workspace = nullptr, std::size_t workspace_bytes = 0);
Result backward(const Problem& p, const BackwardArgs& a, Stream stream,
                void* workspace = nullptr, std::size_t workspace_bytes = 0);

}  // namespace cuda
}  // namespace groupnorm
