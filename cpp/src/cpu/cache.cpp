// The cache sizes the plan is made for, read once per process from sources
// that tell the truth on virtual machines, or GROUPNORM_CACHE_BYTES.
//
// glibc's sysconf(_SC_LEVEL3_CACHE_SIZE) is not one of them: on the AMD and
// Intel VMs this project runs on it reports 10-12x the L3 that CPUID and the
// kernel report (384 MB for a 32 MB L3), and a budget made from it treats
// every mid-sized tensor as cache-resident. The order of trust: CPUID's
// deterministic cache parameters (leaf 4 on Intel, 0x8000001D on AMD), then
// the kernel's /sys/devices/system/cpu/cpu0/cache (itself made from CPUID on
// x86, from the device tree or ACPI PPTT on Arm), then sysconf, then a
// default. Where two sources both answer and disagree, the smaller size is
// used (a budget too small costs a little speed; one too large, a lot).
#include "cache.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace groupnorm {
namespace detail {
namespace {

struct Sizes {
  std::int64_t l1d = 0, l2 = 0, l3 = 0;
};

#if defined(__x86_64__) || defined(__i386__)
// Data/unified caches by level from CPUID's deterministic cache parameters.
Sizes from_cpuid() {
  Sizes s;
  unsigned a, b, c, d;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return s;
  const bool amd = b == 0x68747541 || b == 0x6f677948;  // "Auth"enticAMD, "Hygo"nGenuine
  unsigned leaf = 4;
  if (amd) {
    unsigned ext = __get_cpuid_max(0x80000000u, nullptr);
    if (ext < 0x8000001Du) return s;
    __cpuid(0x80000001u, a, b, c, d);
    if (!(c & (1u << 22))) return s;  // TopologyExtensions: leaf 0x8000001D valid
    leaf = 0x8000001Du;
  } else if (a < 4) {
    return s;
  }
  for (unsigned i = 0; i < 16; ++i) {
    __cpuid_count(leaf, i, a, b, c, d);
    const unsigned type = a & 0x1f;  // 0: no more caches, 1: data, 2: instruction, 3: unified
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (a >> 5) & 0x7;
    const std::int64_t ways = ((b >> 22) & 0x3ff) + 1, partitions = ((b >> 12) & 0x3ff) + 1;
    const std::int64_t line = (b & 0xfff) + 1, sets = (std::int64_t)c + 1;
    const std::int64_t bytes = ways * partitions * line * sets;
    if (level == 1) s.l1d = bytes;
    else if (level == 2) s.l2 = bytes;
    else if (level == 3) s.l3 = bytes;
  }
  return s;
}
#else
Sizes from_cpuid() { return {}; }
#endif

// "48K", "1024K", "32M" from sysfs
std::int64_t parse_size(const char* text) {
  char* end = nullptr;
  const long long v = std::strtoll(text, &end, 10);
  if (v <= 0 || end == text) return 0;
  if (*end == 'K' || *end == 'k') return (std::int64_t)v << 10;
  if (*end == 'M' || *end == 'm') return (std::int64_t)v << 20;
  if (*end == 'G' || *end == 'g') return (std::int64_t)v << 30;
  return (std::int64_t)v;
}

std::string read_line(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return std::string();
  char buf[128] = {0};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  return ok ? std::string(buf) : std::string();
}

Sizes from_sysfs() {
  Sizes s;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = read_line(dir + "level");
    if (level.empty()) break;
    const std::string type = read_line(dir + "type");
    if (type.rfind("Instruction", 0) == 0) continue;
    const std::int64_t bytes = parse_size(read_line(dir + "size").c_str());
    const int lv = std::atoi(level.c_str());
    if (lv == 1) s.l1d = bytes;
    else if (lv == 2) s.l2 = bytes;
    else if (lv == 3) s.l3 = bytes;
  }
  return s;
}

Sizes from_sysconf() {
  Sizes s;
#ifdef _SC_LEVEL1_DCACHE_SIZE
  s.l1d = std::max<long>(0, sysconf(_SC_LEVEL1_DCACHE_SIZE));
#endif
#ifdef _SC_LEVEL2_CACHE_SIZE
  s.l2 = std::max<long>(0, sysconf(_SC_LEVEL2_CACHE_SIZE));
#endif
#ifdef _SC_LEVEL3_CACHE_SIZE
  s.l3 = std::max<long>(0, sysconf(_SC_LEVEL3_CACHE_SIZE));
#endif
  return s;
}

// the first source that knows a level; the smaller where the first two that know it disagree
std::int64_t pick(std::int64_t Sizes::*level, const Sizes* sources, int n, const char** source_name,
                  const char* const* names) {
  std::int64_t found = 0;
  for (int i = 0; i < n; ++i) {
    const std::int64_t v = sources[i].*level;
    if (v <= 0) continue;
    if (found == 0) {
      found = v;
      *source_name = names[i];
    } else {
      if (v < found) { found = v; *source_name = names[i]; }
      break;
    }
  }
  return found;
}

CacheSizes detect() {
  CacheSizes info;
  // sysconf only where neither CPUID nor sysfs answered (it is the source that errs)
  const Sizes cpuid = from_cpuid(), sysfs = from_sysfs();
  const Sizes primary[] = {cpuid, sysfs};
  const char* names[] = {"cpuid", "sysfs"};
  info.l1d = pick(&Sizes::l1d, primary, 2, &info.l1d_source, names);
  info.l2 = pick(&Sizes::l2, primary, 2, &info.l2_source, names);
  info.l3 = pick(&Sizes::l3, primary, 2, &info.l3_source, names);
  if (info.l2 <= 0 || (info.l3 <= 0 && cpuid.l2 <= 0 && sysfs.l2 <= 0)) {
    const Sizes sc = from_sysconf();
    if (info.l1d <= 0 && sc.l1d > 0) { info.l1d = sc.l1d; info.l1d_source = "sysconf"; }
    if (info.l2 <= 0 && sc.l2 > 0) { info.l2 = sc.l2; info.l2_source = "sysconf"; }
    if (info.l3 <= 0 && sc.l3 > 0) { info.l3 = sc.l3; info.l3_source = "sysconf"; }
  }
  if (info.l2 <= 0) { info.l2 = (std::int64_t)1 << 20; info.l2_source = "default"; }
  const char* s = std::getenv("GROUPNORM_CACHE_BYTES");
  info.forced_budget = s ? std::atoll(s) : 0;
  return info;
}

}  // namespace

const CacheSizes& cache_info() {
  static const CacheSizes info = detect();
  return info;
}

std::int64_t private_cache_bytes() { return cache_info().l2; }

std::int64_t cache_budget(int threads) {
  const CacheSizes& c = cache_info();
  if (c.forced_budget > 0) return c.forced_budget;
  const int t = threads > 0 ? threads : 1;
  // most of the private L2, plus a fair share of half the shared L3
  return c.l2 * 3 / 4 + c.l3 / 2 / t;
}

}  // namespace detail

CacheSizes cache_sizes() { return detail::cache_info(); }
std::int64_t cache_budget(int num_threads) { return detail::cache_budget(num_threads); }

}  // namespace groupnorm
