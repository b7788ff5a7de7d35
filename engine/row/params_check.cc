#include "engine/row/params_check.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <sstream>
#include <string>

namespace nucleus::detail {
namespace {

constexpr int32_t kMaxSamples = 1 << 20;

template <typename T>
std::string show(T value) {
  std::ostringstream out;
  out.precision(9);
  out << value;
  return out.str();
}

FieldError bad(std::string_view field, std::string value, std::string why, std::string index = {}) {
  return FieldError{field, std::move(index), std::move(value), std::move(why)};
}

// "[i]" (built by appends: GCC 12 warns falsely on "[" + std::string)
std::string subscript(size_t i) {
  std::string s(1, '[');
  s.append(std::to_string(i)).push_back(']');
  return s;
}

std::optional<FieldError> check_tokens(std::span<const int32_t> tokens, std::string_view field,
                                       int64_t vocab) {
  // One branch-free sweep (it vectorises) for the common case; the position
  // of a bad id is looked for only when there is one.
  // (one unsigned 32-bit compare per id: a negative id wraps past any vocab)
  uint32_t any_bad = 0;
  const auto limit = static_cast<uint32_t>(std::min<int64_t>(vocab, int64_t{1} << 31));
  for (const int32_t t : tokens)
    any_bad |= static_cast<uint32_t>(static_cast<uint32_t>(t) >= limit);
  if (any_bad == 0) return std::nullopt;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return bad(field, show(tokens[i]), "is outside [0, " + std::to_string(vocab) + ")",
                 subscript(i));
    }
  }
  return std::nullopt;
}

}  // namespace

std::string shown_float(float value) { return show(value); }

Status check_extent(std::string_view what, std::string_view stride_field, int64_t rows,
                    int64_t stride, int64_t vocab, int64_t esize) {
  // No 64-bit system nucleus builds for has an address space of 2^57 bytes
  // or more (x86-64 with five-level paging: 2^57 in all, 2^56 for user
  // memory), so a view spanning more cannot exist, and within it every row
  // offset is formed without overflow. (The span alone: an address may carry
  // tag bits above it.)
  constexpr uint64_t kSpanLimit = uint64_t{1} << 57;
  const uint64_t max_elements = kSpanLimit / static_cast<uint64_t>(esize);
  const auto v = static_cast<uint64_t>(vocab), s = static_cast<uint64_t>(stride);
  const auto last = static_cast<uint64_t>(rows - 1);
  if (v <= max_elements && last <= (max_elements - v) / s) return Status();
  return Status::invalid_argument(std::string(what) + ": rows = " + show(rows) + " of vocab = " +
                                  show(vocab) + " with " + std::string(stride_field) + " = " +
                                  show(stride) + " span more than any address space (2^57 bytes)");
}

Status check_aligned(std::string_view what, const void* data, int64_t esize) {
  const auto address = reinterpret_cast<uintptr_t>(data);
  if (address % static_cast<uintptr_t>(esize) == 0) return Status();
  std::ostringstream text;
  text << what << " = 0x" << std::hex << address << " is not aligned to its elements' " << std::dec
       << esize << " bytes";
  return Status::invalid_argument(text.str());
}

Status check_view(const LogitsView& logits) {
  if (logits.data == nullptr) return Status::invalid_argument("logits: data is null");
  if (logits.rows <= 0) {
    return Status::invalid_argument("logits: rows = " + show(logits.rows) + " must be > 0");
  }
  if (logits.vocab <= 0) {
    return Status::invalid_argument("logits: vocab = " + show(logits.vocab) + " must be > 0");
  }
  if (logits.vocab > INT32_MAX) {
    return Status::invalid_argument("logits: vocab = " + show(logits.vocab) +
                                    " does not fit token ids (int32)");
  }
  const int64_t stride = row_stride_of(logits);
  if (stride < logits.vocab) {
    return Status::invalid_argument("logits: row_stride = " + show(logits.row_stride) +
                                    " is smaller than vocab = " + show(logits.vocab));
  }
  if (logits.dtype != DType::kFloat32 && logits.dtype != DType::kFloat16 &&
      logits.dtype != DType::kBFloat16) {
    return Status::invalid_argument("logits: dtype = " + show(static_cast<int>(logits.dtype)) +
                                    " is unknown");
  }
  if (Status s = check_extent("logits", "row_stride", logits.rows, stride, logits.vocab,
                              dtype_size(logits.dtype));
      !s.ok()) {
    return s;
  }
  return check_aligned("logits: data", logits.data, dtype_size(logits.dtype));
}

std::string float32_range_error(double value) {
  if (!std::isfinite(value)) return std::string();
  const auto f = static_cast<float>(value);
  if (std::isinf(f)) return "does not fit a 32-bit float";
  if (f == 0.0f && value != 0.0) return "is too small for a 32-bit float (it would be 0)";
  return std::string();
}

bool is_token_key(std::string_view text) {
  if (text.starts_with('-')) text.remove_prefix(1);
  return !text.empty() && text.size() <= 10 &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

Status check_verify_view(const LogitsView& target_logits, int64_t num_draft, int64_t* rows) {
  if (target_logits.rows <= 0) {
    return Status::invalid_argument(
        "verify: target_logits rows = " + std::to_string(target_logits.rows) + " must be > 0");
  }
  if (num_draft < 0 || num_draft >= std::max<int64_t>(target_logits.rows, 1)) {
    // (Checked before num_draft + 1 is formed, which could overflow.)
    return Status::invalid_argument(
        "verify: num_draft = " + std::to_string(num_draft) +
        " must be >= 0 and below the target rows = " + std::to_string(target_logits.rows));
  }
  const int64_t per_row = num_draft + 1;
  if (target_logits.rows <= 0 || target_logits.rows % per_row != 0) {
    return Status::invalid_argument(
        "verify: target_logits rows = " + std::to_string(target_logits.rows) +
        " must be a positive multiple of num_draft + 1 = " + std::to_string(per_row));
  }
  LogitsView by_row = target_logits;
  by_row.rows = target_logits.rows / per_row;
  if (Status s = check_view(by_row); !s.ok()) return s;
  // (check_view saw a view of rows / (K + 1) rows only)
  if (Status s = check_extent("verify: target_logits", "row_stride", target_logits.rows,
                              row_stride_of(target_logits), target_logits.vocab,
                              dtype_size(target_logits.dtype));
      !s.ok()) {
    return s;
  }
  *rows = by_row.rows;
  return Status();
}

Status check_drafts(std::span<const int32_t> draft_tokens, const float* draft_probs, int64_t rows,
                    int64_t num_draft, int64_t vocab) {
  if (static_cast<int64_t>(draft_tokens.size()) != rows * num_draft) {
    return Status::invalid_argument(
        "verify: draft_tokens size = " + std::to_string(draft_tokens.size()) +
        " must be rows * K = " + std::to_string(rows * num_draft));
  }
  for (size_t i = 0; i < draft_tokens.size(); ++i) {
    if (draft_tokens[i] < 0 || draft_tokens[i] >= vocab) {
      return Status::invalid_argument("row " + std::to_string(static_cast<int64_t>(i) / num_draft) +
                                      ": draft_tokens[" +
                                      std::to_string(static_cast<int64_t>(i) % num_draft) +
                                      "] = " + std::to_string(draft_tokens[i]) +
                                      " is outside [0, " + std::to_string(vocab) + ")");
    }
  }
  if (draft_probs) {
    if (Status s = check_aligned("draft_probs", draft_probs, 4); !s.ok()) return s;
    // Each drafter row is a distribution: finite values >= 0 that sum to 1,
    // within what rounding to a half type leaves (2^-9 of the sum for
    // bfloat16). A row scaled otherwise would make the output a mixture
    // that is not the target's distribution, silently. (Sixteen float
    // lanes, which the compiler vectorises: their rounding, ~1e-3 of the
    // sum at the most, is far inside the tolerance.)
    constexpr double kSumTolerance = 0.01;
    constexpr int64_t kLanes = 16;
    for (int64_t d = 0; d < rows * num_draft; ++d) {
      const float* q = draft_probs + d * vocab;
      float lane[kLanes] = {};
      bool fine = true;
      int64_t t = 0;
      for (; t + kLanes <= vocab; t += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) {
          const float v = q[t + j];
          fine &= v >= 0.0f && v < INFINITY;
          lane[j] += v;
        }
      }
      double sum = 0.0;
      for (; t < vocab; ++t) {
        fine &= q[t] >= 0.0f && q[t] < INFINITY;
        sum += q[t];
      }
      for (const float v : lane) sum += v;
      if (fine && std::abs(sum - 1.0) <= kSumTolerance) continue;
      const std::string where = "row " + std::to_string(d / num_draft) + ": draft_probs[" +
                                std::to_string(d % num_draft) + "]";
      for (t = 0; t < vocab; ++t) {
        if (!(q[t] >= 0.0f && q[t] < INFINITY)) {
          return Status::invalid_argument(where + "[" + std::to_string(t) +
                                          "] = " + shown_float(q[t]) + " must be finite and >= 0");
        }
      }
      char shown[32];  // (six digits: the tolerance is 0.01; a double, not to overflow)
      std::snprintf(shown, sizeof shown, "%.6g", sum);
      return Status::invalid_argument(where + " sums to " + shown +
                                      ": a draft distribution must sum to 1 (within 0.01)");
    }
  }
  return Status();
}

Status check_call(const LogitsView& logits, std::span<const RowRequest> requests,
                  int64_t results_size) {
  if (Status s = check_view(logits); !s.ok()) return s;
  const auto n = static_cast<int64_t>(requests.size());
  if (n != 1 && n != logits.rows) {
    return Status::invalid_argument("requests: size = " + show(n) +
                                    " must be 1 or rows = " + show(logits.rows));
  }
  if (results_size >= 0 && results_size != logits.rows) {
    return Status::invalid_argument("results: size = " + show(results_size) +
                                    " must equal rows = " + show(logits.rows));
  }
  return Status();
}

std::optional<FieldError> find_request_error(const RowRequest& r, int64_t vocab) {
  const SamplingParams& p = r.params;
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return bad("temperature", show(p.temperature), "must be finite and >= 0");
  }
  if (p.top_k < -1) return bad("top_k", show(p.top_k), "must be >= -1 (0 or -1 = off)");
  if (!(p.top_p >= 0.0f && p.top_p <= 1.0f)) {
    return bad("top_p", show(p.top_p), "is outside [0, 1]");
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return bad("min_p", show(p.min_p), "is outside [0, 1]");
  }
  if (!(p.typical_p > 0.0f && p.typical_p <= 1.0f)) {
    return bad("typical_p", show(p.typical_p), "is outside (0, 1]");
  }
  if (std::isnan(p.top_n_sigma) || p.top_n_sigma == INFINITY) {
    return bad("top_n_sigma", show(p.top_n_sigma), "must be finite or -inf (<= 0 = off)");
  }
  if (p.min_keep < 1) return bad("min_keep", show(p.min_keep), "must be >= 1");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return bad("repetition_penalty", show(p.repetition_penalty), "must be finite and > 0");
  }
  if (!std::isfinite(p.frequency_penalty)) {
    return bad("frequency_penalty", show(p.frequency_penalty), "must be finite");
  }
  if (!std::isfinite(p.presence_penalty)) {
    return bad("presence_penalty", show(p.presence_penalty), "must be finite");
  }
  // Each sample costs a few words of output; the cap keeps a typo from asking
  // for gigabytes (vLLM's n is small too).
  if (p.num_samples < 1 || p.num_samples > kMaxSamples) {
    return bad("num_samples", show(p.num_samples),
               "is outside [1, " + std::to_string(kMaxSamples) + "]");
  }
  if (p.top_logprobs < 0 || p.top_logprobs > vocab) {
    return bad("top_logprobs", show(p.top_logprobs),
               "is outside [0, vocab = " + std::to_string(vocab) + "]");
  }
  if (p.preset != Preset::kHF && p.preset != Preset::kVLLM && p.preset != Preset::kLlamaCpp) {
    return bad("preset", show(static_cast<int>(p.preset)), "is unknown");
  }
  if (p.logprobs_mode != LogprobsMode::kProcessed && p.logprobs_mode != LogprobsMode::kRaw) {
    return bad("logprobs_mode", show(static_cast<int>(p.logprobs_mode)), "is unknown");
  }
  if (auto e = check_tokens(r.prompt_tokens, "prompt_tokens", vocab)) return e;
  if (auto e = check_tokens(r.generated_tokens, "generated_tokens", vocab)) return e;
  if (auto e = check_tokens(r.banned_tokens, "banned_tokens", vocab)) return e;
  for (size_t i = 0; i < r.logit_bias.size(); ++i) {
    const TokenBias& b = r.logit_bias[i];
    const std::string item = subscript(i);
    if (b.token < 0 || b.token >= vocab) {
      return bad("logit_bias", show(b.token), "is outside [0, " + std::to_string(vocab) + ")",
                 item + ".token");
    }
    if (std::isnan(b.bias) || b.bias == INFINITY) {
      return bad("logit_bias", show(b.bias), "must be finite or -inf", item + ".bias");
    }
  }
  if (!r.allowed_mask.empty()) {
    const int64_t words = (vocab + 31) / 32;
    if (static_cast<int64_t>(r.allowed_mask.size()) != words) {
      return bad("allowed_mask", std::to_string(r.allowed_mask.size()) + " words",
                 "must hold ceil(vocab / 32) = " + std::to_string(words) + " words");
    }
  }
  return std::nullopt;
}

Status field_status(std::string prefix, std::string_view field, const FieldError& e) {
  prefix.append(field).append(e.index).append(" = ").append(e.value).append(" ");
  return Status::invalid_argument(prefix + e.reason);
}

Status check_request(const RowRequest& r, int64_t row, int64_t vocab) {
  const std::optional<FieldError> e = find_request_error(r, vocab);
  if (!e) return Status();
  return field_status(
      row < 0 ? std::string("shared request: ") : "row " + std::to_string(row) + ": ", e->field,
      *e);
}

}  // namespace nucleus::detail
