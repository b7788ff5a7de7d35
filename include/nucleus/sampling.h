// nucleus — what a batch call takes and gives back: the logits view, the
// per-row request (parameters, seed, history, masks) and the per-row result.
//
// The semantics of every field are those of SPEC.md (the project's contract);
// docs/semantics.md records the decisions the contract leaves open.
//
// Example:
//   nucleus::RowRequest req;
//   req.params.temperature = 0.7f;
//   req.params.top_k = 50;
//   req.params.top_p = 0.9f;
//   req.seed = 1234;
//   req.step = 0;
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "nucleus/status.h"

namespace nucleus {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// "f32", "f16", "bf16".
const char* dtype_name(DType dtype);
int dtype_size(DType dtype);

// A batch of logits, row-major. Only the first `vocab` columns of each row
// count; `row_stride` (in elements, >= vocab) lets servers pass padded rows.
struct LogitsView {
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t vocab = 0;
  int64_t row_stride = 0;  // 0 means `vocab`
  DType dtype = DType::kFloat32;
};

// The order in which the filters run (SPEC section 4).
enum class Preset { kHF, kVLLM, kLlamaCpp };

// "hf", "vllm", "llama.cpp": the one spelling of each, which every interface
// (the command line, --params, Python) accepts and no other.
const char* preset_name(Preset preset);
std::optional<Preset> parse_preset(std::string_view name);

// Which distribution `top_logprobs` and `ranks` describe.
enum class LogprobsMode {
  kProcessed,  // the final distribution, after penalties, temperature and filters
  kRaw,        // log_softmax of the raw input row
};

struct SamplingParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 or -1 = off; >= vocab = off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float typical_p = 1.0f;    // 1 = off; must be in (0, 1]
  float top_n_sigma = 0.0f;  // <= 0 = off
  int32_t min_keep = 1;      // every filter keeps at least this many tokens

  float repetition_penalty = 1.0f;  // 1 = off
  float frequency_penalty = 0.0f;   // 0 = off
  float presence_penalty = 0.0f;    // 0 = off

  Preset preset = Preset::kHF;
  int32_t num_samples = 1;  // independent draws with replacement

  // Compute the sampled tokens' log-probabilities (processed and raw). When
  // false they are left NaN, and rows whose filters read few tokens (greedy,
  // top-k, min-p) skip the raw normaliser, an exp over the whole row (most
  // of their time: README, "Benchmarks").
  bool logprobs = true;
  int32_t top_logprobs = 0;  // N > 0: also return the top-N and the sampled ranks
  LogprobsMode logprobs_mode = LogprobsMode::kProcessed;
};

struct TokenBias {
  int32_t token = 0;
  float bias = 0.0f;
};

// One row's request. The spans are borrowed for the duration of the call,
// and must not point into the call's results (a history that is a
// RowResult's own tokens): those are written while the requests are read.
// A token named twice in logit_bias gets both biases (their sum, as
// llama.cpp's list of pairs does).
struct RowRequest {
  SamplingParams params{};
  std::optional<uint64_t> seed = std::nullopt;  // none: the engine's own generator
  uint64_t step = 0;                            // the decoding step; enters the Philox counter

  std::span<const int32_t> prompt_tokens{};     // repetition penalty only
  std::span<const int32_t> generated_tokens{};  // repetition, frequency, presence
  std::span<const TokenBias> logit_bias{};
  std::span<const int32_t> banned_tokens{};
  // Empty, or ceil(vocab / 32) words: bit (i % 32) of word (i / 32) set means
  // token i is allowed (the xgrammar / llguidance layout).
  std::span<const int32_t> allowed_mask{};
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// One row's outcome. Reuse the same RowResult objects across calls: their
// vectors keep their capacity, so the steady state allocates nothing.
struct RowResult {
  Status status{};
  std::vector<int32_t> tokens{};      // num_samples ids
  std::vector<float> logprobs{};      // under the final (processed) distribution
  std::vector<float> raw_logprobs{};  // under log_softmax of the raw input row
  std::vector<int32_t> ranks{};  // 1-based, in the logprobs_mode distribution (top_logprobs > 0)
  std::vector<TokenLogprob> top_logprobs{};  // top-N of the logprobs_mode distribution
  int64_t support = 0;  // tokens left after the filters (finite tokens for greedy)

  void clear();
};

// One row's outcome of speculative-decoding verification (Engine::verify).
struct VerifyResult {
  Status status{};
  int32_t accepted = 0;           // draft tokens accepted, 0..K
  std::vector<int32_t> tokens{};  // the accepted drafts, then one recovered or bonus token

  void clear();
};

}  // namespace nucleus
