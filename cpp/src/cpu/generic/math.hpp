// Part of cpu/generic.hpp: math: storage traits and the vector operations the kernels use (Ops).
// Included by generic.hpp alone, inside its namespaces, once per instruction
// set (GN_ISA_NS); not a header of its own.

// ---------------------------------------------------------------- storage traits
template <class T> struct Store;
template <> struct Store<float> {
  typedef float A;
  static vf load(const float* p) { vf v; std::memcpy(&v, p, 64); return v; }
  static vf load_n(const float* p, std::int64_t n) { return load_first<vf>(p, n); }
  static void store(float* p, vf v) { std::memcpy(p, &v, 64); }
  static void store_n(float* p, vf v, std::int64_t n) { store_first(p, v, n); }
  static vf round_trip(vf v) { return v; }
};
template <> struct Store<double> {
  typedef double A;
  static vd load(const double* p) { vd v; std::memcpy(&v, p, 64); return v; }
  static vd load_n(const double* p, std::int64_t n) { return load_first<vd>(p, n); }
  static void store(double* p, vd v) { std::memcpy(p, &v, 64); }
  static void store_n(double* p, vd v, std::int64_t n) { store_first(p, v, n); }
  static vd round_trip(vd v) { return v; }
};
template <> struct Store<half> {
  typedef float A;
  static vf load(const half* p) { vu16 h; std::memcpy(&h, p, 32); return half_to_float(h); }
  static vf load_n(const half* p, std::int64_t n) {
    return half_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  static void store(half* p, vf v) { vu16 h = float_to_half(v); std::memcpy(p, &h, 32); }
  static void store_n(half* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_half(v), n);
  }
  static vf round_trip(vf v) { return half_to_float(float_to_half(v)); }
};
template <> struct Store<bfloat16> {
  typedef float A;
  static vf load(const bfloat16* p) { vu16 h; std::memcpy(&h, p, 32); return bf16_to_float(h); }
  static vf load_n(const bfloat16* p, std::int64_t n) {
    return bf16_to_float(load_first<vu16>(reinterpret_cast<const std::uint16_t*>(p), n));
  }
  static void store(bfloat16* p, vf v) { vu16 h = float_to_bf16(v); std::memcpy(p, &h, 32); }
  static void store_n(bfloat16* p, vf v, std::int64_t n) {
    store_first(reinterpret_cast<std::uint16_t*>(p), float_to_bf16(v), n);
  }
  static vf round_trip(vf v) { return bf16_to_float(float_to_bf16(v)); }
};

template <class V, class A> GN_INLINE V splat(A a) { return a - V{}; }  // one broadcast (a - 0 keeps -0.0)

// a * b + c with one rounding, on every ISA (hardware FMA where the ISA has it,
// std::fma on the portable path), so the exp below rounds the same everywhere.
GN_INLINE vf fma_(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return bitcast<vf>(_mm512_fmadd_ps(bitcast<__m512>(a), bitcast<__m512>(b), bitcast<__m512>(c)));
#elif defined(__FMA__)
  vf r;
  for (int h = 0; h < 2; ++h) {
    __m256 x, y, z;
    std::memcpy(&x, reinterpret_cast<const char*>(&a) + 32 * h, 32);
    std::memcpy(&y, reinterpret_cast<const char*>(&b) + 32 * h, 32);
    std::memcpy(&z, reinterpret_cast<const char*>(&c) + 32 * h, 32);
    const __m256 o = _mm256_fmadd_ps(x, y, z);
    std::memcpy(reinterpret_cast<char*>(&r) + 32 * h, &o, 32);
  }
  return r;
#else
  vf r;
  for (int i = 0; i < 16; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}
GN_INLINE vd fma_(vd a, vd b, vd c) {
#if defined(__AVX512F__)
  return bitcast<vd>(_mm512_fmadd_pd(bitcast<__m512d>(a), bitcast<__m512d>(b), bitcast<__m512d>(c)));
#elif defined(__FMA__)
  vd r;
  for (int h = 0; h < 2; ++h) {
    __m256d x, y, z;
    std::memcpy(&x, reinterpret_cast<const char*>(&a) + 32 * h, 32);
    std::memcpy(&y, reinterpret_cast<const char*>(&b) + 32 * h, 32);
    std::memcpy(&z, reinterpret_cast<const char*>(&c) + 32 * h, 32);
    const __m256d o = _mm256_fmadd_pd(x, y, z);
    std::memcpy(reinterpret_cast<char*>(&r) + 32 * h, &o, 32);
  }
  return r;
#else
  vd r;
  for (int i = 0; i < 8; ++i) r[i] = std::fma(a[i], b[i], c[i]);
  return r;
#endif
}

template <class T> struct Ops {
  typedef typename Store<T>::A A;
  typedef typename VecOf<A>::type V;
  typedef typename VecOf<A>::mask M;
  static constexpr int L = VecOf<A>::lanes;

  static V load(const T* p) { return Store<T>::load(p); }
  // first n (< L) elements, the rest zero
  static V load_n(const T* p, std::int64_t n) { return Store<T>::load_n(p, n); }
  static void store(T* p, V v) { Store<T>::store(p, v); }
  static void store_n(T* p, V v, std::int64_t n) { Store<T>::store_n(p, v, n); }
  static V load_acc(const A* p) { V v; std::memcpy(&v, p, 64); return v; }
  static V load_acc_n(const A* p, std::int64_t n) { return Store<A>::load_n(p, n); }
  static void store_acc(A* p, V v) { std::memcpy(p, &v, 64); }
  static M lanes_below(std::int64_t n) {
    M idx;
    for (int i = 0; i < L; ++i) idx[i] = i;
    return idx < (typename std::remove_reference<decltype(idx[0])>::type)n;
  }
  static V select(M m, V a, V b) { return m ? a : b; }
  // fixed-order horizontal sum (pairwise halves)
  static double hsum(V v) {
    A t[L];
    std::memcpy(t, &v, 64);
    for (int w = L / 2; w >= 1; w /= 2)
      for (int i = 0; i < w; ++i) t[i] = t[i] + t[i + w];
    return (double)t[0];
  }

  // exp, sigmoid and silu from the same operations on every ISA
  static GN_INLINE vf exp_(vf x) {
    x = x > 88.0f ? vf{} + 88.0f : x;
    x = x < -87.0f ? vf{} - 87.0f : x;
    const vf magic = vf{} + 12582912.0f;  // 1.5 * 2^23: rounds to integer
    const vf t = x * 1.44269504088896341f + magic;
    const vf n = t - magic;
    const vf r = fma_(n, splat<vf>(-1.42860682030941723e-06f), fma_(n, splat<vf>(-0.693145751953125f), x));
    vf p = splat<vf>(1.0f / 5040.0f);
    p = fma_(p, r, splat<vf>(1.0f / 720.0f));
    p = fma_(p, r, splat<vf>(1.0f / 120.0f));
    p = fma_(p, r, splat<vf>(1.0f / 24.0f));
    p = fma_(p, r, splat<vf>(1.0f / 6.0f));
    p = fma_(p, r, splat<vf>(0.5f));
    p = fma_(p, r, splat<vf>(1.0f));
    p = fma_(p, r, splat<vf>(1.0f));
    const vi32 e = (bitcast<vi32>(t) - bitcast<vi32>(magic) + 127) << 23;
    return p * bitcast<vf>(e);
  }
  static GN_INLINE vd exp_(vd x) {
    x = x > 709.0 ? vd{} + 709.0 : x;
    x = x < -708.0 ? vd{} - 708.0 : x;
    const vd magic = vd{} + 6755399441055744.0;  // 1.5 * 2^52
    const vd t = x * 1.4426950408889634074 + magic;
    const vd n = t - magic;
    const vd r = fma_(n, splat<vd>(-1.90821492927058770002e-10), fma_(n, splat<vd>(-6.93147180369123816490e-01), x));
    vd p = splat<vd>(1.0 / 479001600.0);
    const double c[] = {1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                        1.0 / 720.0,      1.0 / 120.0,     1.0 / 24.0,     1.0 / 6.0,     0.5, 1.0, 1.0};
    for (double ci : c) p = fma_(p, r, splat<vd>(ci));
    const vi64 e = (bitcast<vi64>(t) - bitcast<vi64>(magic) + 1023) << 52;
    return p * bitcast<vd>(e);
  }
  static GN_INLINE V sigmoid(V z) { return 1 / (1 + exp_(-z)); }
  static GN_INLINE V silu(V z) { return z * sigmoid(z); }
  // d silu / dz
  static GN_INLINE V dsilu(V z) {
    const V s = sigmoid(z);
    return s * (1 + z * (1 - s));
  }
};
