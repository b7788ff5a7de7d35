// Logit processors (SPEC section 2, steps 1-4): allowed-token bitmask, banned
// tokens, logit bias and penalties, applied to a float32 copy of the row, a
// range of it at a time (on the thread that holds that range).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "nucleus/sampling.h"

namespace nucleus::detail {

// Whether the request changes any logit (and so needs a working copy).
bool has_processors(const RowRequest& request);

// Reusable buffers for the penalty bookkeeping, sized for the row before
// apply_processors runs (RowScratch::prepare).
struct PenaltyScratch {
  std::vector<uint32_t> count;  // per token, all zero between calls
  std::vector<uint64_t> seen;   // a bit per token (small enough for L1), all zero between calls
};

// What the processors changed, noted change by change so that the row need
// not be scanned again (check_and_widen): per pass block, its max as changes
// raise it, and whether a change touched a token that held it (the block is
// then scanned again); per chunk (kChunk tokens), how many tokens became -inf
// and the first that became NaN or +inf. All arrays cover the whole row and
// start as the unchanged row's block maxima, 0, 0 and -1. A note is a few
// branch-free operations: rows with long histories take thousands of them.
struct RowChanges {
  float* block_max = nullptr;
  uint8_t* touched = nullptr;
  int64_t* lost = nullptr;    // tokens that were > -inf and are -inf now
  int64_t* bad_at = nullptr;  // relative to the chunk
  void note(int64_t t, float before, float after) const {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const auto b = static_cast<uint64_t>(t) / kPassBlock;
    const float m = block_max[b];
    touched[b] |= static_cast<uint8_t>(before == m);
    block_max[b] = after > m ? after : m;
    if (!(std::abs(after) < kInf)) [[unlikely]] {  // -inf, +inf or NaN
      const auto c = static_cast<uint64_t>(t) / kChunk;
      if (after == -kInf) {
        lost[c] += before > -kInf ? 1 : 0;
      } else {
        const int64_t at = t - static_cast<int64_t>(c) * kChunk;
        bad_at[c] = bad_at[c] < 0 ? at : std::min(bad_at[c], at);
      }
    }
  }
};

// Applies every processor of `request` to the tokens [lo, hi) of `row` (the
// whole row's floats) in SPEC order, leaving the others alone, and notes each
// change in `changes` when given. lo and hi are multiples of 64 (or hi the
// row's end; with `changes`, of kChunk), so that calls on disjoint ranges
// touch disjoint parts of the row and of the scratch and may run at once.
void apply_processors(const RowRequest& request, int64_t lo, int64_t hi, float* row,
                      PenaltyScratch& scratch, const RowChanges* changes = nullptr);

}  // namespace nucleus::detail
