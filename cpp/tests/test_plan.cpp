// The CPU plan (cpp/src/cpu/plan.hpp) without data: tile geometry is a
// function of the shape only (never of threads or cache), tiles cover every
// element of every group exactly once and in order, and plans of tensors over
// 2^31 elements have exact int64 offsets.
#include <cstdint>
#include <string>
#include <vector>

#include "plan.hpp"
#include "test_util.hpp"

namespace gn = groupnorm;
namespace gd = groupnorm::detail;

namespace {

std::int64_t budget_4k(int) { return 4 << 10; }
std::int64_t budget_1m(int) { return 1 << 20; }
std::int64_t budget_64m(int t) { return (std::int64_t)(64 << 20) / t; }
std::int64_t (*const kBudgets[])(int) = {&budget_4k, &budget_1m, &budget_64m};

gn::Problem problem(std::int64_t N, std::int64_t C, std::int64_t G, std::int64_t S, bool cl, gn::DType dt) {
  gn::Problem p;
  p.batch = N; p.channels = C; p.groups = G; p.spatial = S; p.channels_last = cl; p.dtype = dt;
  return p;
}

std::string name(const gn::Problem& p) {
  return std::to_string(p.batch) + "x" + std::to_string(p.channels) + "x" + std::to_string(p.spatial) + " G" +
         std::to_string(p.groups) + (p.channels_last ? " cl" : " cf");
}

// The geometry that decides summation order: must not depend on threads or cache.
std::vector<std::int64_t> geometry(const gd::Plan& pl) {
  return {pl.pieces, pl.piece_len, pl.channels_per_tile, pl.rows_per_tile, pl.row_tiles, pl.tile_groups,
          pl.tiles_across, pl.channels_last ? pl.row_tiles * pl.tiles_across : pl.tiles_per_group};
}

// Every tile of group ng, in merge order, as (offset, rows, cols, stride).
std::vector<gd::TileRef> group_tiles(const gd::Plan& pl, std::int64_t ng) {
  const std::int64_t n = ng / pl.G, g = ng % pl.G;
  const std::int64_t set = n * pl.sets_per_sample + g / pl.groups_per_set;
  std::vector<gd::TileRef> out;
  for (std::int64_t t = 0; t < pl.tiles_per_set; ++t) {
    const gd::TileRef r = gd::tile_of(pl, set, t);
    // the tile's groups: cf one, cl groups_per_tile starting at group0
    if (ng >= r.group0 && ng < r.group0 + pl.groups_per_tile) out.push_back(r);
  }
  return out;
}

void check_plan_basics(const gn::Problem& p, const gd::Plan& pl, int threads) {
  const std::string w = name(p) + " threads " + std::to_string(threads);
  GT_CHECK(pl.threads >= 1 && pl.threads <= std::max(1, threads), "%s: plan threads %d", w.c_str(), pl.threads);
  GT_CHECK(pl.G % pl.groups_per_set == 0 && pl.sets_per_sample * pl.groups_per_set == pl.G, "%s: groups per set %lld",
           w.c_str(), (long long)pl.groups_per_set);
  GT_CHECK(pl.num_sets == pl.N * pl.sets_per_sample, "%s: sets", w.c_str());
  GT_CHECK(pl.whole_sets || (pl.sets_per_step >= 1 && pl.tiles_per_round >= 1 &&
                         pl.tiles_per_round <= pl.sets_per_step * pl.tiles_per_set),
           "%s: shared steps: step %lld round %lld", w.c_str(), (long long)pl.sets_per_step, (long long)pl.tiles_per_round);
}

// Small enough to walk every element: each covered exactly once by the moments
// tiles of its group, and by the apply walk (apply_rows for channels-last).
void check_coverage(const gn::Problem& p) {
  const gd::Plan pl = gd::make_plan(p, 3, 1, &budget_4k, 1 << 30);
  check_plan_basics(p, pl, 3);
  const std::int64_t total = p.numel();
  std::vector<unsigned char> seen(total, 0);
  std::int64_t outside = 0;
  for (std::int64_t ng = 0; ng < pl.N * pl.G; ++ng) {
    std::int64_t elems = 0, last_offset = -1;
    for (const gd::TileRef& r : group_tiles(pl, ng)) {
      // merge order is tile order, which walks a group front to back
      GT_CHECK(r.offset > last_offset, "%s: group %lld tiles out of order", name(p).c_str(), (long long)ng);
      last_offset = r.offset;
      const std::int64_t gcols = pl.channels_last ? pl.group_channels : r.cols;  // cl: this group's columns of the tile
      const std::int64_t col0 = pl.channels_last ? (ng - r.group0) * pl.group_channels : 0;
      for (std::int64_t i = 0; i < r.rows; ++i)
        for (std::int64_t j = 0; j < gcols; ++j) {
          const std::int64_t e = r.offset + i * r.stride + col0 + j;
          if (e >= 0 && e < total) ++seen[e];
          else ++outside;
        }
      elems += r.rows * gcols;
    }
    GT_CHECK(elems == pl.group_channels * pl.S, "%s: group %lld covers %lld of %lld", name(p).c_str(), (long long)ng,
             (long long)elems, (long long)(pl.group_channels * pl.S));
  }
  GT_CHECK(outside == 0, "%s: %lld tile elements outside the tensor", name(p).c_str(), (long long)outside);
  std::int64_t bad = 0;
  for (unsigned char c : seen) bad += c != 1;
  GT_CHECK(bad == 0, "%s: %lld elements not covered exactly once by moments tiles", name(p).c_str(), (long long)bad);
  if (pl.channels_last) {  // apply walks whole rows of the set
    std::fill(seen.begin(), seen.end(), 0);
    for (std::int64_t set = 0; set < pl.num_sets; ++set)
      for (std::int64_t rc = 0; rc < pl.row_tiles; ++rc) {
        const gd::TileRef r = gd::apply_rows(pl, set, rc);
        for (std::int64_t i = 0; i < r.rows; ++i)
          for (std::int64_t j = 0; j < r.cols; ++j) ++seen[r.offset + i * r.stride + j];
      }
    bad = 0;
    for (unsigned char c : seen) bad += c != 1;
    GT_CHECK(bad == 0, "%s: %lld elements not covered once by apply rows", name(p).c_str(), (long long)bad);
  }
}

// Too big to walk: geometry independent of threads/cache, the first and last
// tiles of the last group exactly where they must be, offsets past 2^31 exact.
void check_huge(const gn::Problem& p) {
  std::vector<std::int64_t> geo;
  for (int threads : {1, 2, 8, 64, 256})
    for (auto budget : kBudgets)
      for (int streams : {1, 2}) {
        const gd::Plan pl = gd::make_plan(p, threads, streams, budget, 16 << 20);
        check_plan_basics(p, pl, threads);
        if (geo.empty()) geo = geometry(pl);
        GT_CHECK(geometry(pl) == geo, "%s: tile geometry changed with threads %d / cache", name(p).c_str(), threads);
        const std::int64_t ng = pl.N * pl.G - 1;  // the last group
        const std::vector<gd::TileRef> ts = group_tiles(pl, ng);
        std::int64_t elems = 0;
        for (const gd::TileRef& r : ts) elems += r.rows * (pl.channels_last ? pl.group_channels : r.cols);
        GT_CHECK(elems == pl.group_channels * pl.S, "%s: last group covers %lld of %lld", name(p).c_str(), (long long)elems,
                 (long long)(pl.group_channels * pl.S));
        const gd::TileRef& last = ts.back();
        const std::int64_t gcol0 = pl.channels_last ? (ng - last.group0) * pl.group_channels : 0;
        const std::int64_t end =
            last.offset + (last.rows - 1) * last.stride + gcol0 + (pl.channels_last ? pl.group_channels : last.cols);
        GT_CHECK(end == p.numel(), "%s: last element %lld, tensor %lld", name(p).c_str(), (long long)end,
                 (long long)p.numel());
        const gd::TileRef& first = ts.front();
        const std::int64_t start = pl.channels_last ? (pl.N - 1) * pl.S * pl.C + (pl.G - 1) * pl.group_channels
                                         : ((pl.N - 1) * pl.C + (pl.G - 1) * pl.group_channels) * pl.S;
        GT_CHECK(first.offset + gcol0 == start, "%s: last group starts at %lld, not %lld", name(p).c_str(),
                 (long long)(first.offset + gcol0), (long long)start);
      }
}

}  // namespace

int main() {
  for (bool cl : {false, true}) {
    for (auto s : {std::vector<std::int64_t>{2, 12, 3, 301}, {3, 64, 8, 17000}, {1, 8, 1, 70001}, {2, 4096, 32, 5},
                   {4, 32, 4, 1}, {1, 3000, 1000, 40}, {2, 6, 2, 0}})
      check_coverage(problem(s[0], s[1], s[2], s[3], cl, gn::DType::float32));
    // over 2^31 elements (and 2^32 bytes): a 1x512x(2048x2048) and a 16x320x(1024x1024) tensor, a 3D volume
    check_huge(problem(1, 512, 32, 2048LL * 2048, cl, gn::DType::float32));
    check_huge(problem(16, 320, 32, 1024LL * 1024, cl, gn::DType::bfloat16));
    check_huge(problem(2, 64, 8, 512LL * 512 * 512, cl, gn::DType::float64));
    check_huge(problem(1, 2, 1, (1LL << 31) + 7, cl, gn::DType::float16));
  }
  return gt::finish("test_plan");
}
