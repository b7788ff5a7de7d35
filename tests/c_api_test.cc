// Tests of the C ABI (include/nucleus/nucleus.h, docs/c_api.md). Everything
// under test goes through the C calls; the C++ Engine appears only as the
// oracle: for the same inputs and seeds the C results must equal its results
// bit for bit, since the C layer only translates.
//
// Also covered: every status code and message path (call errors write
// nothing, row errors leave the other rows sampled), the fills of unused
// slots, thread-local messages, the dump reader, the steady state making no
// allocation, and that no exception crosses the ABI even when any single
// allocation fails (a replaced operator new injects the failures).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <functional>
#include <limits>
#include <new>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "nucleus/nucleus.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

// Allocation counting and fault injection.
#include "counting_new.h"
#include "test_files.h"

namespace {

using ::testing::HasSubstr;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kSentinelToken = -77;
constexpr float kSentinelFloat = 123.5f;

std::vector<float> MakeLogits(int64_t rows, int64_t vocab, uint32_t seed, int64_t stride = 0) {
  if (stride == 0) stride = vocab;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  std::vector<float> x(static_cast<size_t>(rows * stride), kNaN);  // padding is never read
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) x[static_cast<size_t>(r * stride + i)] = normal(gen);
  }
  return x;
}

// bfloat16 by truncation: the engine reads whatever bits it is given.
std::vector<uint16_t> ToBF16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(x[i]) >> 16);
  return out;
}

bool SameFloat(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// Caller-owned output buffers for one nucleus_sample call, filled with
// sentinels so that any slot the call writes (or fails to write) shows up.
struct Buffers {
  Buffers(int64_t rows, int64_t samples, int64_t top, int64_t message_size = 256)
      : rows(rows),
        samples(samples),
        top(top),
        message_size(message_size),
        tokens(static_cast<size_t>(rows * samples), kSentinelToken),
        logprobs(tokens.size(), kSentinelFloat),
        raw_logprobs(tokens.size(), kSentinelFloat),
        ranks(tokens.size(), kSentinelToken),
        top_tokens(static_cast<size_t>(rows * top), kSentinelToken),
        top_logprobs(top_tokens.size(), kSentinelFloat),
        top_counts(static_cast<size_t>(rows), kSentinelToken),
        support(static_cast<size_t>(rows), -99),
        row_status(static_cast<size_t>(rows), kSentinelToken),
        messages(static_cast<size_t>(rows * message_size), '#') {}

  nucleus_sample_output output() {
    nucleus_sample_output o = nucleus_sample_output_default();
    o.samples_per_row = samples;
    o.tokens = tokens.data();
    o.logprobs = logprobs.data();
    o.raw_logprobs = raw_logprobs.data();
    o.ranks = ranks.data();
    o.top_per_row = top;
    o.top_tokens = top_tokens.data();
    o.top_logprobs = top_logprobs.data();
    o.top_counts = top_counts.data();
    o.support = support.data();
    o.row_status = row_status.data();
    o.row_messages = messages.data();
    o.row_message_size = message_size;
    return o;
  }

  std::string message(int64_t row) const {
    return std::string(messages.data() + row * message_size);
  }

  void ExpectUntouched() const {
    auto all = [](const auto& v, auto value) {
      return std::all_of(v.begin(), v.end(), [&](auto x) { return x == value; });
    };
    EXPECT_TRUE(all(tokens, kSentinelToken));
    EXPECT_TRUE(all(logprobs, kSentinelFloat));
    EXPECT_TRUE(all(raw_logprobs, kSentinelFloat));
    EXPECT_TRUE(all(ranks, kSentinelToken));
    EXPECT_TRUE(all(top_tokens, kSentinelToken));
    EXPECT_TRUE(all(top_logprobs, kSentinelFloat));
    EXPECT_TRUE(all(top_counts, kSentinelToken));
    EXPECT_TRUE(all(support, int64_t{-99}));
    EXPECT_TRUE(all(row_status, kSentinelToken));
    EXPECT_TRUE(all(messages, '#'));
  }

  int64_t rows, samples, top, message_size;
  std::vector<int32_t> tokens;
  std::vector<float> logprobs, raw_logprobs;
  std::vector<int32_t> ranks, top_tokens;
  std::vector<float> top_logprobs;
  std::vector<int32_t> top_counts;
  std::vector<int64_t> support;
  std::vector<int32_t> row_status;
  std::vector<char> messages;
};

// The C++ request equivalent to a C one (for the oracle).
nucleus::RowRequest ToCpp(const nucleus_row_request& c) {
  nucleus::RowRequest r;
  const nucleus_sampling_params& p = c.params;
  r.params.temperature = p.temperature;
  r.params.top_k = p.top_k;
  r.params.top_p = p.top_p;
  r.params.min_p = p.min_p;
  r.params.typical_p = p.typical_p;
  r.params.top_n_sigma = p.top_n_sigma;
  r.params.min_keep = p.min_keep;
  r.params.repetition_penalty = p.repetition_penalty;
  r.params.frequency_penalty = p.frequency_penalty;
  r.params.presence_penalty = p.presence_penalty;
  r.params.preset = static_cast<nucleus::Preset>(p.preset);
  r.params.num_samples = p.num_samples;
  r.params.logprobs = p.logprobs != 0;
  r.params.top_logprobs = p.top_logprobs;
  r.params.logprobs_mode = static_cast<nucleus::LogprobsMode>(p.logprobs_mode);
  if (c.has_seed) r.seed = c.seed;
  r.step = c.step;
  auto span = [](const auto* data, int64_t n) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(data)>>;
    return n == 0 ? std::span<const T>() : std::span<const T>(data, static_cast<size_t>(n));
  };
  r.prompt_tokens = span(c.prompt_tokens, c.num_prompt_tokens);
  r.generated_tokens = span(c.generated_tokens, c.num_generated_tokens);
  r.banned_tokens = span(c.banned_tokens, c.num_banned_tokens);
  r.allowed_mask = span(c.allowed_mask, c.allowed_mask_words);
  // A copy, not a cast: the two structs share a layout but not a type. Kept
  // for the rest of the test program (the lists are tiny).
  static std::deque<std::vector<nucleus::TokenBias>> bias_storage;
  std::vector<nucleus::TokenBias>& bias = bias_storage.emplace_back();
  for (const nucleus_token_bias& b : span(c.logit_bias, c.num_logit_bias)) {
    bias.push_back({b.token, b.bias});
  }
  r.logit_bias = bias;
  return r;
}

nucleus::LogitsView ToCpp(const nucleus_logits_view& v) {
  return {v.data, v.rows, v.vocab, v.row_stride, static_cast<nucleus::DType>(v.dtype)};
}

// Checks that row `row` of `b` holds exactly the C++ result `want`.
void ExpectRowEquals(const Buffers& b, int64_t row, const nucleus::RowResult& want) {
  SCOPED_TRACE("row " + std::to_string(row));
  ASSERT_EQ(b.row_status[static_cast<size_t>(row)], static_cast<int32_t>(want.status.code()));
  EXPECT_EQ(b.message(row), want.status.message());
  EXPECT_EQ(b.support[static_cast<size_t>(row)], want.support);
  for (int64_t j = 0; j < b.samples; ++j) {
    const size_t i = static_cast<size_t>(row * b.samples + j);
    const size_t k = static_cast<size_t>(j);
    if (k < want.tokens.size()) {
      EXPECT_EQ(b.tokens[i], want.tokens[k]);
      EXPECT_TRUE(SameFloat(b.logprobs[i], want.logprobs[k])) << b.logprobs[i];
      EXPECT_TRUE(SameFloat(b.raw_logprobs[i], want.raw_logprobs[k])) << b.raw_logprobs[i];
      EXPECT_EQ(b.ranks[i], k < want.ranks.size() ? want.ranks[k] : 0);
    } else {  // unused slots are filled, never stale
      EXPECT_EQ(b.tokens[i], -1);
      EXPECT_TRUE(std::isnan(b.logprobs[i]));
      EXPECT_TRUE(std::isnan(b.raw_logprobs[i]));
      EXPECT_EQ(b.ranks[i], 0);
    }
  }
  EXPECT_EQ(b.top_counts[static_cast<size_t>(row)], static_cast<int32_t>(want.top_logprobs.size()));
  for (int64_t j = 0; j < b.top; ++j) {
    const size_t i = static_cast<size_t>(row * b.top + j);
    const size_t k = static_cast<size_t>(j);
    if (k < want.top_logprobs.size()) {
      EXPECT_EQ(b.top_tokens[i], want.top_logprobs[k].token);
      EXPECT_TRUE(SameFloat(b.top_logprobs[i], want.top_logprobs[k].logprob));
    } else {
      EXPECT_EQ(b.top_tokens[i], -1);
      EXPECT_TRUE(std::isnan(b.top_logprobs[i]));
    }
  }
}

// RAII over the C handle, so that a failed assertion does not leak it.
struct Engine {
  explicit Engine(const nucleus_engine_options* options = nullptr) {
    const nucleus_status s = nucleus_engine_create(options, &handle);
    EXPECT_EQ(s, NUCLEUS_OK) << nucleus_last_error();
  }
  ~Engine() { EXPECT_EQ(nucleus_engine_destroy(handle), NUCLEUS_OK); }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  nucleus_engine* handle = nullptr;
};

// History and constraints shared by the requests below (they must outlive the calls).
constexpr int64_t kVocab = 3000;
const int32_t kPrompt[] = {1, 5, 9, 5, 200};
const int32_t kGenerated[] = {7, 7, 3, 11, 999};
const nucleus_token_bias kBias[] = {{4, 8.0f}, {17, -2.0f}, {30, -kInf}};  // 4 dominates
const int32_t kBanned[] = {0, 2, 2999};
std::vector<int32_t> EvenTokensMask() {
  std::vector<int32_t> mask(static_cast<size_t>((kVocab + 31) / 32));
  for (int32_t& w : mask) w = static_cast<int32_t>(0x55555555u);
  return mask;
}
const std::vector<int32_t> kEvenMask = EvenTokensMask();

// A request of each kind: every parameter and every borrowed array is used.
nucleus_row_request KindRequest(int kind, uint64_t seed) {
  nucleus_row_request r = nucleus_row_request_default();
  r.seed = seed;
  r.has_seed = 1;
  r.step = seed % 7;
  nucleus_sampling_params& p = r.params;
  switch (kind % 10) {
    case 0:
      p.temperature = 0.0f;  // greedy
      p.top_logprobs = 4;
      break;
    case 1:
      p.temperature = 0.8f;
      p.top_k = 40;
      p.top_p = 0.9f;
      p.num_samples = 3;
      p.top_logprobs = 5;
      break;
    case 2:
      p.min_p = 0.05f;
      p.preset = NUCLEUS_PRESET_VLLM;
      p.top_logprobs = 3;
      p.logprobs_mode = NUCLEUS_LOGPROBS_RAW;
      break;
    case 3:
      p.typical_p = 0.7f;
      p.min_keep = 3;
      break;
    case 4:
      p.top_n_sigma = 1.5f;
      p.preset = NUCLEUS_PRESET_LLAMA_CPP;
      p.temperature = 1.3f;
      break;
    case 5:
      p.repetition_penalty = 1.3f;
      p.frequency_penalty = 0.4f;
      p.presence_penalty = 0.2f;
      r.prompt_tokens = kPrompt;
      r.num_prompt_tokens = 5;
      r.generated_tokens = kGenerated;
      r.num_generated_tokens = 5;
      p.num_samples = 2;
      break;
    case 6:
      r.logit_bias = kBias;
      r.num_logit_bias = 3;
      r.banned_tokens = kBanned;
      r.num_banned_tokens = 3;
      p.top_k = 100;
      break;
    case 7:
      r.allowed_mask = kEvenMask.data();
      r.allowed_mask_words = static_cast<int64_t>(kEvenMask.size());
      p.top_p = 0.5f;
      p.top_logprobs = 6;
      break;
    case 8:
      p.logprobs = 0;  // logprobs come back NaN
      p.num_samples = 4;
      break;
    case 9:
      p.temperature = 0.0f;
      p.logprobs = 0;
      break;
  }
  return r;
}

constexpr int64_t kMaxSamples = 4;
constexpr int64_t kMaxTop = 6;

// Samples through the C API and through the C++ engine (same engine seed, so
// unseeded rows agree too) and compares every output.
void ExpectMatchesCpp(const nucleus_logits_view& view, const std::vector<nucleus_row_request>& reqs,
                      uint64_t engine_seed) {
  nucleus_engine_options options = nucleus_engine_options_default();
  options.max_threads = 2;
  options.seed = engine_seed;
  options.has_seed = 1;
  Engine engine(&options);
  Buffers b(view.rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output out = b.output();
  ASSERT_EQ(
      nucleus_sample(engine.handle, &view, reqs.data(), static_cast<int64_t>(reqs.size()), &out),
      NUCLEUS_OK)
      << nucleus_last_error();
  EXPECT_STREQ(nucleus_last_error(), "");

  nucleus::Engine cpp({.max_threads = 2, .seed = engine_seed});
  std::vector<nucleus::RowRequest> cpp_reqs;
  for (const nucleus_row_request& r : reqs) cpp_reqs.push_back(ToCpp(r));
  std::vector<nucleus::RowResult> want(static_cast<size_t>(view.rows));
  ASSERT_TRUE(cpp.sample(ToCpp(view), cpp_reqs, want).ok());
  for (int64_t r = 0; r < view.rows; ++r) ExpectRowEquals(b, r, want[static_cast<size_t>(r)]);
}

// ---- Basics -------------------------------------------------------------------

TEST(CApi, VersionAndNames) {
  EXPECT_STREQ(nucleus_version(), nucleus::version());
  EXPECT_STREQ(nucleus_status_name(NUCLEUS_OK), "OK");
  EXPECT_STREQ(nucleus_status_name(NUCLEUS_INVALID_ARGUMENT), "INVALID_ARGUMENT");
  EXPECT_STREQ(nucleus_status_name(NUCLEUS_ROW_ERROR), "ROW_ERROR");
  EXPECT_STREQ(nucleus_status_name(NUCLEUS_IO_ERROR), "IO_ERROR");
  EXPECT_STREQ(nucleus_status_name(NUCLEUS_INTERNAL), "INTERNAL");
  EXPECT_STREQ(nucleus_status_name(static_cast<nucleus_status>(42)), "UNKNOWN");
}

TEST(CApi, DefaultsAreTheCppDefaults) {
  const nucleus::SamplingParams cpp;
  const nucleus_sampling_params c = nucleus_sampling_params_default();
  EXPECT_EQ(c.temperature, cpp.temperature);
  EXPECT_EQ(c.top_k, cpp.top_k);
  EXPECT_EQ(c.top_p, cpp.top_p);
  EXPECT_EQ(c.min_p, cpp.min_p);
  EXPECT_EQ(c.typical_p, cpp.typical_p);
  EXPECT_EQ(c.top_n_sigma, cpp.top_n_sigma);
  EXPECT_EQ(c.min_keep, cpp.min_keep);
  EXPECT_EQ(c.repetition_penalty, cpp.repetition_penalty);
  EXPECT_EQ(c.frequency_penalty, cpp.frequency_penalty);
  EXPECT_EQ(c.presence_penalty, cpp.presence_penalty);
  EXPECT_EQ(c.preset, NUCLEUS_PRESET_HF);
  EXPECT_EQ(c.num_samples, cpp.num_samples);
  EXPECT_EQ(c.logprobs, 1);
  EXPECT_EQ(c.top_logprobs, cpp.top_logprobs);
  EXPECT_EQ(c.logprobs_mode, NUCLEUS_LOGPROBS_PROCESSED);

  const nucleus_row_request r = nucleus_row_request_default();
  EXPECT_EQ(r.has_seed, 0);
  EXPECT_EQ(r.step, 0u);
  EXPECT_EQ(r.prompt_tokens, nullptr);
  EXPECT_EQ(r.num_prompt_tokens, 0);
  EXPECT_EQ(r.allowed_mask, nullptr);
  EXPECT_EQ(r.params.typical_p, 1.0f);
}

TEST(CApi, EngineOptions) {
  nucleus_engine_options options = nucleus_engine_options_default();
  options.max_threads = 1;
  Engine one(&options);
  int32_t threads = 0;
  ASSERT_EQ(nucleus_engine_max_threads(one.handle, &threads), NUCLEUS_OK);
  EXPECT_EQ(threads, 1);

  Engine defaults(nullptr);
  ASSERT_EQ(nucleus_engine_max_threads(defaults.handle, &threads), NUCLEUS_OK);
  EXPECT_GE(threads, 1);

  EXPECT_EQ(nucleus_engine_max_threads(nullptr, &threads), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_engine_max_threads(one.handle, nullptr), NUCLEUS_INVALID_ARGUMENT);

  options.max_threads = -1;
  nucleus_engine* engine = reinterpret_cast<nucleus_engine*>(&options);  // must be reset
  EXPECT_EQ(nucleus_engine_create(&options, &engine), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(engine, nullptr);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("max_threads = -1"));
  EXPECT_EQ(nucleus_engine_create(&options, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_engine_destroy(nullptr), NUCLEUS_OK);
}

TEST(CApi, EngineIsa) {
  nucleus_engine_options options = nucleus_engine_options_default();
  EXPECT_EQ(options.isa, NUCLEUS_ISA_AUTO);
  options.isa = NUCLEUS_ISA_SSE2;
  Engine sse2(&options);
  int32_t isa = -1;
  const char* name = nullptr;
  ASSERT_EQ(nucleus_engine_isa(sse2.handle, &isa, &name), NUCLEUS_OK);
  EXPECT_EQ(isa, NUCLEUS_ISA_SSE2);
  EXPECT_STREQ(name, "sse2");

  Engine best(nullptr);
  ASSERT_EQ(nucleus_engine_isa(best.handle, &isa, nullptr), NUCLEUS_OK);
  EXPECT_EQ(isa, static_cast<int32_t>(nucleus::resolve_isa(nucleus::Isa::kAuto)));
  EXPECT_EQ(nucleus_engine_isa(nullptr, &isa, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_engine_isa(best.handle, nullptr, nullptr), NUCLEUS_INVALID_ARGUMENT);

  for (int32_t bad : {-1, 4, 99}) {
    options.isa = bad;
    nucleus_engine* engine = nullptr;
    EXPECT_EQ(nucleus_engine_create(&options, &engine), NUCLEUS_INVALID_ARGUMENT);
    EXPECT_EQ(engine, nullptr);
    EXPECT_THAT(nucleus_last_error(), HasSubstr("isa = " + std::to_string(bad)));
  }
}

TEST(CApi, EngineReadAhead) {
  nucleus_engine_options options = nucleus_engine_options_default();
  EXPECT_EQ(options.read_ahead, NUCLEUS_READ_AHEAD_AUTO);
  for (int32_t mode : {NUCLEUS_READ_AHEAD_ALWAYS, NUCLEUS_READ_AHEAD_NEVER}) {
    options.read_ahead = mode;
    Engine engine(&options);
    int32_t got = -1;
    const char* name = nullptr;
    ASSERT_EQ(nucleus_engine_read_ahead(engine.handle, &got, &name), NUCLEUS_OK);
    EXPECT_EQ(got, mode);
    EXPECT_STREQ(name, mode == NUCLEUS_READ_AHEAD_ALWAYS ? "always" : "never");
    EXPECT_EQ(nucleus_engine_read_ahead(engine.handle, nullptr, nullptr), NUCLEUS_INVALID_ARGUMENT);
  }
  int32_t got = -1;
  EXPECT_EQ(nucleus_engine_read_ahead(nullptr, &got, nullptr), NUCLEUS_INVALID_ARGUMENT);
  for (int32_t bad : {-1, 3, 99}) {
    options.read_ahead = bad;
    nucleus_engine* engine = nullptr;
    EXPECT_EQ(nucleus_engine_create(&options, &engine), NUCLEUS_INVALID_ARGUMENT);
    EXPECT_EQ(engine, nullptr);
    EXPECT_THAT(nucleus_last_error(), HasSubstr("read_ahead = " + std::to_string(bad)));
  }
}

// ---- Results equal the C++ engine's ----------------------------------------------

TEST(CApi, SampleMatchesCppEngineForEveryKindOfRequest) {
  const int64_t rows = 20;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 1);
  const nucleus_logits_view view{logits.data(), rows, kVocab, kVocab, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), 100 + r));
  ExpectMatchesCpp(view, reqs, 5);
}

TEST(CApi, SampleMatchesCppEngineWithPaddedBF16Rows) {
  const int64_t rows = 10, stride = kVocab + 64;
  const std::vector<uint16_t> logits = ToBF16(MakeLogits(rows, kVocab, 2, stride));
  const nucleus_logits_view view{logits.data(), rows, kVocab, stride, NUCLEUS_DTYPE_BF16};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), 7 * r));
  ExpectMatchesCpp(view, reqs, 6);
}

TEST(CApi, SharedAndUnseededRequestsMatchCppEngine) {
  const int64_t rows = 6;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 3);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  nucleus_row_request shared = KindRequest(1, 0);
  ExpectMatchesCpp(view, {shared}, 9);  // seeded, shared by every row
  shared.has_seed = 0;                  // from the engine's generator, seeded alike
  ExpectMatchesCpp(view, {shared}, 9);
  std::vector<nucleus_row_request> unseeded;
  for (int64_t r = 0; r < rows; ++r) {
    unseeded.push_back(KindRequest(static_cast<int>(r), 0));
    unseeded.back().has_seed = 0;
  }
  ExpectMatchesCpp(view, unseeded, 10);
}

TEST(CApi, ProbsMatchCppEngine) {
  const int64_t rows = 10, stride = kVocab + 5;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 4);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), r));
  Engine engine;
  std::vector<float> probs(static_cast<size_t>(rows * stride), kSentinelFloat);
  std::vector<int32_t> status(static_cast<size_t>(rows), kSentinelToken);
  nucleus_probs_output out = nucleus_probs_output_default();
  out.probs = probs.data();
  out.probs_stride = stride;
  out.row_status = status.data();
  ASSERT_EQ(nucleus_probs(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_OK)
      << nucleus_last_error();

  nucleus::Engine cpp;
  std::vector<nucleus::RowRequest> cpp_reqs;
  for (const nucleus_row_request& r : reqs) cpp_reqs.push_back(ToCpp(r));
  std::vector<float> want(probs.size(), kSentinelFloat);
  std::vector<nucleus::Status> want_status(static_cast<size_t>(rows));
  ASSERT_TRUE(cpp.probs(ToCpp(view), cpp_reqs, want.data(), stride, want_status).ok());
  for (size_t i = 0; i < probs.size(); ++i) {
    ASSERT_TRUE(SameFloat(probs[i], want[i])) << "element " << i;
  }
  for (int32_t s : status) EXPECT_EQ(s, NUCLEUS_OK);

  // probs_stride 0 means vocab.
  std::vector<float> packed(static_cast<size_t>(rows * kVocab));
  out = nucleus_probs_output_default();
  out.probs = packed.data();
  ASSERT_EQ(nucleus_probs(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_OK);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < kVocab; ++i) {
      ASSERT_TRUE(SameFloat(packed[static_cast<size_t>(r * kVocab + i)],
                            want[static_cast<size_t>(r * stride + i)]));
    }
  }
}

// The slots a row does not fill (fewer samples or top entries than the
// buffer holds) are -1 / NaN / 0, never stale values.
TEST(CApi, UnusedSlotsAreFilled) {
  const int64_t rows = 3;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 8);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  nucleus_row_request req = KindRequest(2, 3);  // one sample, top 3 of a buffer of 6
  Engine engine;
  Buffers b(rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output out = b.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_OK);
  for (int64_t r = 0; r < rows; ++r) {
    EXPECT_EQ(b.top_counts[static_cast<size_t>(r)], 3);
    for (int64_t j = 1; j < kMaxSamples; ++j) {
      EXPECT_EQ(b.tokens[static_cast<size_t>(r * kMaxSamples + j)], -1);
      EXPECT_EQ(b.ranks[static_cast<size_t>(r * kMaxSamples + j)], 0);
    }
    for (int64_t j = 3; j < kMaxTop; ++j) {
      EXPECT_EQ(b.top_tokens[static_cast<size_t>(r * kMaxTop + j)], -1);
      EXPECT_TRUE(std::isnan(b.top_logprobs[static_cast<size_t>(r * kMaxTop + j)]));
    }
    EXPECT_EQ(b.message(r), "");
  }

  // Only `tokens` is required; a NULL buffer is simply not written.
  nucleus_sample_output minimal = nucleus_sample_output_default();
  std::vector<int32_t> tokens(rows, kSentinelToken);
  minimal.samples_per_row = 1;
  minimal.tokens = tokens.data();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &minimal), NUCLEUS_OK);
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_EQ(tokens[r], b.tokens[static_cast<size_t>(r * kMaxSamples)]);
}

// ---- Call errors: INVALID_ARGUMENT, a message, nothing written ------------------

struct CallErrorCase {
  const char* name;
  std::vector<std::string> parts;  // the message must contain each
  // Mutates a valid call.
  std::function<void(nucleus_logits_view&, std::vector<nucleus_row_request>&, int64_t&,
                     nucleus_sample_output&)>
      mutate;
};

const int32_t kOutOfVocab[] = {3, kVocab};
const nucleus_token_bias kNaNBias[] = {{3, kNaN}};

std::vector<CallErrorCase> CallErrorCases() {
  using V = nucleus_logits_view;
  using R = std::vector<nucleus_row_request>;
  using O = nucleus_sample_output;
  return {
      {"null data", {"logits", "data"}, [](V& v, R&, int64_t&, O&) { v.data = nullptr; }},
      {"zero rows", {"rows = 0"}, [](V& v, R&, int64_t&, O&) { v.rows = 0; }},
      {"negative vocab", {"vocab = -5"}, [](V& v, R&, int64_t&, O&) { v.vocab = -5; }},
      {"short stride",
       {"row_stride = 10", "vocab"},
       [](V& v, R&, int64_t&, O&) { v.row_stride = 10; }},
      {"unknown dtype", {"dtype = 9"}, [](V& v, R&, int64_t&, O&) { v.dtype = 9; }},
      {"num_requests 2 for 3 rows",
       {"num_requests = 2", "rows = 3"},
       [](V&, R&, int64_t& n, O&) { n = 2; }},
      {"num_requests 0", {"num_requests = 0"}, [](V&, R&, int64_t& n, O&) { n = 0; }},
      {"negative temperature",
       {"row 1", "temperature", "-0.5"},
       [](V&, R& r, int64_t&, O&) { r[1].params.temperature = -0.5f; }},
      {"top_p NaN",
       {"row 2", "top_p", "nan"},
       [](V&, R& r, int64_t&, O&) { r[2].params.top_p = kNaN; }},
      {"typical_p 0",
       {"row 0", "typical_p", "0"},
       [](V&, R& r, int64_t&, O&) { r[0].params.typical_p = 0.0f; }},
      {"min_keep 0",
       {"row 0", "min_keep"},
       [](V&, R& r, int64_t&, O&) { r[0].params.min_keep = 0; }},
      {"repetition penalty 0",
       {"row 1", "repetition_penalty"},
       [](V&, R& r, int64_t&, O&) { r[1].params.repetition_penalty = 0.0f; }},
      {"num_samples 0",
       {"row 2", "num_samples = 0"},
       [](V&, R& r, int64_t&, O&) { r[2].params.num_samples = 0; }},
      {"unknown preset",
       {"row 1", "preset = 7"},
       [](V&, R& r, int64_t&, O&) { r[1].params.preset = 7; }},
      {"unknown logprobs mode",
       {"row 1", "logprobs_mode = -1"},
       [](V&, R& r, int64_t&, O&) { r[1].params.logprobs_mode = -1; }},
      {"shared request",
       {"shared request", "top_k = -3"},
       [](V&, R& r, int64_t& n, O&) {
         n = 1;
         r[0].params.top_k = -3;
       }},
      {"token outside vocab",
       {"row 2", "banned_tokens[1]", "3000"},
       [](V&, R& r, int64_t&, O&) {
         r[2].banned_tokens = kOutOfVocab;
         r[2].num_banned_tokens = 2;
       }},
      {"NaN bias",
       {"row 0", "logit_bias[0].bias"},
       [](V&, R& r, int64_t&, O&) {
         r[0].logit_bias = kNaNBias;
         r[0].num_logit_bias = 1;
       }},
      {"mask of the wrong length",
       {"row 1", "allowed_mask", "94"},
       [](V&, R& r, int64_t&, O&) {
         r[1].allowed_mask = kEvenMask.data();
         r[1].allowed_mask_words = 3;
       }},
      {"mask with no words",
       {"row 1", "allowed_mask is not NULL", "allowed_mask_words = 0"},
       [](V&, R& r, int64_t&, O&) {
         r[1].allowed_mask = kEvenMask.data();
         r[1].allowed_mask_words = 0;
       }},
      {"NULL array with a length",
       {"row 1", "generated_tokens is NULL", "num_generated_tokens = 4"},
       [](V&, R& r, int64_t&, O&) { r[1].num_generated_tokens = 4; }},
      {"negative length",
       {"row 2", "num_prompt_tokens = -1"},
       [](V&, R& r, int64_t&, O&) {
         r[2].prompt_tokens = kPrompt;
         r[2].num_prompt_tokens = -1;
       }},
      {"NULL requests",
       {"requests", "NULL"},
       [](V&, R& r, int64_t&, O&) { r.clear(); }},  // passed as NULL below
      {"NULL tokens", {"tokens", "NULL"}, [](V&, R&, int64_t&, O& o) { o.tokens = nullptr; }},
      {"samples_per_row 0",
       {"samples_per_row = 0"},
       [](V&, R&, int64_t&, O& o) { o.samples_per_row = 0; }},
      {"too many samples for the buffer",
       {"row 1", "num_samples = 5", "samples_per_row = 4"},
       [](V&, R& r, int64_t&, O&) { r[1].params.num_samples = 5; }},
      {"too many top entries for the buffer",
       {"row 0", "top_logprobs = 7", "top_per_row = 6"},
       [](V&, R& r, int64_t&, O&) { r[0].params.top_logprobs = 7; }},
      {"top_logprobs beyond vocab",
       {"row 0", "top_logprobs = 3001"},
       [](V&, R& r, int64_t&, O& o) {
         o.top_tokens = nullptr;  // no top buffers: only the engine's range check applies
         o.top_logprobs = nullptr;
         r[0].params.top_logprobs = 3001;
       }},
      {"message size 0",
       {"row_message_size = 0"},
       [](V&, R&, int64_t&, O& o) { o.row_message_size = 0; }},
  };
}

TEST(CApi, CallErrorsReturnInvalidArgumentNameTheFieldAndWriteNothing) {
  const int64_t rows = 3;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 11);
  Engine engine;
  for (const CallErrorCase& c : CallErrorCases()) {
    SCOPED_TRACE(c.name);
    nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
    std::vector<nucleus_row_request> reqs;
    for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), r));
    int64_t n = rows;
    Buffers b(rows, kMaxSamples, kMaxTop);
    nucleus_sample_output out = b.output();
    c.mutate(view, reqs, n, out);
    const nucleus_row_request* requests = reqs.empty() ? nullptr : reqs.data();
    EXPECT_EQ(nucleus_sample(engine.handle, &view, requests, n, &out), NUCLEUS_INVALID_ARGUMENT);
    const std::string message = nucleus_last_error();
    std::string lower = message;
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
    for (const std::string& part : c.parts) {
      std::string want = part;
      std::transform(want.begin(), want.end(), want.begin(),
                     [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
      EXPECT_THAT(lower, HasSubstr(want)) << "message: " << message;
    }
    b.ExpectUntouched();
  }
}

TEST(CApi, NullHandlesAndStructsAreCallErrors) {
  const std::vector<float> logits = MakeLogits(1, 10, 1);
  const nucleus_logits_view view{logits.data(), 1, 10, 0, NUCLEUS_DTYPE_F32};
  const nucleus_row_request req = nucleus_row_request_default();
  Buffers b(1, 1, 0);
  const nucleus_sample_output out = b.output();
  Engine engine;
  EXPECT_EQ(nucleus_sample(nullptr, &view, &req, 1, &out), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("engine"));
  EXPECT_EQ(nucleus_sample(engine.handle, nullptr, &req, 1, &out), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("logits"));
  EXPECT_EQ(nucleus_sample(engine.handle, &view, &req, 1, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("output"));
  b.ExpectUntouched();

  std::vector<float> probs(10, kSentinelFloat);
  nucleus_probs_output pout = nucleus_probs_output_default();
  pout.probs = probs.data();
  EXPECT_EQ(nucleus_probs(nullptr, &view, &req, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_probs(engine.handle, nullptr, &req, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_probs(engine.handle, &view, nullptr, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_probs(engine.handle, &view, &req, 1, nullptr), NUCLEUS_INVALID_ARGUMENT);
  pout.probs = nullptr;
  EXPECT_EQ(nucleus_probs(engine.handle, &view, &req, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("probs is NULL"));
  pout.probs = probs.data();
  pout.probs_stride = 9;
  EXPECT_EQ(nucleus_probs(engine.handle, &view, &req, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("probs_stride = 9 is smaller than vocab = 10"));
  for (float p : probs) EXPECT_EQ(p, kSentinelFloat);
}

TEST(CApi, ViewsThatCannotExistAreCallErrorsBeforeAnyScratch) {
  // The C layer sizes per-thread scratch from the view's rows: a view that
  // cannot exist (INT64_MAX rows, or 2^50 rows of NULL) is refused first, as
  // the C++ engine refuses it, not failed as out of memory in the sizing.
  const std::vector<float> logits = MakeLogits(1, 4, 1);
  nucleus_row_request req = nucleus_row_request_default();
  Buffers b(1, 1, 0);
  const nucleus_sample_output out = b.output();
  std::vector<float> probs(4, kSentinelFloat);
  nucleus_probs_output pout = nucleus_probs_output_default();
  pout.probs = probs.data();
  int32_t accepted = -2, tokens[2] = {-2, -2};
  nucleus_verify_output vout = nucleus_verify_output_default();
  vout.accepted = &accepted;
  vout.tokens = tokens;
  Engine engine;
  for (const auto& [view, message] : std::vector<std::pair<nucleus_logits_view, std::string>>{
           {{logits.data(), INT64_MAX, 4, 0, NUCLEUS_DTYPE_F32}, "address space"},
           {{nullptr, int64_t{1} << 50, 4, 0, NUCLEUS_DTYPE_F32}, "data is null"}}) {
    SCOPED_TRACE(message);
    EXPECT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_INVALID_ARGUMENT);
    EXPECT_THAT(nucleus_last_error(), HasSubstr(message));
    EXPECT_EQ(nucleus_probs(engine.handle, &view, &req, 1, &pout), NUCLEUS_INVALID_ARGUMENT);
    EXPECT_THAT(nucleus_last_error(), HasSubstr(message));
    EXPECT_EQ(nucleus_verify(engine.handle, &view, 0, nullptr, nullptr, &req, 1, &vout),
              NUCLEUS_INVALID_ARGUMENT);
    EXPECT_THAT(nucleus_last_error(), HasSubstr(message));
  }
  b.ExpectUntouched();
  for (float p : probs) EXPECT_EQ(p, kSentinelFloat);
  EXPECT_EQ(accepted, -2);
  // Bias lists no memory holds are refused before their lengths are summed.
  const nucleus_logits_view view{logits.data(), 1, 4, 0, NUCLEUS_DTYPE_F32};
  const nucleus_token_bias bias{1, 1.0f};
  req.logit_bias = &bias;
  req.num_logit_bias = INT64_MAX;
  EXPECT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("num_logit_bias = 9223372036854775807"));
  b.ExpectUntouched();
}

// ---- Row errors: the other rows are sampled ----------------------------------------

TEST(CApi, RowErrorsFailOnlyTheirRow) {
  const int64_t rows = 5;
  std::vector<float> logits = MakeLogits(rows, kVocab, 12);
  logits[1 * kVocab + 17] = kNaN;  // row 1: a NaN logit
  logits[3 * kVocab + 5] = kInf;   // row 3: +inf
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), 40 + r));
  const std::vector<int32_t> nothing_allowed(kEvenMask.size(), 0);
  reqs[4].allowed_mask = nothing_allowed.data();  // row 4: no token left
  reqs[4].allowed_mask_words = static_cast<int64_t>(nothing_allowed.size());

  Engine engine;
  Buffers b(rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output out = b.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_ROW_ERROR);
  // The call's message is the first failed row's.
  EXPECT_THAT(nucleus_last_error(), HasSubstr("row 1"));
  EXPECT_THAT(nucleus_last_error(), HasSubstr("17"));

  nucleus::Engine cpp;
  std::vector<nucleus::RowRequest> cpp_reqs;
  for (const nucleus_row_request& r : reqs) cpp_reqs.push_back(ToCpp(r));
  std::vector<nucleus::RowResult> want(rows);
  ASSERT_TRUE(cpp.sample(ToCpp(view), cpp_reqs, want).ok());
  for (int64_t r = 0; r < rows; ++r) ExpectRowEquals(b, r, want[static_cast<size_t>(r)]);

  EXPECT_EQ(b.row_status[0], NUCLEUS_OK);
  EXPECT_EQ(b.row_status[1], NUCLEUS_ROW_ERROR);
  EXPECT_EQ(b.row_status[2], NUCLEUS_OK);
  EXPECT_EQ(b.row_status[3], NUCLEUS_ROW_ERROR);
  EXPECT_EQ(b.row_status[4], NUCLEUS_ROW_ERROR);
  EXPECT_THAT(b.message(3), HasSubstr("row 3"));
  EXPECT_THAT(b.message(4), HasSubstr("no token left"));
  for (int64_t r : {1, 3, 4}) {
    EXPECT_EQ(b.tokens[static_cast<size_t>(r * kMaxSamples)], -1);
    EXPECT_TRUE(std::isnan(b.logprobs[static_cast<size_t>(r * kMaxSamples)]));
    EXPECT_EQ(b.support[static_cast<size_t>(r)], 0);
    EXPECT_EQ(b.top_counts[static_cast<size_t>(r)], 0);
  }

  // probs: failed rows are left zero, the others equal a clean call's.
  std::vector<float> probs(static_cast<size_t>(rows * kVocab), kSentinelFloat);
  std::vector<int32_t> status(rows, kSentinelToken);
  std::vector<char> messages(static_cast<size_t>(rows) * 64, '#');
  nucleus_probs_output pout = nucleus_probs_output_default();
  pout.probs = probs.data();
  pout.row_status = status.data();
  pout.row_messages = messages.data();
  pout.row_message_size = 64;
  ASSERT_EQ(nucleus_probs(engine.handle, &view, reqs.data(), rows, &pout), NUCLEUS_ROW_ERROR);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("row 1"));
  EXPECT_THAT(status, ::testing::ElementsAre(NUCLEUS_OK, NUCLEUS_ROW_ERROR, NUCLEUS_OK,
                                             NUCLEUS_ROW_ERROR, NUCLEUS_ROW_ERROR));
  EXPECT_STREQ(messages.data(), "");
  EXPECT_THAT(std::string(messages.data() + 4 * 64), HasSubstr("no token left"));
  for (int64_t i = 0; i < kVocab; ++i) EXPECT_EQ(probs[static_cast<size_t>(kVocab + i)], 0.0f);
}

TEST(CApi, RowMessagesAreCutToTheirBuffer) {
  std::vector<float> logits = MakeLogits(2, 10, 13);
  logits[10 + 4] = kNaN;
  const nucleus_logits_view view{logits.data(), 2, 10, 0, NUCLEUS_DTYPE_F32};
  const nucleus_row_request req = nucleus_row_request_default();
  Engine engine;
  Buffers b(2, 1, 0, /*message_size=*/6);
  const nucleus_sample_output out = b.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_ROW_ERROR);
  EXPECT_EQ(b.message(0), "");
  EXPECT_EQ(b.message(1), "row 1");  // five characters and the NUL
  Buffers one(2, 1, 0, /*message_size=*/1);
  const nucleus_sample_output out1 = one.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out1), NUCLEUS_ROW_ERROR);
  EXPECT_EQ(one.message(1), "");
}

// ---- The last error ---------------------------------------------------------------

TEST(CApi, LastErrorIsClearedBySuccessAndPerThread) {
  Engine engine;
  const std::vector<float> logits = MakeLogits(1, 10, 14);
  const nucleus_logits_view view{logits.data(), 1, 10, 0, NUCLEUS_DTYPE_F32};
  nucleus_row_request req = nucleus_row_request_default();
  req.params.top_p = 2.0f;
  Buffers b(1, 1, 0);
  const nucleus_sample_output out = b.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("top_p = 2"));

  std::string other_thread = "unset";
  std::thread([&] { other_thread = nucleus_last_error(); }).join();
  EXPECT_EQ(other_thread, "");
  EXPECT_THAT(nucleus_last_error(), HasSubstr("top_p = 2"));  // still this thread's

  req.params.top_p = 0.5f;
  ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_OK);
  EXPECT_STREQ(nucleus_last_error(), "");
}

// ---- Threads -------------------------------------------------------------------

TEST(CApi, ManyHostThreadsShareOneEngine) {
  const int64_t rows = 8;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 15);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), 3 * r));
  Engine engine;
  Buffers want(rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output want_out = want.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &view, reqs.data(), rows, &want_out), NUCLEUS_OK);

  constexpr int kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        Buffers b(rows, kMaxSamples, kMaxTop);
        const nucleus_sample_output out = b.output();
        if (nucleus_sample(engine.handle, &view, reqs.data(), rows, &out) != NUCLEUS_OK ||
            b.tokens != want.tokens || b.top_tokens != want.top_tokens) {
          ++mismatches[static_cast<size_t>(t)];
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

// ---- Memory ---------------------------------------------------------------------

// A server calling with a steady batch shape: after the first calls the C
// layer (like the engine) allocates nothing.
TEST(CApi, SteadyStateAllocatesNothing) {
  const int64_t rows = 6;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 16);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r % 3), r));
  // One thread: with two, the engine's scratch pool may first need a second
  // scratch after the warm-up, whenever two rows first run at once; that is
  // the engine's scheduling (tests/allocation_test.cc), not this layer.
  nucleus_engine_options options = nucleus_engine_options_default();
  options.max_threads = 1;
  Engine engine(&options);
  Buffers b(rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output out = b.output();
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(nucleus_sample(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_OK);
  }
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(nucleus_sample(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_OK);
  }
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), 0);
}

// Every allocation of a call, failed in turn: the call returns INTERNAL
// ("out of memory") or succeeds, never throws or aborts, and the engine keeps
// working afterwards. A fresh thread per call makes the C layer's own scratch
// allocate too.
TEST(CApi, NoExceptionCrossesTheAbiWhenAllocationsFail) {
  const int64_t rows = 3;
  const std::vector<float> logits = MakeLogits(rows, kVocab, 17);
  const nucleus_logits_view view{logits.data(), rows, kVocab, 0, NUCLEUS_DTYPE_F32};
  std::vector<nucleus_row_request> reqs;
  for (int64_t r = 0; r < rows; ++r) reqs.push_back(KindRequest(static_cast<int>(r), r));
  nucleus_engine_options options = nucleus_engine_options_default();
  options.max_threads = 1;  // one thread: the allocation order is fixed
  Engine engine(&options);

  int internal = 0;
  for (int64_t n = 1; n <= 200; ++n) {
    nucleus_status status = NUCLEUS_OK;
    std::string message;
    std::thread([&] {
      Buffers b(rows, kMaxSamples, kMaxTop);
      const nucleus_sample_output out = b.output();
      g_fail_countdown = n;
      status = nucleus_sample(engine.handle, &view, reqs.data(), rows, &out);
      g_fail_countdown = 0;
      message = nucleus_last_error();
    }).join();
    ASSERT_TRUE(status == NUCLEUS_OK || status == NUCLEUS_INTERNAL) << n;
    if (status == NUCLEUS_INTERNAL) {
      ++internal;
      // A failure inside a row is that row's status ("row R: out of memory");
      // one in the C layer or the call itself is the call's.
      EXPECT_NE(message.find("out of memory"), std::string::npos) << message;
    }
  }
  EXPECT_GT(internal, 0);  // the injection did reach the call

  // Creating an engine and opening a dump fail cleanly too.
  nucleus_engine* e = nullptr;
  g_fail_countdown = 1;
  EXPECT_EQ(nucleus_engine_create(nullptr, &e), NUCLEUS_INTERNAL);
  g_fail_countdown = 0;
  EXPECT_EQ(e, nullptr);
  nucleus_dump* d = nullptr;
  g_fail_countdown = 1;
  EXPECT_EQ(nucleus_dump_open("/nonexistent/file.npy", nullptr, &d), NUCLEUS_INTERNAL);
  g_fail_countdown = 0;
  EXPECT_EQ(d, nullptr);

  // And the engine still samples.
  Buffers b(rows, kMaxSamples, kMaxTop);
  const nucleus_sample_output out = b.output();
  EXPECT_EQ(nucleus_sample(engine.handle, &view, reqs.data(), rows, &out), NUCLEUS_OK);
}

// ---- Dumps ---------------------------------------------------------------------

std::filesystem::path TempDir(const std::string& name) {
  const std::filesystem::path dir =
      std::filesystem::path(NUCLEUS_TEST_TMPDIR) / "c_api_test" / name;
  std::filesystem::create_directories(dir);
  return dir;
}

// `data` as the raw file `path`.
template <typename T>
void WriteRaw(const std::string& path, const std::vector<T>& data) {
  test_files::WriteFile(
      path, std::string(reinterpret_cast<const char*>(data.data()), data.size() * sizeof(T)));
}

// The options that open a raw dump of `dtype` rows of `vocab` values.
nucleus_dump_options RawOptions(nucleus_dtype dtype, int64_t vocab) {
  nucleus_dump_options options = nucleus_dump_options_default();
  options.format = NUCLEUS_DUMP_RAW;
  options.dtype = dtype;
  options.has_dtype = 1;
  options.vocab = vocab;
  return options;
}

TEST(CApiDump, ReadsRawBlocksThatSampleLikeTheWholeBatch) {
  const int64_t rows = 7, vocab = 100;
  const std::vector<float> logits = MakeLogits(rows, vocab, 18);
  const std::string path = (TempDir("raw") / "logits.bin").string();
  WriteRaw(path, logits);
  nucleus_dump_options options = RawOptions(NUCLEUS_DTYPE_F32, vocab);
  options.block_bytes = 3 * vocab * 4;  // three rows a block
  nucleus_dump* dump = nullptr;
  ASSERT_EQ(nucleus_dump_open(path.c_str(), &options, &dump), NUCLEUS_OK) << nucleus_last_error();
  nucleus_dump_info info;
  ASSERT_EQ(nucleus_dump_get_info(dump, &info), NUCLEUS_OK);
  EXPECT_EQ(info.format, NUCLEUS_DUMP_RAW);
  EXPECT_EQ(info.dtype, NUCLEUS_DTYPE_F32);
  EXPECT_EQ(info.rows, rows);
  EXPECT_EQ(info.vocab, vocab);
  EXPECT_EQ(info.block_rows, 3);
  EXPECT_EQ(info.num_blocks, 3);
  EXPECT_EQ(info.streamed, 1);

  // The whole batch at once, for comparison.
  nucleus_row_request req = KindRequest(1, 77);
  req.params.top_logprobs = 2;
  Engine engine;
  const nucleus_logits_view whole{logits.data(), rows, vocab, 0, NUCLEUS_DTYPE_F32};
  Buffers want(rows, kMaxSamples, 2);
  const nucleus_sample_output want_out = want.output();
  ASSERT_EQ(nucleus_sample(engine.handle, &whole, &req, 1, &want_out), NUCLEUS_OK);

  for (int64_t block = 0; block < info.num_blocks; ++block) {
    nucleus_logits_view view;
    int64_t first = -1;
    ASSERT_EQ(nucleus_dump_read_block(dump, block, &view, &first), NUCLEUS_OK)
        << nucleus_last_error();
    EXPECT_EQ(first, block * 3);
    EXPECT_EQ(view.rows, std::min<int64_t>(3, rows - first));
    EXPECT_EQ(view.vocab, vocab);
    EXPECT_EQ(view.dtype, NUCLEUS_DTYPE_F32);
    EXPECT_EQ(std::memcmp(view.data, logits.data() + first * vocab,
                          static_cast<size_t>(view.rows * vocab) * sizeof(float)),
              0);
    Buffers b(view.rows, kMaxSamples, 2);
    const nucleus_sample_output out = b.output();
    ASSERT_EQ(nucleus_sample(engine.handle, &view, &req, 1, &out), NUCLEUS_OK);
    for (int64_t i = 0; i < view.rows * kMaxSamples; ++i) {
      EXPECT_EQ(b.tokens[static_cast<size_t>(i)],
                want.tokens[static_cast<size_t>(first * kMaxSamples + i)]);
    }
  }
  nucleus_logits_view view;
  ASSERT_EQ(nucleus_dump_read(dump, 2, 4, &view), NUCLEUS_OK);
  EXPECT_EQ(view.rows, 4);
  EXPECT_EQ(std::memcmp(view.data, logits.data() + 2 * vocab, 4 * vocab * sizeof(float)), 0);

  std::vector<float> copied(3 * vocab, -1.0f);
  ASSERT_EQ(nucleus_dump_read_into(dump, 4, 3, copied.data()), NUCLEUS_OK);
  EXPECT_EQ(std::memcmp(copied.data(), logits.data() + 4 * vocab, copied.size() * sizeof(float)),
            0);
  EXPECT_EQ(std::memcmp(view.data, logits.data() + 2 * vocab, 4 * vocab * sizeof(float)), 0);
  EXPECT_EQ(nucleus_dump_read_into(dump, 5, 3, copied.data()), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("3 rows from row 5"));
  EXPECT_EQ(nucleus_dump_read_into(dump, 0, 1, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_read_into(nullptr, 0, 1, copied.data()), NUCLEUS_INVALID_ARGUMENT);

  EXPECT_EQ(nucleus_dump_read_block(dump, 3, &view, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("block = 3"));
  EXPECT_EQ(nucleus_dump_read(dump, 5, 4, &view), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_read_block(dump, 0, nullptr, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_read_block(nullptr, 0, &view, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_get_info(nullptr, &info), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_get_info(dump, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_close(dump), NUCLEUS_OK);
  EXPECT_EQ(nucleus_dump_close(nullptr), NUCLEUS_OK);
}

// nucleus_dump_read_into_float32 widens bfloat16 rows exactly (in place in
// the caller's buffer, nothing written past the rows), with the range checks
// and NULL checks of nucleus_dump_read_into.
TEST(CApiDump, ReadIntoFloat32WidensBfloat16Rows) {
  const int64_t rows = 5, vocab = 3000;
  const std::vector<float> logits = MakeLogits(rows, vocab, 19);
  std::vector<uint16_t> bits(logits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    bits[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(logits[i]) >> 16);  // (truncated)
  }
  const std::string path = (TempDir("bf16") / "logits.bin").string();
  WriteRaw(path, bits);
  const nucleus_dump_options options = RawOptions(NUCLEUS_DTYPE_BF16, vocab);
  nucleus_dump* dump = nullptr;
  ASSERT_EQ(nucleus_dump_open(path.c_str(), &options, &dump), NUCLEUS_OK) << nucleus_last_error();
  std::vector<float> rows_out(3 * vocab + 4, -7.0f);
  ASSERT_EQ(nucleus_dump_read_into_float32(dump, 1, 3, rows_out.data()), NUCLEUS_OK)
      << nucleus_last_error();
  for (int64_t i = 0; i < 3 * vocab; ++i) {
    const uint32_t want = uint32_t{bits[static_cast<size_t>(vocab + i)]} << 16;
    ASSERT_EQ(std::bit_cast<uint32_t>(rows_out[static_cast<size_t>(i)]), want) << "value " << i;
  }
  for (size_t i = 3 * vocab; i < rows_out.size(); ++i) EXPECT_EQ(rows_out[i], -7.0f);
  EXPECT_EQ(nucleus_dump_read_into_float32(dump, 4, 2, rows_out.data()), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("2 rows from row 4"));
  EXPECT_EQ(nucleus_dump_read_into_float32(dump, 0, 1, nullptr), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_read_into_float32(nullptr, 0, 1, rows_out.data()),
            NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_close(dump), NUCLEUS_OK);
}

TEST(CApiDump, OpensNpyByExtension) {
  const int64_t rows = 2, vocab = 50;
  const std::vector<float> logits = MakeLogits(rows, vocab, 19);
  const std::string path = (TempDir("npy") / "logits.npy").string();
  {
    // The C API reads dumps; the C++ writer makes one to read.
    nucleus::Result<nucleus::NpyWriter> writer = nucleus::NpyWriter::create(path, rows, vocab);
    ASSERT_TRUE(writer.ok()) << writer.status().to_string();
    ASSERT_TRUE(writer->write_rows(logits.data(), rows).ok());
    ASSERT_TRUE(writer->commit().ok());
  }
  nucleus_dump* dump = nullptr;
  ASSERT_EQ(nucleus_dump_open(path.c_str(), nullptr, &dump), NUCLEUS_OK) << nucleus_last_error();
  nucleus_dump_info info;
  ASSERT_EQ(nucleus_dump_get_info(dump, &info), NUCLEUS_OK);
  EXPECT_EQ(info.format, NUCLEUS_DUMP_NPY);
  EXPECT_EQ(info.rows, rows);
  EXPECT_EQ(info.vocab, vocab);
  EXPECT_EQ(info.num_blocks, 1);
  nucleus_logits_view view;
  ASSERT_EQ(nucleus_dump_read_block(dump, 0, &view, nullptr), NUCLEUS_OK);
  EXPECT_EQ(std::memcmp(view.data, logits.data(), logits.size() * sizeof(float)), 0);
  EXPECT_EQ(nucleus_dump_close(dump), NUCLEUS_OK);
}

TEST(CApiDump, OpenErrors) {
  nucleus_dump* dump = reinterpret_cast<nucleus_dump*>(&dump);  // must be reset
  const std::string missing = (TempDir("errors") / "missing.npy").string();
  EXPECT_EQ(nucleus_dump_open(missing.c_str(), nullptr, &dump), NUCLEUS_IO_ERROR);
  EXPECT_EQ(dump, nullptr);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("missing.npy"));

  const std::string raw = (TempDir("errors") / "some.bin").string();
  WriteRaw(raw, std::vector<float>{1, 2, 3, 4, 5, 6});
  nucleus_dump_options options = nucleus_dump_options_default();
  // By extension a .bin file is raw, and a raw dump needs its dtype and vocab.
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_IO_ERROR);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("dtype"));
  options.format = NUCLEUS_DUMP_RAW;
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("needs its dtype"));
  options.has_dtype = 1;
  options.dtype = 5;
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("dtype = 5"));
  options.dtype = NUCLEUS_DTYPE_F32;
  options.vocab = 4;  // 24 bytes are not a whole number of 16-byte rows
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_IO_ERROR);
  options.vocab = 3;
  options.format = 11;
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("format = 11"));
  options.format = NUCLEUS_DUMP_RAW;
  options.block_bytes = -1;
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_THAT(nucleus_last_error(), HasSubstr("block_bytes"));
  options.block_bytes = 0;  // the default
  ASSERT_EQ(nucleus_dump_open(raw.c_str(), &options, &dump), NUCLEUS_OK);
  EXPECT_EQ(nucleus_dump_close(dump), NUCLEUS_OK);
  EXPECT_EQ(nucleus_dump_open(nullptr, &options, &dump), NUCLEUS_INVALID_ARGUMENT);
  EXPECT_EQ(nucleus_dump_open(raw.c_str(), &options, nullptr), NUCLEUS_INVALID_ARGUMENT);
}

}  // namespace

namespace {

// nucleus_verify gives the C++ Engine::verify results, row by row, and fills
// the unused token slots.
TEST(CApiVerify, MatchesTheCppEngine) {
  constexpr int64_t kRows = 3, kDraft = 2, kV = 50;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> target(static_cast<size_t>(kRows * (kDraft + 1) * kV));
  for (float& v : target) v = normal(gen);
  std::vector<float> draft(static_cast<size_t>(kRows * kDraft * kV));
  for (int64_t i = 0; i < kRows * kDraft; ++i) {
    double z = 0;
    for (int64_t t = 0; t < kV; ++t) z += draft[i * kV + t] = std::exp(normal(gen));
    for (int64_t t = 0; t < kV; ++t) draft[i * kV + t] = static_cast<float>(draft[i * kV + t] / z);
  }
  std::vector<int32_t> drafts(kRows * kDraft);
  for (size_t i = 0; i < drafts.size(); ++i) drafts[i] = static_cast<int32_t>((i * 7) % kV);

  std::vector<nucleus::RowRequest> cpp_requests(kRows);
  std::vector<nucleus_row_request> c_requests(kRows);
  for (int64_t r = 0; r < kRows; ++r) {
    cpp_requests[r].seed = 10 + static_cast<uint64_t>(r);
    cpp_requests[r].step = 4;
    cpp_requests[r].params.top_k = 20;
    c_requests[r] = nucleus_row_request_default();
    c_requests[r].seed = 10 + static_cast<uint64_t>(r);
    c_requests[r].has_seed = 1;
    c_requests[r].step = 4;
    c_requests[r].params.top_k = 20;
  }
  nucleus::Engine cpp_engine({.max_threads = 2, .seed = 1});
  std::vector<nucleus::VerifyResult> expected(kRows);
  const nucleus::LogitsView view{target.data(), kRows * (kDraft + 1), kV, kV,
                                 nucleus::DType::kFloat32};
  ASSERT_TRUE(cpp_engine.verify(view, kDraft, drafts, draft.data(), cpp_requests, expected).ok());

  nucleus_engine* engine = nullptr;
  ASSERT_EQ(nucleus_engine_create(nullptr, &engine), NUCLEUS_OK);
  nucleus_logits_view c_view;
  std::memset(&c_view, 0, sizeof c_view);
  c_view.data = target.data();
  c_view.rows = kRows * (kDraft + 1);
  c_view.vocab = kV;
  c_view.row_stride = kV;
  c_view.dtype = NUCLEUS_DTYPE_F32;
  std::vector<int32_t> accepted(kRows, -7), tokens(kRows * (kDraft + 1), -7), status(kRows, -7);
  nucleus_verify_output out = nucleus_verify_output_default();
  out.accepted = accepted.data();
  out.tokens = tokens.data();
  out.row_status = status.data();
  ASSERT_EQ(nucleus_verify(engine, &c_view, kDraft, drafts.data(), draft.data(), c_requests.data(),
                           kRows, &out),
            NUCLEUS_OK);
  for (int64_t r = 0; r < kRows; ++r) {
    EXPECT_EQ(status[r], NUCLEUS_OK);
    EXPECT_EQ(accepted[r], expected[r].accepted);
    for (int64_t i = 0; i <= kDraft; ++i) {
      const int32_t want = i < static_cast<int64_t>(expected[r].tokens.size())
                               ? expected[r].tokens[static_cast<size_t>(i)]
                               : -1;
      EXPECT_EQ(tokens[r * (kDraft + 1) + i], want) << "row " << r << " slot " << i;
    }
  }

  // A call error names the problem and writes nothing.
  std::fill(accepted.begin(), accepted.end(), -7);
  EXPECT_EQ(
      nucleus_verify(engine, &c_view, kDraft, nullptr, nullptr, c_requests.data(), kRows, &out),
      NUCLEUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(nucleus_last_error()).find("draft_tokens"), std::string::npos);
  EXPECT_EQ(accepted[0], -7);
  EXPECT_EQ(
      nucleus_verify(engine, &c_view, 1, drafts.data(), nullptr, c_requests.data(), kRows, &out),
      NUCLEUS_INVALID_ARGUMENT);  // 9 target rows are not a multiple of 2
  EXPECT_NE(std::string(nucleus_last_error()).find("multiple"), std::string::npos)
      << nucleus_last_error();
  // (num_draft + 1 would overflow: UBSan's build reports it if it is formed)
  EXPECT_EQ(nucleus_verify(engine, &c_view, INT64_MAX, drafts.data(), nullptr, c_requests.data(),
                           kRows, &out),
            NUCLEUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(nucleus_last_error()).find("num_draft = 9223372036854775807"),
            std::string::npos)
      << nucleus_last_error();
  nucleus_engine_destroy(engine);
}

}  // namespace
