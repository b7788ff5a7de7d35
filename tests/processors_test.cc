// Tests of the logit processors (SPEC section 2 steps 1-4, docs/semantics.md "Penalties"):
// allowed-token bitmask, banned tokens, logit bias, repetition / frequency / presence
// penalties and their order; plus the input layouts that must not change a result: half
// element types, padded row strides, and one request shared by every row.
//
// Each expected processed row is derived by hand; the engine's probabilities (T = 1, no
// filters) must be its softmax, and a greedy draw must be its argmax with the processed
// logprob under that softmax.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "engine/io/half.h"
#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// The base row used by most tests (vocab 8).
const std::vector<float> kRow = {0.5f, -1.0f, 2.0f, 0.0f, 1.0f, -0.5f, 1.5f, -2.0f};

// IEEE half bits of `f`; the tests only use values that half represents exactly.
uint16_t ToHalf(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  if (std::isnan(f)) return sign | 0x7E00u;
  if (std::isinf(f)) return sign | 0x7C00u;
  if (f == 0.0f) return sign;
  const int exponent = static_cast<int>((b >> 23) & 0xFFu) - 127 + 15;
  const uint32_t mantissa = b & 0x7FFFFFu;
  EXPECT_TRUE(exponent > 0 && exponent < 31 && (mantissa & 0x1FFFu) == 0)
      << f << " is not exactly representable as a normal half";
  return static_cast<uint16_t>(sign | (exponent << 10) | (mantissa >> 13));
}

// bfloat16 bits of `f` (the top half of the float32 bits); exact values only.
uint16_t ToBFloat16(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((b >> 16) | 0x0040u);
  EXPECT_EQ(b & 0xFFFFu, 0u) << f << " is not exactly representable as bfloat16";
  return static_cast<uint16_t>(b >> 16);
}

// softmax(z) in double; -inf gives exactly 0.
std::vector<double> Softmax(const std::vector<double>& z) {
  double max = -std::numeric_limits<double>::infinity();
  for (double v : z) max = std::max(max, v);
  double sum = 0.0;
  for (double v : z) sum += std::isinf(v) ? 0.0 : std::exp(v - max);
  std::vector<double> p;
  for (double v : z) p.push_back(std::isinf(v) ? 0.0 : std::exp(v - max) / sum);
  return p;
}

RowRequest Request() {
  RowRequest req;
  req.seed = 11;
  return req;
}

int32_t Word(uint32_t bits) { return static_cast<int32_t>(bits); }

class ProcessorsTest : public ::testing::Test {
 protected:
  // probs() for a batch; checks that the call and every row succeed.
  std::vector<float> Probs(const LogitsView& view, std::span<const RowRequest> requests) {
    std::vector<float> out(static_cast<size_t>(view.rows * view.vocab), -1.0f);
    std::vector<Status> row_status(static_cast<size_t>(view.rows));
    Status s = engine_.probs(view, requests, out.data(), view.vocab, row_status);
    EXPECT_TRUE(s.ok()) << s.to_string();
    for (const Status& rs : row_status) EXPECT_TRUE(rs.ok()) << rs.to_string();
    return out;
  }

  std::vector<RowResult> Sample(const LogitsView& view, std::span<const RowRequest> requests) {
    std::vector<RowResult> results(static_cast<size_t>(view.rows));
    Status s = engine_.sample(view, requests, results);
    EXPECT_TRUE(s.ok()) << s.to_string();
    for (const RowResult& r : results) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
    return results;
  }

  // Checks that `req` turns the float32 `row` into the `processed` logits.
  void ExpectProcessed(const std::vector<float>& row, RowRequest req,
                       const std::vector<double>& processed) {
    const auto vocab = static_cast<int64_t>(row.size());
    ASSERT_EQ(processed.size(), row.size());
    const LogitsView view{row.data(), 1, vocab, vocab, DType::kFloat32};
    const std::vector<double> expected = Softmax(processed);
    const std::vector<float> probs = Probs(view, std::span(&req, 1));
    for (size_t i = 0; i < row.size(); ++i) {
      if (expected[i] == 0.0) {
        EXPECT_EQ(probs[i], 0.0f) << "token " << i << " should be masked";
      } else {
        EXPECT_NEAR(probs[i], expected[i], 2e-6) << "token " << i;
      }
    }
    // Greedy: argmax of the processed logits (lowest id on ties), processed logprob under
    // their softmax, raw logprob under log_softmax of the input row.
    size_t argmax = 0;
    for (size_t i = 1; i < processed.size(); ++i) {
      if (processed[i] > processed[argmax]) argmax = i;
    }
    req.params.temperature = 0.0f;
    const RowResult r = Sample(view, std::span(&req, 1))[0];
    ASSERT_EQ(r.tokens.size(), 1u);
    EXPECT_EQ(r.tokens[0], static_cast<int32_t>(argmax));
    EXPECT_NEAR(r.logprobs[0], std::log(expected[argmax]), 1e-5);
    std::vector<double> raw(row.begin(), row.end());
    EXPECT_NEAR(r.raw_logprobs[0], std::log(Softmax(raw)[argmax]), 1e-5);
  }

  Engine engine_{EngineOptions{.max_threads = 2, .seed = 3}};
};

// ---------------------------------------------------------------------------------------------
// Allowed-token bitmask.

TEST_F(ProcessorsTest, AllowedMaskKeepsOnlyAllowedTokens) {
  // vocab 40: two words. Allowed: 0, 5, 31 (word 0, bit 31: the sign bit), 32, 39.
  std::vector<float> row(40);
  for (int i = 0; i < 40; ++i) row[i] = static_cast<float>((i * 7) % 11) * 0.25f - 1.0f;
  std::vector<double> processed(40, -kInf);
  for (int i : {0, 5, 31, 32, 39}) processed[i] = row[i];
  const int32_t mask[] = {Word(0x80000021u), Word(0x00000081u)};
  RowRequest req = Request();
  req.allowed_mask = mask;
  ExpectProcessed(row, req, processed);
  // Bits past the vocabulary (tokens 40..63 do not exist) change nothing.
  const int32_t dirty_mask[] = {Word(0x80000021u), Word(0xFFFFFF81u)};
  req.allowed_mask = dirty_mask;
  ExpectProcessed(row, req, processed);
}

TEST_F(ProcessorsTest, AllowedMaskAtWordBoundaries) {
  // vocab 32: exactly one word; allow 31 only.
  {
    std::vector<float> row(32, 1.0f);
    std::vector<double> processed(32, -kInf);
    processed[31] = 1.0;
    const int32_t mask[] = {Word(0x80000000u)};
    RowRequest req = Request();
    req.allowed_mask = mask;
    ExpectProcessed(row, req, processed);
  }
  // vocab 33: two words, the second holding one token; allow 32 only, which has the lowest
  // logit, so nothing but the mask can make it win.
  {
    std::vector<float> row(33, 1.0f);
    row[32] = -3.0f;
    std::vector<double> processed(33, -kInf);
    processed[32] = -3.0;
    const int32_t mask[] = {0, 1};
    RowRequest req = Request();
    req.allowed_mask = mask;
    ExpectProcessed(row, req, processed);
    const LogitsView view{row.data(), 1, 33, 33, DType::kFloat32};
    req.params.num_samples = 8;
    EXPECT_THAT(Sample(view, std::span(&req, 1))[0].tokens, ::testing::Each(32));
  }
  // vocab 3: one word, allow 0 and 2.
  {
    const std::vector<float> row = {0.0f, 5.0f, 1.0f};
    const int32_t mask[] = {0b101};
    RowRequest req = Request();
    req.allowed_mask = mask;
    ExpectProcessed(row, req, {0.0, -kInf, 1.0});
  }
}

// ---------------------------------------------------------------------------------------------
// Banned tokens and logit bias.

TEST_F(ProcessorsTest, BannedTokensAreMasked) {
  // Ban the two largest (ids 2 and 6; 2 listed twice): the argmax becomes id 4.
  const int32_t banned[] = {2, 6, 2};
  RowRequest req = Request();
  req.banned_tokens = banned;
  ExpectProcessed(kRow, req, {0.5, -1, -kInf, 0, 1, -0.5, -kInf, -2});
}

TEST_F(ProcessorsTest, LogitBiasIsAdded) {
  // id 0: 0.5 + 1.5 = 2 ties id 2 (greedy takes id 0); id 3: 0 - 0.25; id 7: -inf masks.
  const TokenBias bias[] = {{0, 1.5f}, {3, -0.25f}, {7, -kInf}};
  RowRequest req = Request();
  req.logit_bias = bias;
  ExpectProcessed(kRow, req, {2, -1, 2, -0.25, 1, -0.5, 1.5, -kInf});
}

// A mask that allows few tokens takes the candidates' path (the allowed
// tokens listed, the row neither copied nor scanned again; other
// processors change the listed values); the same request with the mask
// spelled as bans of every other token takes the copying path. Both must
// give the same tokens, supports and ranks, and log-probabilities and
// probabilities equal to rounding, under every filter, for each element
// type, with the mask alone, with bias and bans (on allowed tokens and
// not) and with penalties over a history of both, over a vocabulary that
// ends inside a word (whose bits past it are set) and a row with -inf
// logits among the allowed tokens.
TEST_F(ProcessorsTest, SparseMaskAsTheCopyingPath) {
  constexpr int64_t kVocab = 20000 + 7;
  std::vector<float> row(kVocab);
  uint32_t state = 5;
  for (float& v : row) {
    state = state * 1664525u + 1013904223u;
    // (multiples of 1/16 in [-8, 8): exact in half and bfloat16 too)
    v = static_cast<float>(static_cast<int32_t>(state >> 24) - 128) / 16.0f;
  }
  std::vector<int32_t> mask((kVocab + 31) / 32, 0);
  for (int64_t t = 3; t < kVocab; t += 13) {
    mask[static_cast<size_t>(t / 32)] |= Word(1u << (t % 32));
  }
  mask.back() |= Word(0xffffff00u);  // (bits 8..31: tokens 20007.. do not exist)
  row[3] = -kInf;
  row[3 + 13 * 40] = -kInf;
  std::vector<uint16_t> half(kVocab), bf16(kVocab);
  for (int64_t t = 0; t < kVocab; ++t) {
    half[static_cast<size_t>(t)] = ToHalf(row[static_cast<size_t>(t)]);
    bf16[static_cast<size_t>(t)] = ToBFloat16(row[static_cast<size_t>(t)]);
  }
  std::vector<int32_t> complement;  // the tokens the mask leaves out
  for (int64_t t = 0; t < kVocab; ++t) {
    if (!((static_cast<uint32_t>(mask[static_cast<size_t>(t / 32)]) >> (t % 32)) & 1u)) {
      complement.push_back(static_cast<int32_t>(t));
    }
  }
  // (3 + 13 k are allowed)
  const TokenBias bias[] = {{16, 2.5f}, {29, -1.0f}, {17, 4.0f}, {42, -kInf}};
  const int32_t bans[] = {55, 56};
  const int32_t history[] = {68, 68, 81, 5, 94, 94, 94, 16};
  std::vector<int32_t> bans_and_complement = complement;
  bans_and_complement.insert(bans_and_complement.end(), std::begin(bans), std::end(bans));
  struct Extra {
    const char* what;
    bool bias, penalties;
  };
  const Extra extras[] = {
      {"mask alone", false, false}, {"bias and bans", true, false}, {"penalties", false, true}};
  const std::vector<std::function<void(SamplingParams&)>> settings = {
      [](SamplingParams&) {},
      [](SamplingParams& p) { p.temperature = 0.0f; },
      [](SamplingParams& p) {
        p.temperature = 0.7f;
        p.top_k = 20;
        p.top_p = 0.9f;
      },
      [](SamplingParams& p) { p.top_p = 0.5f; },
      [](SamplingParams& p) { p.min_p = 0.1f; },
      [](SamplingParams& p) { p.typical_p = 0.8f; },
      [](SamplingParams& p) {
        p.top_n_sigma = 1.0f;
        p.preset = Preset::kLlamaCpp;
      },
      [](SamplingParams& p) {
        p.top_logprobs = 4;
        p.logprobs_mode = LogprobsMode::kRaw;
        p.num_samples = 3;
      },
  };
  const struct {
    const void* data;
    DType dtype;
  } inputs[] = {{row.data(), DType::kFloat32},
                {half.data(), DType::kFloat16},
                {bf16.data(), DType::kBFloat16}};
  for (const auto& in : inputs) {
    const LogitsView view{in.data, 1, kVocab, kVocab, in.dtype};
    for (size_t i = 0; i < settings.size(); ++i) {
      SCOPED_TRACE(testing::Message()
                   << "dtype " << static_cast<int>(in.dtype) << ", setting " << i);
      for (const Extra& extra : extras) {
        SCOPED_TRACE(extra.what);
        RowRequest sparse = Request();
        settings[i](sparse.params);
        if (sparse.params.top_logprobs == 0) sparse.params.top_logprobs = 2;
        sparse.seed = 77;
        if (extra.bias) {
          sparse.logit_bias = bias;
          sparse.banned_tokens = bans;
        }
        if (extra.penalties) {
          sparse.generated_tokens = history;
          sparse.params.repetition_penalty = 1.3f;
          sparse.params.frequency_penalty = 0.4f;
          sparse.params.presence_penalty = 0.2f;
        }
        RowRequest copying = sparse;
        sparse.allowed_mask = mask;
        copying.banned_tokens = extra.bias ? bans_and_complement : complement;
        const RowResult a = Sample(view, std::span(&sparse, 1))[0];
        const RowResult b = Sample(view, std::span(&copying, 1))[0];
        EXPECT_EQ(a.tokens, b.tokens);
        EXPECT_EQ(a.support, b.support);
        EXPECT_EQ(a.ranks, b.ranks);
        ASSERT_EQ(a.logprobs.size(), b.logprobs.size());
        for (size_t j = 0; j < a.logprobs.size(); ++j) {
          EXPECT_NEAR(a.logprobs[j], b.logprobs[j], 1e-5);
          EXPECT_NEAR(a.raw_logprobs[j], b.raw_logprobs[j], 1e-5);
        }
        ASSERT_EQ(a.top_logprobs.size(), b.top_logprobs.size());
        for (size_t j = 0; j < a.top_logprobs.size(); ++j) {
          EXPECT_EQ(a.top_logprobs[j].token, b.top_logprobs[j].token);
          EXPECT_NEAR(a.top_logprobs[j].logprob, b.top_logprobs[j].logprob, 1e-5);
        }
        const std::vector<float> pa = Probs(view, std::span(&sparse, 1));
        const std::vector<float> pb = Probs(view, std::span(&copying, 1));
        for (int64_t t = 0; t < kVocab; ++t) {
          const float x = pa[static_cast<size_t>(t)], y = pb[static_cast<size_t>(t)];
          ASSERT_NEAR(x, y, 1e-6f * std::max(1.0f, y)) << "token " << t;
          ASSERT_EQ(x == 0.0f, y == 0.0f) << "token " << t;
        }
      }
    }
  }
}

TEST_F(ProcessorsTest, MasksComeBeforeTheBias) {
  // Token 2 disallowed by the bitmask and token 6 banned: a +10 bias cannot bring them back.
  const int32_t mask[] = {Word(0xFFu & ~(1u << 2))};
  const int32_t banned[] = {6};
  const TokenBias bias[] = {{2, 10.0f}, {6, 10.0f}, {5, 1.0f}};
  RowRequest req = Request();
  req.allowed_mask = mask;
  req.banned_tokens = banned;
  req.logit_bias = bias;
  ExpectProcessed(kRow, req, {0.5, -1, -kInf, 0, 1, 0.5, -kInf, -2});
}

// ---------------------------------------------------------------------------------------------
// Penalties.

TEST_F(ProcessorsTest, RepetitionPenaltyOncePerDistinctToken) {
  // prompt {2, 0}, generated {1, 2, 2, 5}: distinct {0, 1, 2, 5}, each penalised once.
  const int32_t prompt[] = {2, 0};
  const int32_t generated[] = {1, 2, 2, 5};
  RowRequest req = Request();
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  // r = 2: positive logits divided (0.5 -> 0.25, 2 -> 1, not 0.25 or 0.5), negative ones
  // multiplied (-1 -> -2, -0.5 -> -1).
  req.params.repetition_penalty = 2.0f;
  ExpectProcessed(kRow, req, {0.25, -2, 1, 0, 1, -1, 1.5, -2});
  // r = 0.5 encourages repeats: positive doubled, negative halved.
  req.params.repetition_penalty = 0.5f;
  ExpectProcessed(kRow, req, {1, -0.5, 4, 0, 1, -0.25, 1.5, -2});
}

TEST_F(ProcessorsTest, FrequencyPenaltyCountsGeneratedTokensOnly) {
  // generated {1, 2, 2}: id 1 once, id 2 twice; id 4 appears in the prompt only.
  const int32_t prompt[] = {4, 4};
  const int32_t generated[] = {1, 2, 2};
  RowRequest req = Request();
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  req.params.frequency_penalty = 0.5f;  // id 1: -1 - 0.5; id 2: 2 - 1
  ExpectProcessed(kRow, req, {0.5, -1.5, 1, 0, 1, -0.5, 1.5, -2});
  req.params.frequency_penalty = -0.5f;  // negative: encourages, id 2: 2 + 1 = 3
  ExpectProcessed(kRow, req, {0.5, -0.5, 3, 0, 1, -0.5, 1.5, -2});
}

TEST_F(ProcessorsTest, PresencePenaltyOncePerGeneratedToken) {
  const int32_t prompt[] = {4};
  const int32_t generated[] = {1, 2, 2};
  RowRequest req = Request();
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  req.params.presence_penalty = 0.75f;  // id 1: -1.75; id 2: 1.25 (once); id 4 untouched
  ExpectProcessed(kRow, req, {0.5, -1.75, 1.25, 0, 1, -0.5, 1.5, -2});
}

TEST_F(ProcessorsTest, ProcessorsApplyInOrder) {
  // bias {0: -1, 1: +2, 2: +1}, r = 2, f = 0.5, q = 0.25, prompt {3, 0},
  // generated {2, 2, 1, 7}, token 7 banned.
  //   id 0: 0.5 - 1 = -0.5 -> rep (negative) -1; not generated             -> -1
  //   id 1: -1 + 2 = 1 -> rep 0.5 -> freq 0.5 - 0.5 = 0 -> presence          -> -0.25
  //          (repetition before bias would give -2 + 2 - 0.5 - 0.25 = -0.75)
  //   id 2: 2 + 1 = 3 -> rep 1.5 -> freq 1.5 - 1 = 0.5 -> presence           -> 0.25
  //          (frequency before repetition would give (3 - 1) / 2 - 0.25 = 0.75)
  //   id 3: 0 -> rep 0                                                       -> 0
  //   id 7: banned, stays -inf through every penalty (no NaN).
  const TokenBias bias[] = {{0, -1.0f}, {1, 2.0f}, {2, 1.0f}};
  const int32_t prompt[] = {3, 0};
  const int32_t generated[] = {2, 2, 1, 7};
  const int32_t banned[] = {7};
  RowRequest req = Request();
  req.logit_bias = bias;
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  req.banned_tokens = banned;
  req.params.repetition_penalty = 2.0f;
  req.params.frequency_penalty = 0.5f;
  req.params.presence_penalty = 0.25f;
  ExpectProcessed(kRow, req, {-1, -0.25, 0.25, 0, 1, -0.5, 1.5, -kInf});
}

TEST_F(ProcessorsTest, PenaltiesCanChangeTheGreedyToken) {
  const std::vector<float> row = {2.0f, 1.75f};
  const int32_t generated[] = {0};
  RowRequest req = Request();
  req.generated_tokens = generated;
  req.params.presence_penalty = 0.5f;
  ExpectProcessed(row, req, {1.5, 1.75});
}

// The repetition penalty on a token that holds its block's max where every block's max is
// the same (so that max is also the least of them): the block's max must be formed again.
// A kernel that passed over tokens below every block's max, and took "equal to the least
// block max" for "below", would leave the old max standing in block 0, and greedy, which
// looks for the row's max in the first block that claims it, would not find 512.
TEST_F(ProcessorsTest, RepetitionPenaltyOnATiedMaxCanChangeTheGreedyToken) {
  std::vector<float> row(2048, -1.0f);
  for (int b = 0; b < 4; ++b) row[static_cast<size_t>(512 * b)] = 2.0f;
  row[1] = 1.75f;
  const int32_t generated[] = {0};
  RowRequest req = Request();
  req.generated_tokens = generated;
  req.params.repetition_penalty = 2.0f;
  std::vector<double> processed(row.begin(), row.end());
  processed[0] = 1.0;
  ExpectProcessed(row, req, processed);
}

// ---------------------------------------------------------------------------------------------
// Element types, strides, shared requests.

// A request that exercises processors, temperature and filters at once.
RowRequest BusyRequest() {
  static const int32_t kPrompt[] = {1, 3};
  static const int32_t kGenerated[] = {2, 2, 4};
  static const TokenBias kBias[] = {{5, 0.5f}, {0, -0.25f}};
  RowRequest req;
  req.seed = 99;
  req.step = 4;
  req.prompt_tokens = kPrompt;
  req.generated_tokens = kGenerated;
  req.logit_bias = kBias;
  req.params.temperature = 0.75f;
  req.params.top_k = 8;
  req.params.top_p = 0.95f;
  req.params.repetition_penalty = 1.25f;
  req.params.frequency_penalty = 0.125f;
  req.params.presence_penalty = 0.25f;
  req.params.num_samples = 16;
  req.params.top_logprobs = 3;
  return req;
}

void ExpectSameResults(const std::vector<RowResult>& a, const std::vector<RowResult>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(a[i].status.code(), b[i].status.code());
    EXPECT_EQ(a[i].tokens, b[i].tokens);
    EXPECT_EQ(a[i].support, b[i].support);
    EXPECT_EQ(a[i].ranks, b[i].ranks);
    ASSERT_EQ(a[i].logprobs.size(), b[i].logprobs.size());
    ASSERT_EQ(a[i].raw_logprobs.size(), b[i].raw_logprobs.size());
    for (size_t j = 0; j < a[i].logprobs.size(); ++j) {
      // (NaN where logprobs were not asked for)
      EXPECT_EQ(std::isnan(a[i].logprobs[j]), std::isnan(b[i].logprobs[j]));
      if (std::isnan(a[i].logprobs[j]) || std::isnan(b[i].logprobs[j])) continue;
      EXPECT_FLOAT_EQ(a[i].logprobs[j], b[i].logprobs[j]);
      EXPECT_FLOAT_EQ(a[i].raw_logprobs[j], b[i].raw_logprobs[j]);
    }
    ASSERT_EQ(a[i].top_logprobs.size(), b[i].top_logprobs.size());
    for (size_t j = 0; j < a[i].top_logprobs.size(); ++j) {
      EXPECT_EQ(a[i].top_logprobs[j].token, b[i].top_logprobs[j].token);
      EXPECT_FLOAT_EQ(a[i].top_logprobs[j].logprob, b[i].top_logprobs[j].logprob);
    }
  }
}

// rows x vocab values k / 16 with |k| <= 127 (exact in half and bfloat16), some -inf.
std::vector<float> HalfExactRows(int rows, int vocab) {
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (int i = 0; i < rows * vocab; ++i) {
    const int k = (i * 37 + 11) % 255 - 127;
    x[i] = (i % 97 == 5) ? -kInf : static_cast<float>(k) / 16.0f;
  }
  return x;
}

TEST_F(ProcessorsTest, HalfTypesMatchFloat32) {
  for (int vocab : {12, 1000}) {
    SCOPED_TRACE(vocab);
    const int rows = 3;
    const std::vector<float> f32 = HalfExactRows(rows, vocab);
    std::vector<uint16_t> f16, bf16;
    for (float v : f32) {
      f16.push_back(ToHalf(v));
      bf16.push_back(ToBFloat16(v));
    }
    const RowRequest req = BusyRequest();
    const LogitsView v32{f32.data(), rows, vocab, vocab, DType::kFloat32};
    const LogitsView v16{f16.data(), rows, vocab, vocab, DType::kFloat16};
    const LogitsView vbf{bf16.data(), rows, vocab, vocab, DType::kBFloat16};

    const std::vector<float> p32 = Probs(v32, std::span(&req, 1));
    const std::vector<float> p16 = Probs(v16, std::span(&req, 1));
    const std::vector<float> pbf = Probs(vbf, std::span(&req, 1));
    for (size_t i = 0; i < p32.size(); ++i) {
      EXPECT_FLOAT_EQ(p16[i], p32[i]) << i;
      EXPECT_FLOAT_EQ(pbf[i], p32[i]) << i;
    }
    const std::vector<RowResult> r32 = Sample(v32, std::span(&req, 1));
    ExpectSameResults(Sample(v16, std::span(&req, 1)), r32);
    ExpectSameResults(Sample(vbf, std::span(&req, 1)), r32);
  }
}

TEST_F(ProcessorsTest, PaddedStridesIgnoreThePadding) {
  for (int vocab : {7, 1000}) {  // BusyRequest biases token 5
    SCOPED_TRACE(vocab);
    const int rows = 3;
    const int stride = vocab + 3 + vocab % 7;
    const std::vector<float> compact = HalfExactRows(rows, vocab);
    // Garbage in the padding: NaN, +inf, a huge value. None of it may leak into a result.
    const float garbage[] = {kNaN, kInf, 1e30f};
    std::vector<float> padded(static_cast<size_t>(rows * stride));
    std::vector<uint16_t> padded16(padded.size()), compact16;
    std::vector<uint16_t> padded_bf(padded.size()), compact_bf;
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < stride; ++c) {
        const float v = c < vocab ? compact[r * vocab + c] : garbage[(r + c) % 3];
        padded[r * stride + c] = v;
        padded16[r * stride + c] = c < vocab ? ToHalf(v) : ToHalf(std::isnan(v) ? kNaN : kInf);
        padded_bf[r * stride + c] = c < vocab ? ToBFloat16(v) : ToBFloat16(kNaN);
      }
    }
    for (float v : compact) {
      compact16.push_back(ToHalf(v));
      compact_bf.push_back(ToBFloat16(v));
    }
    const RowRequest req = BusyRequest();
    struct Case {
      LogitsView compact, padded;
    };
    const Case cases[] = {
        {{compact.data(), rows, vocab, vocab, DType::kFloat32},
         {padded.data(), rows, vocab, stride, DType::kFloat32}},
        {{compact16.data(), rows, vocab, vocab, DType::kFloat16},
         {padded16.data(), rows, vocab, stride, DType::kFloat16}},
        {{compact_bf.data(), rows, vocab, vocab, DType::kBFloat16},
         {padded_bf.data(), rows, vocab, stride, DType::kBFloat16}},
    };
    for (const Case& c : cases) {
      SCOPED_TRACE(dtype_name(c.compact.dtype));
      const std::vector<float> expected = Probs(c.compact, std::span(&req, 1));
      const std::vector<float> actual = Probs(c.padded, std::span(&req, 1));
      for (size_t i = 0; i < expected.size(); ++i) EXPECT_EQ(actual[i], expected[i]) << i;
      const std::vector<RowResult> want = Sample(c.compact, std::span(&req, 1));
      ExpectSameResults(Sample(c.padded, std::span(&req, 1)), want);
      for (const RowResult& r : want) EXPECT_THAT(r.logprobs, ::testing::Each(::testing::Le(0)));
    }
  }
}

TEST_F(ProcessorsTest, ZeroStrideMeansVocab) {
  const std::vector<float> rows = HalfExactRows(2, 50);
  const RowRequest req = BusyRequest();
  const LogitsView explicit_stride{rows.data(), 2, 50, 50, DType::kFloat32};
  const LogitsView zero_stride{rows.data(), 2, 50, 0, DType::kFloat32};
  EXPECT_EQ(Probs(zero_stride, std::span(&req, 1)), Probs(explicit_stride, std::span(&req, 1)));
  ExpectSameResults(Sample(zero_stride, std::span(&req, 1)),
                    Sample(explicit_stride, std::span(&req, 1)));
}

TEST_F(ProcessorsTest, SharedRequestEqualsOnePerRow) {
  const int rows = 5;
  const int vocab = 64;
  const std::vector<float> x = HalfExactRows(rows, vocab);
  const LogitsView view{x.data(), rows, vocab, vocab, DType::kFloat32};
  RowRequest shared = BusyRequest();
  const int32_t mask[] = {Word(0xFFFFFFFFu), Word(0x0000FFFFu)};  // tokens 0..47
  const int32_t banned[] = {7};
  shared.allowed_mask = mask;
  shared.banned_tokens = banned;
  const std::vector<RowRequest> per_row(rows, shared);

  const std::vector<float> p_shared = Probs(view, std::span(&shared, 1));
  const std::vector<float> p_per_row = Probs(view, per_row);
  EXPECT_EQ(p_shared, p_per_row);
  for (int r = 0; r < rows; ++r) {
    for (int c = 48; c < vocab; ++c) EXPECT_EQ(p_shared[r * vocab + c], 0.0f);
    EXPECT_EQ(p_shared[r * vocab + 7], 0.0f);
  }
  ExpectSameResults(Sample(view, std::span(&shared, 1)), Sample(view, per_row));
}

// A long row is processed a run of segments per thread (RowPipeline::check_and_widen): every
// processor must apply to the tokens of every part, at and across part boundaries, whatever
// the thread count. The row: 100,000 tokens (7 segments of 16384; with 2 or 4 threads the
// parts split at segment boundaries), every list reaching tokens on both sides of them.
TEST_F(ProcessorsTest, LongRowsGetEveryChangeOnEveryThreadCount) {
  constexpr int64_t kVocab = 100000;
  std::vector<float> row(kVocab);
  for (int64_t i = 0; i < kVocab; ++i)
    row[i] = static_cast<float>((i * 7919) % 1000) / 100.0f - 5.0f;
  const std::vector<int32_t> boundaries = {0,     16383, 16384, 32767, 49152,
                                           65535, 65536, 81920, 99999};
  std::vector<int32_t> allowed((kVocab + 31) / 32, Word(0xFFFFFFFFu));
  for (int32_t t : {5, 16385, 50000, 99998, 16415}) {
    allowed[t / 32] = Word(static_cast<uint32_t>(allowed[t / 32]) & ~(1u << (t % 32)));
  }
  const std::vector<int32_t> banned = {16383, 65536, 7};
  const std::vector<TokenBias> bias = {{16384, 3.0f}, {99999, 2.5f}, {16384, 1.5f}, {32767, -1.0f}};
  std::vector<int32_t> prompt = boundaries;
  prompt.push_back(4242);
  const std::vector<int32_t> generated = {49152, 49152, 65535, 81920, 0, 123, 49152};
  RowRequest req = Request();
  req.allowed_mask = allowed;
  req.banned_tokens = banned;
  req.logit_bias = bias;
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  req.params.repetition_penalty = 1.5f;
  req.params.frequency_penalty = 0.25f;
  req.params.presence_penalty = 0.5f;

  // SPEC section 2, steps 1-4, by hand.
  std::vector<float> x = row;
  for (int64_t i = 0; i < kVocab; ++i) {
    if (!((static_cast<uint32_t>(allowed[i / 32]) >> (i % 32)) & 1u)) x[i] = -kInf;
  }
  for (int32_t t : banned) x[t] = -kInf;
  for (const TokenBias& b : bias) x[b.token] += b.bias;
  std::set<int32_t> distinct(prompt.begin(), prompt.end());
  distinct.insert(generated.begin(), generated.end());
  for (int32_t t : distinct) x[t] = x[t] > 0.0f ? x[t] / 1.5f : x[t] * 1.5f;
  std::map<int32_t, int> count;
  for (int32_t t : generated) ++count[t];
  for (const auto& [t, c] : count) {
    if (x[t] == -kInf) continue;
    x[t] -= 0.25f * static_cast<float>(c);
    x[t] -= 0.5f;
  }
  const std::vector<double> expected = Softmax(std::vector<double>(x.begin(), x.end()));

  const LogitsView view{row.data(), 1, kVocab, kVocab, DType::kFloat32};
  std::vector<RowResult> first;
  for (int threads : {1, 2, 4}) {
    SCOPED_TRACE(threads);
    Engine engine(EngineOptions{.max_threads = threads, .seed = 3});
    std::vector<float> probs(kVocab, -1.0f);
    std::vector<Status> row_status(1);
    ASSERT_TRUE(engine.probs(view, std::span(&req, 1), probs.data(), kVocab, row_status).ok());
    ASSERT_TRUE(row_status[0].ok()) << row_status[0].to_string();
    for (int32_t t : {5,     16385, 50000, 99998, 16415, 16383, 65536, 7, 16384, 99999,
                      32767, 49152, 65535, 81920, 0,     123,   4242,  1, 16382, 65537}) {
      if (expected[static_cast<size_t>(t)] == 0.0) {
        EXPECT_EQ(probs[static_cast<size_t>(t)], 0.0f) << "token " << t;
      } else {
        EXPECT_NEAR(probs[static_cast<size_t>(t)] / expected[static_cast<size_t>(t)], 1.0, 1e-4)
            << "token " << t;
      }
    }
    req.params.num_samples = 16;
    std::vector<RowResult> results(1);
    ASSERT_TRUE(engine.sample(view, std::span(&req, 1), results).ok());
    req.params.num_samples = 1;
    if (first.empty()) {
      first = results;
    } else {
      ExpectSameResults(first, results);
    }
  }
}

// Bias, bans and penalties change few tokens of a long row: the engine notes each change
// instead of scanning the row again (docs/architecture.md "Processors"). These cases
// change exactly what that bookkeeping must get right: the max of a block lowered (and
// tied with another chunk's token), a block max raised, the row's max banned, a finite
// logit pushed to -inf (the support shrinks), and +inf made by a bias (a row error naming
// the first such token), each against the processed row by hand, on 1, 2 and 4 threads.
TEST_F(ProcessorsTest, SparseChangesToALongRowOnEveryThreadCount) {
  constexpr int64_t kVocab = 100000;
  std::vector<float> row(kVocab);
  for (int64_t i = 0; i < kVocab; ++i)
    row[i] = static_cast<float>((i * 7919) % 1000) / 100.0f - 5.0f;  // [-5, 5)
  row[70000] = 9.0f;    // the max; 6.0 after a repetition penalty of 1.5
  row[70001] = 5.5f;    // its block's max once it is lowered
  row[81000] = 6.0f;    // another chunk's token, tied with it then
  row[90000] = -3e38f;  // -inf after a repetition penalty of 2

  struct Case {
    const char* name;
    std::vector<int32_t> banned;
    std::vector<TokenBias> bias;
    std::vector<int32_t> prompt;
    float repetition;
    const char* error;  // the row error expected, or null (then 30000 and 95000 are 3e38)
  };
  const std::vector<Case> cases = {
      {"max lowered to a tie", {}, {}, {70000, 5, 16384, 99999}, 1.5f, nullptr},
      {"block max raised", {}, {{20000, 20.0f}, {20001, -1.0f}}, {70000}, 1.5f, nullptr},
      {"max banned", {70000, 81000}, {}, {}, 1.0f, nullptr},
      {"finite to -inf", {}, {}, {90000, 70000}, 2.0f, nullptr},
      // (listed again and again, in one packet of the vector kernel and across
      // packets: penalised once, and the token lost to -inf counted once)
      {"finite to -inf, listed many times",
       {},
       {},
       {90000, 70000, 90000, 5, 90000, 70000, 16384, 90000, 1,     2,     3,    4,
        6,     7,     8,     9, 10,    11,    12,    13,    90000, 70000, 90000},
       2.0f,
       nullptr},
      {"block max raised by a penalty below 1",
       {},
       {},
       {70001, 20000, 70001, 70001},
       0.5f,
       nullptr},
      {"bias to +inf", {}, {{95000, 3e38f}, {30000, 3e38f}}, {}, 1.0f, "logit of token 30000"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::vector<float> input = row;
    if (c.error) input[30000] = input[95000] = 3e38f;  // +inf after a bias of 3e38
    const LogitsView view{input.data(), 1, kVocab, kVocab, DType::kFloat32};
    RowRequest req = Request();
    req.banned_tokens = c.banned;
    req.logit_bias = c.bias;
    req.prompt_tokens = c.prompt;
    req.params.repetition_penalty = c.repetition;
    // SPEC section 2, steps 2-4, by hand.
    std::vector<float> x = input;
    for (int32_t t : c.banned) x[t] = -kInf;
    for (const TokenBias& b : c.bias) x[b.token] += b.bias;
    for (int32_t t : std::set<int32_t>(c.prompt.begin(), c.prompt.end()))
      x[t] = x[t] > 0.0f ? x[t] / c.repetition : x[t] * c.repetition;
    int64_t argmax = 0, finite = 0;
    for (int64_t i = 0; i < kVocab; ++i) {
      if (x[i] > x[argmax]) argmax = i;
      finite += x[i] > -kInf ? 1 : 0;
    }
    const std::vector<double> expected = Softmax(std::vector<double>(x.begin(), x.end()));
    for (int threads : {1, 2, 4}) {
      SCOPED_TRACE(threads);
      Engine engine(EngineOptions{.max_threads = threads, .seed = 3});
      req.params.temperature = 0.0f;
      std::vector<RowResult> results(1);
      ASSERT_TRUE(engine.sample(view, std::span(&req, 1), results).ok());
      if (c.error) {
        EXPECT_THAT(results[0].status.to_string(), ::testing::HasSubstr(c.error));
        EXPECT_THAT(results[0].status.to_string(),
                    ::testing::HasSubstr("not finite after bias and penalties"));
        continue;
      }
      ASSERT_TRUE(results[0].status.ok()) << results[0].status.to_string();
      EXPECT_EQ(results[0].tokens[0], argmax);
      EXPECT_EQ(results[0].support, finite);
      req.params.temperature = 1.0f;
      std::vector<float> probs(kVocab, -1.0f);
      std::vector<Status> row_status(1);
      ASSERT_TRUE(engine.probs(view, std::span(&req, 1), probs.data(), kVocab, row_status).ok());
      ASSERT_TRUE(row_status[0].ok()) << row_status[0].to_string();
      for (int32_t t : {70000, 70001, 81000, 90000, 20000, 20001, 5, 16384, 99999, 0, 50000}) {
        if (expected[static_cast<size_t>(t)] == 0.0) {
          EXPECT_EQ(probs[static_cast<size_t>(t)], 0.0f) << "token " << t;
        } else {
          EXPECT_NEAR(probs[static_cast<size_t>(t)] / expected[static_cast<size_t>(t)], 1.0, 1e-4)
              << "token " << t;
        }
      }
    }
  }
}

// A repetition penalty before top-p on a long row: the tokens drawn, the support and the
// processed logprobs must be those of the row penalised by hand with no history, and every
// result that of the same request with a zero logit bias added (which takes the penalty's
// scalar path instead of the vector kernel); on a peaked row (top-p gathers its few members)
// and a flat one, for the cases the bookkeeping must get right (the max lowered to a tie,
// raised past the rest, a finite logit made -inf, tokens listed twice, at sampled positions
// and at the ends, the longest histories), on 1, 2 and 4 threads; alone and under a dense
// allowed-token mask that masks some of the listed tokens (the kernel applies the mask to
// the values it reads from the input row). A penalty that makes a logit +inf is a row error
// naming the first such token.
TEST_F(ProcessorsTest, PenaltyBeforeTopPMatchesTheRowPenalisedByHand) {
  constexpr int64_t kVocab = 100000;
  // (a bias that changes nothing but takes the scalar penalty path)
  const std::vector<TokenBias> zero_bias = {{1, 0.0f}};
  std::vector<float> flat(kVocab), peaked(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) {
    const int64_t rank = (i * 7919) % kVocab;  // (a permutation: 7919 is prime)
    flat[i] = static_cast<float>(rank % 1000) / 100.0f - 5.0f;
    peaked[i] = -1.5f * std::log1p(static_cast<float>(rank));
  }
  for (std::vector<float>* row : {&flat, &peaked}) {
    std::vector<float>& x = *row;
    x[70000] = 9.0f;    // the max; 6.0 after a repetition penalty of 1.5
    x[70001] = 5.5f;    // its block's max once it is lowered; 11 after a penalty of 0.5
    x[81000] = 6.0f;    // another chunk's token, tied with it then
    x[90000] = -3e38f;  // -inf after a repetition penalty of 2
    x[99968] = 4.0f;    // the last chunk's last sampled position (a multiple of 128)
  }
  // (dense: half the bits of one word in three cleared, and some listed tokens' bits)
  std::vector<int32_t> mask((kVocab + 31) / 32, Word(0xFFFFFFFFu));
  for (size_t w = 0; w < mask.size(); w += 3) mask[w] = Word(0x0f0f0f0fu);
  for (int32_t t : {70001, 5, 128, 99999}) {
    mask[t / 32] = Word(static_cast<uint32_t>(mask[t / 32]) & ~(1u << (t % 32)));
  }
  auto allowed = [&](int64_t t) {
    return ((static_cast<uint32_t>(mask[t / 32]) >> (t % 32)) & 1u);
  };
  std::vector<int32_t> long_history;
  for (int64_t i = 0; i < kVocab / 8; ++i) {
    long_history.push_back(static_cast<int32_t>((i * 104729) % kVocab));
  }
  struct Case {
    const char* name;
    std::vector<int32_t> prompt, generated;
    float repetition;
  };
  const std::vector<Case> cases = {
      {"max lowered to a tie", {70000, 5, 16384, 99999}, {}, 1.5f},
      {"raised past the max by a penalty below 1", {20000}, {70001, 70001}, 0.5f},
      {"finite to -inf", {90000}, {70000, 90000}, 2.0f},
      {"listed in both lists, at sampled positions and the ends",
       {128, 256, 16384, 99999, 70000, 0},
       {128, 70000, 0, 99968, 99999, 256},
       1.3f},
      {"the longest history taken", long_history, {70000, 81000}, 1.2f},
  };
  for (const std::vector<float>* row : {&peaked, &flat}) {
    SCOPED_TRACE(row == &flat ? "flat" : "peaked");
    const LogitsView view{row->data(), 1, kVocab, kVocab, DType::kFloat32};
    for (const Case& c : cases) {
      for (const bool masked : {false, true}) {
        SCOPED_TRACE(c.name);
        SCOPED_TRACE(masked ? "masked" : "no mask");
        std::vector<float> x = *row;  // SPEC section 2, steps 1 and 4, by hand
        for (int64_t t = 0; masked && t < kVocab; ++t) {
          if (!allowed(t)) x[t] = -kInf;
        }
        std::set<int32_t> distinct(c.prompt.begin(), c.prompt.end());
        distinct.insert(c.generated.begin(), c.generated.end());
        for (int32_t t : distinct) x[t] = x[t] > 0.0f ? x[t] / c.repetition : x[t] * c.repetition;
        const LogitsView by_hand{x.data(), 1, kVocab, kVocab, DType::kFloat32};
        for (int threads : {1, 2, 4}) {
          SCOPED_TRACE(threads);
          Engine engine(EngineOptions{.max_threads = threads, .seed = 3});
          for (float top_p : {0.9f, 0.5f}) {
            for (float temperature : {1.0f, 0.7f}) {
              for (int top_logprobs : {-1, 0, 3}) {  // (-1: no logprobs)
                RowRequest req = Request();
                req.params.top_p = top_p;
                req.params.temperature = temperature;
                req.params.num_samples = 16;
                req.params.logprobs = top_logprobs >= 0;
                req.params.top_logprobs = std::max(top_logprobs, 0);
                req.params.repetition_penalty = c.repetition;
                req.prompt_tokens = c.prompt;
                req.generated_tokens = c.generated;
                if (masked) req.allowed_mask = mask;
                std::vector<RowResult> kernel(1), scalar(1), hand(1);
                ASSERT_TRUE(engine.sample(view, std::span(&req, 1), kernel).ok());
                req.logit_bias = zero_bias;
                ASSERT_TRUE(engine.sample(view, std::span(&req, 1), scalar).ok());
                req.logit_bias = std::span<const TokenBias>();
                req.prompt_tokens = std::span<const int32_t>();
                req.generated_tokens = std::span<const int32_t>();
                req.allowed_mask = std::span<const int32_t>();
                ASSERT_TRUE(engine.sample(by_hand, std::span(&req, 1), hand).ok());
                ASSERT_TRUE(kernel[0].status.ok()) << kernel[0].status.to_string();
                ExpectSameResults(kernel, scalar);
                EXPECT_EQ(kernel[0].tokens, hand[0].tokens);
                EXPECT_EQ(kernel[0].support, hand[0].support);
                if (req.params.logprobs) {
                  ASSERT_EQ(kernel[0].logprobs.size(), hand[0].logprobs.size());
                  for (size_t j = 0; j < hand[0].logprobs.size(); ++j) {
                    EXPECT_FLOAT_EQ(kernel[0].logprobs[j], hand[0].logprobs[j]);
                  }
                }
              }
            }
          }
        }
      }
    }
    // A penalty below 1 that makes a positive logit +inf: a row error naming the first
    // such token, on both paths.
    RowRequest req = Request();
    req.params.top_p = 0.9f;
    req.params.repetition_penalty = 1e-38f;  // x / 1e-38 overflows for x > 3.4
    const std::vector<int32_t> prompt = {70001, 5, 81000}, generated = {70000};
    req.prompt_tokens = prompt;
    req.generated_tokens = generated;
    std::vector<RowResult> kernel(1), scalar(1);
    ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), kernel).ok());
    req.logit_bias = zero_bias;
    ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), scalar).ok());
    EXPECT_THAT(kernel[0].status.to_string(), ::testing::HasSubstr("logit of token 70000"));
    EXPECT_THAT(kernel[0].status.to_string(),
                ::testing::HasSubstr("not finite after bias and penalties"));
    EXPECT_EQ(kernel[0].status.to_string(), scalar[0].status.to_string());
  }
}

// The raw log-probabilities are log_softmax of the input row whatever the
// processors did (SPEC section 6). At temperature 1, when a pass formed the
// processed row's whole normaliser (full sampling, top-p, typical-p,
// greedy), the raw one is derived from it and the changed tokens (those an
// allowed-token mask leaves out too); every other case (a mask that leaves
// out many tokens, a bias that raises a token, a long history, min-p,
// another temperature) takes the raw row's own pass. Both
// must give the input row's log_softmax: a max lowered by the penalty, a
// history with repeats, banned and biased tokens, peaked and flat rows.
TEST_F(ProcessorsTest, RawLogprobsAreTheInputRowsUnderEveryProcessor) {
  constexpr int64_t kVocab = 50000;
  std::vector<float> flat(kVocab), peaked(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) {
    const int64_t rank = (i * 7919) % kVocab;
    flat[i] = static_cast<float>(rank % 1000) / 100.0f - 5.0f;
    peaked[i] = -1.5f * std::log1p(static_cast<float>(rank));
  }
  std::vector<int32_t> history, long_history;
  for (int64_t i = 0; i < 2000; ++i) history.push_back(static_cast<int32_t>((i * 104729) % kVocab));
  for (int64_t i = 0; i < 4000; ++i) {
    long_history.push_back(static_cast<int32_t>((i * 15485863) % kVocab));
  }
  std::vector<int32_t> allowed((kVocab + 31) / 32, Word(0xFFFFFFFFu));
  allowed[3] = Word(0x0000FFFFu);
  const std::vector<TokenBias> lowering = {{17, -3.0f}, {25000, -0.5f}, {17, -1.0f}};
  const std::vector<TokenBias> raising = {{42, 2.0f}};
  for (const std::vector<float>* row : {&peaked, &flat}) {
    SCOPED_TRACE(row == &flat ? "flat" : "peaked");
    const std::vector<float>& x = *row;
    int32_t argmax = 0;
    for (int32_t i = 1; i < kVocab; ++i) argmax = x[i] > x[argmax] ? i : argmax;
    double max = x[argmax], sum = 0.0;
    for (float v : x) sum += std::exp(static_cast<double>(v) - max);
    const double log_z = max + std::log(sum);
    // (the max token repeated and last in the history, so the penalty lowers it)
    std::vector<int32_t> generated = history;
    generated.insert(generated.end(), {argmax, argmax, history[5]});
    const std::vector<int32_t> banned = {argmax, 3, 49999};
    // Masks that leave out the max: 33 tokens (the raw normaliser from the
    // processed one and the left-out tokens' masses), and one token in six
    // (the raw row's own pass).
    std::vector<int32_t> few_out((kVocab + 31) / 32, Word(0xFFFFFFFFu)), many_out = few_out;
    few_out[7] = 0;
    for (size_t w = 0; w < many_out.size(); w += 3) many_out[w] = Word(0x0f0f0f0fu);
    for (std::vector<int32_t>* m : {&few_out, &many_out}) {
      (*m)[argmax / 32] = Word(static_cast<uint32_t>((*m)[argmax / 32]) & ~(1u << (argmax % 32)));
    }
    struct Case {
      const char* name;
      std::function<void(RowRequest&)> set;
    };
    const std::vector<Case> cases = {
        {"repetition penalty", [&](RowRequest& r) { r.params.repetition_penalty = 1.3f; }},
        {"frequency and presence",
         [&](RowRequest& r) {
           r.params.frequency_penalty = 0.4f;
           r.params.presence_penalty = 0.7f;
         }},
        {"banned", [&](RowRequest& r) { r.banned_tokens = banned; }},
        {"bias lowering", [&](RowRequest& r) { r.logit_bias = lowering; }},
        {"bias raising", [&](RowRequest& r) { r.logit_bias = raising; }},
        {"allowed mask",
         [&](RowRequest& r) {
           r.allowed_mask = allowed;
           r.params.repetition_penalty = 1.3f;
         }},
        {"long history",
         [&](RowRequest& r) {
           r.generated_tokens = long_history;
           r.params.repetition_penalty = 1.3f;
         }},
        {"mask leaving out the max and a word", [&](RowRequest& r) { r.allowed_mask = few_out; }},
        {"the same with a penalty and bans",
         [&](RowRequest& r) {
           r.allowed_mask = few_out;
           r.banned_tokens = banned;
           r.params.repetition_penalty = 1.3f;
         }},
        {"mask leaving out one token in six", [&](RowRequest& r) { r.allowed_mask = many_out; }},
    };
    const LogitsView view{x.data(), 1, kVocab, kVocab, DType::kFloat32};
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      for (const char* filter : {"none", "top-p", "typical-p", "min-p", "greedy"}) {
        for (float temperature : {1.0f, 0.7f}) {
          SCOPED_TRACE(std::string(filter) + ", T " + std::to_string(temperature));
          RowRequest req = Request();
          req.generated_tokens = generated;
          req.params.num_samples = 8;
          req.params.temperature = temperature;
          if (std::string(filter) == "top-p") req.params.top_p = 0.9f;
          if (std::string(filter) == "typical-p") req.params.typical_p = 0.9f;
          if (std::string(filter) == "min-p") req.params.min_p = 0.05f;
          if (std::string(filter) == "greedy") req.params.temperature = 0.0f;
          c.set(req);
          const RowResult r = Sample(view, std::span(&req, 1))[0];
          ASSERT_EQ(r.raw_logprobs.size(), r.tokens.size());
          for (size_t j = 0; j < r.tokens.size(); ++j) {
            const double want = static_cast<double>(x[r.tokens[j]]) - log_z;
            EXPECT_NEAR(r.raw_logprobs[j], want, 1e-6 + 1e-7 * std::abs(want))
                << "token " << r.tokens[j];
          }
        }
      }
    }
  }
}

// Greedy under an allowed-token mask alone, its log-probabilities asked for
// and no top-N (which reads the row under the mask instead of a masked
// copy and forms both normalisers in one pass): the token is the
// allowed argmax (lowest id on ties), and both log-probabilities match the
// row's softmaxes in double, on float32 and half rows long enough to be
// split, under masks dense and sparse, leaving the max out or not, and
// leaving out every token within 30 of it (the processed max then far
// below the raw one: its own frame, and the raw row's own pass). NaN in a masked token is still the
// row's error, and a mask whose allowed tokens are all -inf leaves none.
TEST_F(ProcessorsTest, GreedyUnderAMaskAloneFormsBothNormalisers) {
  constexpr int64_t kVocab = 150000;
  std::vector<float> x(kVocab);
  uint32_t state = 12345u;
  for (int64_t i = 0; i < kVocab; ++i) {
    state = state * 1664525u + 1013904223u;
    x[i] = static_cast<float>(state >> 8) / static_cast<float>(1u << 24) * 8.0f - 4.0f;
  }
  x[777] = 40.0f;   // far above the rest
  x[5001] = 30.0f;  // (10 below it)
  x[90001] = 6.5f;
  x[120000] = 6.5f;  // (tied with 90001: the lower id wins)
  const auto words = static_cast<size_t>((kVocab + 31) / 32);
  auto mask_of = [&](auto allows) {
    std::vector<int32_t> m(words, 0);
    for (int64_t t = 0; t < kVocab; ++t) {
      if (allows(t)) m[t / 32] = Word(static_cast<uint32_t>(m[t / 32]) | (1u << (t % 32)));
    }
    return m;
  };
  struct Case {
    const char* name;
    std::vector<int32_t> mask;
  };
  const std::vector<Case> cases = {
      {"every token", mask_of([](int64_t) { return true; })},
      {"every other token", mask_of([](int64_t t) { return t % 2 == 0; })},
      {"the max left out (gap 10)", mask_of([](int64_t t) { return t != 777; })},
      {"the two largest left out (gap 33.5)",
       mask_of([](int64_t t) { return t != 777 && t != 5001; })},
      {"the max and the ties left out, every third token",
       mask_of([](int64_t t) { return t % 3 == 1 && t != 777 && t != 90001 && t != 120000; })},
      {"a grammar's few tokens", mask_of([](int64_t t) { return t % 997 == 5; })},
      {"the max allowed, most of the row not", mask_of([](int64_t t) { return t < 40000; })},
  };
  for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    SCOPED_TRACE(dtype == DType::kFloat32 ? "float32" : "bfloat16");
    std::vector<uint16_t> halves(static_cast<size_t>(kVocab));
    std::vector<float> values = x;
    if (dtype == DType::kBFloat16) {
      for (int64_t i = 0; i < kVocab; ++i) {
        halves[i] = detail::float_to_bfloat16_bits(x[i]);
        values[i] = detail::half_to_float(halves[i], dtype);
      }
    }
    const void* data = dtype == DType::kFloat32 ? static_cast<const void*>(x.data())
                                                : static_cast<const void*>(halves.data());
    const LogitsView view{data, 1, kVocab, kVocab, dtype};
    double raw_max = -1e30, raw_sum = 0.0;
    for (float v : values) raw_max = std::max(raw_max, static_cast<double>(v));
    for (float v : values) raw_sum += std::exp(static_cast<double>(v) - raw_max);
    for (const Case& c : cases) {
      SCOPED_TRACE(c.name);
      int64_t best = -1;
      for (int64_t t = 0; t < kVocab; ++t) {
        const bool allowed = (static_cast<uint32_t>(c.mask[t / 32]) >> (t % 32)) & 1u;
        if (allowed && (best < 0 || values[t] > values[best])) best = t;
      }
      double sum = 0.0;
      for (int64_t t = 0; t < kVocab; ++t) {
        if ((static_cast<uint32_t>(c.mask[t / 32]) >> (t % 32)) & 1u) {
          sum += std::exp(static_cast<double>(values[t]) - values[best]);
        }
      }
      const double want = -std::log(sum);
      const double want_raw = static_cast<double>(values[best]) - raw_max - std::log(raw_sum);
      for (const int threads : {1, 2}) {
        SCOPED_TRACE(testing::Message() << threads << " threads");
        Engine engine{EngineOptions{.max_threads = threads, .seed = 3}};
        RowRequest req = Request();
        req.params.temperature = 0.0f;
        req.allowed_mask = c.mask;
        std::vector<RowResult> results(1);
        ASSERT_TRUE(engine.sample(view, std::span(&req, 1), results).ok());
        const RowResult& r = results[0];
        ASSERT_TRUE(r.status.ok()) << r.status.to_string();
        ASSERT_EQ(r.tokens.size(), 1u);
        EXPECT_EQ(r.tokens[0], best);
        EXPECT_NEAR(r.logprobs[0], want, 2e-7 + 2e-7 * std::abs(want));
        EXPECT_NEAR(r.raw_logprobs[0], want_raw, 2e-7 + 1e-7 * std::abs(want_raw));
      }
    }
  }
  // Errors, as the masked copy gives them.
  RowRequest req = Request();
  req.params.temperature = 0.0f;
  req.allowed_mask = cases[1].mask;  // (4000 even: allowed; 4001 masked)
  for (const int64_t at : {int64_t{4000}, int64_t{4001}}) {
    std::vector<float> row = x;
    row[at] = std::nanf("");
    const LogitsView view{row.data(), 1, kVocab, kVocab, DType::kFloat32};
    std::vector<RowResult> results(1);
    ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), results).ok());
    EXPECT_NE(
        results[0].status.to_string().find("logit of token " + std::to_string(at) + " is NaN"),
        std::string::npos)
        << results[0].status.to_string();
  }
  std::vector<float> row = x;
  for (int64_t t = 0; t < kVocab; t += 2) row[t] = -std::numeric_limits<float>::infinity();
  const LogitsView view{row.data(), 1, kVocab, kVocab, DType::kFloat32};
  std::vector<RowResult> results(1);
  ASSERT_TRUE(engine_.sample(view, std::span(&req, 1), results).ok());
  EXPECT_NE(results[0].status.to_string().find("every token is masked"), std::string::npos)
      << results[0].status.to_string();
}

}  // namespace
}  // namespace nucleus
