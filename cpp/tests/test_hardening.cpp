// Hostile-caller cases of the C++ API: thread requests far beyond the machine,
// exact aliases of outputs with inputs (in-place residual add), misaligned
// parameter and statistics arrays, and data at the edges of each dtype's range.
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.hpp"

namespace gn = groupnorm;
using gt::Buf;
using gt::Rng;
using groupnorm::DType;

namespace {

const DType kDtypes[] = {DType::float32, DType::float64, DType::float16, DType::bfloat16};

gn::Problem make(std::int64_t N, std::int64_t C, std::int64_t G, std::int64_t S, bool cl, DType dt) {
  gn::Problem p;
  p.batch = N; p.channels = C; p.groups = G; p.spatial = S; p.channels_last = cl;
  p.dtype = dt; p.param_dtype = DType::float32;
  return p;
}

// ------------------------------------------------------------ 1. threads
void check_thread_cap() {
  const int cap = gn::max_threads();
  GT_CHECK(cap >= 4 && cap <= 65536, "max_threads %d", cap);
  const int def = gn::get_num_threads();
  GT_CHECK(def >= 1 && def <= cap, "default threads %d, cap %d", def, cap);
  gn::set_num_threads(INT_MAX);
  GT_CHECK(gn::get_num_threads() == cap, "set_num_threads(INT_MAX) -> %d (cap %d)", gn::get_num_threads(), cap);
  gn::set_num_threads(0);
  GT_CHECK(gn::get_num_threads() == def, "set_num_threads(0) restores %d: %d", def, gn::get_num_threads());
  gn::set_num_threads(-7);
  GT_CHECK(gn::get_num_threads() == def, "set_num_threads(-7) restores %d: %d", def, gn::get_num_threads());

  // a call asking for INT_MAX (or 65536) threads runs on at most the cap and
  // gives the bits of a one-thread call; the workspace it needs is finite
  Rng rng(11);
  for (bool cl : {false, true}) {
    const gn::Problem p = make(64, 32, 8, 64, cl, DType::float32);
    Buf x = gt::random_buf(DType::float32, p.numel(), rng, -1, 1);
    Buf dy = gt::random_buf(DType::float32, p.numel(), rng, -1, 1);
    Buf y1(DType::float32, p.numel()), m1(DType::float32, 64 * 8), r1(DType::float32, 64 * 8);
    gn::ForwardArgs a;
    a.x = x.data(); a.y = y1.data(); a.mean = m1.data(); a.rstd = r1.data();
    gn::Exec one;
    one.num_threads = 1;
    GT_CHECK(gn::forward(p, a, one).ok(), "1-thread forward");
    gn::BackwardArgs b;
    Buf dx1(DType::float32, p.numel());
    b.grad_y = dy.data(); b.x = x.data(); b.mean = m1.data(); b.rstd = r1.data(); b.grad_x = dx1.data();
    GT_CHECK(gn::backward(p, b, one).ok(), "1-thread backward");
    for (int req : {INT_MAX, 65536, 40000, cap + 1}) {
      Buf y(DType::float32, p.numel()), dx(DType::float32, p.numel());
      y.fill_bytes(0xff);
      dx.fill_bytes(0xff);
      gn::Exec e;
      e.num_threads = req;
      a.y = y.data(); a.mean = nullptr; a.rstd = nullptr;
      const gn::Result r = gn::forward(p, a, e);
      GT_CHECK(r.ok() && y.same_bits(y1), "forward with num_threads %d: %s", req, r.message.c_str());
      b.grad_x = dx.data();
      const gn::Result rb = gn::backward(p, b, e);
      GT_CHECK(rb.ok() && dx.same_bits(dx1), "backward with num_threads %d: %s", req, rb.message.c_str());
      const std::size_t ws = gn::forward_workspace_bytes(p, req), wb = gn::backward_workspace_bytes(p, req);
      GT_CHECK(ws > 0 && ws == gn::forward_workspace_bytes(p, cap) && wb == gn::backward_workspace_bytes(p, cap),
               "workspace for %d threads is that of the cap", req);
    }
    a.y = y1.data(); a.mean = m1.data(); a.rstd = r1.data();
    gn::set_num_threads(INT_MAX);
    Buf y(DType::float32, p.numel());
    a.y = y.data(); a.mean = nullptr; a.rstd = nullptr;
    GT_CHECK(gn::forward(p, a).ok() && y.same_bits(y1), "forward after set_num_threads(INT_MAX)");
    gn::set_num_threads(0);
  }
}

// ------------------------------------------------------------ 2. aliases
// Every allowed exact alias gives the bits of the call with separate buffers,
// on both layouts, without spatial dims (the channels-last kernels), with and
// without skip_bias and silu, one thread and several (mode A and B schedules).
void check_aliases() {
  struct Case { std::int64_t N, C, G, S; bool cl; };
  const Case cases[] = {{3, 32, 4, 1, false},  {2, 12, 4, 37, true},   {2, 12, 3, 50, false},
                        {1, 64, 8, 300, true}, {4, 4096, 32, 1, false}, {1, 16, 4, 40000, false},
                        {2, 512, 32, 200, true}};
  Rng rng(5);
  for (DType dt : kDtypes)
    for (const Case& c : cases)
      for (int variant = 0; variant < 4; ++variant) {
        gn::Problem p = make(c.N, c.C, c.G, c.S, c.cl, dt);
        p.activation = variant & 2 ? gn::Activation::silu : gn::Activation::none;
        const bool with_sb = variant & 1;
        const std::int64_t T = p.numel();
        Buf x = gt::random_buf(dt, T, rng, -2, 3), skip = gt::random_buf(dt, T, rng, -1, 1);
        Buf w = gt::random_buf(DType::float32, p.channels, rng, 0.5, 1.5);
        Buf bias = gt::random_buf(DType::float32, p.channels, rng, -0.5, 0.5);
        Buf sb = gt::random_buf(DType::float32, p.channels, rng, -0.3, 0.3);
        const DType st = gn::stats_dtype(dt);
        Buf y0(dt, T), so0(dt, T), m0(st, c.N * c.G), r0(st, c.N * c.G);
        gn::ForwardArgs a;
        a.x = x.data(); a.skip = skip.data(); a.weight = w.data(); a.bias = bias.data();
        a.skip_bias = with_sb ? sb.data() : nullptr;
        a.y = y0.data(); a.sum_out = so0.data(); a.mean = m0.data(); a.rstd = r0.data();
        gn::Exec one;
        one.num_threads = 1;
        GT_CHECK(gn::forward(p, a, one).ok(), "reference call");
        const gt::RefForward ref = gt::ref_forward(p, x, &w, &bias, &skip, with_sb ? &sb : nullptr);
        GT_CHECK(gt::max_rel_err(y0, ref.y) < gt::tol_for(dt) * 4, "separate buffers vs reference: %s",
                 gt::describe(p).c_str());
        // which buffer y and sum_out are: 0 own, 1 x, 2 skip
        const int combos[][2] = {{0, 1}, {0, 2}, {1, 2}, {2, 1}, {1, 0}, {2, 0}};
        for (int threads : {1, 3}) {
          gn::Exec e;
          e.num_threads = threads;
          for (const auto& cb : combos) {
            Buf xs = x, ks = skip, y(dt, T), so(dt, T);
            y.fill_bytes(0xff);
            so.fill_bytes(0xff);
            auto pick = [&](int k, Buf& own) -> void* { return k == 0 ? own.data() : k == 1 ? xs.data() : ks.data(); };
            gn::ForwardArgs b = a;
            b.x = xs.data(); b.skip = ks.data();
            b.y = pick(cb[0], y);
            b.sum_out = pick(cb[1], so);
            b.mean = nullptr; b.rstd = nullptr;
            const gn::Result r = gn::forward(p, b, e);
            const Buf& yg = cb[0] == 0 ? y : cb[0] == 1 ? xs : ks;
            const Buf& sg = cb[1] == 0 ? so : cb[1] == 1 ? xs : ks;
            GT_CHECK(r.ok() && yg.same_bits(y0) && sg.same_bits(so0), "y=%d sum_out=%d (0 own, 1 x, 2 skip) %d threads: %s %s",
                     cb[0], cb[1], threads, gt::describe(p).c_str(), r.message.c_str());
          }
        }
        // backward: grad_x in place of grad_y
        Buf dy = gt::random_buf(dt, T, rng, -1, 1), dx0(dt, T), gw0(DType::float32, c.C), gb0(DType::float32, c.C);
        gn::BackwardArgs ba;
        ba.grad_y = dy.data(); ba.x = so0.data(); ba.mean = m0.data(); ba.rstd = r0.data();
        ba.weight = w.data(); ba.bias = bias.data();
        ba.grad_x = dx0.data(); ba.grad_weight = gw0.data(); ba.grad_bias = gb0.data();
        GT_CHECK(gn::backward(p, ba, one).ok(), "reference backward");
        for (int threads : {1, 3}) {
          gn::Exec e;
          e.num_threads = threads;
          Buf g = dy, gw(DType::float32, c.C), gb(DType::float32, c.C);
          gn::BackwardArgs bb = ba;
          bb.grad_y = g.data(); bb.grad_x = g.data(); bb.grad_weight = gw.data(); bb.grad_bias = gb.data();
          const gn::Result r = gn::backward(p, bb, e);
          GT_CHECK(r.ok() && g.same_bits(dx0) && gw.same_bits(gw0) && gb.same_bits(gb0),
                   "backward grad_x = grad_y, %d threads: %s %s", threads, gt::describe(p).c_str(), r.message.c_str());
        }
      }
}

// ------------------------------------------------------------ 7. alignment
// weight, bias, skip_bias, mean, rstd, grad_weight and grad_bias at odd
// addresses: the same bits as aligned copies (UBSan checks the loads).
void check_misaligned() {
  Rng rng(17);
  for (DType dt : kDtypes)
    for (bool same_param : {false, true})
      for (bool cl : {false, true}) {
        gn::Problem p = make(3, 24, 6, 33, cl, dt);
        p.param_dtype = same_param ? dt : DType::float32;
        const DType pt = p.param_dtype, st = gn::stats_dtype(dt);
        const std::int64_t T = p.numel(), C = p.channels, NG = p.batch * p.groups;
        const std::size_t ps = gn::dtype_size(pt), ss = gn::dtype_size(st);
        Buf x = gt::random_buf(dt, T, rng, -2, 2), skip = gt::random_buf(dt, T, rng, -1, 1);
        Buf dy = gt::random_buf(dt, T, rng, -1, 1);
        Buf w = gt::random_buf(pt, C, rng, 0.5, 1.5), b = gt::random_buf(pt, C, rng, -1, 1);
        Buf sb = gt::random_buf(pt, C, rng, -1, 1);
        Buf y0(dt, T), m0(st, NG), r0(st, NG), dx0(dt, T), gw0(pt, C), gb0(pt, C);
        gn::ForwardArgs a;
        a.x = x.data(); a.skip = skip.data(); a.weight = w.data(); a.bias = b.data(); a.skip_bias = sb.data();
        a.y = y0.data(); a.mean = m0.data(); a.rstd = r0.data();
        GT_CHECK(gn::forward(p, a).ok(), "aligned forward");
        gn::BackwardArgs ba;
        ba.grad_y = dy.data(); ba.x = x.data(); ba.mean = m0.data(); ba.rstd = r0.data();
        ba.weight = w.data(); ba.bias = b.data(); ba.grad_x = dx0.data(); ba.grad_weight = gw0.data(); ba.grad_bias = gb0.data();
        GT_CHECK(gn::backward(p, ba).ok(), "aligned backward");
        // one byte past an aligned address: copies of each array
        std::vector<unsigned char> store(16 * (C * 8 + NG * 8 + 64) + 1024);
        unsigned char* cur = store.data() + 1;
        auto odd = [&](std::size_t bytes) { unsigned char* q = cur; cur += bytes + 17; return q; };
        unsigned char *wo = odd(C * ps), *bo = odd(C * ps), *so = odd(C * ps), *mo = odd(NG * ss), *ro = odd(NG * ss);
        unsigned char *gwo = odd(C * ps), *gbo = odd(C * ps), *mi = odd(NG * ss), *ri = odd(NG * ss);
        std::memcpy(wo, w.data(), C * ps);
        std::memcpy(bo, b.data(), C * ps);
        std::memcpy(so, sb.data(), C * ps);
        std::memcpy(mi, m0.data(), NG * ss);
        std::memcpy(ri, r0.data(), NG * ss);
        Buf y(dt, T);
        a.weight = wo; a.bias = bo; a.skip_bias = so; a.y = y.data(); a.mean = mo; a.rstd = ro;
        gn::Result r = gn::forward(p, a);
        GT_CHECK(r.ok() && y.same_bits(y0) && std::memcmp(mo, m0.data(), NG * ss) == 0 &&
                     std::memcmp(ro, r0.data(), NG * ss) == 0,
                 "misaligned forward: %s %s", gt::describe(p).c_str(), r.message.c_str());
        Buf dx(dt, T);
        ba.mean = mi; ba.rstd = ri; ba.weight = wo; ba.bias = bo; ba.grad_x = dx.data(); ba.grad_weight = gwo; ba.grad_bias = gbo;
        r = gn::backward(p, ba);
        GT_CHECK(r.ok() && dx.same_bits(dx0) && std::memcmp(gwo, gw0.data(), C * ps) == 0 &&
                     std::memcmp(gbo, gb0.data(), C * ps) == 0,
                 "misaligned backward: %s %s", gt::describe(p).c_str(), r.message.c_str());
      }
}

// ------------------------------------------------------------ 3. split-phase overlap
void check_split_phase_overlaps() {
  Rng rng(23);
  const gn::Problem p = make(2, 8, 4, 30, false, DType::float32);
  const std::int64_t T = p.numel(), NG = 8;
  Buf x = gt::random_buf(DType::float32, T, rng, -1, 1);
  std::vector<std::int64_t> count(NG);
  std::vector<double> mean(NG), m2(NG);
  gn::MomentsArgs ma;
  ma.x = x.data(); ma.count = count.data(); ma.mean = mean.data(); ma.m2 = m2.data();
  GT_CHECK(gn::moments(p, ma).ok(), "moments");
  // an output inside x, and two outputs sharing bytes
  std::vector<double> m2b = m2;
  gn::MomentsArgs bad = ma;
  bad.m2 = reinterpret_cast<double*>(static_cast<float*>(x.data()) + 4);
  Buf x0 = x;
  gn::Result r = gn::moments(p, bad);
  GT_CHECK(r.status == gn::Status::overlapping_buffers && x.same_bits(x0), "moments m2 inside x: %s", r.message.c_str());
  bad = ma;
  bad.m2 = mean.data() + 1;
  r = gn::moments(p, bad);
  GT_CHECK(r.status == gn::Status::overlapping_buffers && m2 == m2b, "moments m2 over mean: %s", r.message.c_str());
  // apply with given statistics: y over the given moments is refused; mean/rstd
  // written back over given mean/rstd is allowed and right
  Buf y(DType::float32, T), mo(DType::float32, NG), ro(DType::float32, NG);
  gn::ForwardArgs fa;
  fa.x = x.data(); fa.y = y.data(); fa.mean = mo.data(); fa.rstd = ro.data();
  GT_CHECK(gn::forward(p, fa).ok(), "forward");
  gn::GivenStats gs;
  gs.count = count.data(); gs.mean = mean.data(); gs.m2 = m2.data();
  gn::ForwardArgs fb = fa;
  fb.mean = nullptr; fb.rstd = nullptr;
  std::vector<float> room(T + 2 * NG);
  std::memcpy(room.data(), m2.data(), sizeof(double) * NG);
  gs.m2 = reinterpret_cast<const double*>(room.data());
  fb.y = room.data() + 2;  // y starts inside the given m2
  r = gn::forward(p, fb, gs);
  GT_CHECK(r.status == gn::Status::overlapping_buffers, "y inside given m2: %s", r.message.c_str());
  gs.m2 = m2.data();
  Buf y1(DType::float32, T), m1(DType::float32, NG), r1(DType::float32, NG);
  gn::GivenStats gv;
  gv.stats_mean = mo.data(); gv.stats_rstd = ro.data();
  gn::ForwardArgs fc = fa;
  fc.y = y1.data(); fc.mean = m1.data(); fc.rstd = r1.data();
  GT_CHECK(gn::forward(p, fc, gv).ok(), "given stats, separate outputs");
  Buf y2(DType::float32, T), ms = mo, rs = ro;
  gv.stats_mean = ms.data(); gv.stats_rstd = rs.data();
  fc.y = y2.data(); fc.mean = ms.data(); fc.rstd = rs.data();
  r = gn::forward(p, fc, gv);
  GT_CHECK(r.ok() && y2.same_bits(y1) && ms.same_bits(m1) && rs.same_bits(r1), "stats written back in place: %s",
           r.message.c_str());
}

}  // namespace

int main() {
  check_thread_cap();
  check_aliases();
  check_misaligned();
  check_split_phase_overlaps();
  gt::check_schedule_override();
  return gt::finish("test_hardening");
}
