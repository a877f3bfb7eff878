// "No allocation the caller did not ask for": with a caller workspace of
// *_workspace_bytes(), a successful C API call makes no C++ heap allocation
// (every operator new is counted here). The first call of a process may set up
// the thread pool and the ISA choice, so each case runs once before it counts.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "groupnorm/groupnorm.h"
#include "run_util.hpp"

namespace {
std::atomic<long> g_news{0};
}

void* operator new(std::size_t n) {
  g_news++;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  g_news++;
  return std::malloc(n ? n : 1);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return operator new(n, std::nothrow); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }

namespace {

void serial_engine(void*, std::int64_t n, groupnorm_task_fn task, void* task_ctx) {
  for (std::int64_t i = 0; i < n; ++i) task(task_ctx, i);
}

void check(const groupnorm_problem& p, int threads, bool engine, const char* label) {
  const std::int64_t total = p.batch * p.channels * p.spatial;
  std::vector<float> x(total), y(total), dx(total), mean(p.batch * p.groups), rstd(p.batch * p.groups);
  std::vector<float> w(p.channels, 1.5f), b(p.channels, 0.25f), dw(p.channels), db(p.channels);
  for (std::int64_t i = 0; i < total; ++i) x[i] = (float)((i * 7919) % 1000) / 300.0f;
  std::vector<char> fws(groupnorm_forward_workspace_bytes(&p, threads));
  std::vector<char> bws(groupnorm_backward_workspace_bytes(&p, threads));
  groupnorm_exec fe = {};
  fe.num_threads = threads;
  if (engine) fe.parallel_for = &serial_engine;
  groupnorm_exec be = fe;
  fe.workspace = fws.data();
  fe.workspace_bytes = fws.size();
  be.workspace = bws.data();
  be.workspace_bytes = bws.size();
  groupnorm_forward_args fa = {};
  fa.x = x.data(); fa.weight = w.data(); fa.bias = b.data(); fa.y = y.data(); fa.mean = mean.data(); fa.rstd = rstd.data();
  groupnorm_backward_args ba = {};
  ba.grad_y = x.data(); ba.x = x.data(); ba.mean = mean.data(); ba.rstd = rstd.data(); ba.weight = w.data();
  ba.bias = b.data(); ba.grad_x = dx.data(); ba.grad_weight = dw.data(); ba.grad_bias = db.data();
  for (int round = 0; round < 2; ++round) {
    const long before = g_news.load();
    const groupnorm_status sf = groupnorm_forward(&p, &fa, &fe);
    const long mid = g_news.load();
    const groupnorm_status sb = groupnorm_backward(&p, &ba, &be);
    const long after = g_news.load();
    GT_CHECK(sf == GROUPNORM_OK && sb == GROUPNORM_OK, "%s: %s / %s", label, groupnorm_status_string(sf),
             groupnorm_status_string(sb));
    if (round == 1) {
      GT_CHECK(mid == before, "%s: forward with a workspace made %ld allocations", label, mid - before);
      GT_CHECK(after == mid, "%s: backward with a workspace made %ld allocations", label, after - mid);
    }
  }
}

}  // namespace

int main() {
  groupnorm_problem small = groupnorm_problem_default();
  small.batch = 2; small.channels = 8; small.groups = 4; small.spatial = 9;
  groupnorm_problem big = small;
  big.batch = 4; big.channels = 64; big.groups = 16; big.spatial = 2048;
  groupnorm_problem big_cl = big;
  big_cl.channels_last = 1;
  groupnorm_problem huge_group = small;  // groups split over tiles
  huge_group.batch = 1; huge_group.channels = 4; huge_group.groups = 1; huge_group.spatial = 1 << 17;
  check(small, 1, false, "small, 1 thread");
  check(big, 1, false, "big, 1 thread");
  check(big, 2, false, "big, 2 threads");
  check(big, 4, false, "big, 4 threads");
  check(big_cl, 3, false, "big channels-last, 3 threads");
  check(huge_group, 3, false, "one huge group, 3 threads");
  check(big, 4, true, "big, 4 tasks on an engine");
  return gt::finish("test_no_alloc");
}
