// Internal: device-side building blocks of the CUDA backend (storage traits,
// 16-byte packs, fast division, deterministic block reductions, argument blocks).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../chan.hpp"

namespace groupnorm {
namespace cuda {
namespace kern {

typedef long long i64;

// 16-bit storage: raw bits, converted with round-to-nearest-even intrinsics.
struct h16 { unsigned short b; };
struct b16 { unsigned short b; };

template <class T> struct Tr;
template <> struct Tr<float> {
  typedef float A;
  static __device__ __forceinline__ float ld(float v) { return v; }
  static __device__ __forceinline__ float st(float v) { return v; }
};
template <> struct Tr<double> {
  typedef double A;
  static __device__ __forceinline__ double ld(double v) { return v; }
  static __device__ __forceinline__ double st(double v) { return v; }
};
template <> struct Tr<h16> {
  typedef float A;
  static __device__ __forceinline__ float ld(h16 v) { return __half2float(__ushort_as_half(v.b)); }
  static __device__ __forceinline__ h16 st(float v) {
    h16 r;
    r.b = __half_as_ushort(__float2half_rn(v));
    return r;
  }
};
template <> struct Tr<b16> {
  typedef float A;
  static __device__ __forceinline__ float ld(b16 v) { return __bfloat162float(__ushort_as_bfloat16(v.b)); }
  static __device__ __forceinline__ b16 st(float v) {
    b16 r;
    r.b = __bfloat16_as_ushort(__float2bfloat16_rn(v));
    return r;
  }
};

// ---------------------------------------------------------------- packs of V elements
// One load/store instruction of V*sizeof(T) bytes (2, 4, 8 or 16); callers
// guarantee the address is aligned to that size.
template <int Bytes> struct Word;
template <> struct Word<2> { typedef unsigned short type; };
template <> struct Word<4> { typedef unsigned int type; };
template <> struct Word<8> { typedef uint2 type; };
template <> struct Word<16> { typedef uint4 type; };

template <class T, int V> struct Pack {
  typedef typename Word<sizeof(T) * V>::type W;
  union U {
    W w;
    T v[V];
  };
  static __device__ __forceinline__ void load(const T* p, T (&out)[V]) {
    U u;
    u.w = *reinterpret_cast<const W*>(p);
#pragma unroll
    for (int l = 0; l < V; ++l) out[l] = u.v[l];
  }
  static __device__ __forceinline__ void store(T* p, const T (&in)[V]) {
    U u;
#pragma unroll
    for (int l = 0; l < V; ++l) u.v[l] = in[l];
    *reinterpret_cast<W*>(p) = u.w;
  }
};

template <class T, int V>
__device__ __forceinline__ void load_vals(const T* p, typename Tr<T>::A (&out)[V]) {
  T t[V];
  Pack<T, V>::load(p, t);
#pragma unroll
  for (int l = 0; l < V; ++l) out[l] = Tr<T>::ld(t[l]);
}
template <class T, int V>
__device__ __forceinline__ void store_vals(T* p, const typename Tr<T>::A (&in)[V]) {
  T t[V];
#pragma unroll
  for (int l = 0; l < V; ++l) t[l] = Tr<T>::st(in[l]);
  Pack<T, V>::store(p, t);
}

// Parameter arrays are float32 or the storage type T.
template <class T>
__device__ __forceinline__ typename Tr<T>::A ld_param(const void* p, int f32, i64 c, typename Tr<T>::A dflt) {
  typedef typename Tr<T>::A A;
  if (!p) return dflt;
  if (f32) return (A) static_cast<const float*>(p)[c];
  return Tr<T>::ld(static_cast<const T*>(p)[c]);
}
template <class T>
__device__ __forceinline__ void st_param(void* p, int f32, i64 c, double v) {
  typedef typename Tr<T>::A A;
  if (f32) static_cast<float*>(p)[c] = (float)v;
  else static_cast<T*>(p)[c] = Tr<T>::st((A)v);
}

// ---------------------------------------------------------------- math
__device__ __forceinline__ float sigmoid_(float z) { return 1.0f / (1.0f + __expf(-z)); }
__device__ __forceinline__ double sigmoid_(double z) { return 1.0 / (1.0 + exp(-z)); }
template <class A> __device__ __forceinline__ A silu_(A z) { return z * sigmoid_(z); }
template <class A> __device__ __forceinline__ A dsilu_(A z) {
  const A s = sigmoid_(z);
  return s * (A(1) + z * (A(1) - s));
}

// q = n / d for n < 2^31, 1 <= d <= 2^31 (multiply-high, as in PyTorch's IntDivider).
struct FastDiv {
  unsigned d, m, s;
  __device__ __forceinline__ unsigned div(unsigned n) const { return (__umulhi(n, m) + n) >> s; }
};
inline FastDiv make_fastdiv(unsigned d) {
  unsigned s = 0;
  while (s < 32 && (1ull << s) < d) ++s;
  const unsigned long long m = ((1ull << 32) * ((1ull << s) - d)) / d + 1;
  FastDiv f;
  f.d = d;
  f.m = (unsigned)m;
  f.s = s;
  return f;
}

// Partial moments of a set of elements (count, mean, sum of squared deviations).
struct Part {
  double n, mean, m2, pad;
};
__device__ __forceinline__ void merge(Part& a, const Part& b) { detail::chan_merge(a, b); }  // fixed order

// Per (sample, channel) coefficients of the elementwise passes.
// forward:  y  = act((x - mean) * scale + shift)
// backward: dx = scale * dz + c2 * (x - mean) + c3,  z = (x - mean) * scale + shift
template <class A> struct Coef {
  A mean, scale, shift, c2, c3;
};

// Deterministic block sum of K values (blockDim.x a multiple of 32, <= 1024).
// Every thread gets the totals; `sh` holds 32*K values. Fixed shuffle tree.
template <class A, int K> __device__ __forceinline__ void block_sum(A (&v)[K], A* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], o);
    if (lane == 0) sh[k * 32 + warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      A t = lane < nw ? sh[k * 32 + lane] : A(0);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) t += __shfl_down_sync(0xffffffffu, t, o);
      if (lane == 0) sh[k * 32] = t;
    }
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = sh[k * 32];
  __syncthreads();
}

// ---------------------------------------------------------------- argument blocks
struct FwdK {
  const void *x, *skip, *sb, *w, *b;
  void *y, *so, *mean, *rstd;
  int pf32, silu;
  double eps;
  i64 N, C, G, Cg, S;
  // moments kernels
  int fused;
  i64 nchunk;  // chunks per band
  i64 chunk;   // channels-first: elements per chunk (multiple of 8); channels-last: rows
  i64 GB, CB, nbps;  // groups per band, channels per band, bands per sample (cf: 1, Cg, G)
  int TX, TY;        // channels-last thread layout (column vectors x rows)
  i64 buf_bytes;     // channels-last: staging bytes (16-aligned), red follows
  int s_small;       // channels-first: S + chunk < 2^31, FastDiv usable
  FastDiv fdS;
  Part* parts;       // [N * nbps][nchunk][GB]
  void* coef;        // Coef<A>[N * C]
};

// Elementwise (apply) and backward-sum passes share one decomposition.
struct EwK {
  i64 N, C, G, Cg, S;
  int TX, TY;  // threads: TX along the contiguous dim (vectors), TY rows
  // channels-first: row blocks of TY (n,c) rows x S-chunks of `sch` elements
  // channels-last: per sample `nrc` row chunks of `rch` rows x column blocks of TX vectors
  i64 nrb, sch, nk;    // cf
  i64 rch, nrc, ncb;   // cl
};

}  // namespace kern
}  // namespace cuda
}  // namespace groupnorm
