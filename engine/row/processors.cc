#include "engine/row/processors.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nucleus::detail {

bool has_processors(const RowRequest& r) {
  const SamplingParams& p = r.params;
  const bool history = !r.prompt_tokens.empty() || !r.generated_tokens.empty();
  const bool penalties =
      p.repetition_penalty != 1.0f ||
      (!r.generated_tokens.empty() && (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f));
  return !r.allowed_mask.empty() || !r.banned_tokens.empty() || !r.logit_bias.empty() ||
         (history && penalties);
}

void apply_processors(const RowRequest& r, int64_t vocab, float* row, PenaltyScratch& scratch) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();

  // 1. Allowed-token bitmask: bit (i % 32) of word (i / 32).
  if (!r.allowed_mask.empty()) {
    for (int64_t w = 0; w * 32 < vocab; ++w) {
      const auto bits = static_cast<uint32_t>(r.allowed_mask[static_cast<size_t>(w)]);
      if (bits == 0xFFFFFFFFu) continue;
      const int64_t end = std::min<int64_t>(32, vocab - w * 32);
      for (int64_t b = 0; b < end; ++b) {
        if (!((bits >> b) & 1u)) row[w * 32 + b] = kNegInf;
      }
    }
  }
  // 2. Banned tokens.
  for (int32_t t : r.banned_tokens) row[t] = kNegInf;
  // 3. Logit bias (a -inf logit stays -inf).
  for (const TokenBias& b : r.logit_bias) row[b.token] += b.bias;

  // 4. Penalties.
  const SamplingParams& p = r.params;
  if (p.repetition_penalty != 1.0f && (!r.prompt_tokens.empty() || !r.generated_tokens.empty())) {
    scratch.seen.assign(r.prompt_tokens.begin(), r.prompt_tokens.end());
    scratch.seen.insert(scratch.seen.end(), r.generated_tokens.begin(), r.generated_tokens.end());
    std::sort(scratch.seen.begin(), scratch.seen.end());
    const auto last = std::unique(scratch.seen.begin(), scratch.seen.end());
    const float rp = p.repetition_penalty;
    for (auto it = scratch.seen.begin(); it != last; ++it) {
      float& x = row[*it];
      x = x > 0.0f ? x / rp : x * rp;  // -inf stays -inf
    }
  }
  if ((p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) && !r.generated_tokens.empty()) {
    scratch.generated.assign(r.generated_tokens.begin(), r.generated_tokens.end());
    std::sort(scratch.generated.begin(), scratch.generated.end());
    const auto& g = scratch.generated;
    for (size_t i = 0; i < g.size();) {
      size_t j = i;
      while (j < g.size() && g[j] == g[i]) ++j;
      float& x = row[g[i]];
      // A masked token stays masked: an infinite penalty (a huge penalty times
      // its count) must not turn -inf into NaN.
      if (x > -std::numeric_limits<float>::infinity()) {
        x -= p.frequency_penalty * static_cast<float>(j - i);
        x -= p.presence_penalty;
      }
      i = j;
    }
  }
}

}  // namespace nucleus::detail
