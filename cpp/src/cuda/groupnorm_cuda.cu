// groupnorm CUDA backend: groupnorm::cuda::{available, *_workspace_bytes, forward, backward}.
//
// Kernel strategy
// ---------------
// Forward. The unit of work is a "band": channels-first, one (sample, group)
// slab of Cg*S contiguous elements; channels-last, S rows x CB channels of one
// sample, CB = GB whole groups chosen so a row segment is up to 2 KiB (whole
// 128-byte lines, one warp-row of 16-byte packs).
//  * Fused path (the band fits in shared memory and there are enough bands to
//    fill the GPU, or the band is small): one block per band stages it in
//    shared memory (as the storage type; with skip, the rounded x + skip +
//    skip_bias, also written to sum_out), computes the exact mean and the sum
//    of squared deviations from the staged copy (corrected two-pass, like the
//    CPU kernels), then normalizes from shared memory and writes y. x is read
//    from HBM once, y written once: one launch.
//  * Split path (bands too big, or too few of them for the SMs): each band is
//    cut into chunks whose size depends only on the shape and the device; one
//    block per chunk computes the chunk's exact (count, mean, M2) the same way
//    and stores it in a fixed workspace slot (fwd_*_moments). fwd_finalize (one
//    block per (n, g)) merges the slots with Chan's formula in chunk order and
//    writes mean/rstd and per-(n, c) coefficients; ew_cf/ew_cl apply them (the
//    second read of x usually comes from L2).
// Backward: bwd_sums_* compute per-(n, c, chunk) sums of dz and dz*(x-mean)
// (dz through the silu derivative when asked) into fixed slots; bwd_finalize
// merges them in chunk order, forms S1 = sum w*db, S2 = sum w*ds per (n, g) and
// the coefficients of dx = w*rstd*dz + c2*(x-mean) + c3; bwd_params reduces
// grad_weight/grad_bias over the batch in order; ew_* writes grad_x.
//
// Determinism: no atomics; every reduction has a fixed shape (block sizes,
// chunking and trees depend on the Problem and the device's SM count and
// shared-memory size, never on timing), so results are bitwise repeatable on a
// given GPU. Accumulation is in float (double for float64 data); per-group
// finishing (merge, rstd, coefficients) is in double.
//
// Memory access: 16-byte packs when every data pointer is 16-byte aligned and
// the contiguous extent (S channels-first, C and CB channels-last) is a multiple
// of the pack; otherwise one element at a time. 64-bit offsets throughout;
// grid.y/z are kept <= 65535 and every kernel loops over work beyond its grid.
//
// Workspace: none for the fused forward; otherwise partial slots + per-(n, c)
// coefficients. A caller workspace is used when given; else a buffer cached per
// (device, stream), grown stream-ordered (cudaMallocAsync) so no call ever
// synchronizes, never shared between streams running concurrently, and locked
// by a call until its kernels are queued (host threads sharing a stream). Under
// CUDA-graph capture a call that needs scratch must be given a workspace.
//
// Device: a call runs on the device that holds its arrays (set for the call,
// then restored); arrays on different devices are refused.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "groupnorm/cuda.hpp"
#include "kernels.cuh"

namespace groupnorm {
namespace cuda {

using kern::i64;

namespace {

Result cuda_fail(const char* what, cudaError_t e) {
  return {Status::device_error, std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + ": " +
                                    cudaGetErrorString(e)};
}

struct DevInfo {
  int sms = 0;
  int smem_optin = 0;  // bytes of dynamic+static shared memory per block (opt-in)
  int pools = 0;       // stream-ordered allocator supported
  bool init = false;
};

std::mutex g_mutex;

Result device_info(int* dev_out, DevInfo* out) {
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail("cudaGetDevice", e);
  static DevInfo cache[256];
  if (dev < 0 || dev >= 256) return {Status::unsupported, "device ordinal out of range"};
  std::lock_guard<std::mutex> lock(g_mutex);
  DevInfo& d = cache[dev];
  if (!d.init) {
    if ((e = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
      return cuda_fail("cudaDeviceGetAttribute", e);
    if ((e = cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
      return cuda_fail("cudaDeviceGetAttribute", e);
    if (cudaDeviceGetAttribute(&d.pools, cudaDevAttrMemoryPoolsSupported, dev) != cudaSuccess) {
      cudaGetLastError();
      d.pools = 0;
    }
    if (d.smem_optin < 48 * 1024) d.smem_optin = 48 * 1024;
    d.init = true;
  }
  *dev_out = dev;
  *out = d;
  return {};
}

i64 cdiv(i64 a, i64 b) { return (a + b - 1) / b; }
i64 round_up(i64 a, i64 b) { return cdiv(a, b) * b; }
bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }
int vmax_of(DType t) { return (int)(16 / dtype_size(t)); }
std::size_t acc_size(DType t) { return t == DType::float64 ? 8 : 4; }
std::size_t coef_size(DType t) { return 5 * acc_size(t); }
const i64 kMaxGridX = (i64)1 << 30;
const i64 kMaxGridY = 65535;
const std::size_t kAlign = 256;

// ---------------------------------------------------------------- plans
// The elementwise / backward-sum decomposition (both layouts).
struct EwPlan {
  kern::EwK e;
  int block = 256;
  dim3 grid;
  i64 nslots = 1;  // chunks per channel (backward slots)
};

EwPlan plan_ew(const Problem& p, int V, int sms) {
  EwPlan pl;
  kern::EwK& e = pl.e;
  e.N = p.batch; e.C = p.channels; e.G = p.groups; e.Cg = p.channels_per_group(); e.S = p.spatial;
  e.nrb = e.sch = e.nk = e.rch = e.nrc = e.ncb = 1;
  const i64 target = 2 * (i64)sms;
  if (!p.channels_last) {
    const i64 packs = cdiv(e.S, V);
    int TX = 1;
    while (TX < 256 && (i64)TX * 4 < packs) TX *= 2;
    e.TX = TX;
    e.TY = 256 / TX;
    e.nrb = cdiv(e.N * e.C, e.TY);
    i64 nk = std::max<i64>(1, cdiv(target, e.nrb));
    nk = std::min<i64>(nk, std::max<i64>(1, e.S / ((i64)TX * V * 4)));
    e.sch = round_up(cdiv(e.S, nk), 8);
    e.nk = cdiv(e.S, e.sch);
    pl.block = 256;
    pl.grid = dim3((unsigned)std::min(e.nrb, kMaxGridX), (unsigned)std::min(e.nk, kMaxGridY), 1);
    pl.nslots = e.nk;
  } else {
    const i64 ncv = e.C / V;
    e.TX = (int)std::min<i64>(ncv, 256);
    e.TY = std::max(1, 256 / e.TX);
    e.ncb = cdiv(ncv, e.TX);
    const i64 nrc_target = std::max<i64>(1, cdiv(target, e.N * e.ncb));
    i64 rch = std::max<i64>(cdiv(e.S, nrc_target), 4 * (i64)e.TY);
    rch = std::min<i64>(rch, e.S);
    e.rch = std::max<i64>(rch, 1);
    e.nrc = cdiv(e.S, e.rch);
    pl.block = e.TX * e.TY;
    pl.grid = dim3((unsigned)std::min(e.N * e.nrc, kMaxGridX), (unsigned)std::min(e.ncb, kMaxGridY), 1);
    pl.nslots = e.nrc;
  }
  return pl;
}

struct FwdPlan {
  kern::FwdK k;  // geometry fields only (pointers filled at launch)
  int V = 1;
  int block = 512;
  i64 grid = 1;
  std::size_t smem = 0;
  bool fused = true;
  EwPlan ew;
  std::size_t ws_parts = 0, ws_coef = 0, ws_total = 0;
  Result ok;
};

FwdPlan plan_forward(const Problem& p, int V, const DevInfo& d) {
  FwdPlan pl;
  kern::FwdK& k = pl.k;
  k = kern::FwdK();
  k.N = p.batch; k.C = p.channels; k.G = p.groups; k.Cg = p.channels_per_group(); k.S = p.spatial;
  k.eps = p.eps;
  pl.V = V;
  const i64 esize = (i64)dtype_size(p.dtype), asz = (i64)acc_size(p.dtype);
  const i64 budget = (i64)d.smem_optin - 2048;  // leave room for the static reduction arrays
  const i64 split_cap = std::min<i64>(budget, 48 * 1024);
  const i64 sms = d.sms;
  if (!p.channels_last) {
    const i64 D = k.Cg * k.S, nbands = k.N * k.G;
    k.GB = 1; k.CB = k.Cg; k.nbps = k.G;
    pl.fused = D * esize <= budget && (nbands >= sms || D <= 16384);
    if (pl.fused) {
      k.chunk = D;
    } else {
      const i64 per = std::max<i64>(1, cdiv(4 * sms, nbands));
      i64 chunk = std::max<i64>(round_up(cdiv(D, per), 8), 4096);
      chunk = std::min<i64>(chunk, (split_cap / esize) / 8 * 8);
      k.chunk = chunk;
    }
    k.nchunk = cdiv(D, k.chunk);
    k.s_small = k.S < ((i64)1 << 31) - k.chunk - 1 ? 1 : 0;
    if (k.s_small) k.fdS = kern::make_fastdiv((unsigned)k.S);
    pl.smem = (std::size_t)round_up(std::min(k.chunk, D) * esize, 16);
    const i64 nv = cdiv(std::min(k.chunk, D), V);
    pl.block = (int)std::min<i64>(512, std::max<i64>(32, round_up(cdiv(nv, 4), 32)));
    pl.grid = std::min(k.N * k.G * k.nchunk, kMaxGridX);
  } else {
    i64 GB = 1;
    const i64 gb_max = std::min<i64>(k.G, 2048 / (k.Cg * esize));  // row segment <= 2 KiB
    for (i64 gb = 1; gb <= gb_max; ++gb)
      if (k.G % gb == 0) GB = gb;
    k.GB = GB; k.CB = GB * k.Cg; k.nbps = k.G / GB;
    const i64 ncv = k.CB / V;
    k.TX = (int)std::min<i64>(ncv, 256);
    k.TY = std::max(1, 256 / k.TX);
    pl.block = (int)round_up((i64)k.TX * k.TY, 32);
    const i64 red_bytes = 2 * (i64)k.TY * k.CB * asz + 4 * GB * asz;
    const i64 row_bytes = k.CB * esize;
    const i64 buf_budget = budget - red_bytes;
    if (buf_budget < row_bytes) {
      pl.ok = {Status::unsupported, "channels-last group of " + std::to_string(k.Cg) +
                                        " channels is too wide for the device's shared memory"};
      return pl;
    }
    const i64 nbands = k.N * k.nbps;
    pl.fused = k.S * row_bytes <= buf_budget && (nbands >= sms || k.S * k.CB <= 16384);
    if (pl.fused) {
      k.chunk = k.S;
    } else {
      const i64 rows_cap = std::max<i64>(1, std::min(buf_budget, std::max<i64>(split_cap - red_bytes, 16 * 1024)) / row_bytes);
      const i64 per = std::max<i64>(1, cdiv(4 * sms, nbands));
      i64 R = std::max(cdiv(k.S, per), cdiv(4096, k.CB));
      k.chunk = std::max<i64>(1, std::min(R, rows_cap));
    }
    k.nchunk = cdiv(k.S, k.chunk);
    k.buf_bytes = round_up(std::min(k.chunk, k.S) * row_bytes, 16);
    pl.smem = (std::size_t)(k.buf_bytes + red_bytes);
    pl.grid = std::min(k.N * k.nbps * k.nchunk, kMaxGridX);
  }
  k.fused = pl.fused ? 1 : 0;
  if (!pl.fused) {
    pl.ew = plan_ew(p, V, d.sms);
    pl.ws_parts = (std::size_t)round_up(k.N * k.nbps * k.nchunk * k.GB * (i64)sizeof(kern::Part), kAlign);
    pl.ws_coef = (std::size_t)round_up(k.N * k.C * (i64)coef_size(p.dtype), kAlign);
    pl.ws_total = pl.ws_parts + pl.ws_coef + kAlign;  // + slack to align a caller's buffer
  }
  return pl;
}

struct BwdPlan {
  EwPlan ew;
  std::size_t sums_smem = 0;
  std::size_t ws_slots = 0, ws_dbds = 0, ws_coef = 0, ws_total = 0;
};

BwdPlan plan_backward(const Problem& p, int V, const DevInfo& d) {
  BwdPlan pl;
  pl.ew = plan_ew(p, V, d.sms);
  const i64 NC = p.batch * p.channels;
  if (p.channels_last) pl.sums_smem = (std::size_t)(2 * (i64)pl.ew.e.TY * pl.ew.e.TX * V * (i64)acc_size(p.dtype));
  pl.ws_slots = (std::size_t)round_up(pl.ew.nslots * NC * 16, kAlign);
  pl.ws_dbds = (std::size_t)round_up(NC * 16, kAlign);
  pl.ws_coef = (std::size_t)round_up(NC * (i64)coef_size(p.dtype), kAlign);
  pl.ws_total = pl.ws_slots + pl.ws_dbds + pl.ws_coef + kAlign;  // + slack to align a caller's buffer
  return pl;
}

// ---------------------------------------------------------------- workspace cache
// One cached buffer per (device, stream). A call holds its entry's lock from
// the moment it takes the buffer until its last launch is queued: a second host
// thread on the same stream can then neither free nor regrow the buffer under
// queued kernels (its own kernels queue after them, in stream order).
struct CachedBuf {
  std::mutex m;
  void* ptr = nullptr;
  std::size_t bytes = 0;
};

CachedBuf& cache_entry(int dev, Stream stream) {
  static std::map<std::pair<int, Stream>, CachedBuf> cache;  // nodes never move
  std::lock_guard<std::mutex> lock(g_mutex);
  return cache[std::make_pair(dev, stream)];
}

// Scratch for one call: the caller's, or the (device, stream) cached buffer
// (then *lock holds that entry until the caller has queued its kernels).
Result get_workspace(int dev, const DevInfo& d, Stream stream, std::size_t need, void* user, std::size_t user_bytes,
                     void** out, std::unique_lock<std::mutex>* lock) {
  *out = nullptr;
  if (need == 0) return {};
  if (user) {
    if (user_bytes < need)
      return {Status::workspace_too_small, "workspace of " + std::to_string(user_bytes) + " bytes is smaller than the " +
                                               std::to_string(need) + " bytes this call needs"};
    // the sizes include kAlign bytes of slack: start at the first aligned byte
    const std::uintptr_t u = reinterpret_cast<std::uintptr_t>(user);
    *out = reinterpret_cast<void*>((u + kAlign - 1) & ~(std::uintptr_t)(kAlign - 1));
    return {};
  }
  // Under CUDA-graph capture the graph would keep pointing at a cached buffer
  // that a later call may free: ask for a caller workspace instead.
  cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
  cudaError_t e = cudaStreamIsCapturing(stream, &cap);
  if (e != cudaSuccess) return cuda_fail("cudaStreamIsCapturing", e);
  if (cap != cudaStreamCaptureStatusNone)
    return {Status::unsupported, "this call needs " + std::to_string(need) +
                                     " bytes of scratch and its stream is being captured into a CUDA graph: pass a "
                                     "workspace (see *_workspace_bytes) that lives as long as the graph"};
  CachedBuf& b = cache_entry(dev, stream);
  *lock = std::unique_lock<std::mutex>(b.m);
  if (b.bytes < need) {
    const std::size_t grow = std::max(need, b.bytes + b.bytes / 2);
    void* p = nullptr;
    if (d.pools) {
      if (b.ptr) {
        e = cudaFreeAsync(b.ptr, stream);
        b.ptr = nullptr;
        b.bytes = 0;
        if (e != cudaSuccess) return cuda_fail("cudaFreeAsync", e);
      }
      e = cudaMallocAsync(&p, grow, stream);
    } else {
      // no stream-ordered allocator: growing is the one (rare) place that synchronizes
      if (b.ptr) {
        cudaFree(b.ptr);
        b.ptr = nullptr;
        b.bytes = 0;
      }
      e = cudaMalloc(&p, grow);
    }
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      return {Status::out_of_memory, "could not allocate " + std::to_string(grow) + " bytes of CUDA workspace"};
    }
    if (e != cudaSuccess) return cuda_fail("workspace allocation", e);
    b.ptr = p;
    b.bytes = grow;
  }
  *out = b.ptr;
  return {};
}

// ---------------------------------------------------------------- launching
// Kernels that stage more than 48 KiB of dynamic shared memory need the opt-in
// attribute. It is set once per (kernel, device), to the most the device
// allows, so concurrent host threads never lower it under each other's launch.
template <class K> Result allow_smem(K kernel, std::size_t smem, const char* name) {
  if (smem <= 48 * 1024) return {};
  int dev = 0;
  cudaError_t e = cudaGetDevice(&dev);
  if (e != cudaSuccess) return cuda_fail("cudaGetDevice", e);
  static std::mutex m;
  static std::map<std::pair<const void*, int>, int> done;  // (kernel, device) -> bytes allowed
  std::lock_guard<std::mutex> lock(m);
  auto it = done.find(std::make_pair((const void*)kernel, dev));
  if (it == done.end()) {
    cudaFuncAttributes fa;
    if ((e = cudaFuncGetAttributes(&fa, kernel)) != cudaSuccess) return cuda_fail(name, e);
    int optin = 0;
    if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
      return cuda_fail(name, e);
    const int allowed = optin - (int)fa.sharedSizeBytes;
    if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, allowed)) != cudaSuccess)
      return cuda_fail(name, e);
    it = done.emplace(std::make_pair((const void*)kernel, dev), allowed).first;
  }
  if ((std::size_t)it->second < smem)
    return {Status::internal_error, std::string(name) + ": " + std::to_string(smem) +
                                        " bytes of shared memory planned, the device allows " +
                                        std::to_string(it->second)};
  return {};
}

// After a launch: its configuration error, if any. An error left pending by an
// earlier, unrelated call is cleared at entry (enter()), so what this reports is ours.
Result check_launch(const char* name) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return cuda_fail(name, e);
  return {};
}

// ---------------------------------------------------------------- entry
// Runs a call on the device that holds its device memory and puts the caller's
// current device back afterwards.
struct DeviceGuard {
  int prev = -1;
  DeviceGuard() = default;
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (prev >= 0) cudaSetDevice(prev);
  }
};

struct NamedPtr {
  const void* p;
  const char* name;
};

// Before any launch: an error left pending by an earlier, unrelated runtime call
// is cleared (a later check_launch would report it as ours); a sticky one (the
// context is unusable) is reported as such. Then every pointer must be memory
// the GPU can reach, all device memory on one device, which is made current.
template <std::size_t K>
Result enter(const NamedPtr (&ptrs)[K], DeviceGuard* guard) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess && (e = cudaGetLastError()) != cudaSuccess) {
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) return cuda_fail("the CUDA runtime", e);
    return {Status::device_error, std::string("the CUDA context is unusable after an earlier error (") +
                                      cudaGetErrorName(e) + ": " + cudaGetErrorString(e) + "); groupnorm did not run"};
  }
  int dev = -1;
  const char* dev_name = nullptr;
  for (const NamedPtr& np : ptrs) {
    if (!np.p) continue;
    cudaPointerAttributes at;
    if ((e = cudaPointerGetAttributes(&at, np.p)) != cudaSuccess) return cuda_fail("cudaPointerGetAttributes", e);
    if (at.type == cudaMemoryTypeUnregistered) {
      // plain host memory: reachable only where the device reads pageable memory (HMM, ATS)
      int dev_now = 0, pageable = 0;
      if (cudaGetDevice(&dev_now) != cudaSuccess ||
          cudaDeviceGetAttribute(&pageable, cudaDevAttrPageableMemoryAccess, dev_now) != cudaSuccess) {
        cudaGetLastError();
        pageable = 0;
      }
      if (!pageable)
        return {Status::invalid_combination, std::string(np.name) + " is not memory the GPU can reach (a host pointer?)"};
      continue;
    }
    if (at.type != cudaMemoryTypeDevice) continue;  // pinned host or managed memory: any device
    if (dev < 0) {
      dev = at.device;
      dev_name = np.name;
    } else if (at.device != dev) {
      return {Status::invalid_combination, std::string(np.name) + " is on device " + std::to_string(at.device) +
                                               " and " + dev_name + " on device " + std::to_string(dev)};
    }
  }
  if (dev < 0) return {};
  int cur = 0;
  if ((e = cudaGetDevice(&cur)) != cudaSuccess) return cuda_fail("cudaGetDevice", e);
  if (cur != dev) {
    if ((e = cudaSetDevice(dev)) != cudaSuccess) return cuda_fail("cudaSetDevice", e);
    guard->prev = cur;
  }
  return {};
}

template <class T, int V>
Result run_forward(const Problem& p, const ForwardArgs& a, Stream s, const FwdPlan& pl, void* ws) {
  kern::FwdK k = pl.k;
  k.x = a.x; k.skip = a.skip; k.sb = a.skip_bias; k.w = a.weight; k.b = a.bias;
  k.y = a.y; k.so = a.sum_out; k.mean = a.mean; k.rstd = a.rstd;
  k.pf32 = p.param_dtype == DType::float32 && p.dtype != DType::float32 ? 1 : 0;
  k.silu = p.activation == Activation::silu ? 1 : 0;
  if (!pl.fused) {
    k.parts = static_cast<kern::Part*>(ws);
    k.coef = static_cast<char*>(ws) + pl.ws_parts;
  }
  const dim3 grid((unsigned)pl.grid), block(pl.block);
  Result r;
  if (!p.channels_last) {
    if (!(r = allow_smem(kern::fwd_cf_moments<T, V>, pl.smem, "cudaFuncSetAttribute"))) return r;
    kern::fwd_cf_moments<T, V><<<grid, block, pl.smem, s>>>(k);
    if (!(r = check_launch("fwd_cf_moments"))) return r;
  } else {
    if (!(r = allow_smem(kern::fwd_cl_moments<T, V>, pl.smem, "cudaFuncSetAttribute"))) return r;
    kern::fwd_cl_moments<T, V><<<grid, block, pl.smem, s>>>(k);
    if (!(r = check_launch("fwd_cl_moments"))) return r;
  }
  if (pl.fused) return {};
  const unsigned fgrid = (unsigned)std::min(k.N * k.G, kMaxGridX);
  kern::fwd_finalize<T><<<fgrid, 128, 0, s>>>(k);
  if (!(r = check_launch("fwd_finalize"))) return r;
  kern::ApplyIO io = {};
  io.x = a.x; io.skip = a.skip; io.sb = a.skip_bias; io.so_in = a.sum_out; io.y = a.y;
  io.pf32 = k.pf32; io.silu = k.silu; io.coef = k.coef;
  if (!p.channels_last) kern::ew_cf<T, V, false><<<pl.ew.grid, pl.ew.block, 0, s>>>(pl.ew.e, io);
  else kern::ew_cl<T, V, false><<<pl.ew.grid, pl.ew.block, 0, s>>>(pl.ew.e, io);
  return check_launch("groupnorm forward apply");
}

template <class T, int V>
Result run_backward(const Problem& p, const BackwardArgs& a, Stream s, const BwdPlan& pl, void* ws) {
  kern::BwdK k = {};
  k.dy = a.grad_y; k.x = a.x; k.mean = a.mean; k.rstd = a.rstd; k.w = a.weight; k.b = a.bias;
  k.dx = a.grad_x; k.gw = a.grad_weight; k.gb = a.grad_bias;
  k.pf32 = p.param_dtype == DType::float32 && p.dtype != DType::float32 ? 1 : 0;
  k.silu = p.activation == Activation::silu ? 1 : 0;
  char* w = static_cast<char*>(ws);
  k.slots = reinterpret_cast<double2*>(w);
  k.dbds = reinterpret_cast<double2*>(w + pl.ws_slots);
  k.coef = w + pl.ws_slots + pl.ws_dbds;
  k.nk = pl.ew.nslots;
  const kern::EwK& e = pl.ew.e;
  Result r;
  if (!p.channels_last) {
    kern::bwd_sums_cf<T, V><<<pl.ew.grid, pl.ew.block, 0, s>>>(e, k);
  } else {
    if (!(r = allow_smem(kern::bwd_sums_cl<T, V>, pl.sums_smem, "cudaFuncSetAttribute"))) return r;
    kern::bwd_sums_cl<T, V><<<pl.ew.grid, pl.ew.block, pl.sums_smem, s>>>(e, k);
  }
  if (!(r = check_launch("bwd_sums"))) return r;
  kern::bwd_finalize<T><<<(unsigned)std::min(e.N * e.G, kMaxGridX), 256, 0, s>>>(e, k);
  if (!(r = check_launch("bwd_finalize"))) return r;
  if (a.grad_weight || a.grad_bias) {
    kern::bwd_params<T><<<(unsigned)std::min(e.C, kMaxGridX), 256, 0, s>>>(e, k);
    if (!(r = check_launch("bwd_params"))) return r;
  }
  if (a.grad_x) {
    kern::ApplyIO io = {};
    io.x = a.x; io.dy = a.grad_y; io.dx = a.grad_x; io.pf32 = k.pf32; io.silu = k.silu; io.coef = k.coef;
    if (!p.channels_last) kern::ew_cf<T, V, true><<<pl.ew.grid, pl.ew.block, 0, s>>>(e, io);
    else kern::ew_cl<T, V, true><<<pl.ew.grid, pl.ew.block, 0, s>>>(e, io);
    if (!(r = check_launch("groupnorm backward apply"))) return r;
  }
  return {};
}

// Pack width usable for this call's pointers (VMAX or 1).
int fwd_vec(const Problem& p, const ForwardArgs& a, const FwdPlan& probe) {
  const int vm = vmax_of(p.dtype);
  if (!aligned16(a.x) || !aligned16(a.y) || !aligned16(a.skip) || !aligned16(a.sum_out)) return 1;
  if (!p.channels_last) return p.spatial % vm == 0 ? vm : 1;
  return (p.channels % vm == 0 && probe.k.CB % vm == 0) ? vm : 1;
}
int bwd_vec(const Problem& p, const BackwardArgs& a) {
  const int vm = vmax_of(p.dtype);
  if (!aligned16(a.x) || !aligned16(a.grad_y) || !aligned16(a.grad_x)) return 1;
  return (p.channels_last ? p.channels : p.spatial) % vm == 0 ? vm : 1;
}

template <class T>
Result forward_t(const Problem& p, const ForwardArgs& a, Stream s, void* user_ws, std::size_t user_bytes, int dev,
                 const DevInfo& d) {
  const FwdPlan probe = plan_forward(p, 1, d);
  const int V = fwd_vec(p, a, probe);
  const FwdPlan pl = V == 1 ? probe : plan_forward(p, V, d);
  if (!pl.ok) return pl.ok;
  void* ws = nullptr;
  std::unique_lock<std::mutex> lock;  // the cached workspace's, held until the launches are queued
  Result r = get_workspace(dev, d, s, pl.ws_total, user_ws, user_bytes, &ws, &lock);
  if (!r) return r;
  constexpr int VM = (int)(16 / sizeof(T));
  return V == 1 ? run_forward<T, 1>(p, a, s, pl, ws) : run_forward<T, VM>(p, a, s, pl, ws);
}

template <class T>
Result backward_t(const Problem& p, const BackwardArgs& a, Stream s, void* user_ws, std::size_t user_bytes, int dev,
                  const DevInfo& d) {
  const int V = bwd_vec(p, a);
  const BwdPlan pl = plan_backward(p, V, d);
  void* ws = nullptr;
  std::unique_lock<std::mutex> lock;  // the cached workspace's, held until the launches are queued
  Result r = get_workspace(dev, d, s, pl.ws_total, user_ws, user_bytes, &ws, &lock);
  if (!r) return r;
  constexpr int VM = (int)(16 / sizeof(T));
  return V == 1 ? run_backward<T, 1>(p, a, s, pl, ws) : run_backward<T, VM>(p, a, s, pl, ws);
}

}  // namespace

bool available() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::size_t forward_workspace_bytes(const Problem& p) {
  if (!validate(p) || p.numel() == 0) return 0;
  int dev = 0;
  DevInfo d;
  if (!device_info(&dev, &d)) return 0;
  const FwdPlan a = plan_forward(p, 1, d), b = plan_forward(p, vmax_of(p.dtype), d);
  return std::max(a.ws_total, b.ws_total);
}

std::size_t backward_workspace_bytes(const Problem& p) {
  if (!validate(p) || p.numel() == 0) return 0;
  int dev = 0;
  DevInfo d;
  if (!device_info(&dev, &d)) return 0;
  const BwdPlan a = plan_backward(p, 1, d), b = plan_backward(p, vmax_of(p.dtype), d);
  return std::max(a.ws_total, b.ws_total);
}

Result forward(const Problem& p, const ForwardArgs& a, Stream stream, void* workspace, std::size_t workspace_bytes) {
  Result r = validate_args(p, a);
  if (!r) return r;
  DeviceGuard guard;
  const NamedPtr ptrs[] = {{a.x, "x"},       {a.y, "y"},         {a.weight, "weight"},   {a.bias, "bias"},
                           {a.skip, "skip"}, {a.skip_bias, "skip_bias"}, {a.sum_out, "sum_out"}, {a.mean, "mean"},
                           {a.rstd, "rstd"}, {workspace, "workspace"}};
  if (!(r = enter(ptrs, &guard))) return r;
  if (p.numel() == 0) {
    if (p.spatial == 0 && p.batch > 0 && (a.mean || a.rstd)) {  // empty groups: NaN stats, as on the CPU
      const i64 n = p.batch * p.groups;
      const unsigned grid = (unsigned)std::min<i64>(cdiv(n, 256), 4096);
      if (p.dtype == DType::float64)
        kern::fill_nan<double><<<grid, 256, 0, stream>>>(static_cast<double*>(a.mean), static_cast<double*>(a.rstd), n);
      else
        kern::fill_nan<float><<<grid, 256, 0, stream>>>(static_cast<float*>(a.mean), static_cast<float*>(a.rstd), n);
      return check_launch("fill_nan");
    }
    return {};
  }
  int dev = 0;
  DevInfo d;
  if (!(r = device_info(&dev, &d))) return r;
  switch (p.dtype) {
    case DType::float32: return forward_t<float>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::float64: return forward_t<double>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::float16: return forward_t<kern::h16>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::bfloat16: return forward_t<kern::b16>(p, a, stream, workspace, workspace_bytes, dev, d);
  }
  return {Status::invalid_dtype, "unknown dtype"};
}

Result backward(const Problem& p, const BackwardArgs& a, Stream stream, void* workspace, std::size_t workspace_bytes) {
  Result r = validate_args(p, a);
  if (!r) return r;
  DeviceGuard guard;
  const NamedPtr ptrs[] = {{a.grad_y, "grad_y"},   {a.x, "x"},           {a.mean, "mean"},
                           {a.rstd, "rstd"},       {a.weight, "weight"}, {a.bias, "bias"},
                           {a.grad_x, "grad_x"},   {a.grad_weight, "grad_weight"}, {a.grad_bias, "grad_bias"},
                           {workspace, "workspace"}};
  if (!(r = enter(ptrs, &guard))) return r;
  if (p.numel() == 0) {  // empty batch: parameter gradients are zero, as on the CPU
    const std::size_t bytes = (std::size_t)p.channels * dtype_size(p.param_dtype);
    cudaError_t e = cudaSuccess;
    if (a.grad_weight && e == cudaSuccess) e = cudaMemsetAsync(a.grad_weight, 0, bytes, stream);
    if (a.grad_bias && e == cudaSuccess) e = cudaMemsetAsync(a.grad_bias, 0, bytes, stream);
    if (e != cudaSuccess) return cuda_fail("cudaMemsetAsync", e);
    return {};
  }
  if (!a.grad_x && !a.grad_weight && !a.grad_bias) return {};
  int dev = 0;
  DevInfo d;
  if (!(r = device_info(&dev, &d))) return r;
  switch (p.dtype) {
    case DType::float32: return backward_t<float>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::float64: return backward_t<double>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::float16: return backward_t<kern::h16>(p, a, stream, workspace, workspace_bytes, dev, d);
    case DType::bfloat16: return backward_t<kern::b16>(p, a, stream, workspace, workspace_bytes, dev, d);
  }
  return {Status::invalid_dtype, "unknown dtype"};
}

}  // namespace cuda
}  // namespace groupnorm
