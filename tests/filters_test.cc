// Exact tests of temperature, greedy decoding and every filter (SPEC sections 2-4,
// docs/semantics.md) on tiny hand-made rows. Each expected kept set is derived by hand in the
// comment next to it; the expected probabilities are the row's softmax renormalised over that
// set. Rows are mostly built as logits = ln(p) so that the softmax is `p` itself.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <set>
#include <span>
#include <vector>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// Logits whose softmax is `p` (which sums to 1).
std::vector<float> LogOf(std::initializer_list<double> p) {
  std::vector<float> row;
  for (double v : p) row.push_back(static_cast<float>(std::log(v)));
  return row;
}

// Unnormalised softmax weights exp((x - max) / t) in double; masked tokens weigh 0.
std::vector<double> ExpWeights(const std::vector<float>& x, double t = 1.0) {
  double max = -std::numeric_limits<double>::infinity();
  for (float v : x) max = std::max(max, static_cast<double>(v));
  std::vector<double> w;
  for (float v : x) w.push_back(std::isinf(v) ? 0.0 : std::exp((v - max) / t));
  return w;
}

// `w` restricted to `kept` and renormalised: the distribution a filter leaves behind.
std::vector<double> Keep(const std::vector<double>& w, std::initializer_list<int> kept) {
  std::vector<double> out(w.size(), 0.0);
  double sum = 0.0;
  for (int i : kept) sum += w[i];
  for (int i : kept) out[i] = w[i] / sum;
  return out;
}

std::vector<double> KeepAll(const std::vector<double>& w) {
  std::vector<double> out(w.size(), 0.0);
  double sum = 0.0;
  for (double v : w) sum += v;
  for (size_t i = 0; i < w.size(); ++i) out[i] = w[i] / sum;
  return out;
}

double LogSumExp(std::initializer_list<double> x) {
  double max = -std::numeric_limits<double>::infinity();
  for (double v : x) max = std::max(max, v);
  double sum = 0.0;
  for (double v : x) sum += std::exp(v - max);
  return max + std::log(sum);
}

RowRequest Request() {
  RowRequest req;
  req.seed = 7;
  return req;
}

class FiltersTest : public ::testing::Test {
 protected:
  std::vector<float> Probs(const std::vector<float>& row, const RowRequest& req) {
    const auto vocab = static_cast<int64_t>(row.size());
    LogitsView view{row.data(), 1, vocab, vocab, DType::kFloat32};
    std::vector<float> out(row.size(), -1.0f);
    std::vector<Status> row_status(1);
    Status s = engine_.probs(view, std::span(&req, 1), out.data(), vocab, row_status);
    EXPECT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(row_status[0].ok()) << row_status[0].to_string();
    return out;
  }

  RowResult Sample(const std::vector<float>& row, const RowRequest& req) {
    const auto vocab = static_cast<int64_t>(row.size());
    LogitsView view{row.data(), 1, vocab, vocab, DType::kFloat32};
    std::vector<RowResult> results(1);
    Status s = engine_.sample(view, std::span(&req, 1), results);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return results[0];
  }

  // Checks the final distribution against `expected` (removed tokens exactly zero), then draws
  // with many seeds: every draw is a token of positive expected probability, its processed
  // logprob is ln(expected), and `support` is the size of the kept set.
  void ExpectDistribution(const std::vector<float>& row, RowRequest req,
                          const std::vector<double>& expected, int64_t support) {
    std::vector<float> probs = Probs(row, req);
    ASSERT_EQ(probs.size(), expected.size());
    for (size_t i = 0; i < probs.size(); ++i) {
      if (expected[i] == 0.0) {
        EXPECT_EQ(probs[i], 0.0f) << "token " << i << " should be removed";
      } else {
        EXPECT_NEAR(probs[i], expected[i], 2e-6) << "token " << i;
      }
    }
    req.params.num_samples = 8;
    std::set<int32_t> drawn;
    for (uint64_t seed = 0; seed < 25; ++seed) {
      req.seed = seed;
      RowResult r = Sample(row, req);
      ASSERT_TRUE(r.status.ok()) << r.status.to_string();
      EXPECT_EQ(r.support, support);
      ASSERT_EQ(r.tokens.size(), 8u);
      ASSERT_EQ(r.logprobs.size(), 8u);
      for (size_t j = 0; j < r.tokens.size(); ++j) {
        const int32_t t = r.tokens[j];
        ASSERT_GE(t, 0);
        ASSERT_LT(t, static_cast<int32_t>(expected.size()));
        EXPECT_GT(expected[t], 0.0) << "drew removed token " << t;
        if (expected[t] > 0.0) {
          EXPECT_NEAR(r.logprobs[j], std::log(expected[t]), 1e-5);
        }
        drawn.insert(t);
      }
    }
    // 200 draws: every token of probability >= 0.1 shows up (miss chance < 1e-9).
    for (size_t i = 0; i < expected.size(); ++i) {
      if (expected[i] >= 0.1) {
        EXPECT_TRUE(drawn.count(static_cast<int32_t>(i))) << i;
      }
    }
  }

  Engine engine_{EngineOptions{.max_threads = 2, .seed = 1}};
};

// ---------------------------------------------------------------------------------------------
// No filter, temperature.

TEST_F(FiltersTest, NoFilterGivesTheSoftmax) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  ExpectDistribution(row, Request(), {0.1, 0.4, 0.2, 0.3}, 4);
}

TEST_F(FiltersTest, TemperatureScalesTheLogits) {
  const std::vector<float> row = {0.0f, -1.0f, -2.0f, 1.0f};
  RowRequest req = Request();
  // softmax(x / T) for T = 0.5 and T = 2.
  req.params.temperature = 0.5f;
  ExpectDistribution(row, req, KeepAll(ExpWeights(row, 0.5)), 4);
  req.params.temperature = 2.0f;
  ExpectDistribution(row, req, KeepAll(ExpWeights(row, 2.0)), 4);
}

TEST_F(FiltersTest, TinyTemperatureIsFiniteAndPeaksOnTheMaximum) {
  RowRequest req = Request();
  req.params.temperature = 1e-30f;
  // z = (x - max) * 1e30: every other token's term underflows to exactly 0 but still belongs
  // to the kept set, so support stays 4 (docs/semantics.md, Numbers).
  ExpectDistribution({0.0f, -1.0f, -2.0f, 1.0f}, req, {0, 0, 0, 1}, 4);
  // A tie at the maximum splits the mass evenly.
  ExpectDistribution({1.0f, 0.0f, 1.0f}, req, {0.5, 0, 0.5}, 3);
  // 1/T overflows float: clamped to the largest float, so still no NaN.
  req.params.temperature = 1e-40f;
  std::vector<float> probs = Probs({0.0f, -1.0f, 1.0f}, req);
  EXPECT_EQ(probs[0], 0.0f);
  EXPECT_EQ(probs[1], 0.0f);
  EXPECT_FLOAT_EQ(probs[2], 1.0f);
}

// Rows of three 16384-token chunks, whose masses full sampling forms chunk by chunk, each from
// the chunk's own max (docs/semantics.md, Numbers): the distribution, the draws and `support`
// are the row's as a whole, also where a chunk's own max is far from the row's.
TEST_F(FiltersTest, FullSamplingOverChunksIsTheWholeRowsSoftmax) {
  constexpr int64_t kVocab = 40000;
  constexpr int kMax = 20000, kTie = 35000;  // in the second and third chunks
  // A spread row, the max in the second chunk: the plain softmax.
  std::vector<float> row(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) row[i] = static_cast<float>((i * 7919) % 1000) / 100.0f;
  row[kMax] = 12.0f;
  ExpectDistribution(row, Request(), KeepAll(ExpWeights(row)), kVocab);
  RowRequest req = Request();
  req.params.temperature = 0.6f;
  ExpectDistribution(row, req, KeepAll(ExpWeights(row, 0.6)), kVocab);

  // A tiny T with a near-tie in the first chunk: only the max has mass, all stay members.
  std::fill(row.begin(), row.end(), 0.0f);
  row[5] = std::nextafter(10.0f, 0.0f);
  row[kMax] = 10.0f;
  std::vector<double> expected(kVocab, 0.0);
  expected[kMax] = 1.0;
  req.params.temperature = 1e-30f;
  ExpectDistribution(row, req, expected, kVocab);

  // T = 1e-37: the first chunk's distance from the row's max (100 / T) overflows float, so it
  // leaves the kept set, though within its own chunk every distance is 0.
  row[5] = 0.0f;
  for (int64_t i = 16384; i < kVocab; ++i) row[i] = 99.0f;
  row[kMax] = row[kTie] = 100.0f;
  expected[kMax] = expected[kTie] = 0.5;
  req.params.temperature = 1e-37f;
  ExpectDistribution(row, req, expected, kVocab - 16384);

  // Logits at both ends of the float range: distances of 6e38 overflow at T = 1 (the first
  // chunk and the third's other tokens leave the set), 3e38 does not (the second's stay).
  std::fill(row.begin(), row.end(), -3e38f);
  std::fill(row.begin() + 16384, row.begin() + 32768, 0.0f);
  row[kMax] = row[kTie] = 3e38f;
  ExpectDistribution(row, Request(), expected, 16384 + 1);
  // Distances of 1e38 and 2.5e38 do not overflow either, though they are as far from each
  // chunk's own max: every token stays.
  std::fill(row.begin(), row.end(), 0.0f);
  row[100] = row[kMax] = row[kTie] = 1e38f;
  row[36000] = -1.5e38f;
  expected[100] = expected[kMax] = expected[kTie] = 1.0 / 3;
  ExpectDistribution(row, Request(), expected, kVocab);
}

TEST_F(FiltersTest, TinyTemperatureAfterLlamaCppFiltersPeaksOnTheSurvivorsMaximum) {
  // p = {0.5, 0.1, 0.1, 0.1, 0.09, 0.06, 0.05}: H = 1.5727, s = {0.880, 0.730 (x3), 0.835,
  // 1.241, 1.423}; sorted cum = {0.1, 0.2, 0.3, 0.39, ...}; tau = 0.35 -> last = 3 -> keep
  // s <= 0.835: {1, 2, 3, 4}, without the mode. llama.cpp applies T to the survivors: under
  // T = 1e-40 their distance from the row's max (ln 5) overflows float once tempered, yet the
  // nearest survivors take all the mass, split evenly, and token 4 keeps a zero share.
  const std::vector<float> row = LogOf({0.5, 0.1, 0.1, 0.1, 0.09, 0.06, 0.05});
  RowRequest req = Request();
  req.params.preset = Preset::kLlamaCpp;
  req.params.typical_p = 0.35f;
  req.params.temperature = 1.0f;
  ExpectDistribution(row, req, Keep(ExpWeights(row), {1, 2, 3, 4}), 4);
  req.params.temperature = 1e-40f;
  ExpectDistribution(row, req, {0, 1.0 / 3, 1.0 / 3, 1.0 / 3, 0, 0, 0}, 4);
  req.params.temperature = std::numeric_limits<float>::denorm_min();
  ExpectDistribution(row, req, {0, 1.0 / 3, 1.0 / 3, 1.0 / 3, 0, 0, 0}, 4);
}

TEST_F(FiltersTest, HugeTemperatureIsUniform) {
  RowRequest req = Request();
  req.params.temperature = 1e30f;
  ExpectDistribution({0.0f, -1.0f, -2.0f, 1.0f}, req, {0.25, 0.25, 0.25, 0.25}, 4);
}

// ---------------------------------------------------------------------------------------------
// top-k: keeps z_i >= the k-th largest z.

TEST_F(FiltersTest, TopKKeepsTheKLargest) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  RowRequest req = Request();
  req.params.top_k = 1;  // {1}
  ExpectDistribution(row, req, Keep(p, {1}), 1);
  req.params.top_k = 2;  // {1, 3}: 4/7, 3/7
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.top_k = 3;  // {1, 3, 2}
  ExpectDistribution(row, req, Keep(p, {1, 2, 3}), 3);
}

TEST_F(FiltersTest, TopKKeepsTiesAtTheKthValue) {
  // Sorted descending: 3 (id 1), 2 (id 2), 2 (id 3), 1 (id 0), 0 (id 4).
  const std::vector<float> row = {1.0f, 3.0f, 2.0f, 2.0f, 0.0f};
  const std::vector<double> w = ExpWeights(row);
  RowRequest req = Request();
  req.params.top_k = 2;  // 2nd largest is 2 -> keep z >= 2: {1, 2, 3}
  ExpectDistribution(row, req, Keep(w, {1, 2, 3}), 3);
  req.params.top_k = 3;  // 3rd largest is 2 as well
  ExpectDistribution(row, req, Keep(w, {1, 2, 3}), 3);
  req.params.top_k = 4;  // 4th largest is 1 -> {0, 1, 2, 3}
  ExpectDistribution(row, req, Keep(w, {0, 1, 2, 3}), 4);
  // A tie at the top with k = 1 keeps both.
  req.params.top_k = 1;
  ExpectDistribution({3.0f, 1.0f, 3.0f}, req, {0.5, 0, 0.5}, 2);
}

TEST_F(FiltersTest, TopKOffValuesKeepEverything) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  for (int32_t k : {0, -1, 4, 5, 1 << 30}) {
    SCOPED_TRACE(k);
    RowRequest req = Request();
    req.params.top_k = k;
    ExpectDistribution(row, req, {0.1, 0.4, 0.2, 0.3}, 4);
  }
}

TEST_F(FiltersTest, TopKMinKeep) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  RowRequest req = Request();
  req.params.top_k = 1;
  req.params.min_keep = 3;  // the 3 most preferred: {1, 3, 2}
  ExpectDistribution(row, req, Keep(p, {1, 2, 3}), 3);
  req.params.min_keep = 10;  // more than the vocabulary: everything
  ExpectDistribution(row, req, p, 4);
  // The min_keep-th most preferred value is 2, tied by ids 2 and 3: both kept.
  const std::vector<float> tied = {1.0f, 3.0f, 2.0f, 2.0f, 0.0f};
  req.params.min_keep = 2;
  ExpectDistribution(tied, req, Keep(ExpWeights(tied), {1, 2, 3}), 3);
}

// ---------------------------------------------------------------------------------------------
// top-p: keeps i iff the mass strictly more probable than i is < p.

TEST_F(FiltersTest, TopPKeepsTheNucleus) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  // Mass above each token: id 1: 0, id 3: 0.4, id 2: 0.7, id 0: 0.9.
  RowRequest req = Request();
  req.params.top_p = 0.35f;  // only id 1 (0 < 0.35; 0.4 is not)
  ExpectDistribution(row, req, Keep(p, {1}), 1);
  req.params.top_p = 0.5f;  // {1, 3}
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.top_p = 0.65f;  // still {1, 3}: 0.7 is not < 0.65
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.top_p = 0.75f;  // {1, 3, 2}
  ExpectDistribution(row, req, Keep(p, {1, 2, 3}), 3);
  req.params.top_p = 0.95f;  // everything: 0.9 < 0.95
  ExpectDistribution(row, req, p, 4);
}

TEST_F(FiltersTest, TopPKeepsTies) {
  const std::vector<float> row = LogOf({0.3, 0.2, 0.3, 0.2});
  const std::vector<double> p = {0.3, 0.2, 0.3, 0.2};
  // Ids 0 and 2 have nothing strictly above them; ids 1 and 3 have 0.6.
  RowRequest req = Request();
  req.params.top_p = 0.01f;
  ExpectDistribution(row, req, Keep(p, {0, 2}), 2);
  req.params.top_p = 0.55f;
  ExpectDistribution(row, req, Keep(p, {0, 2}), 2);
  req.params.top_p = 0.65f;
  ExpectDistribution(row, req, p, 4);
}

TEST_F(FiltersTest, TopPZeroKeepsOnlyTheMostProbable) {
  RowRequest req = Request();
  req.params.top_p = 0.0f;
  ExpectDistribution(LogOf({0.1, 0.4, 0.2, 0.3}), req, {0, 1, 0, 0}, 1);
  // Tied most probable tokens are all kept.
  ExpectDistribution(LogOf({0.3, 0.2, 0.3, 0.2}), req, {0.5, 0, 0.5, 0}, 2);
}

TEST_F(FiltersTest, TopPOneIsOff) {
  RowRequest req = Request();
  req.params.top_p = 1.0f;
  ExpectDistribution(LogOf({0.1, 0.4, 0.2, 0.3}), req, {0.1, 0.4, 0.2, 0.3}, 4);
  // Off even when the tail underflows: the zero-mass token stays in the support.
  const std::vector<float> row = {0.0f, -1.0f, -200.0f};
  ExpectDistribution(row, req, KeepAll(ExpWeights(row)), 3);
}

TEST_F(FiltersTest, TopPMinKeep) {
  const std::vector<float> row = LogOf({0.1, 0.4, 0.2, 0.3});
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  RowRequest req = Request();
  req.params.top_p = 0.3f;  // alone: {1}
  req.params.min_keep = 2;  // {1, 3}
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.min_keep = 3;  // {1, 3, 2}
  ExpectDistribution(row, req, Keep(p, {1, 2, 3}), 3);
  // The 3rd most preferred (0.2) is tied by ids 1 and 3: everything is kept.
  req.params.top_p = 0.01f;
  ExpectDistribution(LogOf({0.3, 0.2, 0.3, 0.2}), req, {0.3, 0.2, 0.3, 0.2}, 4);
}

// ---------------------------------------------------------------------------------------------
// min-p: keeps z_i >= z_max + ln m.

TEST_F(FiltersTest, MinPKeepsTokensAboveAFractionOfTheMax) {
  const std::vector<float> row = {-2.0f, 0.0f, -4.0f, -1.0f, -3.0f};
  const std::vector<double> w = ExpWeights(row);
  RowRequest req = Request();
  req.params.min_p = 0.9f;  // ln 0.9 = -0.105: {1}
  ExpectDistribution(row, req, Keep(w, {1}), 1);
  req.params.min_p = 0.25f;  // ln 0.25 = -1.386: {1, 3}
  ExpectDistribution(row, req, Keep(w, {1, 3}), 2);
  req.params.min_p = 0.1f;  // ln 0.1 = -2.303: {1, 3, 0}
  ExpectDistribution(row, req, Keep(w, {0, 1, 3}), 3);
  req.params.min_p = 0.01f;  // ln 0.01 = -4.605: everything
  ExpectDistribution(row, req, KeepAll(w), 5);
  req.params.min_p = 0.0f;  // off
  ExpectDistribution(row, req, KeepAll(w), 5);
}

TEST_F(FiltersTest, MinPOneKeepsTheTiedMaximum) {
  // m = 1: threshold exactly z_max; the two tokens at the max are kept.
  RowRequest req = Request();
  req.params.min_p = 1.0f;
  ExpectDistribution({1.0f, 3.0f, 3.0f, 2.0f}, req, {0, 0.5, 0.5, 0}, 2);
}

TEST_F(FiltersTest, MinPMinKeep) {
  const std::vector<float> row = {-2.0f, 0.0f, -4.0f, -1.0f, -3.0f};
  RowRequest req = Request();
  req.params.min_p = 0.9f;  // alone: {1}
  req.params.min_keep = 3;  // the 3 largest: {1, 3, 0}
  ExpectDistribution(row, req, Keep(ExpWeights(row), {0, 1, 3}), 3);
  // The 2nd most preferred value -1 is tied by ids 2 and 3: both kept.
  const std::vector<float> tied = {-2.0f, 0.0f, -1.0f, -1.0f, -3.0f};
  req.params.min_keep = 2;
  ExpectDistribution(tied, req, Keep(ExpWeights(tied), {1, 2, 3}), 3);
}

// ---------------------------------------------------------------------------------------------
// typical-p (HF TypicalLogitsWarper).
//
// Row p = {0.125, 0.5, 0.125, 0.25}: H = 1.75 ln2, -ln p = {3, 1, 3, 2} ln2,
// s = |-ln p - H| = {1.25, 0.75, 1.25, 0.25} ln2. Sorted by s: id 3 (cum 0.25), id 1 (cum 0.75),
// ids 0 and 2 (cum 0.875, 1). last = min(#(cum < tau), 3); keep s <= s_sorted[last].

TEST_F(FiltersTest, TypicalPKeepsTheMostTypicalTokens) {
  const std::vector<float> row = LogOf({0.125, 0.5, 0.125, 0.25});
  const std::vector<double> p = {0.125, 0.5, 0.125, 0.25};
  RowRequest req = Request();
  req.params.typical_p = 0.2f;  // #(cum < 0.2) = 0 -> s <= 0.25 ln2: {3}, not the mode
  ExpectDistribution(row, req, Keep(p, {3}), 1);
  req.params.typical_p = 0.5f;  // 1 -> s <= 0.75 ln2: {3, 1} = {1/3, 2/3}
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.typical_p = 0.8f;  // 2 -> s <= 1.25 ln2: everything (ids 0 and 2 tie)
  ExpectDistribution(row, req, p, 4);
  req.params.typical_p = 1.0f;  // off
  ExpectDistribution(row, req, p, 4);
}

TEST_F(FiltersTest, TypicalPMinKeep) {
  const std::vector<float> row = LogOf({0.125, 0.5, 0.125, 0.25});
  const std::vector<double> p = {0.125, 0.5, 0.125, 0.25};
  RowRequest req = Request();
  req.params.typical_p = 0.2f;  // alone: {3}
  req.params.min_keep = 2;      // the two smallest s: {3, 1}
  ExpectDistribution(row, req, Keep(p, {1, 3}), 2);
  req.params.min_keep = 3;  // the 3rd smallest s (1.25 ln2) is tied by ids 0 and 2
  ExpectDistribution(row, req, p, 4);
}

TEST_F(FiltersTest, TypicalPGivesUnderflowedTokensInfiniteSurprise) {
  // x = {0, -1, -200}: p(2) underflows to 0, contributes 0 to H and has s = +inf.
  // p = {0.7311, 0.2689, 0}; H = 0.5822; s = {0.2689, 0.7311, inf};
  // sorted cum = {0.7311, 1, 1}; tau = 0.99 -> last = 1 -> keep s <= 0.7311: {0, 1}.
  const std::vector<float> row = {0.0f, -1.0f, -200.0f};
  RowRequest req = Request();
  req.params.typical_p = 0.99f;
  ExpectDistribution(row, req, Keep(ExpWeights(row), {0, 1}), 2);
}

// ---------------------------------------------------------------------------------------------
// top-n-sigma: keeps z_i >= z_max - n * sigma, sigma the population std of the finite z.

TEST_F(FiltersTest, TopNSigmaKeepsTokensNearTheMax) {
  // z = {-1, 0, -3, -2}: mean -1.5, variance 1.25, sigma = 1.118.
  const std::vector<float> row = {-1.0f, 0.0f, -3.0f, -2.0f};
  const std::vector<double> w = ExpWeights(row);
  RowRequest req = Request();
  req.params.top_n_sigma = 0.5f;  // threshold -0.559: {1}
  ExpectDistribution(row, req, Keep(w, {1}), 1);
  req.params.top_n_sigma = 1.0f;  // -1.118: {1, 0}
  ExpectDistribution(row, req, Keep(w, {0, 1}), 2);
  req.params.top_n_sigma = 2.0f;  // -2.236: {1, 0, 3}
  ExpectDistribution(row, req, Keep(w, {0, 1, 3}), 3);
  req.params.top_n_sigma = 3.0f;  // -3.354: everything
  ExpectDistribution(row, req, KeepAll(w), 4);
}

TEST_F(FiltersTest, TopNSigmaKeepsTiesAtTheExactThreshold) {
  // z = {-2, 0, -2, 0}: mean -1, sigma exactly 1.
  const std::vector<float> row = {-2.0f, 0.0f, -2.0f, 0.0f};
  const std::vector<double> w = ExpWeights(row);
  RowRequest req = Request();
  req.params.top_n_sigma = 2.0f;  // threshold exactly -2: both -2 tokens kept
  ExpectDistribution(row, req, KeepAll(w), 4);
  req.params.top_n_sigma = 1.5f;  // -1.5: the two tokens tied at the max
  ExpectDistribution(row, req, Keep(w, {1, 3}), 2);
}

TEST_F(FiltersTest, TopNSigmaKeepsTiesAtTheExactThresholdBelowAnEarlierFilter) {
  // x = {2, 2, 2.5, 1, 1, 0} at T = 3: z = {-1/6, -1/6, 0, -1/2, -1/2, -5/6}, s = {0.12,
  // 0.12, 0.29, 0.21, 0.21, 0.55}: typical-p 0.6 keeps {0, 1, 3, 4} (cum 0.195, 0.39,
  // 0.53, 0.67), the row's max gone. Two values, each held by two tokens: sigma is
  // exactly half their gap on the float z, so z_max - 2 sigma is the lower one.
  const std::vector<float> row = {2.0f, 2.0f, 2.5f, 1.0f, 1.0f, 0.0f};
  const std::vector<double> w = ExpWeights(row, 3.0);
  for (Preset preset : {Preset::kHF, Preset::kVLLM}) {
    SCOPED_TRACE(static_cast<int>(preset));
    RowRequest req = Request();
    req.params.preset = preset;
    req.params.temperature = 3.0f;
    req.params.typical_p = 0.6f;
    ExpectDistribution(row, req, Keep(w, {0, 1, 3, 4}), 4);
    req.params.top_n_sigma = 2.0f;  // both pairs kept
    ExpectDistribution(row, req, Keep(w, {0, 1, 3, 4}), 4);
    req.params.top_n_sigma = 1.99f;  // the upper pair only
    ExpectDistribution(row, req, Keep(w, {0, 1}), 2);
  }
}

TEST_F(FiltersTest, TopNSigmaIgnoresMaskedTokens) {
  // The finite z are those of TopNSigmaKeepsTokensNearTheMax; -inf adds nothing to sigma.
  const std::vector<float> row = {-1.0f, -kInf, 0.0f, -3.0f, -kInf, -2.0f};
  RowRequest req = Request();
  req.params.top_n_sigma = 1.0f;  // {2, 0}
  ExpectDistribution(row, req, Keep(ExpWeights(row), {0, 2}), 2);
}

TEST_F(FiltersTest, TopNSigmaOffValues) {
  const std::vector<float> row = {-1.0f, 0.0f, -3.0f, -2.0f};
  for (float n : {0.0f, -1.0f, -kInf}) {
    SCOPED_TRACE(n);
    RowRequest req = Request();
    req.params.top_n_sigma = n;
    ExpectDistribution(row, req, KeepAll(ExpWeights(row)), 4);
  }
}

TEST_F(FiltersTest, TopNSigmaMinKeep) {
  const std::vector<float> row = {-1.0f, 0.0f, -3.0f, -2.0f};
  const std::vector<double> w = ExpWeights(row);
  RowRequest req = Request();
  req.params.top_n_sigma = 0.5f;  // alone: {1}
  req.params.min_keep = 2;
  ExpectDistribution(row, req, Keep(w, {0, 1}), 2);
  req.params.min_keep = 3;
  ExpectDistribution(row, req, Keep(w, {0, 1, 3}), 3);
}

TEST_F(FiltersTest, MaskedTokensNeverCountForAnyFilter) {
  // top-k = 3 over the finite tokens {0, -1}: fewer than k, so both stay.
  RowRequest req = Request();
  req.params.top_k = 3;
  const std::vector<float> short_row = {0.0f, -kInf, -1.0f, -kInf};
  ExpectDistribution(short_row, req, Keep(ExpWeights(short_row), {0, 2}), 2);
  // Typical-p on the typical row with masked tokens interleaved: same kept set as without.
  req = Request();
  req.params.typical_p = 0.5f;
  std::vector<float> row = LogOf({0.125, 0.5, 0.125, 0.25});
  row.insert(row.begin() + 1, -kInf);
  row.push_back(-kInf);  // ids now: 0:.125, 1:masked, 2:.5, 3:.125, 4:.25, 5:masked
  ExpectDistribution(row, req, {0, 0, 2.0 / 3, 0, 1.0 / 3, 0}, 2);
}

// ---------------------------------------------------------------------------------------------
// Presets: the same parameters give different results when the order matters.

TEST_F(FiltersTest, PresetsOrderMinPAndTopP) {
  // p = {0.4, 0.3, 0.2, 0.1}, top_p = 0.75, min_p = 0.3, T = 1.
  // hf / llama.cpp: top-p first (mass above: 0, .4, .7, .9) -> {0,1,2} = {4/9, 3/9, 2/9};
  //   then min-p: 2/9 >= 0.3 * 4/9 -> unchanged.
  // vllm: min-p first (0.1 < 0.3 * 0.4) -> {0,1,2} = {4/9, 3/9, 2/9};
  //   then top-p: mass above id 2 is 7/9 = 0.78, not < 0.75 -> {0,1} = {4/7, 3/7}.
  const std::vector<float> row = LogOf({0.4, 0.3, 0.2, 0.1});
  const std::vector<double> p = {0.4, 0.3, 0.2, 0.1};
  RowRequest req = Request();
  req.params.top_p = 0.75f;
  req.params.min_p = 0.3f;
  req.params.preset = Preset::kHF;
  ExpectDistribution(row, req, Keep(p, {0, 1, 2}), 3);
  req.params.preset = Preset::kLlamaCpp;
  ExpectDistribution(row, req, Keep(p, {0, 1, 2}), 3);
  req.params.preset = Preset::kVLLM;
  ExpectDistribution(row, req, Keep(p, {0, 1}), 2);
}

TEST_F(FiltersTest, LlamaCppTopPSeesTheUntemperedDistribution) {
  // p = {0.4, 0.3, 0.2, 0.1}, T = 2, top_p = 0.65.
  // hf / vllm: tempered p ~ sqrt(p) = {.3254, .2818, .2301, .1627}; mass above id 2 = .6072
  //   < .65 -> {0,1,2}, probabilities ~ sqrt(p).
  // llama.cpp: top-p on p (mass above id 2 = .7) -> {0,1}; then T: ~ sqrt(p) over {0,1}.
  const std::vector<float> row = LogOf({0.4, 0.3, 0.2, 0.1});
  const std::vector<double> tempered = ExpWeights(row, 2.0);
  RowRequest req = Request();
  req.params.temperature = 2.0f;
  req.params.top_p = 0.65f;
  req.params.preset = Preset::kHF;
  ExpectDistribution(row, req, Keep(tempered, {0, 1, 2}), 3);
  req.params.preset = Preset::kVLLM;
  ExpectDistribution(row, req, Keep(tempered, {0, 1, 2}), 3);
  req.params.preset = Preset::kLlamaCpp;
  ExpectDistribution(row, req, Keep(tempered, {0, 1}), 2);
}

TEST_F(FiltersTest, LlamaCppMinPSeesTheUntemperedLogits) {
  // x = {0, -1, -2}, T = 2, min_p = 0.5 (ln 0.5 = -0.693).
  // hf / vllm: z = {0, -0.5, -1} -> {0, 1}, probabilities ~ exp(x / 2).
  // llama.cpp: x - max = {0, -1, -2} -> {0}.
  const std::vector<float> row = {0.0f, -1.0f, -2.0f};
  RowRequest req = Request();
  req.params.temperature = 2.0f;
  req.params.min_p = 0.5f;
  req.params.preset = Preset::kHF;
  ExpectDistribution(row, req, Keep(ExpWeights(row, 2.0), {0, 1}), 2);
  req.params.preset = Preset::kVLLM;
  ExpectDistribution(row, req, Keep(ExpWeights(row, 2.0), {0, 1}), 2);
  req.params.preset = Preset::kLlamaCpp;
  ExpectDistribution(row, req, {1, 0, 0}, 1);
}

TEST_F(FiltersTest, PresetsOrderTypicalPAndTopP) {
  // p = {0.5, 0.25, 0.125, 0.125}, top_p = 0.7, typical_p = 0.2.
  // hf (and vllm, which runs typical-p after its listed filters): top-p -> {0,1} = {2/3, 1/3};
  //   typical on that: H = 0.6365, s = {0.231, 0.462}, cum = {.667, 1}, last = 0 -> {0}.
  // llama.cpp: typical first on p: s = {.75, .25, 1.25, 1.25} ln2, cum = {.25, ...},
  //   last = 0 -> {1}; top-p keeps it.
  const std::vector<float> row = LogOf({0.5, 0.25, 0.125, 0.125});
  RowRequest req = Request();
  req.params.top_p = 0.7f;
  req.params.typical_p = 0.2f;
  req.params.preset = Preset::kHF;
  ExpectDistribution(row, req, {1, 0, 0, 0}, 1);
  req.params.preset = Preset::kVLLM;
  ExpectDistribution(row, req, {1, 0, 0, 0}, 1);
  req.params.preset = Preset::kLlamaCpp;
  ExpectDistribution(row, req, {0, 1, 0, 0}, 1);
}

TEST_F(FiltersTest, PresetsOrderTopNSigmaAndTopK) {
  // z = {-2, 0, -3, -1}, top_k = 3, top_n_sigma = 1.
  // hf (and vllm, where top-n-sigma runs after top-k): top-k -> {0,-1,-2}: sigma = 0.8165,
  //   threshold -0.8165 -> {1}.
  // llama.cpp: top-n-sigma first on all four: sigma = 1.118 -> {1, 3}; top-k keeps both.
  const std::vector<float> row = {-2.0f, 0.0f, -3.0f, -1.0f};
  RowRequest req = Request();
  req.params.top_k = 3;
  req.params.top_n_sigma = 1.0f;
  req.params.preset = Preset::kHF;
  ExpectDistribution(row, req, {0, 1, 0, 0}, 1);
  req.params.preset = Preset::kVLLM;
  ExpectDistribution(row, req, {0, 1, 0, 0}, 1);
  req.params.preset = Preset::kLlamaCpp;
  ExpectDistribution(row, req, Keep(ExpWeights(row), {1, 3}), 2);
}

// ---------------------------------------------------------------------------------------------
// Greedy (temperature 0).

TEST_F(FiltersTest, GreedyTakesTheArgmaxLowestIdOnTies) {
  const std::vector<float> row = {1.0f, 3.0f, 0.0f, 3.0f, 2.0f};
  const double lse = LogSumExp({1, 3, 0, 3, 2});
  for (Preset preset : {Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp}) {
    SCOPED_TRACE(preset_name(preset));
    RowRequest req = Request();
    req.params.temperature = 0.0f;
    req.params.preset = preset;
    req.params.num_samples = 4;
    RowResult r = Sample(row, req);
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    EXPECT_THAT(r.tokens, ::testing::ElementsAre(1, 1, 1, 1));
    ASSERT_EQ(r.logprobs.size(), 4u);
    ASSERT_EQ(r.raw_logprobs.size(), 4u);
    for (int j = 0; j < 4; ++j) {
      EXPECT_NEAR(r.logprobs[j], 3.0 - lse, 1e-5);
      EXPECT_NEAR(r.raw_logprobs[j], 3.0 - lse, 1e-5);
    }
    EXPECT_EQ(r.support, 5);
    // probs() of a greedy row is the softmax of the processed logits.
    std::vector<float> probs = Probs(row, req);
    const std::vector<double> expected = KeepAll(ExpWeights(row));
    for (int i = 0; i < 5; ++i) EXPECT_NEAR(probs[i], expected[i], 2e-6);
  }
  // All logits equal: token 0.
  RowRequest req = Request();
  req.params.temperature = 0.0f;
  EXPECT_EQ(Sample({2.0f, 2.0f, 2.0f}, req).tokens[0], 0);
}

TEST_F(FiltersTest, GreedySkipsTheFilters) {
  // Filters that would remove the argmax (typical-p keeps a less probable token, see
  // PresetsOrderTypicalPAndTopP) are skipped: token, logprob, support and probs are those of
  // the plain softmax.
  const std::vector<float> row = LogOf({0.5, 0.25, 0.125, 0.125});
  for (Preset preset : {Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp}) {
    SCOPED_TRACE(preset_name(preset));
    RowRequest req = Request();
    req.params.temperature = 0.0f;
    req.params.preset = preset;
    req.params.top_k = 1;
    req.params.top_p = 0.1f;
    req.params.min_p = 0.9f;
    req.params.typical_p = 0.2f;
    req.params.top_n_sigma = 0.1f;
    req.params.min_keep = 2;
    RowResult r = Sample(row, req);
    ASSERT_TRUE(r.status.ok());
    EXPECT_EQ(r.tokens[0], 0);
    EXPECT_NEAR(r.logprobs[0], std::log(0.5), 1e-5);
    EXPECT_EQ(r.support, 4);
    std::vector<float> probs = Probs(row, req);
    EXPECT_NEAR(probs[0], 0.5, 2e-6);
    EXPECT_NEAR(probs[1], 0.25, 2e-6);
    EXPECT_NEAR(probs[2], 0.125, 2e-6);
    EXPECT_NEAR(probs[3], 0.125, 2e-6);
  }
}

TEST_F(FiltersTest, GreedyLogprobsUseTheProcessedLogits) {
  // Masked tokens leave the support; a bias moves the argmax. Processed logits
  // {1, -inf, 0, -inf, 4}: token 4, logprob 4 - lse(1, 0, 4), support 3; the raw logprob is
  // under log_softmax of the input row {1, -inf, 0, -inf, 2}.
  const std::vector<float> row = {1.0f, -kInf, 0.0f, -kInf, 2.0f};
  const TokenBias bias[] = {{4, 2.0f}};
  RowRequest req = Request();
  req.params.temperature = 0.0f;
  req.logit_bias = bias;
  RowResult r = Sample(row, req);
  ASSERT_TRUE(r.status.ok());
  EXPECT_EQ(r.tokens[0], 4);
  EXPECT_NEAR(r.logprobs[0], 4.0 - LogSumExp({1, 0, 4}), 1e-5);
  EXPECT_NEAR(r.raw_logprobs[0], 2.0 - LogSumExp({1, 0, 2}), 1e-5);
  EXPECT_EQ(r.support, 3);
  std::vector<float> probs = Probs(row, req);
  const std::vector<double> expected = KeepAll(ExpWeights({1, -kInf, 0, -kInf, 4}));
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(probs[i], expected[i], 2e-6) << i;
  EXPECT_EQ(probs[1], 0.0f);
  EXPECT_EQ(probs[3], 0.0f);
}

TEST_F(FiltersTest, ALogprobOfZeroHasNoSign) {
  // One token holds all the mass, in the processed row and in the raw one:
  // log(1) is +0, never -0 (which Python and C callers would print as "-0").
  const std::vector<float> row = {5.0f, -200.0f, -200.0f};
  for (float t : {0.0f, 1.0f}) {
    RowRequest req = Request();
    req.params.temperature = t;
    req.params.top_k = 1;
    req.params.top_logprobs = 1;
    RowResult r = Sample(row, req);
    ASSERT_TRUE(r.status.ok());
    ASSERT_EQ(r.tokens[0], 0);
    EXPECT_EQ(r.logprobs[0], 0.0f);
    EXPECT_FALSE(std::signbit(r.logprobs[0])) << "T = " << t;
    EXPECT_EQ(r.raw_logprobs[0], 0.0f);
    EXPECT_FALSE(std::signbit(r.raw_logprobs[0])) << "T = " << t;
    ASSERT_EQ(r.top_logprobs.size(), 1u);
    EXPECT_FALSE(std::signbit(r.top_logprobs[0].logprob)) << "T = " << t;
  }
}

TEST_F(FiltersTest, LogprobsOffLeavesThemNaN) {
  const std::vector<float> row = {1.0f, 3.0f, 0.0f};
  for (float t : {0.0f, 1.0f}) {
    RowRequest req = Request();
    req.params.temperature = t;
    req.params.top_k = 1;
    req.params.logprobs = false;
    RowResult r = Sample(row, req);
    ASSERT_TRUE(r.status.ok());
    EXPECT_EQ(r.tokens[0], 1);
    ASSERT_EQ(r.logprobs.size(), 1u);
    ASSERT_EQ(r.raw_logprobs.size(), 1u);
    EXPECT_TRUE(std::isnan(r.logprobs[0]));
    EXPECT_TRUE(std::isnan(r.raw_logprobs[0]));
  }
}

// ---------------------------------------------------------------------------------------------
// Top logprobs and ranks describe the kept set (processed) or the raw row.

TEST_F(FiltersTest, TopLogprobsAndRanks) {
  // x = {1, 3, 2, 2, 0}, top_k = 2 keeps {1, 2, 3} (see TopKKeepsTiesAtTheKthValue).
  const std::vector<float> row = {1.0f, 3.0f, 2.0f, 2.0f, 0.0f};
  const double kept_lse = LogSumExp({3, 2, 2});
  const double raw_lse = LogSumExp({1, 3, 2, 2, 0});
  RowRequest req = Request();
  req.params.top_k = 2;
  req.params.top_logprobs = 5;
  req.params.num_samples = 16;

  // Processed: only the three kept tokens, ties (ids 2 and 3) by id.
  RowResult r = Sample(row, req);
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.top_logprobs.size(), 3u);
  const int expected_ids[] = {1, 2, 3};
  const double expected_lp[] = {3 - kept_lse, 2 - kept_lse, 2 - kept_lse};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(r.top_logprobs[i].token, expected_ids[i]);
    EXPECT_NEAR(r.top_logprobs[i].logprob, expected_lp[i], 1e-5);
  }
  ASSERT_EQ(r.ranks.size(), 16u);
  for (int j = 0; j < 16; ++j) {
    // Rank = 1 + number of strictly more probable tokens: 1 for id 1, 2 for ids 2 and 3.
    EXPECT_EQ(r.ranks[j], r.tokens[j] == 1 ? 1 : 2) << r.tokens[j];
    EXPECT_NEAR(r.raw_logprobs[j], row[r.tokens[j]] - raw_lse, 1e-5);
  }

  // Raw: all five tokens of log_softmax(x), order 1, 2, 3, 0, 4.
  req.params.logprobs_mode = LogprobsMode::kRaw;
  r = Sample(row, req);
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.top_logprobs.size(), 5u);
  const int raw_ids[] = {1, 2, 3, 0, 4};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(r.top_logprobs[i].token, raw_ids[i]);
    EXPECT_NEAR(r.top_logprobs[i].logprob, row[raw_ids[i]] - raw_lse, 1e-5);
  }
  for (int j = 0; j < 16; ++j) EXPECT_EQ(r.ranks[j], r.tokens[j] == 1 ? 1 : 2);

  // N smaller than the kept set truncates.
  req.params.logprobs_mode = LogprobsMode::kProcessed;
  req.params.top_logprobs = 2;
  r = Sample(row, req);
  ASSERT_EQ(r.top_logprobs.size(), 2u);
  EXPECT_EQ(r.top_logprobs[0].token, 1);
  EXPECT_EQ(r.top_logprobs[1].token, 2);
}

// Greedy forms no normaliser of its own unless asked for processed logprobs:
// raw top logprobs must then come from the raw row's (they were +inf once,
// found by fuzzing: fuzz/regressions/engine_sample/greedy-raw-top-logprobs).
TEST_F(FiltersTest, GreedyRawTopLogprobsWithoutLogprobs) {
  const std::vector<float> row = {1.0f, 3.0f, 2.0f, 0.5f};
  const double raw_lse = LogSumExp({1, 3, 2, 0.5});
  for (bool logprobs : {false, true}) {
    SCOPED_TRACE(logprobs);
    RowRequest req = Request();
    req.params.temperature = 0.0f;
    req.params.logprobs = logprobs;
    req.params.top_logprobs = 3;
    req.params.logprobs_mode = LogprobsMode::kRaw;
    const RowResult r = Sample(row, req);
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    EXPECT_EQ(r.tokens[0], 1);
    ASSERT_EQ(r.top_logprobs.size(), 3u);
    const int ids[] = {1, 2, 0};
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(r.top_logprobs[i].token, ids[i]);
      EXPECT_NEAR(r.top_logprobs[i].logprob, row[ids[i]] - raw_lse, 1e-5);
    }
  }
}

}  // namespace
}  // namespace nucleus
