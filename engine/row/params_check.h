// Call-error checks (SPEC section 7): everything that makes a call invalid is
// found before any row is touched, so a call error writes nothing.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::detail {

// The elements from one row's start to the next's (row_stride, 0 meaning
// vocab).
inline int64_t row_stride_of(const LogitsView& logits) {
  return logits.row_stride == 0 ? logits.vocab : logits.row_stride;
}

// Checks the logits view alone: data, shape, stride, dtype and extent (a view
// that passes can exist: its offsets do not overflow).
Status check_view(const LogitsView& logits);

// Checks verify's target view for `num_draft` drafts a row: num_draft in
// [0, target rows), the target rows a positive multiple of num_draft + 1,
// the view of one row per K + 1 positions (check_view) and the whole
// target's extent; *rows gets the batch's rows. (Shared by the C++ and C
// interfaces, in this order, with these messages.)
Status check_verify_view(const LogitsView& target_logits, int64_t num_draft, int64_t* rows);

// Checks verify's drafts, `num_draft` for each of `rows` rows: draft_tokens
// holds rows * num_draft ids in [0, vocab); draft_probs, when given, is
// aligned and each of its rows * num_draft rows of `vocab` floats is a
// distribution (finite, >= 0, summing to 1 within 0.01).
Status check_drafts(std::span<const int32_t> draft_tokens, const float* draft_probs, int64_t rows,
                    int64_t num_draft, int64_t vocab);

// Checks the logits view (check_view) and the request/result counts.
// `results_size` < 0 skips the results check (the probs call has no results).
Status check_call(const LogitsView& logits, std::span<const RowRequest> requests,
                  int64_t results_size);

// Checks that `rows` rows of `vocab` elements of `esize` bytes, `stride`
// elements apart (stride >= vocab, both > 0), span less than any address
// space holds (2^57 bytes): a view that spans more cannot exist, and the
// offsets of its rows would overflow (a wrong row read, or a crash). The
// message names `what` ("logits", "probs: out") and `stride_field` with
// their values.
Status check_extent(std::string_view what, std::string_view stride_field, int64_t rows,
                    int64_t stride, int64_t vocab, int64_t esize);

// Checks that `data` (named by `what`: "logits: data", "probs: out") is
// aligned to its elements' `esize` bytes, as a pointer to them must be.
Status check_aligned(std::string_view what, const void* data, int64_t esize);

// A float as the call errors show values (nine significant digits: -1e-10,
// not std::to_string's -0.000000).
std::string shown_float(float value);

// What is wrong with a request, field by field, so that each interface can
// spell the field as its users typed it ("--top-p", "n") without reading text
// back out of a message.
struct FieldError {
  std::string_view field;  // the RowRequest/SamplingParams name: "top_p", "generated_tokens"
  std::string index;       // "", "[3]" or "[0].token"
  std::string value;       // as shown in the message
  std::string reason;      // "is outside [0, 1]"
};

// The first field of `request` that is invalid for `vocab`, if any.
std::optional<FieldError> find_request_error(const RowRequest& request, int64_t vocab);

// "<prefix><field><index> = <value> <reason>", with `field` spelled as given
// ("row 3: " + "top_p", "option " + "--top-p").
Status field_status(std::string prefix, std::string_view field, const FieldError& error);

// Why a float32 parameter cannot take a finite double an interface read
// (JSON, Python): "does not fit a 32-bit float" (1e40, which would be inf
// and refused as that), "is too small for a 32-bit float (it would be 0)"
// (1e-50: a temperature of 0 is greedy); empty when it can, or when the
// value is not finite (the range checks refuse those by their own name).
std::string float32_range_error(double value);

// Whether `text` spells a token id as a logit_bias key (the OpenAI form's
// {"50256": -100}): an optional '-' and 1 to 10 ASCII decimal digits, nothing
// else (no spaces, '+', '_' or other scripts' digits). Its range is checked
// as any token id's.
bool is_token_key(std::string_view text);

// Checks one request against the vocabulary; the message names the row ("row
// 3", or "shared request" when `row` < 0, the request of every row) and the
// field by its C++ name.
Status check_request(const RowRequest& request, int64_t row, int64_t vocab);

}  // namespace nucleus::detail
