// The request of every row of a dump: the command-line values, the per-row
// seed, and the overrides of a --params file. Everything is checked against
// the dump's vocabulary before the first row is sampled, so a bad parameter
// fails the run before any output exists.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "nucleus/sampling.h"
#include "nucleus/status.h"
#include "tools/cli/cli_options.h"

namespace nucleus::cli {

class RequestTable {
 public:
  static Result<RequestTable> build(const SamplingOptions& options, int64_t rows, int64_t vocab);
  // The options' checks against a vocab given up front (--vocab: a raw
  // dump's), made before the dump is opened: a raw pipe is copied whole to
  // a temporary file first, and a bad option should not wait for that.
  // (The --params file's rows are checked once the dump's are known, and
  // everything when no vocab is given: vocab <= 0 passes. An empty --params
  // path is refused here, whatever the vocab: call this before build.)
  static Status check_before_dump(const SamplingOptions& options, int64_t vocab);

  // The requests of rows [first, first + count); valid until the next call.
  std::span<const RowRequest> requests(int64_t first, int64_t count);

  // The request of one row, for commands that look at rows one at a time.
  const SamplingParams& params(int64_t row) const;

 private:
  // One row's values; the RowRequest spans are made to point here only when
  // requests are handed out, so copies never dangle.
  struct RowData {
    SamplingParams params;
    bool seed_set = false;  // true: `seed` as given (none = unseeded)
    std::optional<uint64_t> seed;
    uint64_t step = 0;
    std::vector<int32_t> prompt_tokens;
    std::vector<int32_t> generated_tokens;
    std::vector<int32_t> banned_tokens;
    std::vector<int32_t> allowed_mask;
    std::vector<TokenBias> logit_bias;
  };

  RowRequest request_of(const RowData& data, int64_t row) const;
  static Status parse_line(const std::string& line, const std::string& where, int64_t vocab,
                           RowData* data, int64_t expected_row);

  RowData base_;
  std::optional<uint64_t> seed_base_;
  std::vector<RowData> rows_;  // one per row with --params, else empty
  std::vector<RowRequest> scratch_;
};

}  // namespace nucleus::cli
