// Options shared by the nucleus commands: where the dump comes from, the
// sampling parameters every row starts from, and how the run behaves.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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

// A number written in decimal, as JSON writes one ("-1.5e3"; also "1." and
// ".5"), or inf, infinity or nan (any case, '-' allowed), which the checks
// then judge: no '+', spaces or hexadecimal ("0x10" is 16 to strtod), so
// that an option reads a value as --params reads it, or refuses it.
bool is_decimal_number(std::string_view text);

// A --logit-bias pair "TOKEN:BIAS" split at its first ':', when TOKEN is
// spelled as --params' keys spell a token (is_token_key) and BIAS is a
// decimal number; nullopt otherwise.
std::optional<std::pair<std::string_view, std::string_view>> bias_pair(std::string_view pair);

// An integer >= lo, as an option's check.
CLI::Validator integer_at_least(int64_t lo);

// Gives every integer option of `command` and its subcommands (by its
// type, INT or UINT) a first transform: a decimal integer (an optional '-',
// then digits: no '+' or spaces, as in --params), rewritten without leading
// zeros. The parser converts with base 0: "010" would be 8 and "0x10" 16,
// where the same text in --params, --logit-bias or Python is 10 (or
// refused). Called once every option is added.
void decimal_integers(CLI::App* command);

// The message for an integer the parser could not convert, which CLI11
// words "Could not convert: --top-k = 99999999999" (a list's items joined by
// commas): after decimal_integers, only an item out of its type's range, so
// the message names the option and that item. `command` is the command
// parsed (or the program). Any other parse error's message is returned as
// it is.
std::string parse_error_message(const CLI::App& command, const CLI::ParseError& error);

// INPUT, --input-format, --tensor, --dtype, --vocab, --block-mb.
void add_input_options(CLI::App* command, InputOptions* options);

// Opens the dump. `extra_bytes_per_element` is the memory a command needs
// per logit beside the block itself (4 for a float32 output row); a quarter
// of --block-mb (results_bytes) is set aside for per-row results and text,
// so that the whole working set of a block stays within --block-mb.
Result<DumpReader> open_input(const InputOptions& options, int extra_bytes_per_element);

// The error to report when the sampling options failed their check against
// a given --vocab (`option_error`), made before the dump is opened: a dump
// file whose header contradicts --vocab (or that cannot be opened) is the
// error to name instead. Standard input and pipes are not opened for it (a
// raw one is copied whole).
Status dump_or_option_error(const InputOptions& options, Status option_error);

// What open_input sets aside of --block-mb for per-row results.
int64_t results_bytes(const InputOptions& options);

class Progress;

// A float32 row of output for each row of a block (probs, inspect), or an
// error that names the file and the bytes it would take (a --block-mb
// larger than memory).
Result<std::vector<float>> block_output(const DumpReader& reader);

// Reads the dump a block at a time and hands `body` its rows in runs of
// consecutive rows whose results fit in results_bytes(options), as
// `row_bytes(row)` (dump row index) estimates them, at least one row a run:
// a block of many short rows, or of rows with many draws and long top-N
// lists, has results far larger than its logits. `first` is the dump's
// index of the run's first row; `progress` advances by each block's rows.
// Stops at the first error, the read's or the body's, and returns it.
Status for_each_run(DumpReader& reader, const InputOptions& options, Progress& progress,
                    const std::function<int64_t(int64_t row)>& row_bytes,
                    const std::function<Status(const LogitsView& rows, int64_t first)>& body);

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
  CLI::Option* params_option = nullptr;  // given or not
  int threads = 0;
  bool quiet = false;
};

// What a command exposes beyond the filters and penalties.
struct SamplingFlags {
  bool draws = true;  // --num-samples, --logprobs, --logprobs-mode
};

void add_sampling_options(CLI::App* command, SamplingOptions* options, SamplingFlags flags);

// The command line before it is parsed, for the comma-separated list
// options (--history, --prompt-tokens, --banned, --logit-bias): an empty
// value ("", "--banned=") is an empty list and is taken out (the parser
// would read "" as token 0, or want a value); an empty item ("1,,2", "5,",
// ",") is an error, whose message this returns (the parser drops empty
// items, and a value ending in a comma takes the next argument, another
// option even, as more of the list). Any other option that `takes_value`
// (by its name, "--output") given an empty value after '=' ("--output=")
// gets it as the separate empty argument it is (the parser would take the
// next argument for its value). Arguments after "--" are left as they are.
std::optional<std::string> normalize_list_arguments(
    std::vector<const char*>* args, const std::function<bool(const std::string&)>& takes_value);

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

// Prints "nucleus: MESSAGE" on standard error, on one line: a control
// character the message still holds (a path or an option value with a
// newline in it) is written as \n, \t or \xNN.
void print_error(const std::string& message);

}  // namespace nucleus::cli
