// nucleus bench: decoding-throughput grid with the roofline, softmax-floor and
// sort-based reference baselines measured in the same run (bench/core).
#include <tbb/global_control.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/core/bench_core.h"
#include "nucleus/dump.h"
#include "tools/cli/commands.h"
#include "tools/cli/text_output.h"

namespace nucleus::cli {
namespace {

// One argument as a POSIX shell reads it back: as it is when it holds only
// characters no shell treats specially, else in single quotes (a quote
// inside written '\'').
std::string shell_word(const std::string& arg) {
  const bool plain = !arg.empty() && std::all_of(arg.begin(), arg.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || std::strchr("%+,-./:=@_", c) != nullptr;
  });
  if (plain) return arg;
  std::string word = "'";
  for (const char c : arg) word += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return word + "'";
}

// This process's command line, as a shell would take it back (read from
// /proc/self/cmdline; empty where there is none).
std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string line;
  for (std::string arg; std::getline(in, arg, '\0');) {
    if (!line.empty()) line += ' ';
    line += shell_word(arg);
  }
  return line;
}

// The CPU's model name, and its family, model and stepping (a name such as
// "AMD EPYC" covers several generations), from the first CPU's fields in
// /proc/cpuinfo; or "".
std::string cpu_model() {
  std::map<std::string, std::string> field;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line) && !line.empty();) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const size_t key_end = line.find_last_not_of(" \t", colon - 1);
    const size_t from = line.find_first_not_of(" \t", colon + 1);
    field[line.substr(0, key_end == std::string::npos ? 0 : key_end + 1)] =
        from == std::string::npos ? std::string() : line.substr(from);
  }
  std::string text = field["model name"];
  if (field.count("cpu family") > 0) {
    text += " (family " + field["cpu family"] + ", model " + field["model"] + ", stepping " +
            field["stepping"] + ")";
  }
  return text;
}

// The time now, UTC, as 2026-12-07T12:34:56Z.
std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// The comma-separated items of a list option; an empty list or an empty
// item ("32000,,128256", "1,") is an error, said on stderr (an item lost
// from a script's variable, which a run without it would hide).
std::optional<std::vector<std::string>> list_items(const std::string& option,
                                                   const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const size_t end = comma == std::string::npos ? text.size() : comma;
    parts.push_back(text.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (text.empty()) {
    print_error("option " + option + " is empty");
    return std::nullopt;
  }
  if (std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); })) {
    print_error("option " + option + " = '" + text + "' has an empty item");
    return std::nullopt;
  }
  return parts;
}

// Drops repeated values, keeping the first of each (a case is run once).
template <typename T>
void drop_repeats(std::vector<T>& v) {
  std::vector<T> kept;
  for (const T& x : v) {
    if (std::find(kept.begin(), kept.end(), x) == kept.end()) kept.push_back(x);
  }
  v = std::move(kept);
}

// `all` (the core count) where the option allows it (--threads).
bool parse_int_list(const std::string& option, const std::string& text, std::optional<int64_t> all,
                    std::vector<int64_t>& out, int64_t most = INT64_MAX, const char* most_is = "") {
  out.clear();
  const std::optional<std::vector<std::string>> items = list_items(option, text);
  if (!items) return false;
  for (const std::string& p : *items) {
    if (p == "all" && all) {
      out.push_back(*all);
      continue;
    }
    // (decimal digits only, as every integer option: no '+' or spaces)
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (ec == std::errc::result_out_of_range && end == p.data() + p.size()) {
      print_error("option " + option + " = " + p + " is out of range");
      return false;
    }
    if (ec != std::errc() || end != p.data() + p.size() || v <= 0) {
      print_error("option " + option + " = '" + p + "' is not a positive integer" +
                  (all ? " or all" : ""));
      return false;
    }
    if (v > most) {
      print_error("option " + option + " = " + p + " is above " + std::to_string(most) + most_is);
      return false;
    }
    out.push_back(v);
  }
  drop_repeats(out);
  return true;
}

}  // namespace

void add_bench_command(CLI::App* app, BenchCommand* c) {
  c->app = app->add_subcommand("bench", "Measure decoding throughput against baselines");
  CLI::Option* vocab = c->app->add_option("--vocab", c->vocab, "Vocabulary sizes, comma-separated")
                           ->capture_default_str();
  c->app->add_option("--batch", c->batch, "Batch sizes (rows per call), comma-separated")
      ->capture_default_str();
  c->app
      ->add_option("--config", c->config,
                   "Configurations: greedy, full, topk-topp, topp, minp, typical, penalty-topp, "
                   "or all")
      ->capture_default_str();
  c->app
      ->add_option("--threads", c->threads,
                   "Thread counts, comma-separated; all = every core (more are measured at all)")
      ->capture_default_str();
  c->app->add_option("--dtype", c->dtype, "Logit types: f32, f16, bf16")->capture_default_str();
  c->app
      ->add_option("--isa", c->isa,
                   "Instruction sets of the row passes, comma-separated: auto (the best this "
                   "machine runs), sse2, avx2, avx512, or all (each one this machine runs)")
      ->capture_default_str();
  c->app
      ->add_option("--read-ahead", c->read_ahead,
                   "Whether each row's passes bring the next row of a batch into cache "
                   "(EngineOptions::read_ahead): auto (as NUCLEUS_READ_AHEAD says; unset: "
                   "batches of 32 MiB or more, and from 1 MB those whose rows a probe finds "
                   "coming from memory), always or never")
      ->capture_default_str();
  CLI::Option* rows =
      c->app
          ->add_option("--rows", c->rows,
                       "LM-like rows of the batch: peaked-flat (alternating), peaked, medium or "
                       "flat")
          ->capture_default_str();
  c->app
      ->add_option("--input", c->input,
                   "Time the rows of this .npy or .safetensors dump (a model's own logits) "
                   "instead of LM-like ones: batch k of --distinct takes the rows from k x "
                   "batch on, round the dump's rows; the vocab is the dump's")
      ->excludes(vocab)
      ->excludes(rows);
  c->app->add_option("--tensor", c->tensor, "The --input .safetensors tensor to read")
      ->needs("--input");
  c->app->add_option("--repeat", c->repeat, "Timed calls per measurement (median kept)")
      ->check(integer_at_least(1))
      ->capture_default_str();
  c->app
      ->add_option("--runs", c->runs,
                   "Run the grid this many times; each case keeps its best run (the fastest "
                   "median), with the baselines timed in that run")
      ->check(integer_at_least(1))
      ->capture_default_str();
  c->app
      ->add_option("--distinct", c->distinct,
                   "Time this many different batches of the same kind in turn (call i reads "
                   "batch i mod N), the baselines too: with 1 every call reads the same batch, "
                   "whose rows stay in cache and whose branches the CPU learns")
      ->check(integer_at_least(1))
      ->capture_default_str();
  c->app->add_flag("--no-reference", c->no_reference,
                   "Skip the sort-based reference (slow at large sizes)");
  c->app->add_flag("--logprobs", c->logprobs, "Also compute the sampled tokens' logprobs");
  c->app->add_option("--json", c->json, "Also write the results as JSON to this file");
  c->app->add_flag("--quiet,-q", c->quiet, "No progress on standard error");
  c->app->footer(
      "Columns: us/row = median microseconds per row over --repeat calls (with\n"
      "--runs N: the fastest run's); GB/s = logits read per second; roofline =\n"
      "share of a plain vectorised streaming read's bandwidth; x softmax = time over\n"
      "one fused max + exp + sum pass per row (Eigen's exp: a plain online softmax,\n"
      "which the trimmed exp of nucleus can beat); x faster = speed-up over a sort-based\n"
      "sampler (scalar; the float32 rows; fewer calls, each followed by ten of nucleus,\n"
      "whose median in those turns it is compared with).\n"
      "With --runs N each ratio is the median of the N runs' ratios. The roofline\n"
      "and the floor run in the same process, alternating with nucleus, on the same\n"
      "buffers with the same threads, in the engine's oneTBB arena (a row split\n"
      "across threads as nucleus splits it when there are fewer rows than threads).\n\n"
      "Examples:\n"
      "  nucleus bench\n"
      "  nucleus bench --vocab 128256 --batch 1,64 --config topp,minp --threads 1,all\n"
      "  nucleus bench --dtype f32,bf16 --json bench.json   (then: bench/plot bench.json)\n"
      "  nucleus bench --vocab 128256 --batch 1 --threads 1 --isa all --no-reference\n"
      "  nucleus bench --input logits.npy --batch 1,8 --config topp,typical");
}

int run_bench(const BenchCommand& c) {
  // The threads oneTBB lets this process run (its cores, unless limited):
  // an engine asked for more runs this many, and so is the case measured.
  const auto all = static_cast<int64_t>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
  std::vector<int64_t> vocabs, batches, threads;
  if (!parse_int_list("--vocab", c.vocab, std::nullopt, vocabs, INT32_MAX,
                      " (token ids are int32)") ||
      !parse_int_list("--batch", c.batch, std::nullopt, batches) ||
      !parse_int_list("--threads", c.threads, all, threads)) {
    return kExitFailure;
  }
  if (std::any_of(threads.begin(), threads.end(), [&](int64_t t) { return t > all; })) {
    if (!c.quiet) {
      std::fprintf(stderr,
                   "nucleus bench: this process runs at most %lld thread%s; the cases "
                   "asked for more are measured at %lld\n",
                   static_cast<long long>(all), all == 1 ? "" : "s", static_cast<long long>(all));
    }
    for (int64_t& t : threads) t = std::min(t, all);
    drop_repeats(threads);
  }
  const std::optional<std::vector<std::string>> config_names = list_items("--config", c.config);
  const std::optional<std::vector<std::string>> dtype_names = list_items("--dtype", c.dtype);
  const std::optional<std::vector<std::string>> isa_names = list_items("--isa", c.isa);
  if (!config_names || !dtype_names || !isa_names) return kExitFailure;
  std::vector<bench::Config> configs;
  for (const std::string& name : *config_names) {
    if (name == "all") {
      const auto every = bench::all_configs();
      configs.assign(every.begin(), every.end());
      continue;
    }
    const auto config = bench::parse_config(name);
    if (!config) {
      std::string names;
      for (const bench::Config known : bench::all_configs()) {
        names += std::string(bench::config_name(known)) + ", ";
      }
      print_error("option --config = " + name + " is not one of " + names + "or all");
      return kExitFailure;
    }
    configs.push_back(*config);
  }
  std::vector<DType> dtypes;
  for (const std::string& name : *dtype_names) {
    const auto dtype = parse_dtype(name);
    if (!dtype) {
      print_error("option --dtype = " + name + " is not f32, f16 or bf16");
      return kExitFailure;
    }
    dtypes.push_back(*dtype);
  }
  std::vector<Isa> isas;
  for (const std::string& name : *isa_names) {
    if (name == "all") {
      for (Isa isa : runnable_isas()) isas.push_back(isa);
      continue;
    }
    const auto isa = parse_isa(name);
    if (!isa) {
      print_error("option --isa = " + name + " is not auto, sse2, avx2, avx512 or all");
      return kExitFailure;
    }
    // A set this machine lacks, or that NUCLEUS_ISA caps, runs as the best
    // one allowed: say so, and which of the two it is.
    if (*isa != Isa::kAuto && resolve_isa(*isa) != *isa && !c.quiet) {
      const bool machine_has = static_cast<int>(best_isa()) >= static_cast<int>(*isa);
      std::fprintf(stderr, "nucleus bench: --isa %s runs as %s %s\n", isa_name(*isa),
                   isa_name(resolve_isa(*isa)),
                   machine_has ? "under NUCLEUS_ISA" : "on this machine");
    }
    isas.push_back(*isa);
  }
  // (an instruction set named twice, or once by name and once as what auto
  // or all resolve to, runs once)
  for (Isa& isa : isas) isa = resolve_isa(isa);
  drop_repeats(configs);
  drop_repeats(dtypes);
  drop_repeats(isas);

  const auto rows = bench::parse_rows(c.rows);
  if (!rows) {
    print_error("option --rows = " + c.rows + " is not peaked-flat, peaked, medium or flat");
    return kExitFailure;
  }
  const std::optional<ReadAhead> read_ahead = parse_read_ahead(c.read_ahead);
  if (!read_ahead) {
    print_error("option --read-ahead = " + c.read_ahead + " is not auto, always or never");
    return kExitFailure;
  }
  if (c.app->count("--json") > 0 && c.json.empty()) {
    print_error("option --json is empty: give a path");
    return kExitFailure;
  }
  // The largest case's rows (all its distinct batches, and the float32 copy
  // of a half-precision one; an --input dump's rows too) must fit in memory
  // with room to spare.
  const int64_t largest = *std::max_element(batches.begin(), batches.end());
  const auto memory_check = [&](int64_t vocab, int64_t input_rows, const std::string& vocab_is) {
    const std::string why =
        bench::rows_memory_error(c.distinct, largest, vocab, dtypes, input_rows);
    if (why.empty()) return Status();
    return Status::invalid_argument("options --distinct " + std::to_string(c.distinct) +
                                    ", --batch " + std::to_string(largest) + " and " + vocab_is +
                                    " " + why);
  };
  // A dump's rows: as many as the largest batch takes, for each distinct batch.
  std::shared_ptr<const bench::InputRows> input;
  if (c.app->count("--input") > 0) {
    if (c.input.empty()) {
      print_error("option --input is empty");
      return kExitFailure;
    }
    const int64_t wanted = largest > std::numeric_limits<int64_t>::max() / c.distinct
                               ? std::numeric_limits<int64_t>::max()
                               : largest * c.distinct;
    Result<bench::InputRows> read =
        bench::read_input_rows(c.input, c.tensor, wanted, dtypes, [&](int64_t rows, int64_t vocab) {
          return memory_check(vocab, rows, "the vocab " + std::to_string(vocab) + " of " + c.input);
        });
    if (!read.ok()) {
      print_error(read.status().message());
      return kExitFailure;
    }
    input = std::make_shared<const bench::InputRows>(std::move(read).value());
    vocabs = {input->vocab};
    // (said whatever --quiet: a batch that repeats rows times them in cache,
    // their branches learned, which flatters the figures)
    if (input->rows < wanted) {
      const std::string batches =
          c.distinct > 1 ? "the " + std::to_string(c.distinct) + " distinct batches of " +
                               std::to_string(largest) + " rows share some"
                         : "a batch of " + std::to_string(largest) +
                               " repeats some (rows read again are in cache)";
      std::fprintf(stderr, "nucleus bench: %s holds %lld rows: %s\n", c.input.c_str(),
                   static_cast<long long>(input->rows), batches.c_str());
    }
  } else {
    const int64_t vocab = *std::max_element(vocabs.begin(), vocabs.end());
    if (Status s = memory_check(vocab, 0, "--vocab " + std::to_string(vocab)); !s.ok()) {
      print_error(s.message());
      return kExitFailure;
    }
  }
  // The JSON file is opened (under a temporary name) before the grid runs,
  // so that a path that cannot be written fails at once, and appears only
  // once it is whole.
  std::optional<TextOutput> json;
  if (!c.json.empty()) {
    Result<TextOutput> opened = TextOutput::open(c.json);
    if (!opened.ok()) {
      print_error(opened.status().message());
      return kExitFailure;
    }
    json.emplace(std::move(opened).value());
  }
  bench::Options options;
  options.rows = *rows;
  options.read_ahead = *read_ahead;
  options.repeat = c.repeat;
  options.reference = !c.no_reference;
  options.logprobs = c.logprobs;
  options.distinct = c.distinct;
  options.input = input;
  std::vector<bench::CaseResult> results;
  const size_t total = vocabs.size() * batches.size() * dtypes.size() * threads.size() *
                       isas.size() * configs.size();
  const bool progress = !c.quiet && isatty(STDERR_FILENO);
  // With --runs N the grid runs N times over; each case keeps its best run
  // (the fastest nucleus median) for the times, rates and baseline times,
  // and the median over the N runs of each ratio to a baseline (each run's
  // ratio taken against the baselines timed in that run's turns): the ratios
  // of the fastest run alone would be biased towards nucleus, whose noise
  // picked it. (Picking the run with the fastest softmax floor instead was
  // tried: on the shared 2-core box the floor slows ~7 % in its slow
  // stretches while the sampler slows ~30 %, so the floor did not find the
  // quiet ones.)
  std::vector<bench::CaseResult> best;
  std::vector<std::array<std::vector<double>, 3>> ratios;  // per case: roofline, floor, reference
  for (int run = 0; run < c.runs; ++run) {
    results.clear();
    for (int64_t vocab : vocabs) {
      for (int64_t batch : batches) {
        for (DType dtype : dtypes) {
          for (int64_t t : threads) {
            for (Isa isa : isas) {
              for (bench::Config config : configs) {
                if (progress) {
                  std::fprintf(
                      stderr, "\r[%d/%d %zu/%zu] %s vocab %lld batch %lld %s threads %lld %s   ",
                      run + 1, c.runs, results.size() + 1, total, bench::config_name(config),
                      static_cast<long long>(vocab), static_cast<long long>(batch),
                      dtype_name(dtype), static_cast<long long>(t), isa_name(isa));
                  std::fflush(stderr);
                }
                Result<bench::CaseResult> r = bench::run_case(
                    {config, vocab, batch, dtype, static_cast<int>(t), isa}, options);
                if (!r.ok()) {
                  if (progress) std::fprintf(stderr, "\r\033[K");
                  print_error(std::string("bench: ") + bench::config_name(config) + " vocab " +
                              std::to_string(vocab) + " batch " + std::to_string(batch) + " " +
                              dtype_name(dtype) + ": " + r.status().message());
                  return kExitFailure;
                }
                results.push_back(std::move(r).value());
              }
            }
          }
        }
      }
    }
    if (best.empty()) {
      best = results;
      ratios.resize(results.size());
    } else {
      for (size_t i = 0; i < results.size(); ++i) {
        if (results[i].us_per_row < best[i].us_per_row) best[i] = results[i];
      }
    }
    for (size_t i = 0; i < results.size(); ++i) {
      ratios[i][0].push_back(results[i].vs_roofline);
      ratios[i][1].push_back(results[i].vs_softmax);
      ratios[i][2].push_back(results[i].vs_reference);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  };
  for (size_t i = 0; i < best.size(); ++i) {
    best[i].vs_roofline = median(ratios[i][0]);
    best[i].vs_softmax = median(ratios[i][1]);
    best[i].vs_reference = median(ratios[i][2]);
  }
  results = best;
  if (progress) std::fprintf(stderr, "\r\033[K");
  // (a table that cannot be written fails the run, before any --json file)
  Result<TextOutput> table = TextOutput::open("-");
  Status shown = table->write(bench::format_table(results));
  if (shown.ok()) shown = table->commit();
  if (!shown.ok()) {
    print_error(shown.message());
    return kExitFailure;
  }

  if (json) {
    nlohmann::json doc;
    // (what a quoted figure needs beside it: the command, the machine, when)
    doc["command"] = command_line();
    doc["version"] = version();
    // (the build: two builds compared side by side differ here at least)
#if defined(__clang__)
    const std::string compiler = __VERSION__;  // ("Debian Clang 14.0.6")
#else
    const std::string compiler = std::string("g++ ") + __VERSION__;
#endif
#if defined(NDEBUG)
    doc["build"] = "release, " + compiler;
#else
    doc["build"] = "debug (assertions on), " + compiler;
#endif
    doc["best_isa"] = isa_name(best_isa());
    doc["cpu"] = cpu_model();
    doc["date"] = utc_now();
    doc["machine_threads"] = all;
    doc["repeat"] = c.repeat;
    doc["runs"] = c.runs;
    // (with --runs N a case's times are its fastest run's, its ratios the
    // medians over the runs: a ratio is then not its times' quotient)
    doc["times_from"] = c.runs > 1 ? "fastest run" : "the run";
    doc["ratios_from"] = c.runs > 1 ? "median over runs" : "the run";
    doc["distinct"] = c.distinct;
    // (the mode the engines ran: the option, or NUCLEUS_READ_AHEAD's under auto)
    doc["read_ahead"] = read_ahead_name(
        Engine(EngineOptions{
                   .max_threads = 1, .seed = 1, .isa = Isa::kAuto, .read_ahead = *read_ahead})
            .read_ahead());
    doc["rows"] = input ? "input" : bench::rows_name(*rows);
    if (input) {
      doc["input"] = input->path;
      doc["input_rows"] = input->rows;  // read from it (cycled when a batch wants more)
      if (!input->tensor.empty()) doc["input_tensor"] = input->tensor;
    }
    doc["logprobs"] = c.logprobs;
    for (const auto& r : results) {
      doc["results"].push_back({{"config", bench::config_name(r.c.config)},
                                {"vocab", r.c.vocab},
                                {"batch", r.c.batch},
                                {"dtype", dtype_name(r.c.dtype)},
                                {"threads", r.c.threads},
                                {"isa", isa_name(r.c.isa)},
                                {"us_per_row", r.us_per_row},
                                {"rows_per_s", r.rows_per_s},
                                {"gb_per_s", r.gb_per_s},
                                {"roofline_us_per_row", r.roofline_us_per_row},
                                {"softmax_us_per_row", r.softmax_us_per_row},
                                {"vs_roofline", r.vs_roofline},
                                {"vs_softmax", r.vs_softmax}});
      // (null when --no-reference skipped it: a 0 would enter averages)
      nlohmann::json& last = doc["results"].back();
      const bool timed = r.reference_us_per_row > 0.0;
      last["reference_us_per_row"] =
          timed ? nlohmann::json(r.reference_us_per_row) : nlohmann::json(nullptr);
      last["vs_reference"] = timed ? nlohmann::json(r.vs_reference) : nlohmann::json(nullptr);
    }
    Status written = json->write(doc.dump(1) + "\n");
    if (written.ok()) written = json->commit();
    if (!written.ok()) {
      print_error(written.message());
      return kExitFailure;
    }
  }
  return kExitOk;
}

}  // namespace nucleus::cli
