// The selection kernels shared by the threshold paths (engine/kernels/
// select_kernels.cc), on every instruction set this machine runs, against
// the standard library.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <utility>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

// kth_largest agrees with std::nth_element for every k, over values spread
// across signs and exponents, with ties (±0 among them), -inf and the
// largest floats, and over runs of one repeated value; up to 64 values the
// kernel ranks them, past that it selects by bits.
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
  for (int64_t n : {2, 15, 16, 17, 40, 64, 65, 251, 600}) {
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

// sort_short agrees with std::stable_sort by key for every length up to
// kShortSort, over keys with ties, +-0, +inf and negative values: entries
// with equal keys keep their order (their weights tell them apart), and -0
// comes before +0.
TEST(SortShort, AgreesWithStableSort) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> pick(0, 9);
  const float keys[10] = {0.0f, -0.0f, 1.5f, 1.5f, 2.25f, kInf, -3.0f, 7.0f, 0.5f, 1e-30f};
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    for (int64_t n = 0; n <= detail::kShortSort; ++n) {
      std::vector<detail::SelectEntry> list(static_cast<size_t>(n)), got(list.size());
      for (int64_t i = 0; i < n; ++i) {
        list[static_cast<size_t>(i)] = {keys[pick(rng)], static_cast<float>(i)};
      }
      std::vector<detail::SelectEntry> want = list;
      std::stable_sort(want.begin(), want.end(), [](const auto& a, const auto& b) {
        return a.key < b.key || (a.key == b.key && std::signbit(a.key) && !std::signbit(b.key));
      });
      k.sort_short(list.data(), n, got.data());
      for (size_t i = 0; i < got.size(); ++i) {
        EXPECT_EQ(std::bit_cast<uint32_t>(got[i].key), std::bit_cast<uint32_t>(want[i].key))
            << "n = " << n << ", at " << i;
        EXPECT_EQ(got[i].weight, want[i].weight) << "n = " << n << ", at " << i;
      }
    }
  }
}

// A gathered list (key, value, token id) taken apart: gathered_keys pairs
// each key with key - d0 (the mass's argument), compact_gathered keeps the values and ids of the
// keys in [lo, hi], in order; lists of lengths around the 16-token packets and the length from
// which the AVX-512 loops run (32), keys at the bounds, ±0, +inf and NaN among them.
TEST(GatheredList, KeysAndTheSurvivorsInOrder) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> key(0.0f, 8.0f);
  std::vector<detail::GatheredToken> all(1000);
  for (size_t i = 0; i < all.size(); ++i) {
    all[i] = detail::GatheredToken{key(rng), key(rng) - 20.0f, static_cast<int32_t>(i * 7 + 3)};
  }
  all[5].key = 2.0f;   // (at lo)
  all[17].key = 5.0f;  // (at hi)
  all[20].key = -0.0f;
  all[31].key = kInf;
  all[32].key = nan;
  all[260].key = 2.0f;
  all[270].key = 5.0f;
  all[281].key = -0.0f;
  all[290].key = kInf;
  all[303].key = nan;
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    for (size_t n : {0, 1, 15, 16, 17, 31, 32, 33, 47, 48, 100, 257, 271, 1000}) {
      SCOPED_TRACE(n);
      std::vector<detail::SelectEntry> keys(n + 1, detail::SelectEntry{-1.0f, -1.0f});
      const float d0 = 1.25f;
      k.gathered_keys(all.data(), static_cast<int64_t>(n), d0, keys.data());
      for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(std::bit_cast<uint32_t>(keys[i].key), std::bit_cast<uint32_t>(all[i].key)) << i;
        const float e = all[i].key - d0;
        if (std::isnan(e)) {
          EXPECT_TRUE(std::isnan(keys[i].weight)) << i;
        } else {
          EXPECT_EQ(std::bit_cast<uint32_t>(keys[i].weight), std::bit_cast<uint32_t>(e)) << i;
        }
      }
      EXPECT_EQ(keys[n].key, -1.0f);  // (nothing past the list)
      for (const auto& [lo, hi] : {std::pair{2.0f, 5.0f}, std::pair{0.0f, kInf},
                                   std::pair{9.0f, 10.0f}, std::pair{-0.0f, 0.0f}}) {
        std::vector<float> want_x, x(n + 1);
        std::vector<int32_t> want_idx, idx(n + 1);
        for (size_t i = 0; i < n; ++i) {
          if (all[i].key >= lo && all[i].key <= hi) {
            want_x.push_back(all[i].x);
            want_idx.push_back(all[i].token);
          }
        }
        const int64_t kept =
            k.compact_gathered(all.data(), static_cast<int64_t>(n), lo, hi, x.data(), idx.data());
        ASSERT_EQ(kept, static_cast<int64_t>(want_x.size())) << "[" << lo << ", " << hi << "]";
        x.resize(want_x.size());
        idx.resize(want_idx.size());
        EXPECT_EQ(x, want_x);
        EXPECT_EQ(idx, want_idx);
      }
    }
  }
}

// A mass target's refinement round (AVX-512 only): pivot_sums totals the
// weight and count at or below each pivot as a double sum over the entries
// would (float partial sums of 128 entries: within a few float roundings),
// and keep_between keeps, in order, the entries in (lo, hi]; over lists
// around the packet sizes, with ties at the pivots and the bounds.
TEST(RefineRound, PivotSumsAndTheKeptPart) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const std::vector<Isa> isas = runnable_isas();
  if (std::find(isas.begin(), isas.end(), Isa::kAVX512) == isas.end()) {
    GTEST_SKIP() << "no AVX-512 here";
  }
  const detail::Kernels& k = detail::kernels_for(Isa::kAVX512);
  ASSERT_NE(k.pivot_sums, nullptr);
  ASSERT_NE(k.keep_between, nullptr);
  for (Isa isa : {Isa::kSSE2, Isa::kAVX2}) {
    EXPECT_EQ(detail::kernels_for(isa).pivot_sums, nullptr);  // (refine's histogram there)
  }
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> step(0, 40);
  std::uniform_real_distribution<float> mass(0.0f, 1.0f);
  std::vector<detail::SelectEntry> all(3000);
  // (keys on a grid of quarter units: many equal to a pivot or a bound)
  for (auto& e : all) e = detail::SelectEntry{static_cast<float>(step(rng)) * 0.25f, mass(rng)};
  const float pivots[detail::kRefinePivots] = {0.5f, 1.0f, 2.0f, 2.25f, 4.0f, 7.5f, 9.0f};
  for (size_t n : {0, 1, 7, 8, 9, 15, 16, 17, 127, 128, 129, 300, 3000}) {
    SCOPED_TRACE(n);
    double mass_le[detail::kRefinePivots];
    int64_t count_le[detail::kRefinePivots];
    k.pivot_sums(all.data(), static_cast<int64_t>(n), pivots, mass_le, count_le);
    for (int j = 0; j < detail::kRefinePivots; ++j) {
      double want = 0.0;
      int64_t want_count = 0;
      for (size_t i = 0; i < n; ++i) {
        if (all[i].key <= pivots[j]) {
          want += all[i].weight;
          ++want_count;
        }
      }
      EXPECT_EQ(count_le[j], want_count) << "pivot " << pivots[j];
      EXPECT_NEAR(mass_le[j], want, 1e-6 * want + 1e-30) << "pivot " << pivots[j];
    }
    for (const auto& [lo, hi] : {std::pair{-kInf, 2.0f}, std::pair{2.0f, 2.25f},
                                 std::pair{7.5f, 10.0f}, std::pair{3.0f, 3.0f}}) {
      std::vector<detail::SelectEntry> list(all.begin(), all.begin() + static_cast<int64_t>(n));
      std::vector<std::pair<float, float>> want;
      for (const auto& e : list) {
        if (lo < e.key && e.key <= hi) want.emplace_back(e.key, e.weight);
      }
      list.resize(static_cast<size_t>(
          k.keep_between(list.data(), static_cast<int64_t>(list.size()), lo, hi)));
      std::vector<std::pair<float, float>> got;
      for (const auto& e : list) got.emplace_back(e.key, e.weight);
      EXPECT_EQ(got, want) << "(" << lo << ", " << hi << "]";
    }
  }
}

}  // namespace
}  // namespace nucleus
