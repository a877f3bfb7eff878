// groupnorm: Group Normalization for CPU (and CUDA when built with GROUPNORM_CUDA).
//
// The public C++ API. One Problem value describes a call; the argument rules
// live in validate() and are shared by every entry point (C++, C, Python,
// CUDA). Errors are reported as a Result (status + message), never thrown.
//
//   y[n,c,s] = act( weight[c] * (x[n,c,s] - mean[n,g]) * rstd[n,g] + bias[c] )
//   rstd[n,g] = 1 / sqrt(var[n,g] + eps), var biased, g = c / (C / G)
//
// Layouts: channels-first x is (N, C, S) and channels-last x is (N, S, C),
// S the product of the spatial dims (1 when there are none).
//
// Range: data anywhere in the dtype's finite range normalizes correctly (groups
// whose fast sums overflow, or whose variance lies below the accumulation
// type's normal range, are recomputed exactly in double, scaled by a power of
// two). Where weight * rstd itself does not fit the accumulation type (a group
// whose spread is below ~1e-38 in float, with eps smaller still) y is NaN for
// that group, never a wrong finite value. NaN/Inf data give NaN for their group.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace groupnorm {

enum class DType : int { float32 = 0, float64 = 1, float16 = 2, bfloat16 = 3 };
enum class Activation : int { none = 0, silu = 1 };
enum class Status : int {
  ok = 0,
  null_pointer = 1,         // a required pointer is null
  invalid_size = 2,         // batch/spatial < 0 or channels <= 0
  invalid_groups = 3,       // groups <= 0 or channels % groups != 0
  size_overflow = 4,        // C > 2^31-1, or N*C*S > 2^56 (zero factors counted as 1)
  invalid_eps = 5,          // eps is NaN, infinite or negative
  invalid_dtype = 6,        // unknown dtype, or param_dtype neither float32 nor dtype
  invalid_activation = 7,   // unknown activation
  invalid_combination = 8,  // e.g. skip_bias or sum_out without skip
  workspace_too_small = 9,  // caller workspace smaller than *_workspace_bytes()
  unsupported = 10,         // valid request this build cannot serve (e.g. CUDA off)
  out_of_memory = 11,       // an internal allocation failed
  device_error = 12,        // the CUDA runtime reported an error
  internal_error = 13,      // an unexpected failure inside the library (a bug)
  overlapping_buffers = 14, // an output overlaps an input or another output (see validate_args)
};
const char* status_name(Status s);

// 16-bit storage types: raw IEEE binary16 / bfloat16 bits.
struct half { std::uint16_t bits; };
struct bfloat16 { std::uint16_t bits; };

template <class T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::float32; }
template <> constexpr DType dtype_of<double>() { return DType::float64; }
template <> constexpr DType dtype_of<half>() { return DType::float16; }
template <> constexpr DType dtype_of<bfloat16>() { return DType::bfloat16; }

std::size_t dtype_size(DType t);
const char* dtype_name(DType t);
// mean/rstd are float64 for float64 data, float32 otherwise.
inline DType stats_dtype(DType t) { return t == DType::float64 ? DType::float64 : DType::float32; }
// The dtype a call takes its per-channel parameters (weight, bias, skip_bias) in,
// given the dtypes the caller's parameters have (`present`, n of them): their
// one dtype when they share x's dtype or float32; else the narrowest of float32
// and x's dtype that holds them all exactly (float64 for float64 data with a
// float64 parameter, otherwise float32); stats_dtype(x) when there are none.
// Front ends (Python) convert the parameters to it.
DType param_dtype_for(DType x, const DType* present, int n);

// Everything a call depends on, except the data pointers.
struct Problem {
  std::int64_t batch = 0;        // N (0 is allowed: nothing to do)
  std::int64_t channels = 0;     // C
  std::int64_t groups = 0;       // G, C % G == 0
  std::int64_t spatial = 1;      // product of spatial dims (S >= 0)
  bool channels_last = false;    // (N, S, C) instead of (N, C, S)
  double eps = 1e-5;             // finite, >= 0. A constant group gives exactly the bias
                                 // for any eps > 0; with eps = 0 its rstd is inf and its
                                 // y NaN (0/0, as in PyTorch)
  Activation activation = Activation::none;
  DType dtype = DType::float32;        // x, y, skip, sum_out, grad_y, grad_x
  DType param_dtype = DType::float32;  // weight, bias, skip_bias, grad_weight, grad_bias:
                                       // float32 or the same as dtype

  std::int64_t channels_per_group() const { return groups > 0 ? channels / groups : 0; }
  std::int64_t group_size() const { return channels_per_group() * spatial; }  // elements per (n, g)
  std::int64_t numel() const { return batch * channels * spatial; }
};

struct Result {
  Status status = Status::ok;
  std::string message;
  bool ok() const { return status == Status::ok; }
  explicit operator bool() const { return ok(); }
};

// The one place the argument rules live: validate() checks the Problem; the
// *_args checks add the pointer rules. forward()/backward() run both.
Result validate(const Problem& p);
// null or "none" -> none, "silu" -> silu; anything else is invalid_activation.
Result parse_activation(const char* name, Activation* out);

struct ForwardArgs {
  const void* x = nullptr;          // dtype, N*C*S elements
  const void* weight = nullptr;     // param_dtype, C (optional: 1)
  const void* bias = nullptr;       // param_dtype, C (optional: 0)
  const void* skip = nullptr;       // dtype, like x (optional): normalizes x + skip (+ skip_bias)
  const void* skip_bias = nullptr;  // param_dtype, C (optional, needs skip)
  void* y = nullptr;                // dtype, like x; may alias x
  void* sum_out = nullptr;          // dtype, like x (optional, needs skip): x + skip (+ skip_bias)
  void* mean = nullptr;             // stats_dtype, N*G (optional)
  void* rstd = nullptr;             // stats_dtype, N*G (optional)
};

struct BackwardArgs {
  const void* grad_y = nullptr;  // dtype, like x
  const void* x = nullptr;       // dtype: the forward's input (x + skip when skip was used)
  const void* mean = nullptr;    // stats_dtype, N*G, from forward
  const void* rstd = nullptr;    // stats_dtype, N*G, from forward
  const void* weight = nullptr;  // param_dtype, C (optional)
  const void* bias = nullptr;    // param_dtype, C (optional; used by the silu backward)
  void* grad_x = nullptr;        // dtype, like x (optional); may alias grad_y
  void* grad_weight = nullptr;   // param_dtype, C (optional)
  void* grad_bias = nullptr;     // param_dtype, C (optional)
};

// Memory rules (overlapping_buffers otherwise): no output (y, sum_out, mean,
// rstd; grad_x, grad_weight, grad_bias) may share a byte with an input or with
// another output, judged from their extents (N*C*S, C or N*G elements), except
// these exact aliases (same address): y or sum_out may be x or skip (in-place
// normalization, in-place residual add), grad_x may be grad_y.
Result validate_args(const Problem& p, const ForwardArgs& a);
Result validate_args(const Problem& p, const BackwardArgs& a);

// An engine's own parallel-for: must call task(task_ctx, i) once for every i in
// [0, n), on any threads, concurrently or not, and return when all are done.
typedef void (*TaskFn)(void* task_ctx, std::int64_t i);
typedef void (*ParallelFor)(void* engine_ctx, std::int64_t n, TaskFn task, void* task_ctx);

struct Exec {
  int num_threads = 0;                  // <= 0: get_num_threads(); capped at max_threads()
  ParallelFor parallel_for = nullptr;   // null: OpenMP (or serial in a no-OpenMP build)
  void* parallel_ctx = nullptr;
  void* workspace = nullptr;            // optional caller scratch: no allocation when it is
  std::size_t workspace_bytes = 0;      //   at least *_workspace_bytes() bytes
};

// CPU entry points. Results depend only on the Problem and the data: bitwise the
// same for any thread count, batch size, parallel-for and instruction set.
std::size_t forward_workspace_bytes(const Problem& p, int num_threads = 0);
std::size_t backward_workspace_bytes(const Problem& p, int num_threads = 0);
Result forward(const Problem& p, const ForwardArgs& a, const Exec& e = Exec());
Result backward(const Problem& p, const BackwardArgs& a, const Exec& e = Exec());

// Threads used when Exec::num_threads is <= 0 (default: all hardware threads,
// or OMP_NUM_THREADS in an OpenMP build). n <= 0 restores the default. Every
// thread request (Exec::num_threads, set_num_threads, OMP_NUM_THREADS) is capped
// at max_threads(): 4x the hardware threads, so a value like 65536 from a
// config file costs no more than oversubscribing by 4x.
void set_num_threads(int n);
int get_num_threads();
int max_threads();

// OpenMP builds run parallel work on a small pool of their own threads by
// default: a call waits only for the threads that took work, so a thread the
// OS has descheduled (a busy machine) does not hold it up. Off (or
// GROUPNORM_WORKER_POOL=0 in the environment), the work runs in OpenMP
// regions: the right choice inside a host that shares our OpenMP runtime
// (PyTorch), so that both use one set of threads. Results are the same either way.
void set_worker_pool(bool on);
bool worker_pool();

// Instruction-set dispatch: "portable", "avx2", "avx512", "neon". The best one the
// CPU supports is chosen on first use; GROUPNORM_ISA=<name> in the environment
// caps it. set_isa() fails (returns false) for an ISA this CPU or build lacks.
const char* active_isa();
bool set_isa(const char* name);
// Names this CPU and build can run, best first, comma separated.
const char* available_isas();

// Introspection, for tests: how the calling thread's last CPU call over data
// (forward, backward, moments, or a split-phase apply) was scheduled. Forcing
// a schedule (GROUPNORM_CACHE_BYTES, GROUPNORM_PIPELINE=0,
// GROUPNORM_STREAM_BYTES) can be checked to have taken effect.
//   pipelined:    whole sets of groups per thread, the apply of one set fused
//                 with the sums of the next
//   whole_sets:   whole sets of groups per thread, summed then applied from cache
//   shared_steps: each set's tiles spread over all threads, phase by phase
enum class Schedule : int { none = 0, pipelined = 1, whole_sets = 2, shared_steps = 3 };
const char* schedule_name(Schedule s);
struct ScheduleInfo {
  Schedule schedule = Schedule::none;  // none: no call on this thread yet
  int threads = 0;                     // workers the call was planned for
  bool streaming_stores = false;       // outputs planned as non-temporal stores
};
ScheduleInfo last_schedule();

// Typed convenience wrapper.
template <class T>
inline Result forward(Problem p, const T* x, const T* weight, const T* bias, T* y,
                      void* mean = nullptr, void* rstd = nullptr, const Exec& e = Exec()) {
  p.dtype = dtype_of<T>();
  p.param_dtype = dtype_of<T>();
  ForwardArgs a;
  a.x = x; a.weight = weight; a.bias = bias; a.y = y; a.mean = mean; a.rstd = rstd;
  return forward(p, a, e);
}

// ------------------------------------------------------------ split phase
// The one-call forward is moments -> merge -> apply; the three phases are also
// entry points, for tensors that are never whole in one place (tiles of an
// image, slabs of a volume on disk, ranks of a job). A tile is a smaller
// problem: whole channels of whole samples over part of the spatial extent,
// described by a Problem whose `spatial` is the tile's. Every phase runs on the
// same scheduler and kernels as forward()/backward(), and is bitwise the same
// for any thread count, parallel-for and instruction set. A caller workspace of
// forward_workspace_bytes() serves moments() and forward() with given stats;
// one of backward_workspace_bytes() serves backward_sums() and backward() with sums.

// Per (n, g) moments of a tile: element count, mean, and m2, the sum of squared
// deviations from mean. N*G of each, float64 (count int64).
struct MomentsArgs {
  const void* x = nullptr;          // dtype, N*C*S elements of the tile
  const void* skip = nullptr;       // optional, like forward: moments of x + skip (+ skip_bias)
  const void* skip_bias = nullptr;  // param_dtype, C (optional, needs skip)
  std::int64_t* count = nullptr;    // N*G outputs
  double* mean = nullptr;
  double* m2 = nullptr;
};
Result validate_args(const Problem& p, const MomentsArgs& a);
Result moments(const Problem& p, const MomentsArgs& a, const Exec& e = Exec());

// Chan's merge of `parts` moment arrays of `size` (n, g) entries each, in list
// order: out = ((in[0] + in[1]) + in[2]) + ... Parts with count 0 are the
// identity. The outputs may alias the first part's arrays.
Result merge_moments(std::int64_t size, std::int64_t parts, const std::int64_t* const* counts,
                     const double* const* means, const double* const* m2s, std::int64_t* count, double* mean,
                     double* m2);

// mean and rstd = 1 / sqrt(m2 / count + eps) in stats_dtype(dtype), computed as
// forward() computes them (a group with count 0 gets NaN).
Result mean_rstd(std::int64_t size, const std::int64_t* count, const double* mean, const double* m2, double eps,
                 DType dtype, void* mean_out, void* rstd_out);

// Statistics given to forward(): either moments (count, mean, m2 of N*G, e.g.
// merged from every tile; rstd from Problem::eps exactly as the one-call path,
// so moments of the whole tensor give y bitwise equal to forward()), or
// mean and rstd in stats_dtype. Set one of the two.
struct GivenStats {
  const std::int64_t* count = nullptr;
  const double* mean = nullptr;
  const double* m2 = nullptr;
  const void* stats_mean = nullptr;  // stats_dtype, N*G
  const void* stats_rstd = nullptr;
};
// Apply with given statistics: forward() without its moments phase. a.mean and
// a.rstd, when given, receive the statistics used.
Result forward(const Problem& p, const ForwardArgs& a, const GivenStats& stats, const Exec& e = Exec());
// validate_args(p, a) plus: no output overlaps the given statistics, except
// mean/rstd written back exactly over stats_mean/stats_rstd; exactly one of
// the two kinds of statistics is given, in full.
Result validate_args(const Problem& p, const ForwardArgs& a, const GivenStats& stats);

// Backward, split: per (n, c) sums over a tile, sum_dz = sum dz and
// sum_dz_xc = sum dz * (x - mean) (dz = grad_y, through the SiLU when asked),
// with mean/rstd the global statistics. a.grad_x/grad_weight/grad_bias are
// ignored. N*C of each.
Result backward_sums(const Problem& p, const BackwardArgs& a, double* sum_dz, double* sum_dz_xc,
                     const Exec& e = Exec());
// validate_args(p, a) plus the sums (required when batch > 0); with
// total_spatial (backward with given sums): total_spatial >= p.spatial, and
// rstd for grad_weight/grad_bias even when the tile has no elements.
Result validate_args(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc);
Result validate_args(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc,
                     std::int64_t total_spatial);
// Sums of `parts` arrays of `size` entries, in list order. Outputs may alias the first part.
Result merge_backward_sums(std::int64_t size, std::int64_t parts, const double* const* sum_dz,
                           const double* const* sum_dz_xc, double* out_dz, double* out_dz_xc);
// Backward of a tile from the merged sums of all tiles: grad_x of this tile,
// and grad_weight/grad_bias of the whole tensor. total_spatial is the spatial
// size of the whole tensor (the sum of the tiles' `spatial`).
Result backward(const Problem& p, const BackwardArgs& a, const double* sum_dz, const double* sum_dz_xc,
                std::int64_t total_spatial, const Exec& e = Exec());

}  // namespace groupnorm
