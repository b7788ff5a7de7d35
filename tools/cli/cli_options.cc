#include "tools/cli/cli_options.h"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string_view>
#include <vector>

#include "engine/ascii_lower.h"
#include "engine/io/json_text.h"
#include "engine/row/params_check.h"
#include "tools/cli/progress.h"

namespace nucleus::cli {
namespace {

// Accepts exactly the decimal integers in [0, 2^64): unsigned options would
// otherwise wrap "-1" or saturate past 2^64 silently.
CLI::Validator unsigned_64() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        if (text.empty() || ec != std::errc() || ptr != end) {
          return "value " + text + " is not an integer in [0, 2^64)";
        }
        return std::string();
      },
      "UINT64");
}

// A decimal number that a float holds: "1e40" would otherwise become inf,
// and be refused as "inf" by the range checks (which "inf" and "nan" spelled
// out, and anything not a number, still go to), "1e-50" 0
// (float_range_error).
CLI::Validator fits_float() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        // (an empty value too: the parser would read it as 0)
        if (!is_decimal_number(text)) return "value '" + text + "' is not a decimal number";
        char* end = nullptr;
        const double value = std::strtod(text.c_str(), &end);
        if (*end == '\0') {
          if (const std::string why = detail::float32_range_error(value); !why.empty()) {
            return "value " + text + " " + why;
          }
        }
        return std::string();
      },
      "");
}

}  // namespace

namespace {

CLI::Validator decimal_integer() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const size_t sign = !text.empty() && text[0] == '-' ? 1 : 0;
        if (text.size() == sign ||
            text.find_first_not_of("0123456789", sign) != std::string::npos) {
          return "value '" + text + "' is not a decimal integer";
        }
        const size_t first = std::min(text.find_first_not_of('0', sign), text.size() - 1);
        const bool negative = text[0] == '-' && text.compare(first, std::string::npos, "0") != 0;
        text = (negative ? "-" : "") + text.substr(first);
        return std::string();
      },
      "");
}

// An option's type as the parser names it ("INT", "UINT", "FLOAT", ...),
// before any check's part of the name.
std::string type_of(const CLI::Option& option) {
  const std::string name = option.get_type_name();
  return name.substr(0, name.find(':'));
}

}  // namespace

bool is_decimal_number(std::string_view text) {
  if (text.starts_with('-')) text.remove_prefix(1);
  const std::string word = detail::ascii_lower(text);
  if (word == "inf" || word == "infinity" || word == "nan") return true;
  const auto digits = [&text] {
    const size_t n = std::min(text.find_first_not_of("0123456789"), text.size());
    text.remove_prefix(n);
    return n;
  };
  size_t mantissa = digits();
  if (text.starts_with('.')) {
    text.remove_prefix(1);
    mantissa += digits();
  }
  if (mantissa == 0) return false;
  if (text.starts_with('e') || text.starts_with('E')) {
    text.remove_prefix(1);
    if (text.starts_with('-') || text.starts_with('+')) text.remove_prefix(1);
    if (digits() == 0) return false;
  }
  return text.empty();
}

void decimal_integers(CLI::App* command) {
  for (CLI::Option* option : command->get_options()) {
    const std::string type = type_of(*option);
    if (type == "INT" || type == "UINT") option->transform(decimal_integer());
  }
  for (CLI::App* sub : command->get_subcommands({})) decimal_integers(sub);
}

std::string parse_error_message(const CLI::App& command, const CLI::ParseError& error) {
  const std::string what = error.what();
  const std::string prefix = "Could not convert: ";
  const size_t equals = what.find(" = ");
  if (what.compare(0, prefix.size(), prefix) != 0 || equals == std::string::npos) return what;
  const std::string name = what.substr(prefix.size(), equals - prefix.size());
  const std::string value = what.substr(equals + 3);
  const CLI::Option* option = command.get_option_no_throw(name);
  // (floats never get here: fits_float refused what does not convert)
  if (option == nullptr || (type_of(*option) != "INT" && type_of(*option) != "UINT")) return what;
  // (the items are decimal integers by now: decimal_integers' transform ran
  // before the conversion, so only an item's range can fail: one that fits
  // no 64-bit integer, or else the first that does not fit 32 bits)
  std::vector<std::string> items;
  for (size_t begin = 0;;) {
    const size_t comma = value.find(',', begin);
    items.push_back(value.substr(begin, comma - begin));
    if (comma == std::string::npos) break;
    begin = comma + 1;
  }
  const auto fits = [](const std::string& item, auto type) {
    decltype(type) v{};
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    return ec == std::errc() && end == item.data() + item.size();
  };
  auto bad = std::find_if(items.begin(), items.end(), [&](const std::string& i) {
    return !fits(i, int64_t{}) && !fits(i, uint64_t{});
  });
  if (bad == items.end()) {
    bad = std::find_if(items.begin(), items.end(),
                       [&](const std::string& i) { return !fits(i, int32_t{}); });
  }
  return "option " + name + " = " + (bad == items.end() ? value : *bad) + " is out of range";
}

std::optional<std::pair<std::string_view, std::string_view>> bias_pair(std::string_view pair) {
  const size_t colon = pair.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  const std::string_view token = pair.substr(0, colon), bias = pair.substr(colon + 1);
  if (!detail::is_token_key(token) || !is_decimal_number(bias)) return std::nullopt;
  return std::pair{token, bias};
}

// (in place of CLI11's PositiveNumber and NonNegativeNumber, which print
// their range as "0.000000 to 1.79769e+308", whatever the bound)
CLI::Validator integer_at_least(int64_t lo) {
  return CLI::Validator(
      [lo](std::string& text) -> std::string {
        int64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [ptr, ec] = std::from_chars(text.data(), end, value);
        // (decimal_integers made the text digits: only their range can fail)
        if (ec != std::errc() || ptr != end) return "value " + text + " is out of range";
        if (value < lo) return "value " + text + " is below " + std::to_string(lo);
        return std::string();
      },
      "INT >= " + std::to_string(lo));
}

void add_input_options(CLI::App* command, InputOptions* options) {
  command->add_option("input", options->path, "Logit dump: .npy, .safetensors or raw; - = stdin")
      ->required();
  command
      ->add_option("--input-format", options->format,
                   "auto (by extension; stdin: NumPy magic or .safetensors header, else raw), npy, "
                   "safetensors, raw")
      ->check(CLI::IsMember({"auto", "npy", "safetensors", "raw"}))
      ->capture_default_str();
  command->add_option("--tensor", options->tensor,
                      "safetensors: the tensor to read (default: the only one)");
  command->add_option("--dtype", options->dtype, "Raw dumps: element type, f32, f16 or bf16")
      ->check(CLI::IsMember({"f32", "f16", "bf16", "float32", "float16", "half", "bfloat16"}));
  command->add_option("--vocab", options->vocab, "Raw dumps: values per row")
      ->check(integer_at_least(1));
  command
      ->add_option("--block-mb", options->block_mb,
                   "Memory per block of rows, in MiB; larger dumps are read block by block")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
}

int64_t results_bytes(const InputOptions& options) { return (options.block_mb << 20) / 4; }

Result<DumpReader> open_input(const InputOptions& options, int extra_bytes_per_element) {
  DumpOptions dump;
  dump.format = *parse_dump_format(options.format);  // CLI11 checked the name
  dump.tensor = options.tensor;
  if (!options.dtype.empty()) dump.dtype = parse_dtype(options.dtype);
  dump.vocab = options.vocab;
  // Split what is not set aside for results between the block read and
  // the command's own per-element buffers in proportion to their element
  // sizes; with an unknown dtype assume the narrowest (a 2-byte block then
  // holds the most rows, and their buffers take the largest share).
  const int64_t budget = std::max<int64_t>(1, (options.block_mb << 20) - results_bytes(options));
  const int64_t item = dump.dtype ? dtype_size(*dump.dtype) : 2;
  dump.block_bytes = std::max<int64_t>(1, budget * item / (item + extra_bytes_per_element));
  return DumpReader::open(options.path, dump);
}

Status dump_or_option_error(const InputOptions& options, Status option_error) {
  struct stat st;
  if (options.vocab <= 0 || options.path == "-" || ::stat(options.path.c_str(), &st) != 0 ||
      !S_ISREG(st.st_mode)) {
    return option_error;
  }
  Result<DumpReader> reader = open_input(options, 0);
  return reader.ok() ? option_error : reader.status();
}

Result<std::vector<float>> block_output(const DumpReader& reader) {
  const DumpInfo& info = reader.info();
  const int64_t count = reader.block_rows() * info.vocab;
  try {
    return std::vector<float>(static_cast<size_t>(count));
  } catch (const std::bad_alloc&) {
    const std::string name = info.path == "-" ? std::string("<stdin>") : info.path;
    return Status::io_error(name + ": cannot hold a float32 output row for each of a block's " +
                            std::to_string(reader.block_rows()) + " rows (" +
                            std::to_string(count * 4) + " bytes) in memory" +
                            (reader.block_rows() > 1 ? ": give a smaller --block-mb" : ""));
  }
}

Status for_each_run(DumpReader& reader, const InputOptions& options, Progress& progress,
                    const std::function<int64_t(int64_t row)>& row_bytes,
                    const std::function<Status(const LogitsView& rows, int64_t first)>& body) {
  const int64_t reserved = results_bytes(options);
  for (int64_t b = 0; b < reader.num_blocks(); ++b) {
    Result<LogitsView> block = reader.block(b);
    if (!block.ok()) return block.status();
    const int64_t first = reader.block_first_row(b);
    const int64_t stride = block->row_stride > 0 ? block->row_stride : block->vocab;
    for (int64_t i0 = 0; i0 < block->rows;) {
      int64_t i1 = i0 + 1;
      int64_t bytes = row_bytes(first + i0);
      while (i1 < block->rows && bytes + row_bytes(first + i1) <= reserved) {
        bytes += row_bytes(first + i1++);
      }
      LogitsView run = *block;
      run.data = static_cast<const char*>(block->data) + i0 * stride * dtype_size(block->dtype);
      run.rows = i1 - i0;
      if (Status s = body(run, first + i0); !s.ok()) return s;
      i0 = i1;
    }
    progress.advance(block->rows);
  }
  return Status();
}

namespace {

// Whether an argument after a list option's first value is written as that
// list's items are (so it continues the list): comma-separated token ids, or
// TOKEN:BIAS pairs for --logit-bias.
bool written_as_items(std::string_view list, std::string_view value) {
  if (list != "--logit-bias")
    return value.find_first_not_of("0123456789,") == std::string_view::npos;
  for (size_t begin = 0; begin <= value.size();) {
    const size_t comma = std::min(value.find(',', begin), value.size());
    if (!bias_pair(value.substr(begin, comma - begin))) return false;
    begin = comma + 1;
  }
  return true;
}

}  // namespace

std::optional<std::string> normalize_list_arguments(
    std::vector<const char*>* args, const std::function<bool(const std::string&)>& takes_value) {
  static constexpr std::string_view kLists[] = {"--history", "--prompt-tokens", "--banned",
                                                "--logit-bias"};
  auto has_empty = [](std::string_view value) {
    return !value.empty() && (value.front() == ',' || value.back() == ',' ||
                              value.find(",,") != std::string_view::npos);
  };
  auto message = [](std::string_view option, std::string_view value) {
    return "option " + std::string(option) + " = '" + std::string(value) +
           "' has an empty item (a comma at an end, or two in a row)";
  };
  std::vector<const char*> out, moved;
  const std::vector<const char*>& in = *args;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string_view arg = in[i];
    if (arg == "--") {  // (what follows is positional, as it is)
      out.insert(out.end(), in.begin() + static_cast<std::ptrdiff_t>(i), in.end());
      break;
    }
    const std::string_view* list = nullptr;
    for (const std::string_view& option : kLists) {
      if (arg.starts_with(option) && (arg.size() == option.size() || arg[option.size()] == '=')) {
        list = &option;
      }
    }
    if (list == nullptr) {
      out.push_back(in[i]);
      // "--output=": an empty value, as "--output ''" is (the parser would
      // take the next argument for the value); a flag ("--json=" of
      // inspect) keeps its form
      if (arg.starts_with("--") && arg.find('=') == arg.size() - 1 &&
          takes_value(std::string(arg.substr(0, arg.size() - 1)))) {
        out.push_back("");
      }
      continue;
    }
    // --banned=VALUE or --banned VALUE...: the values up to the next option
    // ("--history 1 2 3" is a list too), or to the first argument after the
    // first value that is not written as the list's items are (the input
    // path: "--banned 7 d.npy"); empty ones add nothing, and an option left
    // with no values is dropped (the parser would read "" as token 0).
    const bool joined = arg.size() > list->size();
    if (joined) {
      const std::string_view value = arg.substr(list->size() + 1);
      if (has_empty(value)) return message(*list, value);
      if (!value.empty()) out.push_back(in[i]);  // ("--banned=": as "--banned ''")
    }
    size_t j = i + 1;
    std::vector<const char*> values;
    for (; j < in.size() && in[j][0] != '-' &&
           ((j == i + 1 && !joined) || written_as_items(*list, in[j]));
         ++j) {
      if (has_empty(in[j])) return message(*list, in[j]);
      if (in[j][0] != '\0') values.push_back(in[j]);
    }
    // (no value at all: the parser's error)
    if (!joined && (!values.empty() || j == i + 1)) out.push_back(in[i]);
    if (joined && arg.size() == list->size() + 1 && !values.empty()) out.push_back(list->data());
    out.insert(out.end(), values.begin(), values.end());
    // (the parser would take the arguments that ended the list for more
    // items: they are moved past a "--", where they are positional)
    if (joined || j > i + 1) {
      // ("-", standard input, is one of them)
      while (j < in.size() && (in[j][0] != '-' || std::string_view(in[j]) == "-")) {
        moved.push_back(in[j++]);
      }
    }
    i = j - 1;
  }
  if (!moved.empty()) {
    auto dashes = std::find_if(out.begin(), out.end(),
                               [](const char* a) { return std::string_view(a) == "--"; });
    if (dashes == out.end()) dashes = out.insert(out.end(), "--");
    out.insert(dashes + 1, moved.begin(), moved.end());
  }
  *args = std::move(out);
  return std::nullopt;
}

void add_sampling_options(CLI::App* command, SamplingOptions* o, SamplingFlags flags) {
  SamplingParams& p = o->params;
  const std::string filters = "Sampling (per-row values in --params override these)";
  command->add_option("--temperature,-t", p.temperature, "Temperature; 0 = greedy")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--top-k", p.top_k, "Keep the k most likely tokens; 0 or -1 = off")
      ->capture_default_str()
      ->group(filters);
  command->add_option("--top-p", p.top_p, "Nucleus: keep the smallest set of mass >= p; 1 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--min-p", p.min_p, "Keep tokens with prob >= m * max prob; 0 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--typical-p", p.typical_p, "Locally typical sampling; 1 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--top-n-sigma", p.top_n_sigma, "Keep z >= z_max - n*sigma; <= 0 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--min-keep", p.min_keep, "Every filter keeps at least this many tokens")
      ->capture_default_str()
      ->group(filters);
  command->add_option("--preset", o->preset, "Filter order: hf, vllm or llama.cpp")
      ->check(CLI::IsMember({"hf", "vllm", "llama.cpp"}))
      ->capture_default_str()
      ->group(filters);
  command->add_option("--repetition-penalty", p.repetition_penalty, "1 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--frequency-penalty", p.frequency_penalty, "0 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command->add_option("--presence-penalty", p.presence_penalty, "0 = off")
      ->check(fits_float())
      ->capture_default_str()
      ->group(filters);
  command
      ->add_option("--history", o->history,
                   "Generated tokens, comma-separated (penalties), e.g. 5,17,17")
      ->delimiter(',')
      ->group(filters);
  command
      ->add_option("--prompt-tokens", o->prompt_tokens,
                   "Prompt tokens, comma-separated (repetition penalty only)")
      ->delimiter(',')
      ->group(filters);
  command->add_option("--banned", o->banned, "Banned token ids, comma-separated")
      ->delimiter(',')
      ->group(filters);
  command
      ->add_option("--logit-bias", o->logit_bias,
                   "TOKEN:BIAS pairs, comma-separated, e.g. 13:-100,42:2.5")
      ->delimiter(',')
      ->group(filters);

  const std::string draws = "Draws";
  o->seed_option =
      command
          ->add_option("--seed", o->seed,
                       "Seed S: row r is drawn with seed S + r (rows differ, and a row's "
                       "tokens do not depend on the block or thread count). Without it, "
                       "rows are unseeded and differ from run to run")
          ->check(unsigned_64())
          ->group(draws);
  command->add_option("--step", o->step, "Decoding step (the Philox counter) for every row")
      ->check(unsigned_64())
      ->capture_default_str()
      ->group(draws);
  if (flags.draws) {
    command->add_option("--num-samples,-n", p.num_samples, "Independent draws per row")
        ->capture_default_str()
        ->group(draws);
    command
        ->add_option("--logprobs", p.top_logprobs,
                     "Also report the top N (token, logprob) and each sample's rank; 0 = off")
        ->capture_default_str()
        ->group(draws);
    command
        ->add_option("--logprobs-mode", o->logprobs_mode,
                     "Distribution of --logprobs: processed (final) or raw (log_softmax of "
                     "the input)")
        ->check(CLI::IsMember({"processed", "raw"}))
        ->capture_default_str()
        ->group(draws);
  }
  o->params_option =
      command
          ->add_option("--params", o->params_file,
                       "JSONL, one object per row, overriding any option above for that row "
                       "(see docs/cli.md)")
          ->group(draws);
  add_run_options(command, &o->threads, &o->quiet);
}

void add_run_options(CLI::App* command, int* threads, bool* quiet) {
  command->add_option("--threads", *threads, "Threads for the engine; 0 = every core")
      ->check(integer_at_least(0))
      ->capture_default_str();
  command->add_flag("--quiet,-q", *quiet, "No progress bar and no summary on stderr");
}

double json_float(float value) {
  if (!std::isfinite(value)) return static_cast<double>(value);
  if (value == 0.0f) return 0.0;  // log(1) reads better as 0.0 than -0.0
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf - 1, value);
  if (ec != std::errc()) return static_cast<double>(value);
  *end = '\0';
  // The double nearest to the float's shortest decimal prints as that
  // decimal, so -0.1f appears as -0.1 rather than -0.10000000149011612.
  return std::strtod(buf, nullptr);
}

std::string row_error_text(const Status& status, int64_t index_in_call) {
  const std::string prefix = "row " + std::to_string(index_in_call) + ": ";
  const std::string& m = status.message();
  return m.rfind(prefix, 0) == 0 ? m.substr(prefix.size()) : m;
}

std::string row_error_message(const Status& status, int64_t index_in_call, int64_t first) {
  return "row " + std::to_string(first + index_in_call) + ": " +
         row_error_text(status, index_in_call);
}

void print_error(const std::string& message) {
  // (a backslash stays: the parts a header gave are escaped already)
  const std::string line = detail::escape_controls(message, /*backslashes=*/false);
  std::fprintf(stderr, "nucleus: %s\n", line.c_str());
}

}  // namespace nucleus::cli
