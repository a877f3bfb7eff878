// Internal: the CUDA kernels (see groupnorm_cuda.cu for the strategy).
// Every kernel is templated on the storage type T and the pack width V
// (1, or 16 bytes / sizeof(T) when every pointer and stride allows it).
#pragma once

#include "common.cuh"

namespace groupnorm {
namespace cuda {
namespace kern {

// x, or round_to_T(x + skip (+ skip_bias)) as if it had been stored.
template <class T, int V>
__device__ __forceinline__ void load_input(const T* x, const T* sk, bool has_sb, typename Tr<T>::A bias,
                                           typename Tr<T>::A (&v)[V], T (&raw)[V]) {
  typedef typename Tr<T>::A A;
  Pack<T, V>::load(x, raw);
  if (sk) {
    T kr[V];
    Pack<T, V>::load(sk, kr);
#pragma unroll
    for (int l = 0; l < V; ++l) {
      A t = Tr<T>::ld(raw[l]) + Tr<T>::ld(kr[l]);
      if (has_sb) t = t + bias;
      raw[l] = Tr<T>::st(t);
    }
  }
#pragma unroll
  for (int l = 0; l < V; ++l) v[l] = Tr<T>::ld(raw[l]);
}

// Channel offset (row within the chunk's first row) of chunk-relative offset o.
__device__ __forceinline__ i64 row_of(const FwdK& a, i64 o) {
  return a.s_small ? (i64)a.fdS.div((unsigned)o) : o / a.S;
}

// Stats of a finished group, in double: mean and rstd.
__device__ __forceinline__ void finish(const Part& p, double eps, double& mean, double& rstd) {
  mean = p.mean;
  rstd = detail::chan_rstd(p, eps);
}
// The rstd the apply coefficients use: 0 for a constant group (m2 = 0) with
// eps > 0, which is then exactly the bias even when rstd does not fit the
// accumulation type (tiny eps: 0 * inf would be NaN).
__device__ __forceinline__ double coef_rstd(const Part& p, double eps, double rstd) {
  return p.m2 == 0 && eps > 0 ? 0.0 : rstd;
}

// ================================================================ forward moments
// Channels-first. One block per (n, g, chunk); the chunk (a contiguous range of
// the group's Cg*S elements) is staged in shared memory as T. Every thread
// touches the same positions in every pass, so the passes need no barrier of
// their own. Exact two-pass moments of the chunk; in fused mode (one chunk per
// group) the block finishes the group and writes y from shared memory.
template <class T, int V>
__global__ void __launch_bounds__(512) fwd_cf_moments(FwdK a) {
  typedef typename Tr<T>::A A;
  extern __shared__ __align__(16) unsigned char smem[];
  T* buf = reinterpret_cast<T*>(smem);
  __shared__ A red[64];
  __shared__ double stat[2];
  const int tid = threadIdx.x, B = blockDim.x;
  const i64 D = a.Cg * a.S;
  const i64 items = a.N * a.G * a.nchunk;
  for (i64 it = blockIdx.x; it < items; it += gridDim.x) {
    const i64 k = it % a.nchunk, ng = it / a.nchunk;
    const i64 n = ng / a.G, g = ng % a.G;
    const i64 e0 = k * a.chunk;
    const i64 rem = D - e0;
    const int len = (int)(a.chunk < rem ? a.chunk : rem);
    const i64 base = (n * a.C + g * a.Cg) * a.S + e0;
    const i64 o0 = e0 % a.S;
    const i64 cbase = g * a.Cg + e0 / a.S;  // channel of the chunk's first element
    const T* x = static_cast<const T*>(a.x) + base;
    const T* sk = a.skip ? static_cast<const T*>(a.skip) + base : nullptr;
    T* so = a.so ? static_cast<T*>(a.so) + base : nullptr;
    const bool has_sb = a.sb != nullptr;
    const int nv = len / V;  // len % V == 0 when V > 1 (S % V == 0, chunk % 8 == 0)
    // pass 1: load (x + skip), stage, sum
    A s1[1] = {A(0)};
    for (int v = tid; v < nv; v += B) {
      const int i = v * V;
      A bias = A(0);
      if (has_sb) bias = ld_param<T>(a.sb, a.pf32, cbase + row_of(a, o0 + i), A(0));
      A xv[V];
      T raw[V];
      load_input<T, V>(x + i, sk ? sk + i : nullptr, has_sb, bias, xv, raw);
      Pack<T, V>::store(buf + i, raw);
      if (so) Pack<T, V>::store(so + i, raw);
#pragma unroll
      for (int l = 0; l < V; ++l) s1[0] += xv[l];
    }
    block_sum<A, 1>(s1, red);
    const A m = s1[0] / (A)len;
    // pass 2: deviations from the provisional mean, from shared memory
    A s2[2] = {A(0), A(0)};
    for (int v = tid; v < nv; v += B) {
      A xv[V];
      load_vals<T, V>(buf + v * V, xv);
#pragma unroll
      for (int l = 0; l < V; ++l) {
        const A d = xv[l] - m;
        s2[0] += d;
        s2[1] += d * d;
      }
    }
    block_sum<A, 2>(s2, red);
    if (tid == 0) {
      Part p;
      p.n = (double)len;
      p.mean = (double)m + (double)s2[0] / p.n;
      p.m2 = (double)s2[1] - (double)s2[0] * (double)s2[0] / p.n;
      if (p.m2 < 0) p.m2 = 0;  // rounding; NaN stays NaN
      p.pad = 0;
      if (!a.fused) {
        a.parts[ng * a.nchunk + k] = p;
      } else {
        double mean, rstd;
        finish(p, a.eps, mean, rstd);
        if (a.mean) static_cast<A*>(a.mean)[ng] = (A)mean;
        if (a.rstd) static_cast<A*>(a.rstd)[ng] = (A)rstd;
        stat[0] = mean;
        stat[1] = coef_rstd(p, a.eps, rstd);
      }
    }
    if (a.fused) {
      __syncthreads();
      const double mean = stat[0];
      const A mh = (A)mean, lo = (A)(mean - (double)mh), rs = (A)stat[1];
      T* y = static_cast<T*>(a.y) + base;
      for (int v = tid; v < nv; v += B) {
        const int i = v * V;
        const i64 c = cbase + row_of(a, o0 + i);
        const A scale = ld_param<T>(a.w, a.pf32, c, A(1)) * rs;
        const A shift = ld_param<T>(a.b, a.pf32, c, A(0)) - lo * scale;
        A xv[V];
        load_vals<T, V>(buf + i, xv);
#pragma unroll
        for (int l = 0; l < V; ++l) {
          A z = (xv[l] - mh) * scale + shift;
          if (a.silu) z = silu_(z);
          xv[l] = z;
        }
        store_vals<T, V>(y + i, xv);
      }
    }
    __syncthreads();  // stat/red reuse by the next item
  }
}

// Channels-last. One block per (n, band of GB whole groups, chunk of rows); the
// chunk (rows x CB channels, rows C apart) is staged in shared memory. Thread
// (tx, ty) owns column packs tx, tx+TX, ... and rows ty, ty+TY, ...: each row
// segment is read whole by consecutive threads. Per-channel sums go through
// shared memory (fixed order), then one warp per group adds its channels.
template <class T, int V>
__global__ void __launch_bounds__(256) fwd_cl_moments(FwdK a) {
  typedef typename Tr<T>::A A;
  extern __shared__ __align__(16) unsigned char smem[];
  T* buf = reinterpret_cast<T*>(smem);
  const int TX = a.TX, TY = a.TY;
  const i64 CB = a.CB;
  A* red = reinterpret_cast<A*>(smem + a.buf_bytes);  // [2][TY][CB]
  A* red2 = red + (i64)TY * CB;
  A* gm = red2 + (i64)TY * CB;  // [4][GB]: provisional mean, mean hi, mean lo, rstd
  const int tid = threadIdx.x, B = blockDim.x;
  const int tx = tid % TX, ty = tid / TX;
  const bool active = ty < TY;
  const int lane = tid & 31, warp = tid >> 5, nw = B >> 5;
  const int ncv = (int)(CB / V);
  const i64 Cg = a.Cg, GB = a.GB;
  const i64 items = a.N * a.nbps * a.nchunk;
  const bool has_sb = a.sb != nullptr;
  for (i64 it = blockIdx.x; it < items; it += gridDim.x) {
    const i64 k = it % a.nchunk, nb = it / a.nchunk;
    const i64 n = nb / a.nbps, band = nb % a.nbps;
    const i64 r0 = k * a.chunk;
    const i64 rem = a.S - r0;
    const int rows = (int)(a.chunk < rem ? a.chunk : rem);
    const i64 c0 = band * CB;
    const i64 rowbase = (n * a.S + r0) * a.C + c0;
    // pass 1: load, stage, per-channel sums
    if (active) {
      for (int cv = tx; cv < ncv; cv += TX) {
        A bias[V];
#pragma unroll
        for (int l = 0; l < V; ++l) bias[l] = has_sb ? ld_param<T>(a.sb, a.pf32, c0 + cv * V + l, A(0)) : A(0);
        A acc[V];
#pragma unroll
        for (int l = 0; l < V; ++l) acc[l] = A(0);
        for (int r = ty; r < rows; r += TY) {
          const i64 off = rowbase + (i64)r * a.C + cv * V;
          T raw[V];
          Pack<T, V>::load(static_cast<const T*>(a.x) + off, raw);
          if (a.skip) {
            T kr[V];
            Pack<T, V>::load(static_cast<const T*>(a.skip) + off, kr);
#pragma unroll
            for (int l = 0; l < V; ++l) {
              A t = Tr<T>::ld(raw[l]) + Tr<T>::ld(kr[l]);
              if (has_sb) t = t + bias[l];
              raw[l] = Tr<T>::st(t);
            }
            if (a.so) Pack<T, V>::store(static_cast<T*>(a.so) + off, raw);
          }
          Pack<T, V>::store(buf + (i64)r * CB + cv * V, raw);
#pragma unroll
          for (int l = 0; l < V; ++l) acc[l] += Tr<T>::ld(raw[l]);
        }
#pragma unroll
        for (int l = 0; l < V; ++l) red[(i64)ty * CB + cv * V + l] = acc[l];
      }
    }
    __syncthreads();
    for (i64 j = tid; j < CB; j += B) {  // column totals over ty, in order
      A s = A(0);
      for (int t = 0; t < TY; ++t) s += red[(i64)t * CB + j];
      red[j] = s;
    }
    __syncthreads();
    const A cnt = (A)rows * (A)Cg;
    for (i64 gl = warp; gl < GB; gl += nw) {
      A s = A(0);
      for (i64 j = lane; j < Cg; j += 32) s += red[gl * Cg + j];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
      if (lane == 0) gm[gl] = s / cnt;
    }
    __syncthreads();
    // pass 2: deviations from the provisional group means
    if (active) {
      for (int cv = tx; cv < ncv; cv += TX) {
        A mv[V], d[V], q[V];
#pragma unroll
        for (int l = 0; l < V; ++l) {
          mv[l] = gm[(cv * V + l) / Cg];
          d[l] = A(0);
          q[l] = A(0);
        }
        for (int r = ty; r < rows; r += TY) {
          A xv[V];
          load_vals<T, V>(buf + (i64)r * CB + cv * V, xv);
#pragma unroll
          for (int l = 0; l < V; ++l) {
            const A t = xv[l] - mv[l];
            d[l] += t;
            q[l] += t * t;
          }
        }
#pragma unroll
        for (int l = 0; l < V; ++l) {
          red[(i64)ty * CB + cv * V + l] = d[l];
          red2[(i64)ty * CB + cv * V + l] = q[l];
        }
      }
    }
    __syncthreads();
    for (i64 j = tid; j < CB; j += B) {
      A s = A(0), s2 = A(0);
      for (int t = 0; t < TY; ++t) {
        s += red[(i64)t * CB + j];
        s2 += red2[(i64)t * CB + j];
      }
      red[j] = s;
      red2[j] = s2;
    }
    __syncthreads();
    for (i64 gl = warp; gl < GB; gl += nw) {
      A s = A(0), s2 = A(0);
      for (i64 j = lane; j < Cg; j += 32) {
        s += red[gl * Cg + j];
        s2 += red2[gl * Cg + j];
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        s += __shfl_down_sync(0xffffffffu, s, o);
        s2 += __shfl_down_sync(0xffffffffu, s2, o);
      }
      if (lane == 0) {
        Part p;
        p.n = (double)rows * (double)Cg;
        p.mean = (double)gm[gl] + (double)s / p.n;
        p.m2 = (double)s2 - (double)s * (double)s / p.n;
        if (p.m2 < 0) p.m2 = 0;
        p.pad = 0;
        if (!a.fused) {
          a.parts[(nb * a.nchunk + k) * GB + gl] = p;
        } else {
          double mean, rstd;
          finish(p, a.eps, mean, rstd);
          const i64 ng = n * a.G + band * GB + gl;
          if (a.mean) static_cast<A*>(a.mean)[ng] = (A)mean;
          if (a.rstd) static_cast<A*>(a.rstd)[ng] = (A)rstd;
          const A mh = (A)mean;
          gm[GB + gl] = mh;
          gm[2 * GB + gl] = (A)(mean - (double)mh);
          gm[3 * GB + gl] = (A)coef_rstd(p, a.eps, rstd);
        }
      }
    }
    if (a.fused) {
      __syncthreads();
      if (active) {
        for (int cv = tx; cv < ncv; cv += TX) {
          A mh[V], sc[V], sh[V];
#pragma unroll
          for (int l = 0; l < V; ++l) {
            const i64 gl = (cv * V + l) / Cg;
            const i64 c = c0 + cv * V + l;
            mh[l] = gm[GB + gl];
            sc[l] = ld_param<T>(a.w, a.pf32, c, A(1)) * gm[3 * GB + gl];
            sh[l] = ld_param<T>(a.b, a.pf32, c, A(0)) - gm[2 * GB + gl] * sc[l];
          }
          for (int r = ty; r < rows; r += TY) {
            A xv[V];
            load_vals<T, V>(buf + (i64)r * CB + cv * V, xv);
#pragma unroll
            for (int l = 0; l < V; ++l) {
              A z = (xv[l] - mh[l]) * sc[l] + sh[l];
              if (a.silu) z = silu_(z);
              xv[l] = z;
            }
            store_vals<T, V>(static_cast<T*>(a.y) + rowbase + (i64)r * a.C + cv * V, xv);
          }
        }
      }
    }
    __syncthreads();
  }
}

// Split path: one block per (n, g) merges the group's chunk partials in chunk
// order, writes mean/rstd and the per-channel coefficients of the apply pass.
template <class T>
__global__ void __launch_bounds__(128) fwd_finalize(FwdK a) {
  typedef typename Tr<T>::A A;
  __shared__ double st[2];
  for (i64 ng = blockIdx.x; ng < a.N * a.G; ng += gridDim.x) {
    const i64 n = ng / a.G, g = ng % a.G;
    if (threadIdx.x == 0) {
      const i64 band = g / a.GB, gl = g % a.GB, nb = n * a.nbps + band;
      Part acc;
      acc.n = acc.mean = acc.m2 = acc.pad = 0;
      for (i64 k = 0; k < a.nchunk; ++k) merge(acc, a.parts[(nb * a.nchunk + k) * a.GB + gl]);
      double mean, rstd;
      finish(acc, a.eps, mean, rstd);
      if (a.mean) static_cast<A*>(a.mean)[ng] = (A)mean;
      if (a.rstd) static_cast<A*>(a.rstd)[ng] = (A)rstd;
      st[0] = mean;
      st[1] = coef_rstd(acc, a.eps, rstd);
    }
    __syncthreads();
    const double mean = st[0], rstd = st[1];
    Coef<A>* coef = static_cast<Coef<A>*>(a.coef);
    for (i64 j = threadIdx.x; j < a.Cg; j += blockDim.x) {
      const i64 c = g * a.Cg + j;
      const double w = (double)ld_param<T>(a.w, a.pf32, c, A(1));
      const double b = (double)ld_param<T>(a.b, a.pf32, c, A(0));
      Coef<A> cf;
      detail::fold_coefficients<A>(mean, rstd, w, b, cf.mean, cf.scale, cf.shift);
      cf.c2 = A(0);
      cf.c3 = A(0);
      coef[n * a.C + c] = cf;
    }
    __syncthreads();
  }
}

// ================================================================ elementwise passes
struct ApplyIO {
  // forward
  const void *x, *skip, *sb, *so_in;  // so_in: sum_out already written (read it instead)
  void* y;
  int pf32, silu;
  // backward
  const void* dy;
  void* dx;
  const void* coef;
};

template <class T, int V, bool BWD>
__device__ __forceinline__ void ew_vec(const ApplyIO& io, i64 off, const Coef<typename Tr<T>::A> (&cf)[V],
                                       const typename Tr<T>::A (&bias)[V]) {
  typedef typename Tr<T>::A A;
  A xv[V];
  if (!BWD) {
    if (io.so_in) {
      load_vals<T, V>(static_cast<const T*>(io.so_in) + off, xv);
    } else if (io.skip) {
      A kv[V];
      load_vals<T, V>(static_cast<const T*>(io.x) + off, xv);
      load_vals<T, V>(static_cast<const T*>(io.skip) + off, kv);
#pragma unroll
      for (int l = 0; l < V; ++l) {
        A t = xv[l] + kv[l];
        if (io.sb) t = t + bias[l];
        xv[l] = Tr<T>::ld(Tr<T>::st(t));
      }
    } else {
      load_vals<T, V>(static_cast<const T*>(io.x) + off, xv);
    }
#pragma unroll
    for (int l = 0; l < V; ++l) {
      A z = (xv[l] - cf[l].mean) * cf[l].scale + cf[l].shift;
      if (io.silu) z = silu_(z);
      xv[l] = z;
    }
    store_vals<T, V>(static_cast<T*>(io.y) + off, xv);
  } else {
    A gv[V];
    load_vals<T, V>(static_cast<const T*>(io.x) + off, xv);
    load_vals<T, V>(static_cast<const T*>(io.dy) + off, gv);
#pragma unroll
    for (int l = 0; l < V; ++l) {
      const A xc = xv[l] - cf[l].mean;
      A dz = gv[l];
      if (io.silu) dz = dz * dsilu_(xc * cf[l].scale + cf[l].shift);
      xv[l] = (cf[l].scale * dz + cf[l].c2 * xc) + cf[l].c3;
    }
    store_vals<T, V>(static_cast<T*>(io.dx) + off, xv);
  }
}

// Channels-first: thread (tx, ty) of row block rb walks row rb*TY+ty (one
// (n, c) row of S contiguous elements), S-chunk blockIdx.y, packs tx, tx+TX, ...
template <class T, int V, bool BWD>
__global__ void __launch_bounds__(256) ew_cf(EwK e, ApplyIO io) {
  typedef typename Tr<T>::A A;
  const int tx = threadIdx.x % e.TX, ty = threadIdx.x / e.TX;
  if (ty >= e.TY) return;
  const i64 NC = e.N * e.C;
  const Coef<A>* coef = static_cast<const Coef<A>*>(io.coef);
  for (i64 rb = blockIdx.x; rb < e.nrb; rb += gridDim.x) {
    const i64 row = rb * e.TY + ty;
    if (row >= NC) continue;
    const i64 c = row % e.C;
    Coef<A> cf[V];
    A bias[V];
    const Coef<A> c1 = coef[row];
    const A b1 = (!BWD && io.sb) ? ld_param<T>(io.sb, io.pf32, c, A(0)) : A(0);
#pragma unroll
    for (int l = 0; l < V; ++l) {
      cf[l] = c1;
      bias[l] = b1;
    }
    for (i64 k = blockIdx.y; k < e.nk; k += gridDim.y) {
      const i64 s0 = k * e.sch;
      const i64 s1 = s0 + e.sch < e.S ? s0 + e.sch : e.S;
      for (i64 s = s0 + (i64)tx * V; s < s1; s += (i64)e.TX * V) ew_vec<T, V, BWD>(io, row * e.S + s, cf, bias);
    }
  }
}

// Channels-last: block (n, row chunk) x column block; thread (tx, ty) owns
// column pack cb*TX+tx (its coefficients loaded once) and rows ty, ty+TY, ...
template <class T, int V, bool BWD>
__global__ void __launch_bounds__(256) ew_cl(EwK e, ApplyIO io) {
  typedef typename Tr<T>::A A;
  const int tx = threadIdx.x % e.TX, ty = threadIdx.x / e.TX;
  if (ty >= e.TY) return;
  const i64 ncv = e.C / V;
  const Coef<A>* coef = static_cast<const Coef<A>*>(io.coef);
  for (i64 bx = blockIdx.x; bx < e.N * e.nrc; bx += gridDim.x) {
    const i64 n = bx / e.nrc, rc = bx % e.nrc;
    const i64 r0 = rc * e.rch;
    const i64 r1 = r0 + e.rch < e.S ? r0 + e.rch : e.S;
    for (i64 cb = blockIdx.y; cb < e.ncb; cb += gridDim.y) {
      const i64 cv = cb * e.TX + tx;
      if (cv >= ncv) continue;
      Coef<A> cf[V];
      A bias[V];
#pragma unroll
      for (int l = 0; l < V; ++l) {
        const i64 c = cv * V + l;
        cf[l] = coef[n * e.C + c];
        bias[l] = (!BWD && io.sb) ? ld_param<T>(io.sb, io.pf32, c, A(0)) : A(0);
      }
      for (i64 r = r0 + ty; r < r1; r += e.TY) ew_vec<T, V, BWD>(io, (n * e.S + r) * e.C + cv * V, cf, bias);
    }
  }
}

// ================================================================ backward sums
// Per (n, c) and chunk k: db = sum dz, ds = sum dz * (x - mean) into
// slots[k][n*C + c] (double2), merged in chunk order by bwd_finalize.
struct BwdK {
  const void *dy, *x, *mean, *rstd, *w, *b;
  void *dx, *gw, *gb;
  int pf32, silu;
  double2* slots;  // [nk][N*C]
  double2* dbds;   // [N*C]
  void* coef;      // Coef<A>[N*C]
  i64 nk;          // chunks (slots per channel)
};

// Channels-first: TX is a power of two; a row's TX threads tree-reduce in shared memory.
template <class T, int V>
__global__ void __launch_bounds__(256) bwd_sums_cf(EwK e, BwdK a) {
  typedef typename Tr<T>::A A;
  __shared__ A red[2][256];
  const int tid = threadIdx.x;
  const int tx = tid % e.TX, ty = tid / e.TX;  // blockDim.x == TX * TY == 256
  const i64 NC = e.N * e.C;
  for (i64 rb = blockIdx.x; rb < e.nrb; rb += gridDim.x) {
    const i64 row = rb * e.TY + ty;
    for (i64 k = blockIdx.y; k < e.nk; k += gridDim.y) {
      A db = A(0), ds = A(0);
      if (row < NC) {
        const i64 n = row / e.C, c = row % e.C, ng = n * e.G + c / e.Cg;
        const A mean = static_cast<const A*>(a.mean)[ng];
        const A scale = ld_param<T>(a.w, a.pf32, c, A(1)) * static_cast<const A*>(a.rstd)[ng];
        const A shift = ld_param<T>(a.b, a.pf32, c, A(0));
        const i64 s0 = k * e.sch;
        const i64 s1 = s0 + e.sch < e.S ? s0 + e.sch : e.S;
        for (i64 s = s0 + (i64)tx * V; s < s1; s += (i64)e.TX * V) {
          A xv[V], gv[V];
          load_vals<T, V>(static_cast<const T*>(a.x) + row * e.S + s, xv);
          load_vals<T, V>(static_cast<const T*>(a.dy) + row * e.S + s, gv);
#pragma unroll
          for (int l = 0; l < V; ++l) {
            const A xc = xv[l] - mean;
            A dz = gv[l];
            if (a.silu) dz = dz * dsilu_(xc * scale + shift);
            db += dz;
            ds += dz * xc;
          }
        }
      }
      red[0][tid] = db;
      red[1][tid] = ds;
      __syncthreads();
      for (int st = e.TX >> 1; st > 0; st >>= 1) {
        if (tx < st) {
          red[0][tid] += red[0][tid + st];
          red[1][tid] += red[1][tid + st];
        }
        __syncthreads();
      }
      if (tx == 0 && row < NC) a.slots[k * NC + row] = make_double2((double)red[0][tid], (double)red[1][tid]);
      __syncthreads();
    }
  }
}

// Channels-last: same decomposition as ew_cl; the TY partials of a column are
// added in ty order through shared memory ([2][TY][TX*V] of A, dynamic).
template <class T, int V>
__global__ void __launch_bounds__(256) bwd_sums_cl(EwK e, BwdK a) {
  typedef typename Tr<T>::A A;
  extern __shared__ __align__(16) unsigned char smem[];
  A* red = reinterpret_cast<A*>(smem);
  const int W = e.TX * V;  // columns per block
  A* red2 = red + (i64)e.TY * W;
  const int tx = threadIdx.x % e.TX, ty = threadIdx.x / e.TX;
  const bool active = ty < e.TY;
  const i64 ncv = e.C / V, NC = e.N * e.C;
  for (i64 bx = blockIdx.x; bx < e.N * e.nrc; bx += gridDim.x) {
    const i64 n = bx / e.nrc, rc = bx % e.nrc;
    const i64 r0 = rc * e.rch;
    const i64 r1 = r0 + e.rch < e.S ? r0 + e.rch : e.S;
    for (i64 cb = blockIdx.y; cb < e.ncb; cb += gridDim.y) {
      const i64 cv = cb * e.TX + tx;
      if (active) {
        A db[V], ds[V];
#pragma unroll
        for (int l = 0; l < V; ++l) db[l] = ds[l] = A(0);
        if (cv < ncv) {
          A mean[V], scale[V], shift[V];
#pragma unroll
          for (int l = 0; l < V; ++l) {
            const i64 c = cv * V + l, ng = n * e.G + c / e.Cg;
            mean[l] = static_cast<const A*>(a.mean)[ng];
            scale[l] = ld_param<T>(a.w, a.pf32, c, A(1)) * static_cast<const A*>(a.rstd)[ng];
            shift[l] = ld_param<T>(a.b, a.pf32, c, A(0));
          }
          for (i64 r = r0 + ty; r < r1; r += e.TY) {
            const i64 off = (n * e.S + r) * e.C + cv * V;
            A xv[V], gv[V];
            load_vals<T, V>(static_cast<const T*>(a.x) + off, xv);
            load_vals<T, V>(static_cast<const T*>(a.dy) + off, gv);
#pragma unroll
            for (int l = 0; l < V; ++l) {
              const A xc = xv[l] - mean[l];
              A dz = gv[l];
              if (a.silu) dz = dz * dsilu_(xc * scale[l] + shift[l]);
              db[l] += dz;
              ds[l] += dz * xc;
            }
          }
        }
#pragma unroll
        for (int l = 0; l < V; ++l) {
          red[(i64)ty * W + tx * V + l] = db[l];
          red2[(i64)ty * W + tx * V + l] = ds[l];
        }
      }
      __syncthreads();
      for (int j = threadIdx.x; j < W; j += blockDim.x) {
        const i64 c = cb * W + j;
        if (c >= e.C) continue;
        A s = A(0), s2 = A(0);
        for (int t = 0; t < e.TY; ++t) {
          s += red[(i64)t * W + j];
          s2 += red2[(i64)t * W + j];
        }
        a.slots[rc * NC + n * e.C + c] = make_double2((double)s, (double)s2);
      }
      __syncthreads();
    }
  }
}

// One block per (n, g): per channel db, ds merged over chunks in order; the
// group's S1 = sum w*db, S2 = sum w*ds (deterministic block sum); coefficients.
template <class T>
__global__ void __launch_bounds__(256) bwd_finalize(EwK e, BwdK a) {
  typedef typename Tr<T>::A A;
  __shared__ double red[64];
  const i64 NC = e.N * e.C;
  const double D = (double)e.Cg * (double)e.S;
  for (i64 ng = blockIdx.x; ng < e.N * e.G; ng += gridDim.x) {
    const i64 n = ng / e.G, g = ng % e.G;
    double s[2] = {0.0, 0.0};
    for (i64 j = threadIdx.x; j < e.Cg; j += blockDim.x) {
      const i64 nc = n * e.C + g * e.Cg + j;
      double db = 0, ds = 0;
      for (i64 k = 0; k < a.nk; ++k) {
        const double2 t = a.slots[k * NC + nc];
        db += t.x;
        ds += t.y;
      }
      a.dbds[nc] = make_double2(db, ds);
      const double w = (double)ld_param<T>(a.w, a.pf32, g * e.Cg + j, A(1));
      s[0] += w * db;
      s[1] += w * ds;
    }
    block_sum<double, 2>(s, red);
    const double mean = (double)static_cast<const A*>(a.mean)[ng];
    const double rstd = (double)static_cast<const A*>(a.rstd)[ng];
    const A c2 = (A)(-rstd * rstd * rstd * s[1] / D);
    const A c3 = (A)(-rstd * s[0] / D);
    Coef<A>* coef = static_cast<Coef<A>*>(a.coef);
    for (i64 j = threadIdx.x; j < e.Cg; j += blockDim.x) {
      const i64 c = g * e.Cg + j;
      const double w = (double)ld_param<T>(a.w, a.pf32, c, A(1));
      Coef<A> cf;
      cf.mean = (A)mean;
      cf.scale = (A)(w * rstd);
      cf.shift = ld_param<T>(a.b, a.pf32, c, A(0));
      cf.c2 = c2;
      cf.c3 = c3;
      coef[n * e.C + c] = cf;
    }
  }
}

// One block per channel: grad_weight = sum_n rstd * ds, grad_bias = sum_n db.
template <class T>
__global__ void __launch_bounds__(256) bwd_params(EwK e, BwdK a) {
  typedef typename Tr<T>::A A;
  __shared__ double red[64];
  for (i64 c = blockIdx.x; c < e.C; c += gridDim.x) {
    double s[2] = {0.0, 0.0};
    const i64 g = c / e.Cg;
    for (i64 n = threadIdx.x; n < e.N; n += blockDim.x) {
      const double2 t = a.dbds[n * e.C + c];
      s[0] += (double)static_cast<const A*>(a.rstd)[n * e.G + g] * t.y;
      s[1] += t.x;
    }
    block_sum<double, 2>(s, red);
    if (threadIdx.x == 0) {
      if (a.gw) st_param<T>(a.gw, a.pf32, c, s[0]);
      if (a.gb) st_param<T>(a.gb, a.pf32, c, s[1]);
    }
  }
}

// S == 0 with N > 0: every group is empty; mean/rstd are NaN (as on the CPU).
template <class A> __global__ void fill_nan(A* mean, A* rstd, i64 n) {
  for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
    const A nan = (A)__int_as_float(0x7fc00000);
    if (mean) mean[i] = nan;
    if (rstd) rstd[i] = nan;
  }
}

}  // namespace kern
}  // namespace cuda
}  // namespace groupnorm
