// Call-error checks (SPEC section 7): everything that makes a call invalid is
// found before any row is touched, so a call error writes nothing.
#pragma once

#include <span>

#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::detail {

// Checks the logits view and the request/result counts. `results_size` < 0
// skips the results check (the probs call has no results).
Status check_call(const LogitsView& logits, std::span<const RowRequest> requests,
                  int64_t results_size);

// Checks one request against the vocabulary. `row` < 0 means the request is
// shared by every row.
Status check_request(const RowRequest& request, int64_t row, int64_t vocab);

}  // namespace nucleus::detail
