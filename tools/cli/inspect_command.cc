// nucleus inspect: what a dump holds and what each row's distribution looks
// like. Every number that depends on sampling semantics comes from the
// engine (probabilities, top tokens, nucleus sizes); this file only reads
// and summarises its answers.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/io/file_io.h"
#include "engine/io/half.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"

namespace nucleus::cli {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr double kNucleusLevels[] = {0.9, 0.95, 0.99};

constexpr const char* kInspectFooter =
    R"(For each row: the largest logit, the entropy of softmax(logits) in nats,
the most probable tokens with their probabilities, and the nucleus sizes:
how many tokens top-p keeps at p = 0.9, 0.95 and 0.99 (temperature 1).

Examples:
  nucleus inspect data/demo.npy
  nucleus inspect dump.bin --dtype f16 --vocab 32000 --top 10
  nucleus inspect logits.safetensors --json | jq '.rows_summary[0]')";

struct RowSummary {
  Status status;
  float max_logit = 0.0f;
  double entropy = 0.0;
  std::vector<TokenLogprob> top;
  int64_t nucleus[std::size(kNucleusLevels)] = {};
};

float logit_at(const LogitsView& view, int64_t row, int64_t token) {
  return detail::value_to_float(view.data, view.dtype, row * view.row_stride + token);
}

// Runs the engine over one block and fills one summary per row.
Status summarise_block(Engine& engine, const LogitsView& view, int top_n, std::vector<float>& probs,
                       std::vector<RowSummary>* out) {
  const auto rows = static_cast<size_t>(view.rows);
  out->assign(rows, RowSummary());
  auto fail_row = [&](size_t i, const Status& s) {
    if ((*out)[i].status.ok()) (*out)[i].status = Status::row_error(row_error_text(s, i));
  };

  // The untouched distribution, for the entropy.
  RowRequest plain;
  std::vector<Status> row_status(rows);
  if (Status s = engine.probs(view, {&plain, 1}, probs.data(), view.vocab, row_status); !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < rows; ++i) {
    if (!row_status[i].ok()) {
      fail_row(i, row_status[i]);
      continue;
    }
    double h = 0.0;
    const float* p = probs.data() + i * view.vocab;
    for (int64_t t = 0; t < view.vocab; ++t) {
      if (p[t] > 0.0f) h -= static_cast<double>(p[t]) * std::log(static_cast<double>(p[t]));
    }
    (*out)[i].entropy = h;
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t t = 0; t < view.vocab; ++t) best = std::max(best, logit_at(view, i, t));
    (*out)[i].max_logit = best;
  }

  // The top tokens of log_softmax(logits): a greedy draw with raw top logprobs.
  std::vector<RowResult> results(rows);
  RowRequest top;
  top.params.temperature = 0.0f;
  top.params.top_logprobs = top_n;
  top.params.logprobs_mode = LogprobsMode::kRaw;
  if (Status s = engine.sample(view, {&top, 1}, results); !s.ok()) return s;
  for (size_t i = 0; i < rows; ++i) {
    if (!results[i].status.ok()) fail_row(i, results[i].status);
    (*out)[i].top = results[i].top_logprobs;
  }

  // Nucleus sizes: the support top-p leaves at each level.
  for (size_t level = 0; level < std::size(kNucleusLevels); ++level) {
    RowRequest nucleus;
    nucleus.params.top_p = static_cast<float>(kNucleusLevels[level]);
    nucleus.params.logprobs = false;
    nucleus.seed = 0;  // the draw itself is not used; keep the run deterministic
    if (Status s = engine.sample(view, {&nucleus, 1}, results); !s.ok()) return s;
    for (size_t i = 0; i < rows; ++i) {
      if (!results[i].status.ok()) fail_row(i, results[i].status);
      (*out)[i].nucleus[level] = results[i].support;
    }
  }
  return Status();
}

std::string fixed(double value, int decimals) {
  char buf[64];
  // (+ 0.0: a -0 logit prints as 0.000, as --json's 0.0, not -0.000)
  std::snprintf(buf, sizeof buf, "%.*f", decimals, value + 0.0);
  return buf;
}

void print_table_header(const DumpInfo& info) {
  std::string shape;
  for (size_t i = 0; i < info.shape.size(); ++i) {
    shape += (i ? " x " : "") + std::to_string(info.shape[i]);
  }
  std::printf("file    %s\n", info.path.c_str());
  std::printf("format  %s%s%s, %s\n", dump_format_name(info.format),
              info.tensor.empty() ? "" : ", tensor ", info.tensor.c_str(), dtype_name(info.dtype));
  std::printf("shape   %s  (%lld rows x %lld tokens)\n\n", shape.c_str(),
              static_cast<long long>(info.rows), static_cast<long long>(info.vocab));
  std::printf("%6s %10s %8s %7s %7s %7s  %s\n", "row", "max logit", "entropy", "p=0.9", "p=0.95",
              "p=0.99", "top tokens (probability)");
}

void print_table_row(int64_t row, const RowSummary& s) {
  if (!s.status.ok()) {
    std::printf("%6lld  error: %s\n", static_cast<long long>(row), s.status.message().c_str());
    return;
  }
  std::string top;
  for (const TokenLogprob& t : s.top) {
    top += (top.empty() ? "" : "  ") + std::to_string(t.token) + " (" +
           fixed(std::exp(static_cast<double>(t.logprob)), 3) + ")";
  }
  std::printf("%6lld %10s %8s %7lld %7lld %7lld  %s\n", static_cast<long long>(row),
              fixed(s.max_logit, 3).c_str(), fixed(s.entropy, 3).c_str(),
              static_cast<long long>(s.nucleus[0]), static_cast<long long>(s.nucleus[1]),
              static_cast<long long>(s.nucleus[2]), top.c_str());
}

OrderedJson row_json(int64_t row, const RowSummary& s) {
  OrderedJson j;
  j["row"] = row;
  if (!s.status.ok()) {
    j["error"] = s.status.message();
    return j;
  }
  j["max_logit"] = json_float(s.max_logit);
  j["entropy"] = s.entropy;
  OrderedJson sizes;
  for (size_t level = 0; level < std::size(kNucleusLevels); ++level) {
    sizes[fixed(kNucleusLevels[level], 2)] = s.nucleus[level];
  }
  j["nucleus_sizes"] = sizes;
  j["top"] = OrderedJson::array();
  for (const TokenLogprob& t : s.top) {
    j["top"].push_back({{"token", t.token},
                        {"prob", std::exp(static_cast<double>(t.logprob))},
                        {"logprob", json_float(t.logprob)}});
  }
  return j;
}

}  // namespace

void add_inspect_command(CLI::App* app, InspectCommand* c) {
  c->app = app->add_subcommand("inspect", "Describe a dump and summarise each row");
  c->app->footer(kInspectFooter);
  add_input_options(c->app, &c->input);
  c->app->add_option("--top", c->top, "How many top tokens to list per row")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  c->app->add_flag("--json", c->json, "One JSON document instead of a table");
  add_run_options(c->app, &c->threads, &c->quiet);
}

int run_inspect(const InspectCommand& c) {
  Result<DumpReader> reader = open_input(c.input, 4);
  if (!reader.ok()) {
    print_error(reader.status().message());
    return kExitFailure;
  }
  const DumpInfo& info = reader->info();
  const int top_n = static_cast<int>(std::min<int64_t>(c.top, info.vocab));
  Engine engine(EngineOptions{.max_threads = c.threads, .seed = 0});
  // (the table, as the JSON, goes to standard output: no bar when that is
  // the terminal too)
  Progress progress(info.rows, c.quiet, ::isatty(STDOUT_FILENO) == 1);
  Result<std::vector<float>> probs = block_output(*reader);
  if (!probs.ok()) {
    print_error(probs.status().message());
    return kExitFailure;
  }
  std::vector<RowSummary> summaries;
  // The JSON document is printed as it is made, a row at a time (memory
  // stays bounded however many rows the dump has): the text of
  // dump(2) of the whole document, its head first.
  auto json_text = [](const OrderedJson& j) {
    return j.dump(2, ' ', false, OrderedJson::error_handler_t::replace);
  };
  if (c.json) {
    OrderedJson head;
    head["path"] = info.path;
    head["format"] = dump_format_name(info.format);
    if (!info.tensor.empty()) head["tensor"] = info.tensor;
    head["dtype"] = dtype_name(info.dtype);
    head["shape"] = info.shape;
    head["rows"] = info.rows;
    head["vocab"] = info.vocab;
    std::string text = json_text(head);
    text.resize(text.size() - 2);  // (its closing "\n}")
    std::printf("%s,\n  \"rows_summary\": [", text.c_str());
  } else {
    print_table_header(info);
  }
  int64_t failed = 0;
  // (a run of rows: a summary, a result and a status each)
  const int64_t summary_bytes = 2048 + 32 * int64_t{c.top};
  const Status read = for_each_run(
      *reader, c.input, progress, [&](int64_t) { return summary_bytes; },
      [&](const LogitsView& view, int64_t first) {
        if (Status s = summarise_block(engine, view, top_n, *probs, &summaries); !s.ok()) {
          return s;
        }
        for (int64_t i = 0; i < view.rows; ++i) {
          const RowSummary& s = summaries[static_cast<size_t>(i)];
          if (!s.status.ok()) ++failed;
          if (c.json) {
            std::string text = json_text(row_json(first + i, s));
            for (size_t nl = text.find('\n'); nl != std::string::npos;
                 nl = text.find('\n', nl + 5)) {
              text.insert(nl + 1, "    ");
            }
            std::printf("%s\n    %s", first + i == 0 ? "" : ",", text.c_str());
          } else {
            print_table_row(first + i, s);
          }
        }
        // (a closed pipe or a full disk stops the run here, not after the
        // whole dump)
        if (std::fflush(stdout) != 0 || std::ferror(stdout) != 0) {
          return Status::io_error("standard output: cannot write: " + detail::errno_text(errno));
        }
        return Status();
      });
  progress.finish();  // (the bar's line erased first: a message is one line)
  if (!read.ok()) {
    print_error(read.message());
    return kExitFailure;
  }
  if (c.json) std::printf("\n  ]\n}\n");
  if (std::fflush(stdout) != 0) {
    print_error("standard output: cannot write: " + detail::errno_text(errno));
    return kExitFailure;
  }
  if (failed > 0) {
    if (!c.quiet) {
      print_error(std::to_string(failed) + " of " + std::to_string(info.rows) +
                  " rows could not be summarised; their entries hold the error");
    }
    return kExitRowErrors;
  }
  return kExitOk;
}

}  // namespace nucleus::cli
