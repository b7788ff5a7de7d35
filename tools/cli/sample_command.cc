// nucleus sample: one line per row (JSON or CSV) with the drawn tokens.
#include <charconv>
#include <nlohmann/json.hpp>
#include <vector>

#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"
#include "tools/cli/row_requests.h"
#include "tools/cli/text_output.h"

namespace nucleus::cli {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr const char* kSampleFooter = R"(Output (JSONL, one line per row):
  {"row":0,"tokens":[17],"logprobs":[-0.21],"raw_logprobs":[-0.35],"support":37}
  With --logprobs N, also "ranks" (per sample) and "top_logprobs" (one list of
  N {"token", "logprob"} per sample). A row that cannot be sampled gives
  {"row":3,"error":"logit of token 17 is NaN"} and the other rows go on.

Seeds: with --seed S, row r uses seed S + r (so rows differ) at step --step;
a --params line's "seed" replaces S + r for its row. Same seed, step and
parameters give the same tokens whatever the block size or thread count.

Exit status: 0 every row sampled; 1 some rows failed (see their error lines);
2 bad input or options (nothing written).

Examples:
  nucleus sample data/demo.npy --top-p 0.9 --temperature 0.8 --seed 42 --logprobs 3
  nucleus sample logits.safetensors --tensor logits --preset vllm --min-p 0.05 -n 4
  nucleus sample dump.bin --dtype bf16 --vocab 128256 --top-k 50 --format csv -o out.csv
  cat dump.npy | nucleus sample - --temperature 0
  nucleus sample dump.npy --params rows.jsonl --seed 7 --output tokens.jsonl)";

std::string csv_float(float value) {
  if (value == 0.0f) return "0";  // log(1): no "-0", as in the JSON lines
  char buf[32];
  const auto [end, ec] = std::to_chars(buf, buf + sizeof buf, value);
  return ec == std::errc() ? std::string(buf, end) : std::string("nan");
}

std::string csv_quoted(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::vector<double> json_floats(const std::vector<float>& values) {
  std::vector<double> out;
  out.reserve(values.size());
  for (float v : values) out.push_back(json_float(v));
  return out;
}

void append_json(int64_t row, const RowResult& r, int32_t top_n, int64_t index, std::string* out) {
  OrderedJson line;
  line["row"] = row;
  if (!r.status.ok()) {
    line["error"] = row_error_text(r.status, index);
  } else {
    line["tokens"] = r.tokens;
    line["logprobs"] = json_floats(r.logprobs);
    line["raw_logprobs"] = json_floats(r.raw_logprobs);
    line["support"] = r.support;
    if (top_n > 0) {
      line["ranks"] = r.ranks;
      OrderedJson top = OrderedJson::array();
      for (const TokenLogprob& t : r.top_logprobs) {
        top.push_back({{"token", t.token}, {"logprob", json_float(t.logprob)}});
      }
      // Every sample of a row is drawn from the same distribution, so each
      // sample's list is the same; one list per sample keeps the shape of
      // the OpenAI API's per-token top_logprobs.
      line["top_logprobs"] = OrderedJson::array();
      for (size_t j = 0; j < r.tokens.size(); ++j) line["top_logprobs"].push_back(top);
    }
  }
  // Paths and messages may hold bytes that are not UTF-8: replace them
  // rather than throw.
  *out += line.dump(-1, ' ', false, OrderedJson::error_handler_t::replace);
  *out += '\n';
}

void append_csv(int64_t row, const RowResult& r, int32_t top_n, int64_t index, std::string* out) {
  const std::string prefix = std::to_string(row) + ",";
  if (!r.status.ok()) {
    *out += prefix + ",,,,,,," + csv_quoted(row_error_text(r.status, index)) + "\n";
    return;
  }
  std::string top;
  if (top_n > 0) {
    for (const TokenLogprob& t : r.top_logprobs) {
      if (!top.empty()) top += ' ';
      top += std::to_string(t.token) + ":" + csv_float(t.logprob);
    }
  }
  for (size_t j = 0; j < r.tokens.size(); ++j) {
    *out += prefix + std::to_string(j) + "," + std::to_string(r.tokens[j]) + "," +
            csv_float(r.logprobs[j]) + "," + csv_float(r.raw_logprobs[j]) + "," +
            (j < r.ranks.size() ? std::to_string(r.ranks[j]) : std::string()) + "," +
            std::to_string(r.support) + "," + top + ",\n";
  }
}

}  // namespace

void add_sample_command(CLI::App* app, SampleCommand* c) {
  c->app = app->add_subcommand("sample", "Draw tokens from every row of a logit dump");
  c->app->footer(kSampleFooter);
  add_input_options(c->app, &c->input);
  add_sampling_options(c->app, &c->sampling, SamplingFlags{.draws = true});
  c->app->add_option("--output,-o", c->output, "Write here instead of standard output");
  c->app->add_option("--format", c->format, "jsonl or csv")
      ->check(CLI::IsMember({"jsonl", "csv"}))
      ->capture_default_str();
}

// A generous bound on the memory one row's result and its text take: the
// draws with their log-probabilities and ranks, the top-N list (repeated for
// every sample in CSV).
int64_t result_bytes(const SamplingParams& p) {
  const int64_t n = std::max<int64_t>(p.num_samples, 1);
  const int64_t top = std::max<int64_t>(p.top_logprobs, 0);
  return 512 + 64 * n + 64 * top + 48 * n * top;
}

int run_sample(const SampleCommand& c) {
  if (c.app->count("--output") > 0 && c.output.empty()) {
    print_error("option --output is empty: give a path, or - for standard output");
    return kExitFailure;
  }
  // (the options against a given --vocab, and the output, before the dump:
  // opening a raw pipe copies it whole; the output appears only once it is
  // complete)
  if (Status s = RequestTable::check_before_dump(c.sampling, c.input.vocab); !s.ok()) {
    print_error(dump_or_option_error(c.input, std::move(s)).message());
    return kExitFailure;
  }
  Result<TextOutput> out = TextOutput::open(c.output);
  if (!out.ok()) {
    print_error(out.status().message());
    return kExitFailure;
  }
  Result<DumpReader> reader = open_input(c.input, 0);
  if (!reader.ok()) {
    print_error(reader.status().message());
    return kExitFailure;
  }
  const DumpInfo& info = reader->info();
  Result<RequestTable> table = RequestTable::build(c.sampling, info.rows, info.vocab);
  if (!table.ok()) {
    print_error(table.status().message());
    return kExitFailure;
  }
  const bool csv = c.format == "csv";
  if (csv) {
    if (Status s = out->write("row,sample,token,logprob,raw_logprob,rank,support,top_logprobs,"
                              "error\n");
        !s.ok()) {
      print_error(s.message());
      return kExitFailure;
    }
  }
  Engine engine(EngineOptions{.max_threads = c.sampling.threads, .seed = std::nullopt});
  Progress progress(info.rows, c.sampling.quiet, out->is_terminal());
  std::vector<RowResult> results;
  std::string text;
  int64_t failed = 0;
  const Status read = for_each_run(
      *reader, c.input, progress, [&](int64_t row) { return result_bytes(table->params(row)); },
      [&](const LogitsView& view, int64_t first) {
        results.resize(static_cast<size_t>(view.rows));
        std::span<const RowRequest> requests = table->requests(first, view.rows);
        if (Status s = engine.sample(view, requests, results); !s.ok()) return s;
        text.clear();
        for (int64_t i = 0; i < view.rows; ++i) {
          const RowResult& r = results[static_cast<size_t>(i)];
          if (!r.status.ok()) ++failed;
          const int32_t top_n = requests[static_cast<size_t>(i)].params.top_logprobs;
          if (csv) {
            append_csv(first + i, r, top_n, i, &text);
          } else {
            append_json(first + i, r, top_n, i, &text);
          }
        }
        return out->write(text);
      });
  progress.finish();  // (the bar's line erased first: a message is one line)
  if (!read.ok()) {
    print_error(read.message());
    return kExitFailure;
  }
  if (Status s = out->commit(); !s.ok()) {
    print_error(s.message());
    return kExitFailure;
  }
  if (failed > 0) {
    if (!c.sampling.quiet) {
      print_error(std::to_string(failed) + " of " + std::to_string(info.rows) +
                  " rows could not be sampled; their lines hold the error");
    }
    return kExitRowErrors;
  }
  return kExitOk;
}

}  // namespace nucleus::cli
