// Goodness of fit of the engine's draws (SPEC section 5: "the empirical token
// frequencies of many draws match the final distribution (chi-square), tail
// tokens included").
//
// Each configuration draws 10^6 tokens (several steps of many samples, fixed
// seeds, so every run sees the same draws) and compares the counts with the
// final distribution of the reference in tests/reference_sampler.h. Tokens
// expected fewer than 5 times are pooled, in id order, into bins expected at
// least 5 times, so the tail takes part in the test instead of being dropped.
//
// Critical value: the p-value is the chi-square survival function
// Q(df/2, x/2), computed with the regularised upper incomplete gamma function
// below (series for x < a + 1, Lentz continued fraction otherwise), and the
// test fails when it is below 1e-6. With fixed seeds the outcome is
// deterministic; a correct engine fails a given configuration with
// probability 1e-6 over the choice of seeds.
#include <Random123/philox.h>
#include <Random123/u01fixedpt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"
#include "reference_sampler.h"

namespace {

using nucleus::DType;
using nucleus::Engine;
using nucleus::LogitsView;
using nucleus::Preset;
using nucleus::RowRequest;
using nucleus::RowResult;
using nucleus::SamplingParams;
using nucleus::Status;
using nucleus_ref::ReferenceSampler;

constexpr double kPValueThreshold = 1e-6;
constexpr double kMinExpected = 5.0;

// ---------------------------------------------------------------------------
// Regularised incomplete gamma functions P(a, x) and Q(a, x) = 1 - P(a, x).

// Series: P(a, x) = e^-x x^a / Γ(a+1) · Σ_n x^n / ((a+1)...(a+n)); converges
// quickly for x < a + 1.
double GammaPSeries(double a, double x) {
  double term = 1.0 / a, sum = term;
  for (int n = 1; n < 100000; ++n) {
    term *= x / (a + n);
    sum += term;
    if (std::abs(term) < std::abs(sum) * 1e-16) break;
  }
  return sum * std::exp(-x + a * std::log(x) - std::lgamma(a));
}

// Continued fraction for Q(a, x) (modified Lentz); converges for x >= a + 1.
double GammaQFraction(double a, double x) {
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / kTiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 100000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::abs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::abs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::abs(delta - 1.0) < 1e-16) break;
  }
  return std::exp(-x + a * std::log(x) - std::lgamma(a)) * h;
}

double GammaP(double a, double x) {
  if (x <= 0.0) return 0.0;
  return x < a + 1.0 ? GammaPSeries(a, x) : 1.0 - GammaQFraction(a, x);
}

double GammaQ(double a, double x) {
  if (x <= 0.0) return 1.0;
  return x < a + 1.0 ? 1.0 - GammaPSeries(a, x) : GammaQFraction(a, x);
}

double ChiSquareSurvival(double statistic, double df) { return GammaQ(df / 2.0, statistic / 2.0); }

// Poisson(λ) tails: P(X <= k) = Q(k + 1, λ), P(X >= k) = P(k, λ).
double PoissonAtMost(int64_t k, double lambda) {
  return GammaQ(static_cast<double>(k) + 1.0, lambda);
}
double PoissonAtLeast(int64_t k, double lambda) {
  return k <= 0 ? 1.0 : GammaP(static_cast<double>(k), lambda);
}

TEST(ChiSquareMath, MatchesKnownValues) {
  // Textbook critical values: P(χ²_1 > 3.841) = 0.05, P(χ²_10 > 23.209) =
  // 0.01, P(χ²_100 > 124.342) = 0.05; χ²_2 has survival e^{-x/2}.
  EXPECT_NEAR(ChiSquareSurvival(3.841459, 1), 0.05, 1e-6);
  EXPECT_NEAR(ChiSquareSurvival(23.209251, 10), 0.01, 1e-7);
  EXPECT_NEAR(ChiSquareSurvival(124.342113, 100), 0.05, 1e-6);
  EXPECT_NEAR(ChiSquareSurvival(7.0, 2), std::exp(-3.5), 1e-12);
  // Poisson(2): P(X <= 1) = 3 e^-2, P(X >= 2) = 1 - 3 e^-2.
  EXPECT_NEAR(PoissonAtMost(1, 2.0), 3.0 * std::exp(-2.0), 1e-12);
  EXPECT_NEAR(PoissonAtLeast(2, 2.0), 1.0 - 3.0 * std::exp(-2.0), 1e-12);
}

// ---------------------------------------------------------------------------
// Drawing.

struct Draws {
  std::vector<int64_t> counts;
  int64_t total = 0;
};

// `steps` calls of `per_step` samples each, the row seeded with `seed` (or
// unseeded when `seed` is empty, leaving the engine's generator to it).
Draws Draw(Engine& engine, const std::vector<float>& logits, SamplingParams params,
           std::optional<uint64_t> seed, int64_t steps, int32_t per_step,
           std::span<const int32_t> allowed_mask = {}) {
  Draws out;
  out.counts.assign(logits.size(), 0);
  const LogitsView view{logits.data(), 1, static_cast<int64_t>(logits.size()),
                        static_cast<int64_t>(logits.size()), DType::kFloat32};
  params.num_samples = per_step;
  params.logprobs = false;
  std::vector<RowResult> results(1);
  for (int64_t step = 0; step < steps; ++step) {
    RowRequest req;
    req.params = params;
    req.seed = seed;
    req.step = static_cast<uint64_t>(step);
    req.allowed_mask = allowed_mask;
    const std::vector<RowRequest> requests{req};
    const Status s = engine.sample(view, requests, results);
    EXPECT_TRUE(s.ok()) << s.to_string();
    EXPECT_TRUE(results[0].status.ok()) << results[0].status.to_string();
    if (!s.ok() || !results[0].status.ok()) return out;
    for (int32_t t : results[0].tokens) {
      ++out.counts[t];
      ++out.total;
    }
  }
  return out;
}

// The reference's final distribution; the configurations are chosen so that
// no token lies within rounding distance of a filter boundary.
std::vector<double> Expected(const std::vector<float>& logits, const SamplingParams& params) {
  RowRequest req;
  req.params = params;
  const ReferenceSampler ref(logits, req);
  for (const nucleus_ref::StageDecision& d : ref.stages()) {
    EXPECT_TRUE(d.groups.empty()) << nucleus_ref::FilterName(d.filter)
                                  << " has tokens within rounding distance of its boundary";
  }
  return ref.Final(ref.kept()).prob;
}

struct FitResult {
  double statistic = 0.0;
  int64_t df = 0;
  double p_value = 1.0;
  int64_t individual_bins = 0;
  int64_t pooled_bins = 0;
  int64_t pooled_tokens = 0;
  double pooled_expected = 0.0;  // expected draws of the pooled tokens
  int64_t pooled_observed = 0;
  int64_t impossible_draws = 0;  // draws of zero-probability tokens
};

// Pearson's chi-square with rare tokens pooled in id order. The leftover of
// the last pool joins the previous pool (or the smallest bin).
FitResult Fit(const Draws& draws, const std::vector<double>& prob) {
  FitResult r;
  const double n = static_cast<double>(draws.total);
  struct Bin {
    double expected = 0.0;
    int64_t observed = 0;
    bool pooled = false;
  };
  std::vector<Bin> bins;
  Bin pool;
  pool.pooled = true;
  for (size_t t = 0; t < prob.size(); ++t) {
    if (prob[t] == 0.0) {
      r.impossible_draws += draws.counts[t];
      continue;
    }
    const double e = n * prob[t];
    if (e >= kMinExpected) {
      bins.push_back({e, draws.counts[t], false});
      continue;
    }
    ++r.pooled_tokens;
    r.pooled_expected += e;
    r.pooled_observed += draws.counts[t];
    pool.expected += e;
    pool.observed += draws.counts[t];
    if (pool.expected >= kMinExpected) {
      bins.push_back(pool);
      pool = Bin{0.0, 0, true};
    }
  }
  if (pool.expected > 0.0) {
    auto target = std::find_if(bins.rbegin(), bins.rend(), [](const Bin& b) { return b.pooled; });
    if (target == bins.rend()) {
      target = std::min_element(bins.rbegin(), bins.rend(),
                                [](const Bin& a, const Bin& b) { return a.expected < b.expected; });
    }
    if (target != bins.rend()) {
      target->expected += pool.expected;
      target->observed += pool.observed;
    } else {
      bins.push_back(pool);  // a single bin: nothing to test
    }
  }
  for (const Bin& b : bins) {
    const double diff = static_cast<double>(b.observed) - b.expected;
    r.statistic += diff * diff / b.expected;
    (b.pooled ? r.pooled_bins : r.individual_bins) += 1;
  }
  r.df = static_cast<int64_t>(bins.size()) - 1;
  r.p_value = r.df > 0 ? ChiSquareSurvival(r.statistic, static_cast<double>(r.df)) : 1.0;
  return r;
}

void ExpectFits(const char* name, const Draws& draws, const std::vector<double>& prob,
                bool expect_tail) {
  const FitResult r = Fit(draws, prob);
  std::printf(
      "[%s] draws=%lld bins=%lld+%lld pooled (%lld tokens, expected %.1f, observed %lld) "
      "chi2=%.1f df=%lld p=%.3g\n",
      name, static_cast<long long>(draws.total), static_cast<long long>(r.individual_bins),
      static_cast<long long>(r.pooled_bins), static_cast<long long>(r.pooled_tokens),
      r.pooled_expected, static_cast<long long>(r.pooled_observed), r.statistic,
      static_cast<long long>(r.df), r.p_value);
  EXPECT_EQ(r.impossible_draws, 0) << name << ": tokens outside the final support were drawn";
  EXPECT_GT(r.df, 0) << name;
  EXPECT_GT(r.p_value, kPValueThreshold)
      << name << ": chi2 = " << r.statistic << " with " << r.df << " degrees of freedom";
  if (expect_tail) {
    EXPECT_GT(r.pooled_bins, 0) << name << ": the configuration was meant to test a pooled tail";
    // The tail as a whole: its count is Binomial(n, mass) ~ Poisson; Poisson
    // tails are wider than binomial ones, so the bound is conservative.
    EXPECT_GT(PoissonAtMost(r.pooled_observed, r.pooled_expected), kPValueThreshold / 2)
        << name << ": too few tail draws";
    EXPECT_GT(PoissonAtLeast(r.pooled_observed, r.pooled_expected), kPValueThreshold / 2)
        << name << ": too many tail draws";
  }
}

// ---------------------------------------------------------------------------
// Rows.

std::vector<float> Gaussian(int64_t vocab, double sigma, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, sigma);
  std::vector<float> x(vocab);
  for (float& v : x) v = static_cast<float>(normal(gen));
  return x;
}

// A few dominant tokens over a Zipf-like tail, the shape of LM logits.
std::vector<float> LanguageModelLike(int64_t vocab, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> normal(0.0, 0.3);
  std::vector<int64_t> rank(vocab);
  for (int64_t i = 0; i < vocab; ++i) rank[i] = i;
  std::shuffle(rank.begin(), rank.end(), gen);
  std::vector<float> x(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    x[i] = static_cast<float>(-1.1 * std::log1p(static_cast<double>(rank[i])) + normal(gen));
  }
  for (int64_t j = 0; j < 3; ++j) x[rank[j] % vocab] += 3.0f;
  return x;
}

constexpr int64_t kSteps = 10;
constexpr int32_t kPerStep = 100000;  // 10^6 draws per configuration

class EngineStatisticalTest : public ::testing::Test {
 protected:
  Engine engine_{{.max_threads = 2, .seed = 12345}};

  void Check(const char* name, const std::vector<float>& logits, const SamplingParams& params,
             uint64_t seed, bool expect_tail = false) {
    const std::vector<double> prob = Expected(logits, params);
    const Draws draws = Draw(engine_, logits, params, seed, kSteps, kPerStep);
    ASSERT_EQ(draws.total, kSteps * kPerStep) << name;
    ExpectFits(name, draws, prob, expect_tail);
  }
};

TEST_F(EngineStatisticalTest, FullVocabulary) {
  SamplingParams p;  // T = 1, no filters: softmax of the whole row
  Check("full-vocabulary", Gaussian(2000, 2.0, 1), p, 101, /*expect_tail=*/true);
}

TEST_F(EngineStatisticalTest, TemperatureTopKTopP) {
  SamplingParams p;
  p.temperature = 0.7f;
  p.top_k = 50;
  p.top_p = 0.9f;
  Check("temperature+top-k+top-p", LanguageModelLike(32000, 2), p, 102);
}

TEST_F(EngineStatisticalTest, MinP) {
  SamplingParams p;
  p.temperature = 1.3f;
  p.min_p = 0.02f;
  Check("min-p", Gaussian(4096, 2.0, 3), p, 103);
}

TEST_F(EngineStatisticalTest, TypicalP) {
  SamplingParams p;
  p.typical_p = 0.7f;
  Check("typical-p", LanguageModelLike(4096, 4), p, 104);
}

TEST_F(EngineStatisticalTest, TopNSigmaAndPresets) {
  SamplingParams p;
  p.top_n_sigma = 1.5f;
  Check("top-nsigma", Gaussian(3000, 1.0, 5), p, 105);
  p = {};
  p.preset = Preset::kLlamaCpp;  // filters on the untempered row, then T
  p.temperature = 0.8f;
  p.top_k = 200;
  p.min_p = 0.01f;
  Check("llama.cpp preset", LanguageModelLike(8000, 6), p, 106);
  p = {};
  p.preset = Preset::kVLLM;
  p.temperature = 1.2f;
  p.min_p = 0.001f;
  p.top_p = 0.8f;
  Check("vllm preset", LanguageModelLike(8000, 7), p, 107);
}

// A grammar's allowed-token mask: 1,524 of 32000 tokens allowed (every 21st),
// which the engine takes as the row's candidates (the row is neither copied
// nor scanned again); the reference sees the disallowed tokens as -inf.
TEST_F(EngineStatisticalTest, SparseAllowedTokenMask) {
  const std::vector<float> logits = LanguageModelLike(32000, 8);
  std::vector<int32_t> mask((logits.size() + 31) / 32, 0);
  std::vector<float> masked(logits.size(), -std::numeric_limits<float>::infinity());
  for (size_t t = 0; t < logits.size(); t += 21) {
    mask[t / 32] = static_cast<int32_t>(static_cast<uint32_t>(mask[t / 32]) | 1u << (t % 32));
    masked[t] = logits[t];
  }
  SamplingParams p;
  p.temperature = 1.5f;
  for (const float top_p : {1.0f, 0.9f}) {
    p.top_p = top_p;
    const char* name = top_p < 1.0f ? "sparse mask, top-p" : "sparse mask";
    const std::vector<double> prob = Expected(masked, p);
    const Draws draws = Draw(engine_, logits, p, 108, kSteps, kPerStep, mask);
    ASSERT_EQ(draws.total, kSteps * kPerStep) << name;
    ExpectFits(name, draws, prob, /*expect_tail=*/false);
  }
}

// Many rare tokens: a head of 10 tokens holds 86% of the mass and 29990 tail
// tokens share the rest unevenly (probabilities 1.6e-7 to 2.3e-5), so about
// 21000 of them are expected fewer than 5 times in 10^6 draws and are tested
// through pooled bins, and the tail's total count separately.
TEST_F(EngineStatisticalTest, RareTail) {
  constexpr int64_t kVocab = 30000, kHead = 10;
  std::mt19937_64 gen(8);
  std::uniform_real_distribution<double> spread(-4.0, 1.0);
  std::vector<float> x(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) {
    x[i] = i < kHead ? 0.0f : static_cast<float>(std::log(1e-4) + spread(gen));
  }
  const std::vector<double> prob = Expected(x, SamplingParams{});
  double tail = 0.0;
  int64_t rare = 0;
  for (int64_t i = kHead; i < kVocab; ++i) {
    tail += prob[i];
    rare += prob[i] * kSteps * kPerStep < kMinExpected ? 1 : 0;
  }
  std::printf("[rare-tail] tail mass %.4f, %lld tokens expected < %.0f times\n", tail,
              static_cast<long long>(rare), kMinExpected);
  ASSERT_GT(rare, 10000);
  Check("rare-tail", x, SamplingParams{}, 110, /*expect_tail=*/true);
}

// One sample per call over many steps: the step alone must decorrelate the
// draws.
TEST_F(EngineStatisticalTest, OneSamplePerStep) {
  const std::vector<float> logits = Gaussian(100, 1.0, 10);
  SamplingParams p;
  p.temperature = 0.9f;
  const std::vector<double> prob = Expected(logits, p);
  constexpr int64_t kCalls = 100000;
  const Draws draws = Draw(engine_, logits, p, 109, kCalls, 1);
  ASSERT_EQ(draws.total, kCalls);
  ExpectFits("one-sample-per-step", draws, prob, /*expect_tail=*/false);
}

// Unseeded rows draw from the engine's generator, seeded from the engine
// options: their frequencies must fit as well.
TEST_F(EngineStatisticalTest, UnseededRows) {
  const std::vector<float> logits = Gaussian(500, 1.5, 9);
  const SamplingParams p;
  const std::vector<double> prob = Expected(logits, p);
  const Draws draws = Draw(engine_, logits, p, std::nullopt, kSteps, kPerStep);
  ASSERT_EQ(draws.total, kSteps * kPerStep);
  ExpectFits("unseeded", draws, prob, /*expect_tail=*/false);
}

// A two-token row with probabilities (1 - 1e-6, 1e-6): 10^8 draws expect the
// rare token about 100 times. A 24-bit float uniform or a float cumulative sum
// would misplace or lose it.
TEST(EngineExactDraw, RareTokenOfTwo) {
  Engine engine({.max_threads = 2, .seed = 1});
  const float rare_logit = static_cast<float>(std::log(1e-6 / (1.0 - 1e-6)));
  const std::vector<float> logits = {0.0f, rare_logit};
  const SamplingParams p;
  const std::vector<double> prob = Expected(logits, p);
  constexpr int64_t kCalls = 100;
  constexpr int32_t kPer = 1000000;
  const Draws draws = Draw(engine, logits, p, 2024, kCalls, kPer);
  ASSERT_EQ(draws.total, kCalls * kPer);
  const double lambda = prob[1] * static_cast<double>(draws.total);
  const int64_t observed = draws.counts[1];
  std::printf("[two-token] rare probability %.6g: expected %.2f, observed %lld\n", prob[1], lambda,
              static_cast<long long>(observed));
  // Binomial(n, 1e-6) is bounded by Poisson(λ) tails (conservatively wider).
  EXPECT_GT(PoissonAtMost(observed, lambda), kPValueThreshold / 2) << "rare token too rare";
  EXPECT_GT(PoissonAtLeast(observed, lambda), kPValueThreshold / 2) << "rare token too common";
}

// The draw inside a 512-token block gives each token exactly its share,
// also where the block's sum (float partial sums per lane, as Z is summed)
// loses tokens far below a heavy one in their lane. Found by a statistical
// review: the walk added the tokens' masses in double, so the block's last
// token was out of reach (masses lost from the sum) or took the difference
// (masses rounded up), up to ~4e-7 of the row. The rows hold one heavy
// token, seven in its lane that the float sum loses (or rounds up) and a
// tail token at the block's end, the rest masked: their exact CDF in double
// is known to ~1e-15, and the draws whose u lands in its top 8e-7 (found by
// Philox, docs/semantics.md "Randomness") must give the CDF's token.
TEST(EngineExactDraw, TailTokensAtTheEndOfABlock) {
  using Philox = r123::Philox4x32;
  std::vector<std::pair<uint64_t, double>> draws;  // (seed, u) with u > 1 - 8e-7
  Philox philox;
  for (uint64_t seed = 0; draws.size() < 10; ++seed) {
    const Philox::key_type key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
    const Philox::ctr_type out = philox(Philox::ctr_type{{0, 0, 0, 0}}, key);
    const double u =
        u01fixedpt_open_closed_64_double((static_cast<uint64_t>(out[0]) << 32) | out[1]);
    if (u > 1.0 - 8e-7) draws.emplace_back(seed, u);
  }
  Engine engine({.max_threads = 1, .seed = 1});
  struct Case {
    const char* name;
    double lost;  // mass of each of the seven tokens in the heavy one's lane
    double tail;  // mass of the block's last token
    int in_tail = 0;
    int below_tail = 0;
  };
  Case cases[] = {{"lost from the sum", 5.5e-8, 3e-7}, {"rounded up", 0.75 * 0x1p-23, 1e-9}};
  constexpr int kVocab = 512;
  for (Case& c : cases) {
    std::vector<float> x(kVocab, -std::numeric_limits<float>::infinity());
    x[0] = 0.0f;
    for (int j = 8; j < 64; j += 8) x[j] = static_cast<float>(std::log(c.lost));
    x[kVocab - 1] = static_cast<float>(std::log(c.tail));
    std::vector<double> cdf(kVocab);
    double run = 0.0;
    for (int j = 0; j < kVocab; ++j) cdf[j] = run += std::exp(static_cast<double>(x[j]));
    for (double& v : cdf) v /= run;
    for (const auto& [seed, u] : draws) {
      const auto exact =
          static_cast<int32_t>(std::lower_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      if (std::abs(u - cdf[exact]) < 1e-12 || (exact > 0 && u - cdf[exact - 1] < 1e-12)) continue;
      RowRequest req;
      req.seed = seed;
      std::vector<RowResult> out(1);
      ASSERT_TRUE(engine
                      .sample(LogitsView{x.data(), 1, kVocab, kVocab, DType::kFloat32},
                              std::span(&req, 1), out)
                      .ok());
      EXPECT_EQ(out[0].tokens.at(0), exact) << c.name << ", seed " << seed << ", u = " << u;
      c.in_tail += exact == kVocab - 1;
      c.below_tail += exact < kVocab - 1 && u > cdf[kVocab - 2] - 2.5e-7;
    }
  }
  // (the seeds found reach the cases' edges: the tail's share in the first
  // row, the 2.1e-7 below it that the second row's tail took)
  EXPECT_GT(cases[0].in_tail, 0);
  EXPECT_GT(cases[1].below_tail, 0);
}

}  // namespace
