// The row scan that every call starts with: the argmax (first position of the
// max), the support (entries above -inf) and the first NaN or +inf, wherever
// they sit relative to the scan's blocks and the row's chunks. The scan reads
// blocks of a row with a fast finiteness probe and rescans only blocks that
// hold a non-finite value, and it looks for the argmax only in the first block
// that reaches the max, so the cases put ties, -inf, NaN and +inf in
// different blocks, at block edges and in the tail. Runs on every
// instruction set (tests/CMakeLists.txt).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/io/half.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kMax = std::numeric_limits<float>::max();

struct Expected {
  int32_t argmax = -1;
  int64_t finite = 0;
  int64_t bad_at = -1;  // first NaN or +inf
};

// Half-precision bits of a float (rounded to nearest) and back, for both
// half types; and the quiet NaN and +inf of each.
uint16_t ToHalf(DType t, float f) {
  return t == DType::kFloat16 ? detail::float_to_half_bits(f) : detail::float_to_bfloat16_bits(f);
}
float FromHalf(DType t, uint16_t h) { return detail::half_to_float(h, t); }
uint16_t HalfNaN(DType t) { return t == DType::kFloat16 ? 0x7E00 : 0x7FC0; }
uint16_t HalfInf(DType t) { return t == DType::kFloat16 ? 0x7C00 : 0x7F80; }
constexpr DType kHalfTypes[] = {DType::kBFloat16, DType::kFloat16};

Expected scalar_scan(const std::vector<float>& x) {
  Expected e;
  float max = -kInf;
  for (size_t i = 0; i < x.size(); ++i) {
    const float v = x[i];
    if (e.bad_at < 0 && !(v < kInf)) e.bad_at = static_cast<int64_t>(i);
    if (v > -kInf) ++e.finite;
    if (v > max) {
      max = v;
      e.argmax = static_cast<int32_t>(i);
    }
  }
  return e;
}

class ScanTest : public ::testing::Test {
 protected:
  // Greedy on one half-precision row twice: with nothing else asked for (the
  // lean scan, which never keeps the widened row) and with logprobs (the
  // widened row kept). The kept one must match the same row widened here and
  // given as float32 (another scan, and the logprobs read the stored values).
  void GreedyLeanAndKept(DType type, const std::vector<uint16_t>& row, std::vector<RowResult>& lean,
                         std::vector<RowResult>& kept) {
    const auto vocab = static_cast<int64_t>(row.size());
    const LogitsView view{row.data(), 1, vocab, vocab, type};
    lean.assign(1, RowResult{});
    kept.assign(1, RowResult{});
    RowRequest req;
    req.params.temperature = 0.0f;
    req.params.logprobs = false;
    ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), lean).ok());
    req.params.logprobs = true;
    ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), kept).ok());
    std::vector<float> widened(row.size());
    for (size_t i = 0; i < row.size(); ++i) {
      widened[i] = FromHalf(type, row[i]);
    }
    const LogitsView f32_view{widened.data(), 1, vocab, vocab, DType::kFloat32};
    std::vector<RowResult> f32(1);
    ASSERT_TRUE(engine_.sample(f32_view, std::span(&req, 1), f32).ok());
    EXPECT_EQ(kept[0].status.message(), f32[0].status.message());
    EXPECT_EQ(kept[0].tokens, f32[0].tokens);
    EXPECT_EQ(kept[0].support, f32[0].support);
    EXPECT_EQ(kept[0].logprobs, f32[0].logprobs);
  }
  // Greedy and full sampling of one row; checks the token, the support and
  // the row error against the scalar scan.
  void Check(const std::vector<float>& x, const std::string& what) {
    SCOPED_TRACE(what);
    const Expected e = scalar_scan(x);
    const auto vocab = static_cast<int64_t>(x.size());
    const LogitsView view{x.data(), 1, vocab, vocab, DType::kFloat32};
    // (copied: a bias of 0 on token 0 changes no value, but a float32 row
    // that processors apply to is copied by the scan that reads it)
    for (const auto& [temperature, copied] :
         {std::pair{0.0f, false}, std::pair{1.0f, false}, std::pair{0.0f, true}}) {
      SCOPED_TRACE(copied ? "copied" : "read in place");
      RowRequest req;
      req.params.temperature = temperature;
      req.seed = 3;
      const TokenBias zero_bias{0, 0.0f};
      if (copied) req.logit_bias = std::span(&zero_bias, 1);
      std::vector<RowResult> out(1);
      ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), out).ok());
      const RowResult& r = out[0];
      if (e.bad_at >= 0) {
        ASSERT_EQ(r.status.code(), StatusCode::kRowError) << r.status.to_string();
        EXPECT_NE(r.status.message().find("token " + std::to_string(e.bad_at) + " "),
                  std::string::npos)
            << r.status.message();
        continue;
      }
      if (e.finite == 0) {
        EXPECT_EQ(r.status.code(), StatusCode::kRowError) << r.status.to_string();
        continue;
      }
      ASSERT_TRUE(r.status.ok()) << r.status.to_string();
      // Sampled (T > 0): a token whose distance from the max overflows
      // float32 has no mass and leaves the support (docs/semantics.md).
      int64_t support = e.finite;
      if (temperature > 0.0f) {
        const float max = x[static_cast<size_t>(e.argmax)];
        support = 0;
        for (float v : x) support += (max - v) / temperature <= kMax ? 1 : 0;
      }
      EXPECT_EQ(r.support, support) << "T=" << temperature;
      if (temperature == 0.0f) {
        ASSERT_EQ(r.tokens.size(), 1u);
        EXPECT_EQ(r.tokens[0], e.argmax);
      } else {
        EXPECT_GT(x[static_cast<size_t>(r.tokens[0])], -kInf);
      }
    }
  }

  Engine engine_{EngineOptions{.max_threads = 2, .seed = 1}};
};

TEST_F(ScanTest, ArgmaxSupportAndBadLogitsAtEveryKindOfPosition) {
  std::mt19937_64 rng(11);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  // Lengths around the scan's 1024-entry blocks and the row's 16384-entry
  // chunks, and tails that fill no whole packet.
  for (int64_t vocab : {1, 7, 31, 1023, 1024, 1025, 3000, 16383, 16385, 40000}) {
    auto pos = [&] { return static_cast<size_t>(rng() % static_cast<uint64_t>(vocab)); };
    for (int trial = 0; trial < 12; ++trial) {
      std::vector<float> x(static_cast<size_t>(vocab));
      for (float& v : x) v = normal(rng);
      const std::string tag = "vocab " + std::to_string(vocab) + " trial " + std::to_string(trial);
      // Ties for the max, in different blocks.
      const float top = 30.0f;
      for (int t = 0; t < 1 + trial % 3; ++t) x[pos()] = top;
      Check(x, tag + " ties");
      // -inf in some blocks: those are rescanned, the rest are not.
      for (int t = 0; t < 1 + trial; ++t) x[pos()] = -kInf;
      Check(x, tag + " ties and -inf");
      // The first max inside a block that holds -inf, a later tie in a clean one.
      if (vocab > 2048) {
        x[5] = -kInf;
        x[9] = top + 1.0f;
        x[static_cast<size_t>(vocab) - 1] = top + 1.0f;
        Check(x, tag + " first max in a rescanned block");
      }
      // NaN or +inf before, at or after the max, and a second one later.
      std::vector<float> bad = x;
      bad[pos()] = trial % 2 ? kNaN : kInf;
      if (trial % 3 == 0) bad[pos()] = kNaN;
      Check(bad, tag + " bad logit");
    }
  }
}

TEST_F(ScanTest, EdgeRows) {
  for (int64_t vocab : {5, 1024, 5000}) {
    const auto n = static_cast<size_t>(vocab);
    std::vector<float> x(n, -kInf);
    Check(x, "every entry -inf");
    x[n - 1] = -1e30f;
    Check(x, "one finite entry, last");
    x.assign(n, -3.0f);
    x[n / 2] = -0.0f;
    x[n - 1] = 0.0f;
    Check(x, "-0.0 and +0.0 tie for the max");
    x.assign(n, 7.0f);
    Check(x, "a constant row");
    x.assign(n, -kInf);
    x[n - 1] = kNaN;
    Check(x, "NaN among -inf");
    x.assign(n, kMax);
    x[0] = -kMax;
    Check(x, "the largest floats");
  }
}

// Greedy half-precision rows with nothing else asked for are scanned without
// keeping the widened row: the same token, support and errors as when the
// row is kept (logprobs asked for).
TEST_F(ScanTest, HalfRowsScannedWithoutKeepingTheWidenedRow) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (DType type : kHalfTypes) {
    SCOPED_TRACE(dtype_name(type));
    for (int64_t vocab : {100, 1017, 2048, 40000}) {
      for (int trial = 0; trial < 6; ++trial) {
        std::vector<uint16_t> row(static_cast<size_t>(vocab));
        for (uint16_t& v : row) v = ToHalf(type, normal(rng));
        // The max twice (in different blocks, mostly): the first one wins.
        const auto top1 = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
        const auto top2 = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
        row[static_cast<size_t>(top1)] = ToHalf(type, 20.0f);
        row[static_cast<size_t>(top2)] = ToHalf(type, 20.0f);
        auto other = [&] {  // a position that holds neither max
          for (;;) {
            const auto t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
            if (t != top1 && t != top2) return static_cast<size_t>(t);
          }
        };
        row[other()] = ToHalf(type, -kInf);
        if (trial >= 4) row[other()] = trial == 4 ? HalfNaN(type) : HalfInf(type);
        std::vector<RowResult> lean, kept;
        ASSERT_NO_FATAL_FAILURE(GreedyLeanAndKept(type, row, lean, kept));
        SCOPED_TRACE("vocab " + std::to_string(vocab) + " trial " + std::to_string(trial));
        EXPECT_EQ(lean[0].status.code(), kept[0].status.code()) << lean[0].status.to_string();
        EXPECT_EQ(lean[0].status.message(), kept[0].status.message());
        if (trial >= 4) {
          EXPECT_EQ(lean[0].status.code(), StatusCode::kRowError);
          EXPECT_NE(lean[0].status.message().find(trial == 4 ? "NaN" : "+inf"), std::string::npos)
              << lean[0].status.message();
          continue;
        }
        ASSERT_TRUE(lean[0].status.ok()) << lean[0].status.to_string();
        EXPECT_EQ(lean[0].tokens, kept[0].tokens);
        ASSERT_EQ(lean[0].tokens.size(), 1u);
        EXPECT_EQ(lean[0].tokens[0], std::min(top1, top2));
        EXPECT_EQ(lean[0].support, kept[0].support);
        EXPECT_EQ(lean[0].support, vocab - 1);
      }
    }
  }
}

// A half-precision row whose first filter is top-k or min-p (nothing else reading
// its values, logprobs off) is scanned without keeping the widened row, and only the
// blocks that may hold that filter's members are widened and listed. The
// kept set must be the one the whole row gives: the support equals the
// number of tokens with a probability (Engine::probs widens the whole row),
// and every drawn token has one. Rows: peaked, flat, few levels (ties at
// every cut) and -inf runs; configurations where the list overflows (min-p
// near 0, top-k past the number of blocks) take the whole-row path.
TEST_F(ScanTest, HalfRowsGatherTheFirstFiltersCandidates) {
  std::mt19937_64 rng(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  struct Config {
    const char* name;
    std::function<void(SamplingParams&)> set;
  };
  const std::vector<Config> configs = {
      {"min-p 0.05", [](SamplingParams& p) { p.min_p = 0.05f; }},
      {"min-p 0.1, T 0.7", [](SamplingParams& p) { p.min_p = 0.1f, p.temperature = 0.7f; }},
      {"min-p 1e-30 (overflows)", [](SamplingParams& p) { p.min_p = 1e-30f; }},
      {"top-k 50", [](SamplingParams& p) { p.top_k = 50; }},
      {"top-k 50, top-p 0.9, T 0.7",
       [](SamplingParams& p) { p.top_k = 50, p.top_p = 0.9f, p.temperature = 0.7f; }},
      {"top-k 5, min-p 0.1", [](SamplingParams& p) { p.top_k = 5, p.min_p = 0.1f; }},
      {"top-k 3000 (past the blocks)", [](SamplingParams& p) { p.top_k = 3000; }},
      {"vllm: min-p 0.05, top-k 20",
       [](SamplingParams& p) { p.preset = Preset::kVLLM, p.min_p = 0.05f, p.top_k = 20; }},
      {"llama.cpp: top-k 40, min-p 0.05, T 1.5",
       [](SamplingParams& p) {
         p.preset = Preset::kLlamaCpp, p.top_k = 40, p.min_p = 0.05f, p.temperature = 1.5f;
       }},
  };
  for (int64_t vocab : {3000, 40000, 128256}) {
    for (const char* kind : {"peaked", "flat", "levels", "-inf runs"}) {
      std::vector<float> x(static_cast<size_t>(vocab));
      for (float& v : x) v = normal(rng);
      if (std::string(kind) == "peaked") {
        for (int i = 0; i < 5; ++i) x[rng() % static_cast<uint64_t>(vocab)] = 9.0f + i;
      } else if (std::string(kind) == "flat") {
        for (float& v : x) v *= 0.2f;
      } else if (std::string(kind) == "levels") {
        for (float& v : x) v = std::round(v * 2.0f) / 2.0f;
      } else {
        for (int64_t j = 0; j < vocab; j += 1024) {
          std::fill_n(x.begin() + j, std::min<int64_t>(600, vocab - j), -kInf);
        }
        x[static_cast<size_t>(vocab - 1)] = 6.0f;
      }
      for (DType type : kHalfTypes) {
        std::vector<uint16_t> row(x.size());
        for (size_t i = 0; i < x.size(); ++i) row[i] = ToHalf(type, x[i]);
        const LogitsView view{row.data(), 1, vocab, vocab, type};
        for (const Config& c : configs) {
          SCOPED_TRACE(std::string(dtype_name(type)) + " " + kind + " row of " +
                       std::to_string(vocab) + ", " + c.name);
          RowRequest req;
          c.set(req.params);
          req.params.num_samples = 32;
          req.params.logprobs = false;  // (logprobs read the whole row)
          req.seed = 7;
          std::vector<RowResult> sampled(1);
          ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), sampled).ok());
          ASSERT_TRUE(sampled[0].status.ok()) << sampled[0].status.to_string();
          std::vector<float> probs(static_cast<size_t>(vocab));
          std::vector<Status> status(1);
          ASSERT_TRUE(engine_.probs(view, std::span(&req, 1), probs.data(), vocab, status).ok());
          ASSERT_TRUE(status[0].ok()) << status[0].to_string();
          int64_t kept = 0;
          for (float q : probs) kept += q > 0.0f ? 1 : 0;
          EXPECT_EQ(sampled[0].support, kept);
          for (int32_t t : sampled[0].tokens) {
            EXPECT_GT(probs[static_cast<size_t>(t)], 0.0f) << "token " << t;
          }
        }
      }
    }
  }
}

// The lean half-precision scan orders 16-bit keys instead of widened floats: rows
// of negative values only, a zero max with -0 before +0, a negative NaN, a
// max in the row's last, partial packet, and whole blocks of -inf must scan as
// the widened row does.
TEST_F(ScanTest, LeanHalfScanAtTheEdgesOfItsOrder) {
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (DType type : kHalfTypes) {
    SCOPED_TRACE(dtype_name(type));
    auto h = [type](float f) { return ToHalf(type, f); };
    struct Case {
      const char* name;
      int64_t vocab;
      std::function<void(std::vector<uint16_t>&)> make;
      int32_t token;      // expected greedy token, or -1 for a row error
      const char* error;  // part of the row error's message
    };
    const std::vector<Case> cases = {
        {"negative values only", 3000,
         [&](std::vector<uint16_t>& r) {
           for (uint16_t& v : r) v = h(-50.0f - std::fabs(normal(rng)));
           r[1777] = h(-40.0f);
           r[2900] = h(-40.0f);
         },
         1777, nullptr},
        {"zero max, -0 first", 3000,
         [&](std::vector<uint16_t>& r) {
           for (uint16_t& v : r) v = h(-1.0f - std::fabs(normal(rng)));
           r[700] = 0x8000;   // -0
           r[1500] = 0x0000;  // +0
         },
         700, nullptr},
        {"negative NaN", 3000,
         [&](std::vector<uint16_t>& r) {
           for (uint16_t& v : r) v = h(normal(rng));
           r[2222] = static_cast<uint16_t>(HalfNaN(type) | 0x8000);
         },
         -1, "NaN"},
        {"max in the last, partial packet", 1041,
         [&](std::vector<uint16_t>& r) {
           for (uint16_t& v : r) v = h(normal(rng));
           r[1040] = h(30.0f);
         },
         1040, nullptr},
        {"blocks of -inf", 3000,
         [&](std::vector<uint16_t>& r) {
           for (uint16_t& v : r) v = h(-kInf);
           r[2600] = h(-3.0f);
           r[2601] = h(-2.5f);
         },
         2601, nullptr},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      std::vector<uint16_t> row(static_cast<size_t>(c.vocab));
      c.make(row);
      std::vector<RowResult> lean, kept;
      ASSERT_NO_FATAL_FAILURE(GreedyLeanAndKept(type, row, lean, kept));
      EXPECT_EQ(lean[0].status.message(), kept[0].status.message());
      if (c.token < 0) {
        EXPECT_EQ(lean[0].status.code(), StatusCode::kRowError);
        EXPECT_NE(lean[0].status.message().find(c.error), std::string::npos)
            << lean[0].status.message();
        continue;
      }
      ASSERT_TRUE(lean[0].status.ok()) << lean[0].status.to_string();
      ASSERT_EQ(lean[0].tokens.size(), 1u);
      EXPECT_EQ(lean[0].tokens[0], c.token);
      EXPECT_EQ(kept[0].tokens[0], c.token);
      EXPECT_EQ(lean[0].support, kept[0].support);
    }
  }
}

}  // namespace
}  // namespace nucleus
