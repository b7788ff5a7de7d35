// Engine::verify: speculative-decoding verification must leave the output
// distributed exactly as sampling from the target (Leviathan et al. 2023,
// Theorem 1), be reproducible per row, and reject malformed calls.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "nucleus/engine.h"

namespace nucleus {
namespace {

constexpr int64_t kVocab = 8;

// The regularised upper incomplete gamma Q(a, x) by its continued fraction /
// series (Numerical Recipes' gammq), for chi-square p-values.
double gamma_q(double a, double x) {
  if (x < a + 1.0) {
    double sum = 1.0 / a, term = sum;
    for (int n = 1; n < 1000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (std::fabs(term) < std::fabs(sum) * 1e-15) break;
    }
    return 1.0 - sum * std::exp(-x + a * std::log(x) - std::lgamma(a));
  }
  double b = x + 1.0 - a, c = 1.0 / 1e-300, d = 1.0 / b, h = d;
  for (int i = 1; i < 1000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < 1e-300) d = 1e-300;
    c = b + an / c;
    if (std::fabs(c) < 1e-300) c = 1e-300;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < 1e-15) break;
  }
  return std::exp(-x + a * std::log(x) - std::lgamma(a)) * h;
}

// p-value of observed counts against probabilities (cells with p = 0 must be
// empty).
double chi_square_p(const std::vector<int64_t>& counts, const std::vector<double>& p) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double stat = 0.0;
  int cells = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    if (p[i] == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " has probability 0";
      continue;
    }
    const double e = p[i] * static_cast<double>(n);
    stat += (counts[i] - e) * (counts[i] - e) / e;
    ++cells;
  }
  return gamma_q((cells - 1) / 2.0, stat / 2.0);
}

std::vector<double> softmax(const float* x) {
  std::vector<double> p(kVocab);
  double z = 0;
  for (int64_t i = 0; i < kVocab; ++i) z += p[i] = std::exp(static_cast<double>(x[i]));
  for (double& v : p) v /= z;
  return p;
}

struct Drafting {
  int64_t k = 2;
  std::vector<float> target;  // (k + 1) × vocab logits
  std::vector<float> draft;   // k × vocab probabilities
};

Drafting make_setup(int64_t k, uint32_t seed) {
  Drafting s;
  s.k = k;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  s.target.resize(static_cast<size_t>((k + 1) * kVocab));
  for (float& v : s.target) v = normal(gen);
  s.draft.resize(static_cast<size_t>(k * kVocab));
  for (int64_t i = 0; i < k; ++i) {
    std::vector<float> logits(kVocab);
    for (float& v : logits) v = normal(gen);
    const auto p = softmax(logits.data());
    for (int64_t t = 0; t < kVocab; ++t) s.draft[i * kVocab + t] = static_cast<float>(p[t]);
  }
  return s;
}

// Draws drafts from q with the test's own generator (independent of the
// engine's Philox streams), verifies, and tallies the first two outputs.
void run_trials(const Drafting& s, bool use_draft_probs, int trials, std::vector<int64_t>& first,
                std::vector<int64_t>& second_after_accept, int64_t& all_accepted) {
  Engine engine({.max_threads = 2, .seed = 3});
  std::mt19937_64 gen(99);
  const LogitsView view{s.target.data(), s.k + 1, kVocab, kVocab, DType::kFloat32};
  std::vector<int32_t> drafts(static_cast<size_t>(s.k));
  std::vector<VerifyResult> results(1);
  first.assign(kVocab, 0);
  second_after_accept.assign(kVocab, 0);
  all_accepted = 0;
  for (int t = 0; t < trials; ++t) {
    for (int64_t i = 0; i < s.k; ++i) {
      if (use_draft_probs) {
        std::discrete_distribution<int32_t> q(s.draft.begin() + i * kVocab,
                                              s.draft.begin() + (i + 1) * kVocab);
        drafts[static_cast<size_t>(i)] = q(gen);
      } else {
        drafts[static_cast<size_t>(i)] = static_cast<int32_t>(i % kVocab);  // a fixed guess
      }
    }
    RowRequest req;
    req.seed = 1234;
    req.step = static_cast<uint64_t>(t) * 100;  // fresh uniforms each trial
    ASSERT_TRUE(engine
                    .verify(view, s.k, drafts, use_draft_probs ? s.draft.data() : nullptr,
                            std::span(&req, 1), results)
                    .ok());
    const VerifyResult& r = results[0];
    ASSERT_TRUE(r.status.ok()) << r.status.to_string();
    ASSERT_EQ(static_cast<int64_t>(r.tokens.size()), r.accepted + 1);
    for (int32_t i = 0; i < r.accepted; ++i) EXPECT_EQ(r.tokens[i], drafts[static_cast<size_t>(i)]);
    ++first[static_cast<size_t>(r.tokens[0])];
    if (r.accepted >= 1) ++second_after_accept[static_cast<size_t>(r.tokens[1])];
    if (r.accepted == s.k) ++all_accepted;
  }
}

TEST(VerifyTest, OutputIsDistributedAsTheTargetWithDraftProbabilities) {
  const Drafting s = make_setup(2, 5);
  std::vector<int64_t> first, second;
  int64_t all = 0;
  run_trials(s, true, 200000, first, second, all);
  int64_t n = 0;
  for (int64_t c : first) n += c;
  ASSERT_EQ(n, 200000);
  // Token 0 follows the target at position 0; given draft 0 was accepted,
  // token 1 follows the target at position 1 (the drafts are independent).
  EXPECT_GT(chi_square_p(first, softmax(s.target.data())), 1e-6);
  EXPECT_GT(chi_square_p(second, softmax(s.target.data() + kVocab)), 1e-6);
  EXPECT_GT(all, 0);
}

TEST(VerifyTest, OutputIsDistributedAsTheTargetWithADeterministicDrafter) {
  const Drafting s = make_setup(2, 6);
  std::vector<int64_t> first, second;
  int64_t all = 0;
  run_trials(s, false, 200000, first, second, all);
  EXPECT_GT(chi_square_p(first, softmax(s.target.data())), 1e-6);
  EXPECT_GT(chi_square_p(second, softmax(s.target.data() + kVocab)), 1e-6);
}

// A draft its drafter gave no probability cannot have been drawn from q: it
// is rejected (as vLLM's rejection sampler does), though min(1, p/q) would
// be 1, and the token comes from max(p - q, 0).
TEST(VerifyTest, ADraftItsDrafterGaveNoProbabilityIsRejected) {
  const std::vector<float> target(2 * kVocab, 0.0f);  // uniform p
  std::vector<float> q(kVocab, 0.0f);
  q[1] = 1.0f;                              // the drafter is sure of token 1 ...
  const std::vector<int32_t> drafts = {0};  // ... but token 0 is drafted
  Engine engine({.max_threads = 1, .seed = 1});
  const LogitsView view{target.data(), 2, kVocab, kVocab, DType::kFloat32};
  std::vector<VerifyResult> results(1);
  std::vector<int64_t> counts(kVocab, 0);
  for (int t = 0; t < 40000; ++t) {
    RowRequest req;
    req.seed = 5;
    req.step = static_cast<uint64_t>(t) * 10;
    ASSERT_TRUE(engine.verify(view, 1, drafts, q.data(), std::span(&req, 1), results).ok());
    ASSERT_TRUE(results[0].status.ok()) << results[0].status.to_string();
    ASSERT_EQ(results[0].accepted, 0);
    ++counts[static_cast<size_t>(results[0].tokens[0])];
  }
  // max(p - q, 0): 1/8 on every token but 1, renormalised.
  std::vector<double> residual(kVocab, 1.0 / (kVocab - 1));
  residual[1] = 0.0;
  EXPECT_GT(chi_square_p(counts, residual), 1e-6);
}

TEST(VerifyTest, BonusTokenWhenTheDrafterMatchesTheTarget) {
  // q = p: every draft is accepted and the bonus follows the last target row.
  Drafting s = make_setup(1, 7);
  Engine engine({.max_threads = 1, .seed = 1});
  const LogitsView view{s.target.data(), 2, kVocab, kVocab, DType::kFloat32};
  std::vector<float> p(2 * kVocab);
  std::vector<Status> st(2);
  RowRequest plain;
  ASSERT_TRUE(engine.probs(view, std::span(&plain, 1), p.data(), kVocab, st).ok());
  std::copy_n(p.begin(), kVocab, s.draft.begin());
  std::vector<int64_t> bonus(kVocab, 0);
  std::mt19937_64 gen(1);
  std::discrete_distribution<int32_t> q(s.draft.begin(), s.draft.begin() + kVocab);
  std::vector<VerifyResult> results(1);
  for (int t = 0; t < 100000; ++t) {
    const std::vector<int32_t> drafts = {q(gen)};
    RowRequest req;
    req.seed = 77;
    req.step = static_cast<uint64_t>(t) * 10;
    ASSERT_TRUE(engine.verify(view, 1, drafts, s.draft.data(), std::span(&req, 1), results).ok());
    // min(1, p/q) = 1 up to float rounding of p vs q: nearly always accepted.
    if (results[0].accepted == 1) ++bonus[static_cast<size_t>(results[0].tokens[1])];
  }
  int64_t n = 0;
  for (int64_t c : bonus) n += c;
  EXPECT_GT(n, 99000);
  EXPECT_GT(chi_square_p(bonus, softmax(s.target.data() + kVocab)), 1e-6);
}

// Sampling a greedy row (temperature 0) returns its argmax, so verifying it
// must too: a draft is accepted only if it is the argmax of its target row
// (processed with the history grown by the drafts accepted before it), and
// the token after the accepted drafts is the argmax of the next target row,
// whatever the draft probabilities say.
TEST(VerifyTest, GreedyRowsAcceptExactlyTheArgmax) {
  constexpr int64_t k = 3;
  Engine engine({.max_threads = 1, .seed = 1});
  std::mt19937 gen(17);
  std::uniform_int_distribution<int32_t> any(0, kVocab - 1);
  std::uniform_int_distribution<int64_t> matched(0, k);
  std::vector<VerifyResult> results(1);
  std::vector<RowResult> sampled(1);
  for (int trial = 0; trial < 200; ++trial) {
    Drafting s = make_setup(k, 100 + static_cast<uint32_t>(trial));
    if (trial % 4 == 0) s.target[3] = s.target[5] = 9.0f;  // a tied max: token 3 wins
    RowRequest req;
    req.seed = 42;
    req.step = static_cast<uint64_t>(trial);
    req.params.temperature = 0.0f;
    req.params.repetition_penalty = 3.0f;  // the history moves the argmax
    const std::vector<int32_t> history = {any(gen)};
    req.generated_tokens = history;
    // The argmax at each position, given the drafts accepted before it; the
    // first m drafts are those argmaxes, draft m (if any) another token.
    const int64_t m = matched(gen);
    std::vector<int32_t> drafts(k), expected;
    std::vector<int32_t> grown = history;
    RowRequest at = req;
    for (int64_t i = 0; i <= k; ++i) {
      at.generated_tokens = grown;
      const LogitsView row{s.target.data() + i * kVocab, 1, kVocab, kVocab, DType::kFloat32};
      ASSERT_TRUE(engine.sample(row, std::span(&at, 1), sampled).ok());
      const int32_t argmax = sampled[0].tokens.at(0);
      if (i == m) {
        expected.push_back(argmax);
        if (i < k) drafts[static_cast<size_t>(i)] = (argmax + 1 + any(gen) % (kVocab - 1)) % kVocab;
        for (int64_t j = i + 1; j < k; ++j) drafts[static_cast<size_t>(j)] = any(gen);
        break;
      }
      drafts[static_cast<size_t>(i)] = argmax;
      expected.push_back(argmax);
      grown.push_back(argmax);
    }
    const LogitsView view{s.target.data(), k + 1, kVocab, kVocab, DType::kFloat32};
    // ... whatever the drafter's probabilities, even none on the draft (vLLM's
    // greedy path does not look at them).
    std::vector<float> none_on_drafts = s.draft;
    for (int64_t i = 0; i < k; ++i) {  // (the draft's mass moved to the next token)
      float* q = none_on_drafts.data() + i * kVocab;
      q[(drafts[i] + 1) % kVocab] += q[drafts[i]];
      q[drafts[i]] = 0.0f;
    }
    for (const float* q :
         std::array<const float*, 3>{s.draft.data(), nullptr, none_on_drafts.data()}) {
      ASSERT_TRUE(engine.verify(view, k, drafts, q, std::span(&req, 1), results).ok());
      const VerifyResult& r = results[0];
      ASSERT_TRUE(r.status.ok()) << r.status.to_string();
      EXPECT_EQ(r.accepted, m) << "trial " << trial << (q ? " with" : " without") << " q";
      EXPECT_EQ(r.tokens, expected) << "trial " << trial << (q ? " with" : " without") << " q";
    }
  }
}

TEST(VerifyTest, RowsAreReproducibleWhateverTheBatch) {
  const Drafting s = make_setup(3, 8);
  const int64_t rows = 5;
  std::vector<float> target;
  std::vector<float> draft;
  std::vector<int32_t> drafts;
  for (int64_t r = 0; r < rows; ++r) {
    target.insert(target.end(), s.target.begin(), s.target.end());
    draft.insert(draft.end(), s.draft.begin(), s.draft.end());
    for (int64_t i = 0; i < s.k; ++i) drafts.push_back(static_cast<int32_t>((r + i) % kVocab));
  }
  std::vector<RowRequest> reqs(rows);
  for (int64_t r = 0; r < rows; ++r) {
    reqs[r].seed = 500 + static_cast<uint64_t>(r);
    reqs[r].step = 3;
    reqs[r].params.temperature = 0.8f;
    reqs[r].params.top_k = 5;
  }
  Engine batch_engine({.max_threads = 4, .seed = 1});
  std::vector<VerifyResult> batch(rows);
  const LogitsView view{target.data(), rows * (s.k + 1), kVocab, kVocab, DType::kFloat32};
  ASSERT_TRUE(batch_engine.verify(view, s.k, drafts, draft.data(), reqs, batch).ok());
  Engine single_engine({.max_threads = 1, .seed = 1});
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<VerifyResult> one(1);
    const LogitsView v1{target.data() + r * (s.k + 1) * kVocab, s.k + 1, kVocab, kVocab,
                        DType::kFloat32};
    ASSERT_TRUE(single_engine
                    .verify(v1, s.k,
                            std::span<const int32_t>(drafts).subspan(static_cast<size_t>(r * s.k),
                                                                     static_cast<size_t>(s.k)),
                            draft.data() + r * s.k * kVocab, std::span(&reqs[r], 1), one)
                    .ok());
    EXPECT_EQ(one[0].tokens, batch[r].tokens) << "row " << r;
    EXPECT_EQ(one[0].accepted, batch[r].accepted) << "row " << r;
  }
}

TEST(VerifyTest, CallErrorsNameTheProblem) {
  const Drafting s = make_setup(2, 9);
  Engine engine({.max_threads = 1, .seed = 1});
  std::vector<VerifyResult> results(1);
  RowRequest req;
  req.seed = 1;
  const LogitsView view{s.target.data(), 3, kVocab, kVocab, DType::kFloat32};
  const std::vector<int32_t> drafts = {1, 2};

  Status st = engine.verify(view, -1, drafts, nullptr, std::span(&req, 1), results);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("num_draft = -1"), std::string::npos) << st.message();

  // (no rows is said as such, whatever num_draft is)
  const LogitsView none{s.target.data(), 0, kVocab, kVocab, DType::kFloat32};
  st = engine.verify(none, 2, drafts, nullptr, std::span(&req, 1), results);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("target_logits rows = 0 must be > 0"), std::string::npos)
      << st.message();

  st = engine.verify(view, 1, drafts, nullptr, std::span(&req, 1), results);  // 3 % 2 != 0
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("multiple of num_draft + 1"), std::string::npos) << st.message();

  const std::vector<int32_t> bad = {1, 8};
  st = engine.verify(view, 2, bad, nullptr, std::span(&req, 1), results);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("draft_tokens[1] = 8"), std::string::npos) << st.message();

  std::vector<float> q = s.draft;
  // (the value as other fields show it: std::to_string showed -1e-10 as
  // -0.000000, which would pass the check, and -1e30 in 37 digits)
  for (const auto& [value, shown] :
       {std::pair{-0.5f, "-0.5"}, std::pair{-1e-10f, "-1.00000001e-10"},
        std::pair{-1e30f, "-1.00000002e+30"},
        std::pair{std::numeric_limits<float>::infinity(), "inf"}}) {
    q[kVocab + 3] = value;
    st = engine.verify(view, 2, drafts, q.data(), std::span(&req, 1), results);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(std::string("row 0: draft_probs[1][3] = ") + shown +
                                " must be finite and >= 0"),
              std::string::npos)
        << st.message();
  }

  // A drafter row that is not a distribution (a scaled one would make the
  // output a mixture that is not the target's): its sum named.
  q = s.draft;
  for (int64_t t = 0; t < kVocab; ++t) q[kVocab + t] *= 0.5f;
  st = engine.verify(view, 2, drafts, q.data(), std::span(&req, 1), results);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("row 0: draft_probs[1] sums to 0.5: a draft distribution must sum "
                              "to 1 (within 0.01)"),
            std::string::npos)
      << st.message();
  q[kVocab] += 1.5f;  // over 1 on one token, 2 in all
  st = engine.verify(view, 2, drafts, q.data(), std::span(&req, 1), results);
  EXPECT_NE(st.message().find("row 0: draft_probs[1] sums to 2:"), std::string::npos)
      << st.message();
  // Rounding to a half type leaves the sum within the tolerance: accepted.
  q = s.draft;
  q[3] += 0.004f;
  EXPECT_TRUE(engine.verify(view, 2, drafts, q.data(), std::span(&req, 1), results).ok());

  std::vector<float> nan_target = s.target;
  nan_target[kVocab + 2] = std::nanf("");
  const LogitsView nan_view{nan_target.data(), 3, kVocab, kVocab, DType::kFloat32};
  ASSERT_TRUE(engine.verify(nan_view, 2, drafts, nullptr, std::span(&req, 1), results).ok());
  // Position 1 is only reached when draft 0 is accepted; either the row is
  // fine or its error names the token and the position.
  if (!results[0].status.ok()) {
    EXPECT_EQ(results[0].status.code(), StatusCode::kRowError);
    EXPECT_NE(results[0].status.message().find("token 2"), std::string::npos);
    EXPECT_NE(results[0].status.message().find("target position 1"), std::string::npos);
  }
}

}  // namespace
}  // namespace nucleus
