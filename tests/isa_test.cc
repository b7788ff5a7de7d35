// The instruction-set paths: how an engine picks one (EngineOptions::isa, the
// NUCLEUS_ISA environment variable, the CPU), and that every path this machine
// runs computes the same distributions and, but for draws within rounding of
// a token boundary, the same tokens. (The reference, statistical and
// reproducibility tests run once per path too: tests/CMakeLists.txt.)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "nucleus/engine.h"

namespace nucleus {
namespace {

constexpr Isa kAll[] = {Isa::kSSE2, Isa::kAVX2, Isa::kAVX512};

TEST(Isa, NamesRoundTrip) {
  for (Isa isa : {Isa::kAuto, Isa::kSSE2, Isa::kAVX2, Isa::kAVX512}) {
    ASSERT_TRUE(parse_isa(isa_name(isa)).has_value()) << isa_name(isa);
    EXPECT_EQ(*parse_isa(isa_name(isa)), isa);
  }
  EXPECT_EQ(parse_isa("AVX512"), Isa::kAVX512);
  EXPECT_EQ(parse_isa("Sse2"), Isa::kSSE2);
  EXPECT_FALSE(parse_isa("avx").has_value());
  EXPECT_FALSE(parse_isa("").has_value());
  EXPECT_FALSE(parse_isa("neon").has_value());
}

TEST(Isa, RunnableSetsRunUpToTheResolvedOne) {
  const std::vector<Isa> sets = runnable_isas();
  ASSERT_FALSE(sets.empty());
  EXPECT_EQ(sets.front(), Isa::kSSE2);
  EXPECT_EQ(sets.back(), resolve_isa(Isa::kAuto));
  for (size_t i = 1; i < sets.size(); ++i) {
    EXPECT_EQ(static_cast<int>(sets[i]), static_cast<int>(sets[i - 1]) + 1);
  }
  for (Isa isa : sets) EXPECT_EQ(Engine({.max_threads = 1, .seed = 1, .isa = isa}).isa(), isa);
}

TEST(Isa, EngineRunsTheResolvedSet) {
  const Isa best = best_isa();
  EXPECT_NE(best, Isa::kAuto);
  const Isa chosen = Engine({.max_threads = 1, .seed = 1}).isa();
  EXPECT_EQ(chosen, resolve_isa(Isa::kAuto));
  EXPECT_LE(static_cast<int>(chosen), static_cast<int>(best));
  // The environment caps the choice.
  if (const char* env = std::getenv("NUCLEUS_ISA")) {
    // (A value that names no set is ignored.)
    const auto cap = parse_isa(env);
    if (cap && *cap != Isa::kAuto) {
      EXPECT_EQ(static_cast<int>(chosen), std::min(static_cast<int>(*cap), static_cast<int>(best)));
    }
    if (!cap || *cap == Isa::kAuto) {
      EXPECT_EQ(chosen, best);
    }
  } else {
    EXPECT_EQ(chosen, best);
  }
  // An engine option caps it too, and never raises it past the CPU.
  EXPECT_EQ(Engine({.max_threads = 1, .seed = 1, .isa = Isa::kSSE2}).isa(), Isa::kSSE2);
  for (Isa isa : kAll) {
    const Isa got = Engine({.max_threads = 1, .seed = 1, .isa = isa}).isa();
    EXPECT_LE(static_cast<int>(got), static_cast<int>(isa));
    EXPECT_EQ(got, resolve_isa(isa));
  }
  // A value outside the enumeration (a cast) is kAuto's (-1 ran SSE2 and
  // said so; 9 the best).
  for (const int outside : {-1, 4, 9}) {
    EXPECT_EQ(resolve_isa(static_cast<Isa>(outside)), resolve_isa(Isa::kAuto)) << outside;
    EXPECT_EQ(Engine({.max_threads = 1, .seed = 1, .isa = static_cast<Isa>(outside)}).isa(),
              resolve_isa(Isa::kAuto))
        << outside;
  }
}

// Rows with the shapes the paths handle differently: whole packets and
// ragged tails, one chunk and several, peaked and flat.
struct Row {
  std::vector<float> x;
  RowRequest req;
};

std::vector<Row> make_rows() {
  std::mt19937 gen(2024);
  std::vector<Row> rows;
  const int64_t vocabs[] = {1, 7, 33, 1000, 4099, 40000, 70001};
  for (int i = 0; i < 140; ++i) {
    const int64_t vocab = vocabs[i % 7];
    Row r;
    std::normal_distribution<float> normal(0.0f, (i % 3 == 0) ? 6.0f : 1.5f);
    r.x.resize(static_cast<size_t>(vocab));
    for (float& v : r.x) v = normal(gen);
    SamplingParams& p = r.req.params;
    p.num_samples = 8;
    p.top_logprobs = static_cast<int32_t>(std::min<int64_t>(4, vocab));
    switch (i % 6) {
      case 0:
        break;
      case 1:
        p.temperature = 0.7f;
        p.top_k = 50;
        p.top_p = 0.9f;
        break;
      case 2:
        p.top_p = 0.95f;
        break;
      case 3:
        p.min_p = 0.05f;
        p.temperature = 1.3f;
        break;
      case 4:
        p.typical_p = 0.9f;
        p.top_n_sigma = 2.0f;
        break;
      case 5:
        p.preset = Preset::kLlamaCpp;
        p.top_k = 100;
        p.top_p = 0.8f;
        p.min_p = 0.02f;
        break;
    }
    r.req.seed = 77 + static_cast<uint64_t>(i);
    rows.push_back(std::move(r));
  }
  return rows;
}

TEST(Isa, EveryPathComputesTheSameDistribution) {
  const auto paths = runnable_isas();
  const auto rows = make_rows();
  for (const Row& r : rows) {
    const auto vocab = static_cast<int64_t>(r.x.size());
    const LogitsView view{r.x.data(), 1, vocab, vocab, DType::kFloat32};
    const RowRequest reqs[] = {r.req};
    std::vector<std::vector<float>> probs;
    for (Isa isa : paths) {
      Engine engine({.max_threads = 1, .seed = 1, .isa = isa});
      std::vector<float> p(static_cast<size_t>(vocab));
      Status st[1];
      const Status call = engine.probs(view, reqs, p.data(), vocab, st);
      ASSERT_TRUE(call.ok()) << call.to_string();
      ASSERT_TRUE(st[0].ok()) << st[0].to_string();
      probs.push_back(std::move(p));
    }
    for (size_t k = 1; k < probs.size(); ++k) {
      double sum = 0;
      for (size_t j = 0; j < probs[k].size(); ++j) {
        sum += probs[k][j];
        // Kept sets agree exactly unless a threshold lands within rounding.
        ASSERT_NEAR(probs[k][j], probs[0][j], 2e-6 + 1e-5 * probs[0][j])
            << isa_name(paths[k]) << " vs " << isa_name(paths[0]) << ", vocab " << vocab
            << ", token " << j;
      }
      EXPECT_NEAR(sum, 1.0, 1e-4);
    }
  }
}

TEST(Isa, EveryPathDrawsTheSameTokens) {
  const auto paths = runnable_isas();
  const auto rows = make_rows();
  int64_t draws = 0;
  int64_t differ = 0;
  for (const Row& r : rows) {
    const auto vocab = static_cast<int64_t>(r.x.size());
    const LogitsView view{r.x.data(), 1, vocab, vocab, DType::kFloat32};
    const RowRequest reqs[] = {r.req};
    std::vector<RowResult> first(1);
    for (size_t k = 0; k < paths.size(); ++k) {
      Engine engine({.max_threads = 1, .seed = 1, .isa = paths[k]});
      std::vector<RowResult> out(1);
      const Status call = engine.sample(view, reqs, out);
      ASSERT_TRUE(call.ok()) << call.to_string();
      ASSERT_TRUE(out[0].status.ok()) << out[0].status.to_string();
      ASSERT_EQ(out[0].tokens.size(), 8u);
      if (k == 0) {
        first = out;
        continue;
      }
      for (size_t j = 0; j < out[0].tokens.size(); ++j) {
        ++draws;
        differ += out[0].tokens[j] != first[0].tokens[j] ? 1 : 0;
        EXPECT_NEAR(out[0].logprobs[j], first[0].logprobs[j], 1e-4);
      }
      ASSERT_EQ(out[0].top_logprobs.size(), first[0].top_logprobs.size());
    }
  }
  // A draw differs only when its uniform lands within a few ulp of a token
  // boundary: about 1e-6 of draws at most. One in a thousand is the bound.
  EXPECT_LE(differ * 1000, draws) << differ << " of " << draws << " draws differ";
}

}  // namespace
}  // namespace nucleus
