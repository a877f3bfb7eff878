// The two-pass floor of this machine, measured with hand-written AVX-512 loops
// (no library code): what a group-at-a-time GroupNorm could reach if its
// kernels were nothing but the loads, arithmetic and stores they must do.
//
//   g++ -O2 -mavx512f -std=c++17 bench/floor.cpp -o /tmp/floor && /tmp/floor
//
// For each size (x fits in L2, in L3, or only in DRAM) and a group of 160 KB,
// one thread, it prints the time of each loop divided by a memcpy of x:
//   sums       sum(x - k) and sum((x - k)^2) over x         (the moments pass)
//   normalize  y = (x - m) * a + b                          (the apply pass)
//   forward    per group: sums, then normalize from cache   (the whole forward)
//   interleave per group: normalize group g while summing g+1
//   bwd sums   sum(dy), sum(dy * (x - m)) over x and dy
//   bwd apply  dx = a*dy + c2*(x - m) + c3
//   backward   per group: bwd sums, then bwd apply from cache
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <class F> double best(F f, int reps = 30) {
  double b = 1e30;
  for (int i = 0; i < reps; ++i) {
    const double t = now();
    f();
    b = std::min(b, now() - t);
  }
  return b;
}

const __m512 kM = _mm512_set1_ps(1.5f), kA = _mm512_set1_ps(0.7f), kB = _mm512_set1_ps(0.1f);

struct Sums {
  __m512 d0 = _mm512_setzero_ps(), d1 = _mm512_setzero_ps(), q0 = _mm512_setzero_ps(), q1 = _mm512_setzero_ps();
};

void sums(const float* x, long n, Sums& s) {
  for (long i = 0; i < n; i += 32) {
    const __m512 e0 = _mm512_sub_ps(_mm512_load_ps(x + i), kM), e1 = _mm512_sub_ps(_mm512_load_ps(x + i + 16), kM);
    s.d0 = _mm512_add_ps(s.d0, e0);
    s.q0 = _mm512_add_ps(s.q0, _mm512_mul_ps(e0, e0));
    s.d1 = _mm512_add_ps(s.d1, e1);
    s.q1 = _mm512_add_ps(s.q1, _mm512_mul_ps(e1, e1));
  }
}

void normalize(const float* x, float* y, long n) {
  for (long i = 0; i < n; i += 16)
    _mm512_store_ps(y + i, _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_load_ps(x + i), kM), kA), kB));
}

void bwd_sums(const float* x, const float* dy, long n, Sums& s) {
  for (long i = 0; i < n; i += 16) {
    const __m512 xc = _mm512_sub_ps(_mm512_load_ps(x + i), kM), g = _mm512_load_ps(dy + i);
    s.d0 = _mm512_add_ps(s.d0, g);
    s.q0 = _mm512_add_ps(s.q0, _mm512_mul_ps(g, xc));
  }
}

void bwd_apply(const float* x, const float* dy, float* dx, long n) {
  for (long i = 0; i < n; i += 16) {
    const __m512 xc = _mm512_sub_ps(_mm512_load_ps(x + i), kM), g = _mm512_load_ps(dy + i);
    _mm512_store_ps(dx + i, _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(kA, g), _mm512_mul_ps(kB, xc)), kA));
  }
}

float* buffer(long n) {
  float* p = static_cast<float*>(std::aligned_alloc(64, n * sizeof(float)));
  for (long i = 0; i < n; ++i) p[i] = (float)(i % 97) * 0.01f;
  return p;
}

}  // namespace

int main() {
  const long group = 40960;  // 160 KB of float32
  volatile float sink = 0;
  std::printf("%-9s %6s %6s %9s %8s %10s %9s %9s %8s\n", "x", "sums", "norm", "forward", "interlv", "bwd sums",
              "bwd apply", "backward", "(x memcpy)");
  for (long mb : {1L, 5L, 34L}) {
    const long n = mb * (1L << 20) / 4 / group * group;
    float *x = buffer(n), *dy = buffer(n), *y = buffer(n);
    const double copy = best([&] { std::memcpy(y, x, n * sizeof(float)); });
    auto fold = [&](const Sums& s) { sink = sink + _mm512_reduce_add_ps(_mm512_add_ps(s.d0, s.q1)); };
    const double ts = best([&] { Sums s; sums(x, n, s); fold(s); });
    const double tn = best([&] { normalize(x, y, n); });
    const double tf = best([&] {
      Sums s;
      for (long g = 0; g < n; g += group) { sums(x + g, group, s); normalize(x + g, y + g, group); }
      fold(s);
    });
    const double ti = best([&] {
      Sums s;
      sums(x, group, s);
      for (long g = 0; g < n; g += group)
        for (long i = 0; i < group; i += 1024) {
          normalize(x + g + i, y + g + i, 1024);
          if (g + group < n) sums(x + g + group + i, 1024, s);
        }
      fold(s);
    });
    const double tbs = best([&] { Sums s; bwd_sums(x, dy, n, s); fold(s); });
    const double tba = best([&] { bwd_apply(x, dy, y, n); });
    const double tb = best([&] {
      Sums s;
      for (long g = 0; g < n; g += group) { bwd_sums(x + g, dy + g, group, s); bwd_apply(x + g, dy + g, y + g, group); }
      fold(s);
    });
    std::printf("%4ld MB   %6.2f %6.2f %9.2f %8.2f %10.2f %9.2f %9.2f\n", mb, ts / copy, tn / copy, tf / copy,
                ti / copy, tbs / copy, tba / copy, tb / copy);
    std::free(x);
    std::free(dy);
    std::free(y);
  }
  return sink == 12345.0f ? 1 : 0;
}
