// groupnorm from C++: normalize a (N, C, H*W) float tensor and check the result.
#include <groupnorm/groupnorm.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  groupnorm::Problem p;                      // 2 images, 6 channels in 3 groups, 4x5 pixels
  p.batch = 2; p.channels = 6; p.groups = 3; p.spatial = 4 * 5;
  std::vector<float> x(2 * 6 * 20), y(x.size()), weight(6), bias(6), mean(2 * 3), rstd(2 * 3);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i) * 3.0f + (i % 11) * 0.1f;
  for (int c = 0; c < 6; ++c) { weight[c] = 1.0f + 0.25f * c; bias[c] = 0.1f * c - 0.2f; }

  groupnorm::Result r = groupnorm::forward(p, x.data(), weight.data(), bias.data(), y.data(), mean.data(), rstd.data());
  if (!r) { std::fprintf(stderr, "groupnorm::forward: %s\n", r.message.c_str()); return 1; }

  // Check against a direct double-precision computation.
  double worst = 0;
  for (int n = 0; n < 2; ++n)
    for (int g = 0; g < 3; ++g) {
      const float* xg = &x[(n * 6 + g * 2) * 20];   // the group's 2 channels x 20 pixels
      double m = 0, v = 0;
      for (int i = 0; i < 40; ++i) m += xg[i] / 40.0;
      for (int i = 0; i < 40; ++i) v += (xg[i] - m) * (xg[i] - m) / 40.0;
      const double rs = 1.0 / std::sqrt(v + p.eps);
      worst = std::fmax(worst, std::fabs(mean[n * 3 + g] - m) + std::fabs(rstd[n * 3 + g] - rs) / rs);
      for (int i = 0; i < 40; ++i) {
        const int c = g * 2 + i / 20;
        const double want = (xg[i] - m) * rs * weight[c] + bias[c];
        worst = std::fmax(worst, std::fabs(y[(n * 6 + g * 2) * 20 + i] - want));
      }
    }
  std::printf("groupnorm %s (%s): y[0..3] = %.5f %.5f %.5f %.5f, max error %.2e\n", GROUPNORM_EXAMPLE_VERSION,
              groupnorm::active_isa(), y[0], y[1], y[2], y[3], worst);
  if (!(worst < 1e-4)) { std::fprintf(stderr, "mismatch: error %g\n", worst); return 1; }
  return 0;
}
