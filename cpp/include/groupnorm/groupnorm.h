/* groupnorm: Group Normalization, C99 API.
 *
 * A thin, exception-free front end to the C++ core (groupnorm.hpp), for engines
 * and devices that embed the library from C or through a C FFI.
 *
 *   y[n,c,s] = act( weight[c] * (x[n,c,s] - mean[n,g]) * rstd[n,g] + bias[c] )
 *   rstd[n,g] = 1 / sqrt(var[n,g] + eps), var biased, g = c / (C / G)
 *
 * Shapes. N = batch, C = channels, G = groups, S = spatial (the product of the
 * spatial dims; 1 when there are none). Channels-first x is (N, C, S),
 * channels-last x is (N, S, C), both dense and row-major. mean and rstd are
 * (N, G). Per-channel parameters (weight, bias, ...) are (C).
 *
 * Dtypes. x, y, skip, sum_out, grad_y and grad_x have the problem's `dtype`;
 * weight, bias, skip_bias, grad_weight and grad_bias have `param_dtype`
 * (float32, or the same as dtype); mean and rstd are double for FLOAT64 data
 * and float otherwise. FLOAT16 and BFLOAT16 data are raw 16-bit storage
 * (uint16_t holding IEEE binary16 / bfloat16 bits); the library accumulates in
 * float (double for FLOAT64).
 *
 * Contract of every function that returns a groupnorm_status:
 *   - it never throws, never aborts and never prints;
 *   - on any error it returns the code and writes nothing to any output buffer;
 *   - it allocates only when the caller lets it: pass a workspace of at least
 *     groupnorm_*_workspace_bytes() bytes in groupnorm_exec and a successful
 *     call allocates no memory at all (a NULL workspace lets the library
 *     allocate its scratch, O(N*C + threads) bytes, for the duration of the call);
 *   - the caller owns every buffer; the library keeps no pointer after return.
 *
 * Results depend only on the problem and the data: they are bitwise the same for
 * any thread count, any parallel-for (OpenMP, the engine's own, or serial) and any
 * instruction set that the dispatcher picks.
 */
#ifndef GROUPNORM_GROUPNORM_H_
#define GROUPNORM_GROUPNORM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: the same numbers as groupnorm::Status in groupnorm.hpp. */
typedef enum groupnorm_status {
  GROUPNORM_OK = 0,
  GROUPNORM_NULL_POINTER = 1,         /* a required pointer is NULL */
  GROUPNORM_INVALID_SIZE = 2,         /* batch/spatial < 0 or channels <= 0 */
  GROUPNORM_INVALID_GROUPS = 3,       /* groups <= 0 or channels % groups != 0 */
  GROUPNORM_SIZE_OVERFLOW = 4,        /* channels > 2^31-1, or N*C*S > 2^56 (a zero counted as 1) */
  GROUPNORM_INVALID_EPS = 5,          /* eps is NaN, infinite or negative */
  GROUPNORM_INVALID_DTYPE = 6,        /* unknown dtype, or param_dtype neither FLOAT32 nor dtype */
  GROUPNORM_INVALID_ACTIVATION = 7,   /* unknown activation */
  GROUPNORM_INVALID_COMBINATION = 8,  /* e.g. skip_bias or sum_out without skip */
  GROUPNORM_WORKSPACE_TOO_SMALL = 9,  /* workspace smaller than *_workspace_bytes() */
  GROUPNORM_UNSUPPORTED = 10,         /* valid request this build cannot serve (e.g. unknown ISA) */
  GROUPNORM_OUT_OF_MEMORY = 11,       /* an internal allocation failed */
  GROUPNORM_DEVICE_ERROR = 12,        /* the CUDA runtime reported an error */
  GROUPNORM_INTERNAL_ERROR = 13,      /* an unexpected failure inside the library (a bug) */
  GROUPNORM_OVERLAPPING_BUFFERS = 14  /* an output overlaps an input or another output, other
                                         than the exact aliases allowed (see the args structs) */
} groupnorm_status;

typedef enum groupnorm_dtype {
  GROUPNORM_FLOAT32 = 0,
  GROUPNORM_FLOAT64 = 1,
  GROUPNORM_FLOAT16 = 2,  /* raw IEEE binary16 bits in uint16_t */
  GROUPNORM_BFLOAT16 = 3  /* raw bfloat16 bits in uint16_t */
} groupnorm_dtype;

typedef enum groupnorm_activation {
  GROUPNORM_ACTIVATION_NONE = 0,
  GROUPNORM_ACTIVATION_SILU = 1 /* y = z * sigmoid(z), fused into the output pass */
} groupnorm_activation;

/* Everything a call depends on, except the data pointers. Start from
 * groupnorm_problem_default() (or GROUPNORM_PROBLEM_INIT) and set the sizes. */
typedef struct groupnorm_problem {
  int64_t batch;         /* N >= 0 (0: nothing to do) */
  int64_t channels;      /* C > 0 */
  int64_t groups;        /* G > 0, C % G == 0 */
  int64_t spatial;       /* S >= 0, product of the spatial dims (1 when none) */
  int32_t channels_last; /* 0: x is (N, C, S); nonzero: x is (N, S, C) */
  int32_t activation;    /* a groupnorm_activation */
  int32_t dtype;         /* a groupnorm_dtype: x, y, skip, sum_out, grad_y, grad_x */
  int32_t param_dtype;   /* a groupnorm_dtype: weight, bias, skip_bias, grad_weight,
                            grad_bias; FLOAT32 or the same as dtype */
  double eps;            /* finite and >= 0 (PyTorch's default is 1e-5). A constant group
                            gives exactly the bias for any eps > 0; with eps = 0 its
                            rstd is inf and its y NaN. Data anywhere in the dtype's
                            range normalizes correctly (see groupnorm.hpp) */
} groupnorm_problem;

/* batch 0, channels 0, groups 0, spatial 1, channels-first, no activation,
 * float32 data and parameters, eps 1e-5. */
#define GROUPNORM_PROBLEM_INIT \
  { 0, 0, 0, 1, 0, GROUPNORM_ACTIVATION_NONE, GROUPNORM_FLOAT32, GROUPNORM_FLOAT32, 1e-5 }

/* Data pointers of a forward call. Optional pointers may be NULL. No output
 * (y, sum_out, mean, rstd) may overlap an input or another output
 * (GROUPNORM_OVERLAPPING_BUFFERS), except: y and sum_out may each be exactly x
 * or skip (the same address). */
typedef struct groupnorm_forward_args {
  const void* x;         /* dtype, N*C*S elements; required when N*C*S > 0 */
  const void* weight;    /* param_dtype, C (optional: 1) */
  const void* bias;      /* param_dtype, C (optional: 0) */
  const void* skip;      /* dtype, like x (optional): normalizes x + skip (+ skip_bias) */
  const void* skip_bias; /* param_dtype, C (optional, needs skip) */
  void* y;               /* dtype, like x; required when N*C*S > 0; may be x or skip */
  void* sum_out;         /* dtype, like x (optional, needs skip): writes x + skip (+ skip_bias);
                            may be x or skip */
  void* mean;            /* float (double for FLOAT64 data), N*G (optional) */
  void* rstd;            /* float (double for FLOAT64 data), N*G (optional) */
} groupnorm_forward_args;

/* Data pointers of a backward call. Optional pointers may be NULL. No output
 * (grad_x, grad_weight, grad_bias) may overlap an input or another output
 * (GROUPNORM_OVERLAPPING_BUFFERS), except: grad_x may be exactly grad_y. */
typedef struct groupnorm_backward_args {
  const void* grad_y;    /* dtype, like x; required */
  const void* x;         /* dtype: the forward's input (x + skip when skip was used); required */
  const void* mean;      /* float (double for FLOAT64 data), N*G, from forward; required */
  const void* rstd;      /* float (double for FLOAT64 data), N*G, from forward; required */
  const void* weight;    /* param_dtype, C (optional: 1) */
  const void* bias;      /* param_dtype, C (optional; the SiLU backward needs it) */
  void* grad_x;          /* dtype, like x (optional); may alias grad_y */
  void* grad_weight;     /* param_dtype, C (optional) */
  void* grad_bias;       /* param_dtype, C (optional) */
} groupnorm_backward_args;

/* An engine's own parallel-for. It must call task(task_ctx, i) exactly once for
 * every i in [0, n), on any threads, concurrently or not, in any order, and
 * return only when all calls have returned. The results do not depend on how it
 * does so. */
typedef void (*groupnorm_task_fn)(void* task_ctx, int64_t i);
typedef void (*groupnorm_parallel_for_fn)(void* engine_ctx, int64_t n, groupnorm_task_fn task,
                                          void* task_ctx);

/* How to run a call. Zero-initialize it ({0}) for the defaults; a NULL
 * groupnorm_exec pointer means the defaults too. */
typedef struct groupnorm_exec {
  int32_t num_threads;                    /* <= 0: groupnorm_get_num_threads(); capped at
                                             groupnorm_max_threads() */
  groupnorm_parallel_for_fn parallel_for; /* NULL: OpenMP (serial in a no-OpenMP build) */
  void* parallel_ctx;                     /* passed to parallel_for as engine_ctx */
  void* workspace;                        /* optional caller scratch; NULL lets the library
                                             allocate. With one of at least the bytes that
                                             groupnorm_*_workspace_bytes() returns for the
                                             same problem and num_threads, a call allocates
                                             nothing. Any alignment; not kept after return. */
  size_t workspace_bytes;
} groupnorm_exec;

/* A problem with the defaults of GROUPNORM_PROBLEM_INIT. */
groupnorm_problem groupnorm_problem_default(void);

/* Checks the problem alone (sizes, groups, eps, dtypes, activation). Returns
 * GROUPNORM_OK or the error code; when msg_buf is not NULL and msg_len > 0 the
 * message ("" when ok) is copied into it, truncated to msg_len - 1 characters
 * and NUL-terminated. */
groupnorm_status groupnorm_validate(const groupnorm_problem* problem, char* msg_buf, size_t msg_len);

/* Bytes of scratch that a forward / backward call of this problem needs with
 * num_threads threads (<= 0: groupnorm_get_num_threads()). 0 when the problem
 * is invalid or empty; 0 also when problem is NULL. Pass the same num_threads in
 * groupnorm_exec. */
size_t groupnorm_forward_workspace_bytes(const groupnorm_problem* problem, int32_t num_threads);
size_t groupnorm_backward_workspace_bytes(const groupnorm_problem* problem, int32_t num_threads);

/* Forward pass on CPU buffers. Writes y and, when given, sum_out, mean, rstd.
 * problem and args are required; exec may be NULL. */
groupnorm_status groupnorm_forward(const groupnorm_problem* problem, const groupnorm_forward_args* args,
                                   const groupnorm_exec* exec);

/* Backward pass on CPU buffers, from the mean/rstd a forward call wrote. Writes
 * grad_x, grad_weight and grad_bias when given (grad_weight/grad_bias are summed
 * over the batch; they are set, not accumulated). problem and args are required;
 * exec may be NULL. */
groupnorm_status groupnorm_backward(const groupnorm_problem* problem, const groupnorm_backward_args* args,
                                    const groupnorm_exec* exec);

/* The message of the most recent failed groupnorm_forward/backward/validate/
 * set_isa call on the calling thread ("" when none has failed), e.g.
 * "num_channels 6 is not divisible by num_groups 4". Successful calls leave it
 * as it is. Truncated to 255 characters; valid until the next failing call on the
 * same thread. */
const char* groupnorm_last_error(void);

/* A short, static description of a status ("ok", "null pointer", ...). Never NULL. */
const char* groupnorm_status_string(groupnorm_status status);

/* Threads used when groupnorm_exec.num_threads <= 0 (n <= 0 restores the default:
 * all hardware threads, or OMP_NUM_THREADS in an OpenMP build). Every thread
 * request (these, groupnorm_exec.num_threads, OMP_NUM_THREADS) is capped at
 * groupnorm_max_threads(), 4x the hardware threads. */
void groupnorm_set_num_threads(int32_t n);
int32_t groupnorm_get_num_threads(void);
int32_t groupnorm_max_threads(void);

/* Instruction-set dispatch: "portable", "avx2", "avx512", "neon". The best the
 * CPU supports is picked on first use (GROUPNORM_ISA=<name> in the environment
 * caps it). groupnorm_set_isa returns GROUPNORM_NULL_POINTER for NULL and
 * GROUPNORM_UNSUPPORTED for a name this CPU or build cannot run. The process-wide
 * choice is not meant to change while calls run on other threads. */
const char* groupnorm_active_isa(void);
groupnorm_status groupnorm_set_isa(const char* name);
/* The names this CPU and build can run, best first, comma separated. */
const char* groupnorm_available_isas(void);

/* The library version, "MAJOR.MINOR.PATCH". */
const char* groupnorm_version(void);

/* ---------------------------------------------------------- split phase
 * The forward is moments -> merge -> apply, and each phase is a call of its own,
 * for tensors that are never whole in one place (tiles of an image, slabs of a
 * volume, ranks of a job). A tile holds whole channels of whole samples over
 * part of the spatial extent: describe it with a problem whose `spatial` is the
 * tile's. The same contract as above holds for every call below.
 *
 * Moments of a tile, per (n, g): count (int64), mean and m2 (the sum of squared
 * deviations from mean), N*G each. x, skip, skip_bias as in groupnorm_forward
 * (skip and skip_bias may be NULL). */
groupnorm_status groupnorm_moments(const groupnorm_problem* problem, const void* x, const void* skip,
                                   const void* skip_bias, int64_t* count, double* mean, double* m2,
                                   const groupnorm_exec* exec);

/* Chan's merge of `parts` moment arrays of `size` entries each, in list order
 * (counts[j], means[j], m2s[j] are part j). Parts with count 0 are the identity.
 * The outputs may alias part 0. */
groupnorm_status groupnorm_merge_moments(int64_t size, int64_t parts, const int64_t* const* counts,
                                         const double* const* means, const double* const* m2s,
                                         int64_t* count, double* mean, double* m2);

/* mean and rstd = 1 / sqrt(m2 / count + eps) as groupnorm_forward computes them,
 * stored as double for FLOAT64 `dtype` and float otherwise (NaN for count 0).
 * mean_out or rstd_out may be NULL. */
groupnorm_status groupnorm_mean_rstd(int64_t size, const int64_t* count, const double* mean, const double* m2,
                                     double eps, int32_t dtype, void* mean_out, void* rstd_out);

/* Apply with given statistics: groupnorm_forward without its moments phase.
 * Statistics from moments (count, mean, m2: N*G each, e.g. merged over all
 * tiles; rstd from problem->eps, so the moments of a whole tensor give y
 * bitwise equal to groupnorm_forward) ... */
groupnorm_status groupnorm_forward_with_moments(const groupnorm_problem* problem,
                                                const groupnorm_forward_args* args, const int64_t* count,
                                                const double* mean, const double* m2,
                                                const groupnorm_exec* exec);
/* ... or from mean and rstd (float, double for FLOAT64 data; N*G). args->mean and
 * args->rstd, when set, receive the statistics used. */
groupnorm_status groupnorm_forward_with_stats(const groupnorm_problem* problem, const groupnorm_forward_args* args,
                                              const void* mean, const void* rstd, const groupnorm_exec* exec);

/* Backward, split. Per (n, c) sums over a tile: sum_dz = sum of dz and
 * sum_dz_xc = sum of dz * (x - mean), dz = grad_y (through the SiLU when
 * asked), mean/rstd the statistics of the whole tensor (args->mean/rstd).
 * args->grad_x, grad_weight and grad_bias are ignored. N*C each. */
groupnorm_status groupnorm_backward_sums(const groupnorm_problem* problem, const groupnorm_backward_args* args,
                                         double* sum_dz, double* sum_dz_xc, const groupnorm_exec* exec);
/* Sums of `parts` arrays of `size` entries, in list order. Outputs may alias part 0. */
groupnorm_status groupnorm_merge_backward_sums(int64_t size, int64_t parts, const double* const* sum_dz,
                                               const double* const* sum_dz_xc, double* out_dz,
                                               double* out_dz_xc);
/* Backward of a tile from the merged sums of the whole tensor, whose spatial
 * size is total_spatial: this tile's grad_x, the whole tensor's grad_weight and
 * grad_bias. */
groupnorm_status groupnorm_backward_with_sums(const groupnorm_problem* problem,
                                              const groupnorm_backward_args* args, const double* sum_dz,
                                              const double* sum_dz_xc, int64_t total_spatial,
                                              const groupnorm_exec* exec);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GROUPNORM_GROUPNORM_H_ */
