// groupnorm kernels for ExecuTorch: the library's C entry points.
//
// Loading libgroupnorm_executorch.so (linking it, or dlopen) registers, with
// ExecuTorch's kernel registry (the one in libexecutorch.so):
//   groupnorm::group_norm.out     every dtype / dim order (a fallback kernel)
//   aten::native_group_norm.out   specialized kernels for float32, float16 and
//                                 bfloat16 inputs of rank 3 to 5 in both dim orders
//                                 (contiguous and channels-last), so a program lowered
//                                 from a stock nn.GroupNorm runs here too; other keys
//                                 fall back to the runtime's own (portable) kernel.
// These functions let a runner or a test see what was registered and served.
#pragma once

#include <stdint.h>

#if defined(__GNUC__)
#define GROUPNORM_ET_API __attribute__((visibility("default")))
#else
#define GROUPNORM_ET_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Which kernel: 0 = groupnorm::group_norm.out, 1 = aten::native_group_norm.out.
enum { GROUPNORM_ET_CUSTOM_OP = 0, GROUPNORM_ET_NATIVE_GROUP_NORM = 1 };

// Successful calls served by our kernel `which` since load (or the last reset).
GROUPNORM_ET_API int64_t groupnorm_executorch_calls(int which);
// Calls that failed (reported through ExecuTorch's error channel, context.fail()).
GROUPNORM_ET_API int64_t groupnorm_executorch_failures(int which);
GROUPNORM_ET_API void groupnorm_executorch_reset_calls(void);
// Number of kernels this library registered (0 when registration failed).
GROUPNORM_ET_API int groupnorm_executorch_registered(void);
// Threads the kernels run on: ExecuTorch's thread pool size (1 without a pool).
GROUPNORM_ET_API int groupnorm_executorch_threads(void);
// Parallel-for items our kernels ran on ExecuTorch's pool threads (not the calling
// thread) since load: evidence that the work ran on the engine's threads.
GROUPNORM_ET_API int64_t groupnorm_executorch_pool_items(void);
// 1 when the kernels run on ExecuTorch's thread pool, 0 when serial.
GROUPNORM_ET_API int groupnorm_executorch_uses_threadpool(void);
// The message of the last failed call on this thread ("" if none).
GROUPNORM_ET_API const char* groupnorm_executorch_last_error(void);

#ifdef __cplusplus
}
#endif
