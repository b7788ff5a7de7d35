// The selection kernels shared by the threshold paths (engine/kernels/
// select_kernels.cc), on every instruction set this machine runs, against
// the standard library.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

// kth_largest agrees with std::nth_element for every k, over values spread
// across signs and exponents, with ties (±0 among them), -inf and the
// largest floats, and over runs of one repeated value.
TEST(KthLargest, AgreesWithNthElementForEveryK) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr float kMax = std::numeric_limits<float>::max();
  std::mt19937 rng(7);
  std::vector<std::vector<float>> cases = {{1.0f},
                                           {-2.5f},
                                           {0.0f, -0.0f, 0.0f},
                                           {3.0f, 3.0f, 3.0f, 3.0f},
                                           {-kInf, 1.0f, -kInf},
                                           {kMax, -kMax, 0.0f, kMax}};
  for (int64_t n : {2, 15, 16, 17, 251, 600}) {
    std::vector<float> spread(static_cast<size_t>(n)), narrow(spread.size()), dupes(spread.size()),
        binade(spread.size());
    std::normal_distribution<float> wide(0.0f, 1e3f);
    std::uniform_real_distribution<float> logit(8.0f, 20.0f);
    std::uniform_int_distribution<int> few(-3, 3);
    for (size_t i = 0; i < spread.size(); ++i) {
      spread[i] = wide(rng) * std::ldexp(1.0f, few(rng) * 8);
      narrow[i] = logit(rng);  // (block maxima of an LM row: one exponent or two)
      dupes[i] = static_cast<float>(few(rng)) * 0.5f;
      // (one binade: the keys first differ in a mantissa bit, odd or even)
      binade[i] = std::ldexp(1.0f + logit(rng) / 32.0f, static_cast<int>(n % 3));
    }
    cases.push_back(binade);
    cases.push_back(spread);
    cases.push_back(narrow);
    cases.push_back(dupes);
  }
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    for (const std::vector<float>& v : cases) {
      const auto n = static_cast<int64_t>(v.size());
      std::vector<uint32_t> keys(v.size());
      for (int64_t want = 1; want <= n; want += n > 40 ? 7 : 1) {
        std::vector<float> sorted = v;
        std::nth_element(sorted.begin(), sorted.begin() + (want - 1), sorted.end(),
                         std::greater<float>());
        const float got = k.kth_largest(v.data(), n, want, keys.data());
        EXPECT_EQ(got, sorted[static_cast<size_t>(want - 1)]) << "n = " << n << ", k = " << want;
      }
    }
  }
}

}  // namespace
}  // namespace nucleus
