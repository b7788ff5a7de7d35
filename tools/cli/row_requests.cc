#include "tools/cli/row_requests.h"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "engine/io/file_io.h"
#include "engine/io/json_text.h"
#include "engine/row/params_check.h"
#include "tools/cli/cli_options.h"

namespace nucleus::cli {
namespace {

using Json = nlohmann::json;
using detail::json_shown;
using detail::parse_json;

Status field_error(const std::string& where, const std::string& key, const Json& value,
                   const std::string& why) {
  return Status::invalid_argument(where + ": field '" + key + "' = " + json_shown(value) + " " +
                                  why);
}

// A JSON number as the float the engine takes; one past float's range
// (1e39) is refused here, by its own spelling, not later as "inf".
Status narrow(const std::string& where, const std::string& key, const Json& v, float* out) {
  const double d = v.get<double>();
  if (const std::string why = detail::float32_range_error(d); !why.empty()) {
    return field_error(where, key, v, why);
  }
  *out = static_cast<float>(d);
  return Status();
}

Status to_float(const std::string& where, const std::string& key, const Json& v, float* out) {
  if (!v.is_number()) return field_error(where, key, v, "is not a number");
  return narrow(where, key, v, out);
}

Status to_int32(const std::string& where, const std::string& key, const Json& v, int32_t* out) {
  if (!v.is_number_integer()) return field_error(where, key, v, "is not an integer");
  if (v.is_number_unsigned() ? v.get<uint64_t>() > INT32_MAX
                             : (v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX)) {
    return field_error(where, key, v, "does not fit a 32-bit integer");
  }
  *out = static_cast<int32_t>(v.get<int64_t>());
  return Status();
}

Status to_uint64(const std::string& where, const std::string& key, const Json& v, uint64_t* out) {
  // (-0 is 0, as the options and Python take it; the parser reads it signed)
  const bool zero = v.is_number_integer() && v.get<int64_t>() == 0;
  if (!v.is_number_unsigned() && !zero) {
    return field_error(where, key, v, "is not an integer in [0, 2^64)");
  }
  *out = zero ? 0 : v.get<uint64_t>();
  return Status();
}

Status to_tokens(const std::string& where, const std::string& key, const Json& v,
                 std::vector<int32_t>* out) {
  if (!v.is_array()) return field_error(where, key, v, "is not an array of token ids");
  out->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    int32_t token = 0;
    const std::string item = key + "[" + std::to_string(i) + "]";
    if (Status s = to_int32(where, item, v[i], &token); !s.ok()) return s;
    out->push_back(token);
  }
  return Status();
}

// A bias: a number, or "-inf" to ban the token (JSON has no infinity).
Status to_bias(const std::string& where, const std::string& key, const Json& v, float* out) {
  if (v.is_string() && v.get<std::string>() == "-inf") {
    *out = -std::numeric_limits<float>::infinity();
    return Status();
  }
  if (!v.is_number()) return field_error(where, key, v, "is not a number or \"-inf\"");
  return narrow(where, key, v, out);
}

// {"TOKEN": BIAS, ...} (the OpenAI form) or [[TOKEN, BIAS], ...].
Status to_logit_bias(const std::string& where, const Json& v, std::vector<TokenBias>* out) {
  const std::string key = "logit_bias";
  out->clear();
  if (v.is_object()) {
    for (const auto& [token_text, bias] : v.items()) {
      char* end = nullptr;
      const long long token = std::strtoll(token_text.c_str(), &end, 10);
      const std::string item = key + "[\"" + token_text + "\"]";
      if (!detail::is_token_key(token_text) || *end != '\0' || token < INT32_MIN ||
          token > INT32_MAX) {
        return field_error(where, key, v,
                           "has a key that is not a token id: \"" + token_text + "\"");
      }
      TokenBias b;
      b.token = static_cast<int32_t>(token);
      if (Status s = to_bias(where, item, bias, &b.bias); !s.ok()) return s;
      out->push_back(b);
    }
    return Status();
  }
  if (!v.is_array()) {
    return field_error(where, key, v, "is neither {\"token\": bias} nor [[token, bias], ...]");
  }
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string item = key + "[" + std::to_string(i) + "]";
    if (!v[i].is_array() || v[i].size() != 2) {
      return field_error(where, item, v[i], "is not a [token, bias] pair");
    }
    TokenBias b;
    if (Status s = to_int32(where, item + "[0]", v[i][0], &b.token); !s.ok()) return s;
    if (Status s = to_bias(where, item + "[1]", v[i][1], &b.bias); !s.ok()) return s;
    out->push_back(b);
  }
  return Status();
}

// The bitmask layout of SPEC section 2 from a list of allowed token ids.
Status to_allowed_mask(const std::string& where, const Json& v, int64_t vocab,
                       std::vector<int32_t>* mask) {
  std::vector<int32_t> tokens;
  if (Status s = to_tokens(where, "allowed_tokens", v, &tokens); !s.ok()) return s;
  mask->assign(static_cast<size_t>((vocab + 31) / 32), 0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return field_error(where, "allowed_tokens[" + std::to_string(i) + "]", v[i],
                         "is outside [0, " + std::to_string(vocab) + ")");
    }
    (*mask)[tokens[i] / 32] = static_cast<int32_t>(static_cast<uint32_t>((*mask)[tokens[i] / 32]) |
                                                   (1u << (tokens[i] % 32)));
  }
  return Status();
}

// Mask words may be written signed or unsigned; the bits are what count.
Status to_mask_words(const std::string& where, const Json& v, std::vector<int32_t>* mask) {
  const std::string key = "allowed_mask";
  if (!v.is_array()) return field_error(where, key, v, "is not an array of 32-bit words");
  if (v.empty()) {
    // The engine reads an empty mask as "no mask": refuse it rather than
    // allow every token.
    return field_error(where, key, v,
                       "holds no words (a mask holds ceil(vocab / 32); omit the "
                       "field for no mask)");
  }
  mask->clear();
  for (size_t i = 0; i < v.size(); ++i) {
    const Json& w = v[i];
    const std::string item = key + "[" + std::to_string(i) + "]";
    if (w.is_number_unsigned() && w.get<uint64_t>() <= UINT32_MAX) {
      mask->push_back(static_cast<int32_t>(static_cast<uint32_t>(w.get<uint64_t>())));
    } else if (w.is_number_integer() && w.get<int64_t>() >= INT32_MIN && w.get<int64_t>() < 0) {
      mask->push_back(static_cast<int32_t>(w.get<int64_t>()));
    } else {
      return field_error(where, item, w, "is not a 32-bit word");
    }
  }
  return Status();
}

// The option a request field comes from ("top_p" is --top-p): the engine's
// checks name fields, the user typed options.
std::string option_name(std::string_view field) {
  static constexpr std::pair<std::string_view, std::string_view> kRenamed[] = {
      {"top_logprobs", "logprobs"}, {"generated_tokens", "history"}, {"banned_tokens", "banned"}};
  for (const auto& [from, to] : kRenamed) {
    if (field == from) return "--" + std::string(to);
  }
  std::string name = "--" + std::string(field);
  for (char& c : name) c = c == '_' ? '-' : c;
  return name;
}

// The fields a --params line may spell two ways: {request field, alias}.
// (allowed_tokens is a token list, not the same value as allowed_mask's
// words, but sets the same thing.)
constexpr std::pair<const char*, const char*> kParamsAliases[] = {
    {"top_logprobs", "logprobs"},
    {"generated_tokens", "history"},
    {"banned_tokens", "banned"},
    {"allowed_mask", "allowed_tokens"}};

// The key a --params line set a field with, of the spellings it takes
// ("history" or "generated_tokens"): a range error names the one typed.
// (The line parsed before; only a failing row reads it again.)
std::string params_key(const std::string& line, std::string_view field) {
  Json root;
  std::string error;
  if (parse_json(line, &root, &error) && root.is_object()) {
    for (const auto& [name, alias] : kParamsAliases) {
      if (field == name && root.contains(alias)) return alias;
    }
  }
  return std::string(field);
}

Status parse_cli_bias(const std::vector<std::string>& pairs, std::vector<TokenBias>* out) {
  for (const std::string& pair : pairs) {
    // (the token as --params' keys spell it: no '+' or spaces; the bias a
    // decimal number)
    const auto parts = bias_pair(pair);
    const std::string bad = "option --logit-bias = '" + pair + "' is not TOKEN:BIAS";
    if (!parts) return Status::invalid_argument(bad);
    const std::string token_text(parts->first), bias_text(parts->second);
    const long long token = std::strtoll(token_text.c_str(), nullptr, 10);
    if (token < INT32_MIN || token > INT32_MAX) return Status::invalid_argument(bad);
    // (narrowed from a double, as --params' JSON numbers are)
    const double bias = std::strtod(bias_text.c_str(), nullptr);
    if (const std::string why = detail::float32_range_error(bias); !why.empty()) {
      return Status::invalid_argument("option --logit-bias = '" + pair + "': bias " + bias_text +
                                      " " + why);
    }
    out->push_back({static_cast<int32_t>(token), static_cast<float>(bias)});
  }
  return Status();
}

}  // namespace

Status RequestTable::parse_line(const std::string& line, const std::string& where, int64_t vocab,
                                RowData* d, int64_t expected_row) {
  Json root;
  if (std::string error; !parse_json(line, &root, &error)) {
    return Status::invalid_argument(where + ": " + error);
  }
  if (!root.is_object()) {
    return Status::invalid_argument(where + ": " + json_shown(root) + " is not a JSON object");
  }
  SamplingParams& p = d->params;
  // Two spellings of one field on one line would leave the result to the
  // order the keys are read in: refused.
  for (const auto& [a, b] : kParamsAliases) {
    if (root.contains(a) && root.contains(b)) {
      return Status::invalid_argument(where + ": fields '" + a + "' and '" + b +
                                      "' set the same thing: give one");
    }
  }
  // (a field's errors name the row too, as the range checks' do)
  const std::string field_where = where + ": row " + std::to_string(expected_row);
  for (const auto& [key, v] : root.items()) {
    Status s;
    if (key == "row") {
      int32_t row = 0;
      s = to_int32(field_where, key, v, &row);
      if (s.ok() && row != expected_row) {
        s = field_error(field_where, key, v,
                        "but this line is row " + std::to_string(expected_row));
      }
    } else if (key == "seed") {
      d->seed_set = true;
      d->seed.reset();
      if (!v.is_null()) {
        uint64_t seed = 0;
        s = to_uint64(field_where, key, v, &seed);
        d->seed = seed;
      }
    } else if (key == "step") {
      s = to_uint64(field_where, key, v, &d->step);
    } else if (key == "temperature") {
      s = to_float(field_where, key, v, &p.temperature);
    } else if (key == "top_k") {
      s = to_int32(field_where, key, v, &p.top_k);
    } else if (key == "top_p") {
      s = to_float(field_where, key, v, &p.top_p);
    } else if (key == "min_p") {
      s = to_float(field_where, key, v, &p.min_p);
    } else if (key == "typical_p") {
      s = to_float(field_where, key, v, &p.typical_p);
    } else if (key == "top_n_sigma") {
      s = to_float(field_where, key, v, &p.top_n_sigma);
    } else if (key == "min_keep") {
      s = to_int32(field_where, key, v, &p.min_keep);
    } else if (key == "repetition_penalty") {
      s = to_float(field_where, key, v, &p.repetition_penalty);
    } else if (key == "frequency_penalty") {
      s = to_float(field_where, key, v, &p.frequency_penalty);
    } else if (key == "presence_penalty") {
      s = to_float(field_where, key, v, &p.presence_penalty);
    } else if (key == "num_samples") {
      s = to_int32(field_where, key, v, &p.num_samples);
    } else if (key == "logprobs" || key == "top_logprobs") {
      s = to_int32(field_where, key, v, &p.top_logprobs);
    } else if (key == "preset") {
      const std::optional<Preset> preset =
          v.is_string() ? parse_preset(v.get<std::string>()) : std::nullopt;
      if (preset) {
        p.preset = *preset;
      } else {
        s = field_error(field_where, key, v, "is not \"hf\", \"vllm\" or \"llama.cpp\"");
      }
    } else if (key == "logprobs_mode") {
      if (v == "processed") {
        p.logprobs_mode = LogprobsMode::kProcessed;
      } else if (v == "raw") {
        p.logprobs_mode = LogprobsMode::kRaw;
      } else {
        s = field_error(field_where, key, v, "is not \"processed\" or \"raw\"");
      }
    } else if (key == "prompt_tokens") {
      s = to_tokens(field_where, key, v, &d->prompt_tokens);
    } else if (key == "generated_tokens" || key == "history") {
      s = to_tokens(field_where, key, v, &d->generated_tokens);
    } else if (key == "banned" || key == "banned_tokens") {
      s = to_tokens(field_where, key, v, &d->banned_tokens);
    } else if (key == "logit_bias") {
      s = to_logit_bias(field_where, v, &d->logit_bias);
    } else if (key == "allowed_mask") {
      s = to_mask_words(field_where, v, &d->allowed_mask);
    } else if (key == "allowed_tokens") {
      s = to_allowed_mask(field_where, v, vocab, &d->allowed_mask);
    } else {
      s = Status::invalid_argument(field_where + ": unknown field '" + key + "'");
    }
    if (!s.ok()) return s;
  }
  return Status();
}

namespace {

// The --params file's error when it cannot be opened (errno set by the try).
Status params_open_error(const std::string& path) {
  return Status::io_error(path + ": cannot open: " + detail::errno_text(errno));
}

// An empty --params (an empty shell variable) is refused: read as no file,
// it would drop every row's own parameters silently. A missing or
// unreadable one is refused here too, before the dump is opened (a raw pipe
// is copied whole first); a FIFO or other stream is only opened once, when
// it is read.
Status check_params_path(const SamplingOptions& o) {
  if (o.params_option != nullptr && o.params_option->count() > 0 && o.params_file.empty()) {
    return Status::invalid_argument("option --params is empty: give a path");
  }
  if (o.params_file.empty()) return Status();
  struct stat st;
  if (::stat(o.params_file.c_str(), &st) != 0 ||
      (S_ISREG(st.st_mode) && !std::ifstream(o.params_file))) {
    return params_open_error(o.params_file);
  }
  return Status();
}

}  // namespace

Status RequestTable::check_before_dump(const SamplingOptions& options, int64_t vocab) {
  if (Status s = check_params_path(options); !s.ok()) return s;
  if (vocab <= 0) return Status();  // (no --vocab: checked once the dump says it)
  SamplingOptions base = options;
  base.params_file.clear();
  return build(base, 1, vocab).status();
}

Result<RequestTable> RequestTable::build(const SamplingOptions& o, int64_t rows, int64_t vocab) {
  RequestTable table;
  RowData& base = table.base_;
  base.params = o.params;
  base.params.preset = *parse_preset(o.preset);  // CLI11 checked the name
  base.params.logprobs_mode =
      o.logprobs_mode == "raw" ? LogprobsMode::kRaw : LogprobsMode::kProcessed;
  base.step = o.step;
  base.prompt_tokens = o.prompt_tokens;
  base.generated_tokens = o.history;
  base.banned_tokens = o.banned;
  if (Status s = parse_cli_bias(o.logit_bias, &base.logit_bias); !s.ok()) return s;
  if (o.seed_option != nullptr && o.seed_option->count() > 0) table.seed_base_ = o.seed;
  if (auto e = detail::find_request_error(table.request_of(base, -1), vocab)) {
    return detail::field_status("option ", option_name(e->field), *e);
  }
  if (o.params_file.empty()) return table;

  std::ifstream in(o.params_file);
  if (!in) return params_open_error(o.params_file);
  std::string line;
  int64_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
    const int64_t row = static_cast<int64_t>(table.rows_.size());
    const std::string where = o.params_file + " line " + std::to_string(line_number);
    if (row >= rows) {
      return Status::invalid_argument(where + ": more parameter rows than the dump's " +
                                      std::to_string(rows) + " rows");
    }
    RowData data = base;
    if (Status s = parse_line(line, where, vocab, &data, row); !s.ok()) return s;
    if (auto e = detail::find_request_error(table.request_of(data, row), vocab)) {
      return detail::field_status(where + ": row " + std::to_string(row) + ": ",
                                  params_key(line, e->field), *e);
    }
    table.rows_.push_back(std::move(data));
  }
  if (in.bad()) {
    return Status::io_error(o.params_file + ": cannot read: " + detail::errno_text(errno));
  }
  if (static_cast<int64_t>(table.rows_.size()) != rows) {
    return Status::invalid_argument(o.params_file + ": holds " +
                                    std::to_string(table.rows_.size()) +
                                    " parameter lines but the dump has " + std::to_string(rows) +
                                    " rows (one JSON object per row)");
  }
  return table;
}

RowRequest RequestTable::request_of(const RowData& d, int64_t row) const {
  RowRequest r;
  r.params = d.params;
  if (d.seed_set) {
    r.seed = d.seed;
  } else if (seed_base_ && row >= 0) {
    r.seed = *seed_base_ + static_cast<uint64_t>(row);  // wraps, as documented
  } else {
    r.seed = seed_base_;
  }
  r.step = d.step;
  r.prompt_tokens = d.prompt_tokens;
  r.generated_tokens = d.generated_tokens;
  r.banned_tokens = d.banned_tokens;
  r.allowed_mask = d.allowed_mask;
  r.logit_bias = d.logit_bias;
  return r;
}

std::span<const RowRequest> RequestTable::requests(int64_t first, int64_t count) {
  scratch_.clear();
  for (int64_t row = first; row < first + count; ++row) {
    scratch_.push_back(request_of(rows_.empty() ? base_ : rows_[row], row));
  }
  return scratch_;
}

const SamplingParams& RequestTable::params(int64_t row) const {
  return rows_.empty() ? base_.params : rows_[row].params;
}

}  // namespace nucleus::cli
