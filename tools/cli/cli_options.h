// Options shared by the nucleus commands: where the dump comes from, the
// sampling parameters every row starts from, and how the run behaves.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nucleus/dump.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::cli {

// Exit codes: every row sampled; some rows failed (their lines say why); the
// run failed as a whole (bad input or options, nothing written).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRowErrors = 1;
inline constexpr int kExitFailure = 2;

struct InputOptions {
  std::string path;
  std::string format = "auto";
  std::string tensor;
  std::string dtype;
  int64_t vocab = 0;
  int64_t block_mb = 64;
};

// INPUT, --input-format, --tensor, --dtype, --vocab, --block-mb.
void add_input_options(CLI::App* command, InputOptions* options);

// Opens the dump. `extra_bytes_per_element` is the memory a command needs
// per logit beside the block itself (4 for a float32 output row), and
// `reserved_bytes` what it sets aside for the rest (results, text), so that
// the whole working set of a block stays within --block-mb.
Result<DumpReader> open_input(const InputOptions& options, int extra_bytes_per_element,
                              int64_t reserved_bytes = 0);

// Rows [first, first + rows) of a block, as a view of their own (commands
// run a block of many short rows a run of rows at a time, so that their
// per-row results stay within what they set aside of --block-mb).
LogitsView rows_of(const LogitsView& block, int64_t first, int64_t rows);

// How many rows of `bytes_per_row` of per-row results fit in `reserved`
// bytes (at least 1).
int64_t rows_within(int64_t reserved, int64_t bytes_per_row);

class Progress;

// Reads the dump a block at a time and hands each block to `body` with the
// dump's index of its first row, advancing `progress` by the block's rows
// after each. Stops at the first error, the read's or the body's, and
// returns it.
Status for_each_block(DumpReader& reader, Progress& progress,
                      const std::function<Status(const LogitsView& block, int64_t first)>& body);

struct SamplingOptions {
  SamplingParams params;
  std::string preset = "hf";
  std::string logprobs_mode = "processed";
  uint64_t seed = 0;
  CLI::Option* seed_option = nullptr;  // given or not
  uint64_t step = 0;
  std::vector<int32_t> history;
  std::vector<int32_t> prompt_tokens;
  std::vector<int32_t> banned;
  std::vector<std::string> logit_bias;  // "TOKEN:BIAS"
  std::string params_file;
  int threads = 0;
  bool quiet = false;
};

// What a command exposes beyond the filters and penalties.
struct SamplingFlags {
  bool draws = true;  // --num-samples, --logprobs, --logprobs-mode
};

void add_sampling_options(CLI::App* command, SamplingOptions* options, SamplingFlags flags);

// --threads and --quiet, for commands without sampling options.
void add_run_options(CLI::App* command, int* threads, bool* quiet);

// The shortest decimal that reads back as `value`, as a JSON number (NaN
// and infinities become null).
double json_float(float value);

// An engine row error names the row by its index in the call ("row 2: ...");
// blocks start at `first`, so rename it to the dump's row (or drop it when
// the output names the row anyway).
std::string row_error_text(const Status& status, int64_t index_in_call);
std::string row_error_message(const Status& status, int64_t index_in_call, int64_t first);

// Prints "nucleus: MESSAGE" on standard error.
void print_error(const std::string& message);

}  // namespace nucleus::cli
