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
// Whether an allowed-token mask is the request's only processor.
bool only_allowed_mask(const RowRequest& request);

// Reusable buffers for the penalty bookkeeping, sized for the row before
// apply_processors runs (RowScratch::prepare).
struct PenaltyScratch {
  std::vector<uint32_t> count;  // per token, all zero between calls
  std::vector<uint64_t> seen;   // a bit per token (small enough for L1), all zero between calls
};

// Applies every processor of `request` but the allowed-token mask to the
// tokens [lo, hi) of `row` (the whole row's floats) in SPEC order, leaving
// the others alone, and notes each change in `changes` when given. The
// caller applies the mask first: as it copies the row
// (Kernels::masked_copy_stats), or by writing only the tokens it allows
// into `row` and reading only those back (every processor keeps -inf as
// -inf and changes each token by its own value: the values past them do
// not matter). lo and hi are multiples of 64 (or hi the row's end; with
// `changes`, of kChunk), so that calls on disjoint ranges touch disjoint
// parts of the row and of the scratch and may run at once. `unchanged`,
// when not null, holds the row as it was before any processor, the mask
// included (read only at the listed history tokens; `row` then holds it
// masked), which lets the repetition penalty run as a vector kernel
// (Kernels::repeat_penalty).
void apply_processors(const RowRequest& request, int64_t lo, int64_t hi, float* row,
                      PenaltyScratch& scratch, const RowChanges* changes, const Kernels& k,
                      const float* unchanged);

}  // namespace nucleus::detail
