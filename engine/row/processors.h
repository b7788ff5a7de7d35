// Logit processors (SPEC section 2, steps 1-4): allowed-token bitmask, banned
// tokens, logit bias and penalties, applied to a float32 copy of the row.
#pragma once

#include <cstdint>
#include <vector>

#include "nucleus/sampling.h"

namespace nucleus::detail {

// Whether the request changes any logit (and so needs a working copy).
bool has_processors(const RowRequest& request);

// Reusable buffers for the penalty bookkeeping.
struct PenaltyScratch {
  std::vector<uint32_t> count;  // per token, all zero between calls
  std::vector<uint64_t> seen;   // a bit per token (small enough for L1), all zero between calls
};

// Applies every processor of `request` to `row` (vocab floats) in SPEC order.
void apply_processors(const RowRequest& request, int64_t vocab, float* row,
                      PenaltyScratch& scratch);

}  // namespace nucleus::detail
