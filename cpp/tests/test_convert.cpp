// The 16-bit conversions of every target this build compiled and this CPU
// runs, over every input: all 2^32 float bit patterns to bfloat16 and to
// float16, all 2^16 patterns back to float. Every target must give the same
// bits as the reference here (round to nearest even, denormals kept, NaNs
// quiet with their top payload bits), whatever instructions it uses: the
// avx512bf16 target's VCVTNEPS2BF16 takes denormal inputs as zero, F16C and
// AVX-512 convert float16 in hardware, the portable target in integer code.
//   test_convert [step]   step > 1 checks every step-th block only (quick runs)
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "groupnorm/groupnorm.hpp"
#include "test_util.hpp"

namespace gn = groupnorm;

struct Convert {
  const char* name;
  void (*to_bf16)(const std::uint32_t*, std::uint16_t*, std::size_t);
  void (*to_half)(const std::uint32_t*, std::uint16_t*, std::size_t);
  void (*from_bf16)(const std::uint16_t*, std::uint32_t*, std::size_t);
  void (*from_half)(const std::uint16_t*, std::uint32_t*, std::size_t);
};

#define GN_TARGET(name)                                                                                 \
  namespace groupnorm { namespace detail { namespace isa_##name {                                      \
  void test_float_to_bf16(const std::uint32_t*, std::uint16_t*, std::size_t);                          \
  void test_float_to_half(const std::uint32_t*, std::uint16_t*, std::size_t);                          \
  void test_bf16_to_float(const std::uint16_t*, std::uint32_t*, std::size_t);                          \
  void test_half_to_float(const std::uint16_t*, std::uint32_t*, std::size_t);                          \
  } } }
#include "targets.inc"
#undef GN_TARGET

static const Convert kTargets[] = {
#define GN_TARGET(name)                                                                                     \
  {#name, &gn::detail::isa_##name::test_float_to_bf16, &gn::detail::isa_##name::test_float_to_half,     \
   &gn::detail::isa_##name::test_bf16_to_float, &gn::detail::isa_##name::test_half_to_float},
#include "targets.inc"
#undef GN_TARGET
};

// float bits -> bfloat16 bits: the upper half rounded to nearest even as an
// integer (exact for zeros, denormals, normals and infinities: the carry runs
// into the exponent); NaN: the upper half with the quiet bit set.
static inline std::uint16_t ref_bf16(std::uint32_t u) {
  const std::uint32_t lower = u & 0xffffu, upper = u >> 16;
  const std::uint32_t up = (lower > 0x8000u) | ((lower == 0x8000u) & upper);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  return (std::uint16_t)(nan ? upper | 0x40u : upper + (up & 1u));
}

// float16 bits -> float bits, from the value (no bit tricks): NaN quiet,
// payload shifted up
static std::uint32_t ref_from_half(std::uint16_t h) {
  const std::uint32_t sign = (std::uint32_t)(h >> 15) << 31;
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  if (e == 0x1f) return sign | 0x7f800000u | (m ? 0x400000u | ((std::uint32_t)m << 13) : 0u);
  const double v = e == 0 ? std::ldexp((double)m, -24) : std::ldexp(1024.0 + m, e - 25);
  float f = (float)v;  // exact
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return sign | u;
}

// float bits -> float16 bits, from the value: the nearest of the float16
// values (ties to the even significand), inf past the largest finite value's
// rounding range; NaN quiet with the top 10 payload bits.
static std::uint16_t ref_half(std::uint32_t u) {
  const std::uint16_t sign = (std::uint16_t)((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | (std::uint16_t)((a >> 13) & 0x3ffu);
  float f;
  std::memcpy(&f, &a, 4);
  const double v = f;
  if (v >= 65520.0) return sign | 0x7c00u;  // 65504 + half its ulp: rounds to inf
  // the float16 quantum at v: 2^-24 below 2^-14, else 2^(e-10)
  int e;
  std::frexp(v, &e);  // v = m 2^e, 0.5 <= m < 1
  const double q = v < 0x1p-14 ? 0x1p-24 : std::ldexp(1.0, e - 11);
  const double k = std::nearbyint(v / q);  // the default rounding mode: ties to even
  const double r = k * q;
  // encode r (a float16 value: exact)
  if (r < 0x1p-14) return sign | (std::uint16_t)(r / 0x1p-24);
  int re;
  const double rm = std::frexp(r, &re);  // r = rm 2^re
  return sign | (std::uint16_t)((re + 14) << 10) | (std::uint16_t)((rm * 2048.0) - 1024.0);
}

int main(int argc, char** argv) {
  const long step = argc > 1 ? std::atol(argv[1]) : 1;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string avail = std::string(",") + gn::available_isas() + ",";
  std::vector<const Convert*> run;
  for (const Convert& c : kTargets)
    if (avail.find(std::string(",") + c.name + ",") != std::string::npos) run.push_back(&c);
  std::printf("targets:");
  for (const Convert* c : run) std::printf(" %s", c->name);
  std::printf(" (of %d compiled)\n", (int)(sizeof(kTargets) / sizeof(kTargets[0])));

  // the reference's own anchors: values whose rounding is known by hand
  GT_CHECK(ref_half(0x3f800000u) == 0x3c00, "1.0");
  GT_CHECK(ref_half(0x477fe000u) == 0x7bff, "65504");
  GT_CHECK(ref_half(0x477fefffu) == 0x7bff && ref_half(0x477ff000u) == 0x7c00, "65520 rounds to inf");
  GT_CHECK(ref_half(0x33000000u) == 0x0000 && ref_half(0x33000001u) == 0x0001, "2^-25: tie to 0, above: 2^-24");
  GT_CHECK(ref_half(0x3f801000u) == 0x3c00 && ref_half(0x3f803000u) == 0x3c02, "ties to even");
  GT_CHECK(ref_half(0x387fc000u) == 0x03ff && ref_half(0x387fdfffu) == 0x03ff && ref_half(0x387fe000u) == 0x0400,
           "largest subnormal; the tie with the smallest normal goes to it (even)");
  GT_CHECK(ref_bf16(0x3f808000u) == 0x3f80 && ref_bf16(0x3f818000u) == 0x3f82, "bf16 ties to even");
  GT_CHECK(ref_bf16(0x00008001u) == 0x0001 && ref_bf16(0x807fffffu) == 0x8080, "bf16 denormals round, to normal too");
  GT_CHECK(ref_bf16(0x7f7fffffu) == 0x7f80 && ref_bf16(0x7f800001u) == 0x7fc0, "bf16 overflow to inf; NaN quiet");
  GT_CHECK(ref_from_half(0x0001) == 0x33800000u && ref_from_half(0x7c01) == 0x7fc02000u, "half -> float");

  // 16 -> 32 bits: all 2^16 inputs
  {
    std::vector<std::uint16_t> in(65536);
    std::vector<std::uint32_t> out(65536);
    for (std::uint32_t i = 0; i < 65536; ++i) in[i] = (std::uint16_t)i;
    for (const Convert* c : run) {
      c->from_bf16(in.data(), out.data(), in.size());
      int bad = 0;
      for (std::uint32_t i = 0; i < 65536; ++i) bad += out[i] != i << 16;
      GT_CHECK(bad == 0, "%s: bfloat16 -> float differs on %d inputs", c->name, bad);
      c->from_half(in.data(), out.data(), in.size());
      bad = 0;
      for (std::uint32_t i = 0; i < 65536; ++i)
        if (out[i] != ref_from_half((std::uint16_t)i) && bad++ < 4)
          std::fprintf(stderr, "%s: half %04x -> %08x, expected %08x\n", c->name, i, out[i], ref_from_half((std::uint16_t)i));
      GT_CHECK(bad == 0, "%s: float16 -> float differs on %d inputs", c->name, bad);
    }
  }

  // 32 -> 16 bits: all 2^32 inputs, in blocks (the reference of a block once,
  // every target against it)
  const std::size_t B = 1 << 16;
  std::vector<std::uint32_t> in(B);
  std::vector<std::uint16_t> rb(B), rh(B), out(B), first(B);
  std::vector<long> bad_bf16(run.size()), bad_half(run.size());
  long blocks = 0;
  for (std::uint64_t b0 = 0; b0 < (1ull << 32); b0 += B * step) {
    ++blocks;
    for (std::size_t i = 0; i < B; ++i) {
      in[i] = (std::uint32_t)(b0 + i);
      rb[i] = ref_bf16(in[i]);
    }
    // the float16 reference is slow (double arithmetic): every input of the
    // blocks where float16's rounding changes form (2^-25, the tie with zero;
    // 2^-15, subnormal to normal; 2^15, overflow to inf), every 61st elsewhere;
    // all inputs must give the first target's bits (on x86 it converts in hardware)
    const std::uint32_t ea = (std::uint32_t)(b0 >> 23) & 0xff;  // the block's exponent (one per block)
    const bool dense = ea == 0x66 || ea == 0x67 || ea == 0x70 || ea == 0x8e || ea == 0xff;
    const std::size_t stride = dense ? 1 : 61;
    for (std::size_t i = 0; i < B; i += stride) rh[i] = ref_half(in[i]);
    for (std::size_t t = 0; t < run.size(); ++t) {
      run[t]->to_bf16(in.data(), out.data(), B);
      if (std::memcmp(out.data(), rb.data(), 2 * B) != 0)
        for (std::size_t i = 0; i < B; ++i)
          if (out[i] != rb[i] && bad_bf16[t]++ < 4)
            std::fprintf(stderr, "%s: float %08x -> bfloat16 %04x, expected %04x\n", run[t]->name, in[i], out[i], rb[i]);
      run[t]->to_half(in.data(), t == 0 ? first.data() : out.data(), B);
      const std::uint16_t* o = t == 0 ? first.data() : out.data();
      for (std::size_t i = 0; i < B; i += stride)
        if (o[i] != rh[i] && bad_half[t]++ < 4)
          std::fprintf(stderr, "%s: float %08x -> float16 %04x, expected %04x\n", run[t]->name, in[i], o[i], rh[i]);
      if (t > 0 && std::memcmp(out.data(), first.data(), 2 * B) != 0)
        for (std::size_t i = 0; i < B; ++i)
          if (out[i] != first[i] && bad_half[t]++ < 4)
            std::fprintf(stderr, "%s: float %08x -> float16 %04x, %s: %04x\n", run[t]->name, in[i], out[i],
                         run[0]->name, first[i]);
    }
  }
  for (std::size_t t = 0; t < run.size(); ++t) {
    GT_CHECK(bad_bf16[t] == 0, "%s: float -> bfloat16 differs on %ld inputs", run[t]->name, bad_bf16[t]);
    GT_CHECK(bad_half[t] == 0, "%s: float -> float16 differs on %ld inputs", run[t]->name, bad_half[t]);
  }
  std::printf("%ld blocks of %zu inputs, %.1f s\n", blocks, B,
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return gt::finish("test_convert");
}
