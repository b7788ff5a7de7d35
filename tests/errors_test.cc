// Tests of SPEC section 7 and docs/semantics.md "Errors": every call error returns
// INVALID_ARGUMENT with a message naming the row, the field and the bad value, and writes
// nothing; row errors (NaN / +inf logits, no token left) fail only their row.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kSentinelProb = 7.5f;

// Messages spell values their own way ("nan" / "NaN", "inf" / "Inf"): compare lowercased.
std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

void ExpectMessageHas(const Status& s, const std::vector<std::string>& parts) {
  const std::string message = Lower(s.message());
  for (const std::string& part : parts) {
    EXPECT_THAT(message, HasSubstr(Lower(part))) << "message: " << s.message();
  }
}

// A result no engine would produce: any field changed by a call shows up.
RowResult Sentinel() {
  RowResult r;
  r.status = Status::internal("untouched");
  r.tokens = {-7, -8};
  r.logprobs = {42.0f};
  r.raw_logprobs = {43.0f, 44.0f};
  r.ranks = {99};
  r.top_logprobs = {{-5, 7.0f}};
  r.support = -99;
  return r;
}

void ExpectSentinel(const RowResult& r) {
  EXPECT_EQ(r.status.code(), StatusCode::kInternal);
  EXPECT_EQ(r.status.message(), "untouched");
  EXPECT_THAT(r.tokens, ::testing::ElementsAre(-7, -8));
  EXPECT_THAT(r.logprobs, ::testing::ElementsAre(42.0f));
  EXPECT_THAT(r.raw_logprobs, ::testing::ElementsAre(43.0f, 44.0f));
  EXPECT_THAT(r.ranks, ::testing::ElementsAre(99));
  ASSERT_EQ(r.top_logprobs.size(), 1u);
  EXPECT_EQ(r.top_logprobs[0].token, -5);
  EXPECT_EQ(r.top_logprobs[0].logprob, 7.0f);
  EXPECT_EQ(r.support, -99);
}

void ExpectEmptyRowError(const RowResult& r) {
  EXPECT_EQ(r.status.code(), StatusCode::kRowError) << r.status.to_string();
  EXPECT_TRUE(r.tokens.empty());
  EXPECT_TRUE(r.logprobs.empty());
  EXPECT_TRUE(r.raw_logprobs.empty());
  EXPECT_TRUE(r.ranks.empty());
  EXPECT_TRUE(r.top_logprobs.empty());
  EXPECT_EQ(r.support, 0);
}

// Row-level parameters for the tables below (spans must outlive the calls).
const int32_t kTokenAtVocab[] = {1, 5};  // vocab is 5
const int32_t kNegativeToken[] = {-1};
const int32_t kTokenSeven[] = {7};
const TokenBias kBiasTokenNine[] = {{9, 1.0f}};
const TokenBias kBiasNegativeToken[] = {{-1, 1.0f}};
const TokenBias kBiasNaN[] = {{2, kNaN}};
const TokenBias kBiasPlusInf[] = {{2, kInf}};
const int32_t kTwoWords[] = {-1, -1};  // vocab 5 needs one word

struct ParamCase {
  const char* name;
  std::function<void(RowRequest&)> mutate;
  std::vector<std::string> parts;  // besides the row
  bool sample_only = false;        // parameters of the draw, not of the distribution
};

std::vector<ParamCase> ParamCases() {
  return {
      {"negative temperature",
       [](RowRequest& r) { r.params.temperature = -0.5f; },
       {"temperature", "-0.5"}},
      {"NaN temperature",
       [](RowRequest& r) { r.params.temperature = kNaN; },
       {"temperature", "nan"}},
      {"infinite temperature",
       [](RowRequest& r) { r.params.temperature = kInf; },
       {"temperature", "inf"}},
      {"top_k -2", [](RowRequest& r) { r.params.top_k = -2; }, {"top_k", "-2"}},
      {"top_p -0.5", [](RowRequest& r) { r.params.top_p = -0.5f; }, {"top_p", "-0.5"}},
      {"top_p 1.5", [](RowRequest& r) { r.params.top_p = 1.5f; }, {"top_p", "1.5"}},
      {"top_p NaN", [](RowRequest& r) { r.params.top_p = kNaN; }, {"top_p", "nan"}},
      {"min_p -0.5", [](RowRequest& r) { r.params.min_p = -0.5f; }, {"min_p", "-0.5"}},
      {"min_p 1.5", [](RowRequest& r) { r.params.min_p = 1.5f; }, {"min_p", "1.5"}},
      {"min_p NaN", [](RowRequest& r) { r.params.min_p = kNaN; }, {"min_p", "nan"}},
      {"typical_p 0", [](RowRequest& r) { r.params.typical_p = 0.0f; }, {"typical_p", "0"}},
      {"typical_p -0.5", [](RowRequest& r) { r.params.typical_p = -0.5f; }, {"typical_p", "-0.5"}},
      {"typical_p 1.5", [](RowRequest& r) { r.params.typical_p = 1.5f; }, {"typical_p", "1.5"}},
      {"typical_p NaN", [](RowRequest& r) { r.params.typical_p = kNaN; }, {"typical_p", "nan"}},
      {"top_n_sigma NaN",
       [](RowRequest& r) { r.params.top_n_sigma = kNaN; },
       {"top_n_sigma", "nan"}},
      {"min_keep 0", [](RowRequest& r) { r.params.min_keep = 0; }, {"min_keep", "0"}},
      {"min_keep -3", [](RowRequest& r) { r.params.min_keep = -3; }, {"min_keep", "-3"}},
      {"repetition_penalty 0",
       [](RowRequest& r) { r.params.repetition_penalty = 0.0f; },
       {"repetition_penalty", "0"}},
      {"repetition_penalty -1.5",
       [](RowRequest& r) { r.params.repetition_penalty = -1.5f; },
       {"repetition_penalty", "-1.5"}},
      {"repetition_penalty inf",
       [](RowRequest& r) { r.params.repetition_penalty = kInf; },
       {"repetition_penalty", "inf"}},
      {"repetition_penalty NaN",
       [](RowRequest& r) { r.params.repetition_penalty = kNaN; },
       {"repetition_penalty", "nan"}},
      {"frequency_penalty NaN",
       [](RowRequest& r) { r.params.frequency_penalty = kNaN; },
       {"frequency_penalty", "nan"}},
      {"frequency_penalty inf",
       [](RowRequest& r) { r.params.frequency_penalty = kInf; },
       {"frequency_penalty", "inf"}},
      {"presence_penalty NaN",
       [](RowRequest& r) { r.params.presence_penalty = kNaN; },
       {"presence_penalty", "nan"}},
      {"presence_penalty -inf",
       [](RowRequest& r) { r.params.presence_penalty = -kInf; },
       {"presence_penalty", "inf"}},
      {"num_samples 0",
       [](RowRequest& r) { r.params.num_samples = 0; },
       {"num_samples", "0"},
       true},
      {"num_samples -1",
       [](RowRequest& r) { r.params.num_samples = -1; },
       {"num_samples", "-1"},
       true},
      {"top_logprobs -1",
       [](RowRequest& r) { r.params.top_logprobs = -1; },
       {"top_logprobs", "-1"},
       true},
      {"top_logprobs above vocab",
       [](RowRequest& r) { r.params.top_logprobs = 6; },
       {"top_logprobs", "6"},
       true},
      {"prompt token = vocab",
       [](RowRequest& r) { r.prompt_tokens = kTokenAtVocab; },
       {"prompt_tokens", "5"}},
      {"negative prompt token",
       [](RowRequest& r) { r.prompt_tokens = kNegativeToken; },
       {"prompt_tokens", "-1"}},
      {"generated token above vocab",
       [](RowRequest& r) { r.generated_tokens = kTokenSeven; },
       {"generated_tokens", "7"}},
      {"negative generated token",
       [](RowRequest& r) { r.generated_tokens = kNegativeToken; },
       {"generated_tokens", "-1"}},
      {"bias token above vocab",
       [](RowRequest& r) { r.logit_bias = kBiasTokenNine; },
       {"logit_bias", "9"}},
      {"negative bias token",
       [](RowRequest& r) { r.logit_bias = kBiasNegativeToken; },
       {"logit_bias", "-1"}},
      {"NaN bias", [](RowRequest& r) { r.logit_bias = kBiasNaN; }, {"logit_bias", "nan"}},
      {"+inf bias", [](RowRequest& r) { r.logit_bias = kBiasPlusInf; }, {"logit_bias", "inf"}},
      {"banned token = vocab",
       [](RowRequest& r) { r.banned_tokens = kTokenAtVocab; },
       {"banned_tokens", "5"}},
      {"negative banned token",
       [](RowRequest& r) { r.banned_tokens = kNegativeToken; },
       {"banned_tokens", "-1"}},
      {"bitmask too long",
       [](RowRequest& r) { r.allowed_mask = kTwoWords; },
       {"allowed_mask", "2"}},
  };
}

class ErrorsTest : public ::testing::Test {
 protected:
  static constexpr int64_t kRows = 3;
  static constexpr int64_t kVocab = 5;

  ErrorsTest()
      : logits_{0.5f,  -1.0f, 2.0f,  0.0f,  1.0f,  //
                1.0f,  1.5f,  -2.0f, 0.25f, 3.0f,  //
                -0.5f, 0.0f,  0.5f,  2.5f,  1.0f},
        requests_(kRows),
        results_(kRows, Sentinel()),
        out_(kRows * kVocab, kSentinelProb),
        row_status_(kRows, Status::internal("untouched")) {
    for (int64_t i = 0; i < kRows; ++i) requests_[i].seed = 100 + i;
  }

  LogitsView View() const { return {logits_.data(), kRows, kVocab, kVocab, DType::kFloat32}; }

  Status CallSample(const LogitsView& view) { return engine_.sample(view, requests_, results_); }
  Status CallProbs(const LogitsView& view) {
    return engine_.probs(view, requests_, out_.data(), kVocab, row_status_);
  }

  void ExpectNothingWritten() {
    for (const RowResult& r : results_) ExpectSentinel(r);
    EXPECT_THAT(out_, ::testing::Each(kSentinelProb));
    for (const Status& s : row_status_) {
      EXPECT_EQ(s.code(), StatusCode::kInternal);
      EXPECT_EQ(s.message(), "untouched");
    }
  }

  std::vector<float> logits_;
  std::vector<RowRequest> requests_;
  std::vector<RowResult> results_;
  std::vector<float> out_;
  std::vector<Status> row_status_;
  Engine engine_{EngineOptions{.max_threads = 2, .seed = 5}};
};

// ---------------------------------------------------------------------------------------------
// Call errors: parameters, history, bias, bans, bitmask.

TEST_F(ErrorsTest, ParameterErrorsNameRowFieldAndValue) {
  for (const ParamCase& c : ParamCases()) {
    SCOPED_TRACE(c.name);
    requests_.assign(kRows, RowRequest{});
    c.mutate(requests_[1]);
    std::vector<std::string> parts = c.parts;
    parts.push_back("row 1");

    const Status s = CallSample(View());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, parts);
    if (!c.sample_only) {
      const Status p = CallProbs(View());
      EXPECT_EQ(p.code(), StatusCode::kInvalidArgument) << p.to_string();
      ExpectMessageHas(p, parts);
    }
    ExpectNothingWritten();
  }
}

TEST_F(ErrorsTest, ValuesAtTheEdgeOfTheirRangeAreAccepted) {
  // The boundary values themselves are legal; a -inf bias masks.
  const TokenBias minus_inf_bias[] = {{2, -kInf}};
  const std::vector<std::function<void(RowRequest&)>> edges = {
      [](RowRequest& r) { r.params.temperature = 0.0f; },
      [](RowRequest& r) { r.params.top_k = -1; },
      [](RowRequest& r) { r.params.top_p = 0.0f; },
      [](RowRequest& r) { r.params.top_p = 1.0f; },
      [](RowRequest& r) { r.params.min_p = 1.0f; },
      [](RowRequest& r) { r.params.typical_p = 1.0f; },
      [](RowRequest& r) { r.params.top_n_sigma = -kInf; },
      [](RowRequest& r) { r.params.top_logprobs = 5; },
      [](RowRequest& r) { r.params.repetition_penalty = 1e-3f; },
      [](RowRequest& r) { r.params.frequency_penalty = -2.0f; },
      [&](RowRequest& r) { r.logit_bias = minus_inf_bias; },
  };
  for (size_t i = 0; i < edges.size(); ++i) {
    SCOPED_TRACE(i);
    requests_.assign(kRows, RowRequest{});
    edges[i](requests_[1]);
    const Status s = CallSample(View());
    EXPECT_TRUE(s.ok()) << s.to_string();
    for (const RowResult& r : results_) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  }
}

// One spelling per preset, the same in every interface (the command line's
// --preset checks against these three names).
TEST(PresetNames, OnlyTheDocumentedSpellings) {
  for (Preset p : {Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp}) {
    EXPECT_EQ(parse_preset(preset_name(p)), p);
  }
  for (const char* other : {"llama", "llamacpp", "HF", "vLLM", "", "hf "}) {
    EXPECT_EQ(parse_preset(other), std::nullopt) << other;
  }
}

// A Result is a value or an error: one made from an OK status (a caller's
// slip) says so, and ok() and status() agree.
TEST(ResultTest, AnOkStatusWithoutAValueIsAnError) {
  const Result<int> error(Status::invalid_argument("x"));
  EXPECT_FALSE(error.ok());
  EXPECT_EQ(error.status().message(), "x");
  const Result<int> slip{Status()};
  EXPECT_FALSE(slip.ok());
  EXPECT_EQ(slip.status().code(), StatusCode::kInternal);
  EXPECT_EQ(slip.status().message(), "a Result made from an OK status, without a value");
}

TEST_F(ErrorsTest, BitmaskOfTheWrongLength) {
  // vocab 40 needs ceil(40 / 32) = 2 words.
  const std::vector<float> logits(kRows * 40, 0.0f);
  const LogitsView view{logits.data(), kRows, 40, 40, DType::kFloat32};
  const int32_t one[] = {-1};
  const int32_t three[] = {-1, -1, -1};
  for (std::span<const int32_t> mask :
       {std::span<const int32_t>(one), std::span<const int32_t>(three)}) {
    SCOPED_TRACE(mask.size());
    requests_.assign(kRows, RowRequest{});
    requests_[1].allowed_mask = mask;
    const Status s = engine_.sample(view, requests_, results_);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, {"row 1", "allowed_mask", std::to_string(mask.size())});
    ExpectNothingWritten();
  }
}

TEST_F(ErrorsTest, SharedRequestErrorIsACallError) {
  RowRequest shared;
  shared.params.top_p = 1.5f;
  const Status s = engine_.sample(View(), std::span(&shared, 1), results_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectMessageHas(s, {"top_p", "1.5"});
  ExpectNothingWritten();
}

// ---------------------------------------------------------------------------------------------
// Call errors: the batch and the buffers.

TEST_F(ErrorsTest, NullData) {
  LogitsView view = View();
  view.data = nullptr;
  Status s = CallSample(view);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(Lower(s.message()), AnyOf(HasSubstr("data"), HasSubstr("logits"))) << s.message();
  s = CallProbs(view);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  ExpectNothingWritten();
}

TEST_F(ErrorsTest, MisalignedBuffers) {
  // A pointer to floats (or halves) not aligned to them cannot be read as
  // such (undefined behaviour, which the kernels' scalar loads would have):
  // a call error that names the field and the address.
  std::vector<unsigned char> bytes(kRows * kVocab * 4 + 8);
  std::memcpy(bytes.data() + 1, logits_.data(), logits_.size() * 4);
  for (const DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const LogitsView view{bytes.data() + 1, kRows, kVocab, kVocab, dtype};
    for (const Status& s : {CallSample(view), CallProbs(view)}) {
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
      EXPECT_THAT(s.message(), HasSubstr("logits: data = 0x"));
      EXPECT_THAT(s.message(), HasSubstr(std::string(" is not aligned to its elements' ") +
                                         (dtype == DType::kFloat32 ? "4" : "2") + " bytes"));
    }
  }
  std::vector<float> out(kRows * kVocab + 1);
  const Status s =
      engine_.probs(View(), requests_,
                    reinterpret_cast<float*>(reinterpret_cast<char*>(out.data()) + 2),  // NOLINT
                    kVocab, row_status_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("probs: out = 0x"));
  ExpectNothingWritten();
  // bfloat16 at an address of 2 mod 4 is aligned for it.
  const LogitsView halves{bytes.data() + 2, kRows, kVocab, kVocab, DType::kBFloat16};
  EXPECT_TRUE(CallSample(halves).ok());
}

TEST_F(ErrorsTest, BadShapes) {
  struct Case {
    const char* name;
    LogitsView view;
    std::vector<std::string> parts;
  };
  const void* data = logits_.data();
  const Case cases[] = {
      {"rows 0", {data, 0, kVocab, kVocab, DType::kFloat32}, {"rows", "0"}},
      {"rows -1", {data, -1, kVocab, kVocab, DType::kFloat32}, {"rows", "-1"}},
      {"vocab 0", {data, kRows, 0, kVocab, DType::kFloat32}, {"vocab", "0"}},
      {"vocab -5", {data, kRows, -5, kVocab, DType::kFloat32}, {"vocab", "-5"}},
      {"stride < vocab", {data, kRows, kVocab, 3, DType::kFloat32}, {"row_stride", "3"}},
      {"negative stride", {data, kRows, kVocab, -1, DType::kFloat32}, {"row_stride", "-1"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const Status s = CallSample(c.view);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, c.parts);
    const Status p = CallProbs(c.view);
    EXPECT_EQ(p.code(), StatusCode::kInvalidArgument) << p.to_string();
    ExpectMessageHas(p, c.parts);
    ExpectNothingWritten();
  }
}

TEST_F(ErrorsTest, RequestsOfTheWrongSize) {
  for (size_t n : {0, 2, 4}) {
    SCOPED_TRACE(n);
    const std::vector<RowRequest> requests(n);
    Status s = engine_.sample(View(), requests, results_);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, {"requests", std::to_string(n)});
    s = engine_.probs(View(), requests, out_.data(), kVocab, row_status_);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, {"requests", std::to_string(n)});
    ExpectNothingWritten();
  }
}

// probs may write over its float32 logits in place; an output that overlaps
// them otherwise (a row later, say) would have rows running in parallel
// overwrite logits not yet read, so it is refused.
TEST_F(ErrorsTest, ProbsOutputOverTheLogits) {
  ASSERT_TRUE(CallProbs(View()).ok());
  const std::vector<float> expected = out_;
  std::vector<float> buffer(logits_.begin(), logits_.end());
  buffer.resize(buffer.size() + kVocab, 0.0f);
  const LogitsView view{buffer.data(), kRows, kVocab, kVocab, DType::kFloat32};
  ASSERT_TRUE(engine_.probs(view, requests_, buffer.data(), kVocab, row_status_).ok());
  EXPECT_EQ(std::vector<float>(buffer.begin(), buffer.begin() + kRows * kVocab), expected);

  std::copy(logits_.begin(), logits_.end(), buffer.begin());
  const std::vector<float> before = buffer;
  for (int64_t shift : {int64_t{1}, kVocab}) {
    SCOPED_TRACE(shift);
    const Status s = engine_.probs(view, requests_, buffer.data() + shift, kVocab, row_status_);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, {"probs", "out overlaps the logits"});
    EXPECT_EQ(buffer, before);
  }
  // Rows that share no byte are no overlap: the output interleaved with the
  // logits (each row in the padding after its logits row), and one row in
  // place whatever the strides.
  std::vector<float> wide(static_cast<size_t>(kRows * 2 * kVocab), 0.0f);
  for (int64_t r = 0; r < kRows; ++r) {
    std::copy_n(logits_.begin() + r * kVocab, kVocab, wide.begin() + r * 2 * kVocab);
  }
  const LogitsView padded{wide.data(), kRows, kVocab, 2 * kVocab, DType::kFloat32};
  ASSERT_TRUE(engine_.probs(padded, requests_, wide.data() + kVocab, 2 * kVocab, row_status_).ok());
  for (int64_t r = 0; r < kRows; ++r) {
    EXPECT_TRUE(std::equal(expected.begin() + r * kVocab, expected.begin() + (r + 1) * kVocab,
                           wide.begin() + r * 2 * kVocab + kVocab))
        << "row " << r;
  }
  const LogitsView one{wide.data(), 1, kVocab, 2 * kVocab, DType::kFloat32};
  EXPECT_TRUE(
      engine_.probs(one, {requests_.data(), 1}, wide.data(), kVocab, {row_status_.data(), 1}).ok());
  // Half-precision logits cannot be overwritten in place (a float32 row is
  // twice as long).
  const LogitsView half{buffer.data(), kRows, kVocab, kVocab, DType::kFloat16};
  const Status s = engine_.probs(half, requests_, buffer.data(), kVocab, row_status_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
}

TEST_F(ErrorsTest, ResultsOfTheWrongSize) {
  for (size_t n : {0, 2, 4}) {
    SCOPED_TRACE(n);
    std::vector<RowResult> results(n, Sentinel());
    const Status s = engine_.sample(View(), requests_, results);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMessageHas(s, {"results", std::to_string(n)});
    for (const RowResult& r : results) ExpectSentinel(r);
  }
}

TEST_F(ErrorsTest, ProbsBuffersOfTheWrongSize) {
  Status s = engine_.probs(View(), requests_, nullptr, kVocab, row_status_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  EXPECT_THAT(Lower(s.message()), HasSubstr("out")) << s.message();
  s = engine_.probs(View(), requests_, out_.data(), kVocab - 1, row_status_);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  ExpectMessageHas(s, {"out_stride", std::to_string(kVocab - 1)});
  std::vector<Status> short_status(2, Status::internal("untouched"));
  s = engine_.probs(View(), requests_, out_.data(), kVocab, short_status);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  ExpectMessageHas(s, {"row_status", "2"});
  for (const Status& st : short_status) EXPECT_EQ(st.message(), "untouched");
  ExpectNothingWritten();
}

TEST_F(ErrorsTest, CallErrorInTheLastRowOfALargeBatchWritesNothing) {
  // A parallel engine must validate every row before sampling any.
  const int64_t rows = 64, vocab = 100;
  std::vector<float> logits(rows * vocab);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 13) * 0.5f;
  std::vector<RowRequest> requests(rows);
  requests[63].params.min_keep = 0;
  std::vector<RowResult> results(rows, Sentinel());
  const Status s =
      engine_.sample({logits.data(), rows, vocab, vocab, DType::kFloat32}, requests, results);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  ExpectMessageHas(s, {"row 63", "min_keep", "0"});
  for (const RowResult& r : results) ExpectSentinel(r);
}

TEST_F(ErrorsTest, CallErrorWinsOverRowErrors) {
  logits_[2] = kNaN;  // row 0 would be a row error
  requests_[2].params.top_p = 1.5f;
  const Status s = CallSample(View());
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  ExpectMessageHas(s, {"row 2", "top_p", "1.5"});
  EXPECT_EQ(CallProbs(View()).code(), StatusCode::kInvalidArgument);
  ExpectNothingWritten();
}

// ---------------------------------------------------------------------------------------------
// Row errors.

class RowErrorsTest : public ::testing::Test {
 protected:
  static constexpr int64_t kRows = 3;
  static constexpr int64_t kVocab = 20;

  RowErrorsTest() : logits_(kRows * kVocab), requests_(kRows) {
    for (size_t i = 0; i < logits_.size(); ++i) {
      logits_[i] = static_cast<float>((i * 5) % 17) * 0.25f - 1.0f;
    }
    for (int64_t i = 0; i < kRows; ++i) {
      requests_[i].seed = 40 + i;
      requests_[i].params.num_samples = 4;
      requests_[i].params.top_logprobs = 2;
    }
  }

  // Samples the batch with row `bad` broken; checks its row error and that every other row
  // equals the same row sampled alone (same seed, so the same tokens).
  void ExpectRowError(const LogitsView& view, int64_t bad, const std::vector<std::string>& parts) {
    std::vector<RowResult> results(kRows, Sentinel());
    const Status s = engine_.sample(view, requests_, results);
    ASSERT_TRUE(s.ok()) << s.to_string();
    ExpectEmptyRowError(results[bad]);
    ExpectMessageHas(results[bad].status, parts);

    std::vector<float> out(kRows * kVocab, kSentinelProb);
    std::vector<Status> row_status(kRows, Status::internal("untouched"));
    const Status p = engine_.probs(view, requests_, out.data(), kVocab, row_status);
    ASSERT_TRUE(p.ok()) << p.to_string();
    EXPECT_EQ(row_status[bad].code(), StatusCode::kRowError) << row_status[bad].to_string();
    ExpectMessageHas(row_status[bad], parts);
    for (int64_t c = 0; c < kVocab; ++c) EXPECT_EQ(out[bad * kVocab + c], 0.0f) << c;

    const auto stride = view.row_stride == 0 ? view.vocab : view.row_stride;
    for (int64_t i = 0; i < kRows; ++i) {
      if (i == bad) continue;
      SCOPED_TRACE(i);
      ASSERT_TRUE(results[i].status.ok()) << results[i].status.to_string();
      LogitsView alone = view;
      alone.rows = 1;
      alone.data = static_cast<const char*>(view.data) + i * stride * dtype_size(view.dtype);
      std::vector<RowResult> single(1);
      ASSERT_TRUE(engine_.sample(alone, std::span(&requests_[i], 1), single).ok());
      EXPECT_EQ(results[i].tokens, single[0].tokens);
      EXPECT_EQ(results[i].logprobs, single[0].logprobs);
      EXPECT_EQ(results[i].support, single[0].support);

      std::vector<float> p_alone(kVocab);
      std::vector<Status> st_alone(1);
      ASSERT_TRUE(
          engine_.probs(alone, std::span(&requests_[i], 1), p_alone.data(), kVocab, st_alone).ok());
      EXPECT_TRUE(row_status[i].ok()) << row_status[i].to_string();
      EXPECT_TRUE(std::equal(p_alone.begin(), p_alone.end(), out.begin() + i * kVocab));
    }
  }

  LogitsView View() const { return {logits_.data(), kRows, kVocab, kVocab, DType::kFloat32}; }

  std::vector<float> logits_;
  std::vector<RowRequest> requests_;
  Engine engine_{EngineOptions{.max_threads = 2, .seed = 6}};
};

TEST_F(RowErrorsTest, NaNLogit) {
  logits_[2 * kVocab + 17] = kNaN;
  ExpectRowError(View(), 2, {"row 2", "token 17", "nan"});
}

TEST_F(RowErrorsTest, PlusInfLogit) {
  logits_[0 * kVocab + 3] = kInf;
  ExpectRowError(View(), 0, {"row 0", "token 3", "inf"});
}

TEST_F(RowErrorsTest, NaNLogitInAGreedyRow) {
  logits_[1 * kVocab + 0] = kNaN;
  for (RowRequest& r : requests_) r.params.temperature = 0.0f;
  ExpectRowError(View(), 1, {"row 1", "token 0", "nan"});
}

TEST_F(RowErrorsTest, HalfTypeNaNAndInf) {
  // Half rows: 0x3C00 = 1.0, 0x7E00 = NaN, 0x7C00 = +inf (half); bfloat16 0x3F80 = 1.0,
  // 0x7FC0 = NaN, 0x7F80 = +inf.
  std::vector<uint16_t> f16(kRows * kVocab, 0x3C00);
  f16[1 * kVocab + 9] = 0x7E00;
  ExpectRowError({f16.data(), kRows, kVocab, kVocab, DType::kFloat16}, 1,
                 {"row 1", "token 9", "nan"});
  f16[1 * kVocab + 9] = 0x7C00;
  ExpectRowError({f16.data(), kRows, kVocab, kVocab, DType::kFloat16}, 1,
                 {"row 1", "token 9", "inf"});
  std::vector<uint16_t> bf16(kRows * kVocab, 0x3F80);
  bf16[2 * kVocab + 11] = 0x7FC0;
  ExpectRowError({bf16.data(), kRows, kVocab, kVocab, DType::kBFloat16}, 2,
                 {"row 2", "token 11", "nan"});
  bf16[2 * kVocab + 11] = 0x7F80;
  ExpectRowError({bf16.data(), kRows, kVocab, kVocab, DType::kBFloat16}, 2,
                 {"row 2", "token 11", "inf"});
}

TEST_F(RowErrorsTest, EveryTokenMaskedByTheInput) {
  for (int64_t c = 0; c < kVocab; ++c) logits_[1 * kVocab + c] = -kInf;
  ExpectRowError(View(), 1, {"row 1"});
  for (RowRequest& r : requests_) r.params.temperature = 0.0f;
  ExpectRowError(View(), 1, {"row 1"});
}

TEST_F(RowErrorsTest, EveryTokenMaskedByTheRequest) {
  const int32_t no_bits[] = {0};
  std::vector<int32_t> all_tokens(kVocab);
  std::vector<TokenBias> all_minus_inf(kVocab);
  for (int i = 0; i < kVocab; ++i) {
    all_tokens[i] = i;
    all_minus_inf[i] = {i, -kInf};
  }
  // Bitmask alone, bans alone, biases alone, and a mix that covers the row between them.
  const int32_t low_half[] = {0x3FF};  // tokens 0..9 allowed
  const std::vector<std::function<void(RowRequest&)>> masks = {
      [&](RowRequest& r) { r.allowed_mask = no_bits; },
      [&](RowRequest& r) { r.banned_tokens = all_tokens; },
      [&](RowRequest& r) { r.logit_bias = all_minus_inf; },
      [&](RowRequest& r) {
        r.allowed_mask = low_half;
        r.banned_tokens = std::span(all_tokens).first(5);
        r.logit_bias = std::span(all_minus_inf).subspan(5, 5);
      },
  };
  for (size_t m = 0; m < masks.size(); ++m) {
    SCOPED_TRACE(m);
    for (float t : {1.0f, 0.0f}) {
      RowRequest saved = requests_[0];
      masks[m](requests_[0]);
      requests_[0].params.temperature = t;
      ExpectRowError(View(), 0, {"row 0"});
      requests_[0] = saved;
    }
  }
}

TEST_F(RowErrorsTest, MinusInfLogitsAreAllowed) {
  // Only token 3 is finite in row 1: it is always drawn, support 1, logprob 0.
  for (int64_t c = 0; c < kVocab; ++c) {
    if (c != 3) logits_[1 * kVocab + c] = -kInf;
  }
  std::vector<RowResult> results(kRows);
  ASSERT_TRUE(engine_.sample(View(), requests_, results).ok());
  for (const RowResult& r : results) ASSERT_TRUE(r.status.ok()) << r.status.to_string();
  EXPECT_THAT(results[1].tokens, ::testing::Each(3));
  EXPECT_EQ(results[1].support, 1);
  EXPECT_THAT(results[1].logprobs, ::testing::Each(::testing::FloatEq(0.0f)));
  EXPECT_THAT(results[1].raw_logprobs, ::testing::Each(::testing::FloatEq(0.0f)));
}

}  // namespace
}  // namespace nucleus
