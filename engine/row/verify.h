// Speculative-decoding verification of one row (Engine::verify).
#pragma once

#include <cstdint>
#include <span>

#include "engine/row/row_sampler.h"
#include "nucleus/sampling.h"

namespace nucleus::detail {

// positions[i] (i = 0..K) are the row's target rows; drafts has K tokens;
// draft_probs is null or K × vocab floats.
void verify_row(std::span<const RowInput> positions, std::span<const int32_t> drafts,
                const float* draft_probs, const RowRequest& request, uint64_t seed, int64_t row,
                VerifyResult& result, RowScratch& scratch, const Runner& run);

}  // namespace nucleus::detail
