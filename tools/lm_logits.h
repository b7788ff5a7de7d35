// Language-model-like logits for demos, tests and benchmarks, without a model.
//
// What makes them look real: a shared token-frequency prior (logits fall off
// like a Zipf law over a fixed random ranking of the vocabulary), per-row
// Gaussian context noise, and a handful of dominant tokens whose margin over
// the bulk decides how peaked the row is. Mixed rows cycle through peaked (one
// token takes most of the mass), medium (a few plausible tokens) and flat
// (high entropy) kinds. The output is deterministic for a given seed: the
// generator is mt19937_64 with hand-written transforms, whose outputs the C++
// standard fixes, unlike those of <random>'s distributions.
//
// Example:
//   std::vector<float> x = nucleus::tools::make_lm_logits(8, 32000, LmRowKind::kMixed, 1);
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace nucleus::tools {

enum class LmRowKind { kMixed, kPeaked, kMedium, kFlat };

// "mixed", "peaked", "medium", "flat".
std::optional<LmRowKind> parse_lm_row_kind(std::string_view name);

// rows × vocab logits, row-major.
std::vector<float> make_lm_logits(int64_t rows, int64_t vocab, LmRowKind kind, uint64_t seed);

}  // namespace nucleus::tools
