#include "engine/row/processors.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace nucleus::detail {

namespace {

// Whether a processor other than the allowed-token mask acts.
bool others_act(const RowRequest& r) {
  const SamplingParams& p = r.params;
  const bool history = !r.prompt_tokens.empty() || !r.generated_tokens.empty();
  const bool penalties =
      p.repetition_penalty != 1.0f ||
      (!r.generated_tokens.empty() && (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f));
  return !r.banned_tokens.empty() || !r.logit_bias.empty() || (history && penalties);
}

}  // namespace

bool has_processors(const RowRequest& r) { return !r.allowed_mask.empty() || others_act(r); }

bool only_allowed_mask(const RowRequest& r) { return !r.allowed_mask.empty() && !others_act(r); }

void apply_processors(const RowRequest& r, int64_t lo, int64_t hi, float* row,
                      PenaltyScratch& scratch, const RowChanges* changes, const Kernels& k,
                      const float* unchanged) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  // (one compare per listed token: the lists are read whole by every range)
  const auto span = static_cast<uint64_t>(hi - lo);
  auto mine = [&](int32_t t) { return static_cast<uint64_t>(t - lo) < span; };
  // (the notes' pointers in registers: a store through one of them may not
  // be taken to change another)
  const RowChanges noted = changes ? *changes : RowChanges{};
  auto put = [&, noted](int64_t t, float v) {
    if (noted.block_max) noted.note(t, row[t], v);
    row[t] = v;
  };

  // (1. The allowed-token bitmask: the caller's, below.)
  // 2. Banned tokens.
  for (int32_t t : r.banned_tokens) {
    if (mine(t)) put(t, kNegInf);
  }
  // 3. Logit bias (a -inf logit stays -inf), in list order.
  for (const TokenBias& b : r.logit_bias) {
    if (mine(b.token)) put(b.token, row[b.token] + b.bias);
  }

  // 4. Penalties.
  const SamplingParams& p = r.params;
  // Per-token marks and counts live in a vocabulary-sized array that is zero
  // between calls: only the history's tokens are touched, and reset after.
  const bool repetition =
      p.repetition_penalty != 1.0f && (!r.prompt_tokens.empty() || !r.generated_tokens.empty());
  const bool additive =
      (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) && !r.generated_tokens.empty();
  if (!repetition && !additive) return;
  // Each distinct token once: read from the unchanged row when no earlier
  // step changed this one (the kernel), or else marked in a bitmap whose
  // words are cleared after (every set bit belongs to a listed token).
  // (the kernel applies the mask to what it reads from the unchanged row)
  const bool from_unchanged =
      repetition && unchanged != nullptr && r.banned_tokens.empty() && r.logit_bias.empty();
  if (from_unchanged) {
    k.repeat_penalty(r.prompt_tokens.data(), static_cast<int64_t>(r.prompt_tokens.size()),
                     r.generated_tokens.data(), static_cast<int64_t>(r.generated_tokens.size()), lo,
                     hi, p.repetition_penalty, unchanged,
                     r.allowed_mask.empty() ? nullptr : r.allowed_mask.data(), row,
                     scratch.seen.data(), changes);
  } else if (repetition) {
    uint64_t* seen = scratch.seen.data();
    const float rp = p.repetition_penalty;
    auto penalise = [&](int32_t t) {
      if (!mine(t)) return;
      const uint64_t bit = uint64_t{1} << (t & 63);
      uint64_t& word = seen[t >> 6];
      if (word & bit) return;
      word |= bit;
      const float x = row[t];
      put(t, x > 0.0f ? x / rp : x * rp);  // -inf stays -inf
    };
    for (int32_t t : r.prompt_tokens) penalise(t);
    for (int32_t t : r.generated_tokens) penalise(t);
    for (int32_t t : r.prompt_tokens) {
      if (mine(t)) seen[t >> 6] = 0;
    }
    for (int32_t t : r.generated_tokens) {
      if (mine(t)) seen[t >> 6] = 0;
    }
  }
  if (additive) {
    uint32_t* count = scratch.count.data();
    for (int32_t t : r.generated_tokens) {
      if (mine(t)) ++count[t];
    }
    for (int32_t t : r.generated_tokens) {
      if (!mine(t) || count[t] == 0) continue;  // (0: already applied)
      // A masked token stays masked: an infinite penalty (a huge penalty times
      // its count) must not turn -inf into NaN.
      if (row[t] > kNegInf) {
        float x = row[t];
        x -= p.frequency_penalty * static_cast<float>(count[t]);
        x -= p.presence_penalty;
        put(t, x);
      }
      count[t] = 0;
    }
  }
}

}  // namespace nucleus::detail
