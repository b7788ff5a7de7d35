// End-to-end tests of the `nucleus` program: it is run as a separate process
// on dumps of every format and dtype, and its answers are compared with the
// library's (same tokens for the same seed, probs equal to Engine::probs).
// Malformed inputs must fail with exit status 2, a message that names the
// file, field and value, and no output file; row errors must fail only their
// row (exit status 1); a dump larger than the memory limit must still go
// through, block by block.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/io/dump_writer.h"
#include "engine/io/npy_header.h"
#include "engine/io/safetensors_header.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "test_files.h"

namespace nucleus {
namespace {

#ifndef NUCLEUS_CLI_PATH
// Built with NUCLEUS_BUILD_TOOLS=OFF: there is no program to run.
TEST(Cli, NeedsTheProgram) { GTEST_SKIP() << "the nucleus_cli target is not built"; }
#else

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

using test_files::ReadFile;
using test_files::WriteFile;

fs::path TestDir() { return test_files::TestDir("cli_test"); }

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

struct CliRun {
  int code = -1;
  std::string out;
  std::string err;
};

// Runs `nucleus ARGS` through the shell in `dir`; `before` and `after` wrap
// the program (a pipe into it, a ulimit, a redirect of standard input).
CliRun RunCli(const fs::path& dir, const std::string& args, const std::string& before = "",
              const std::string& after = "") {
  const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
  const std::string command = "cd " + Quote(dir) + " && " + before + Quote(NUCLEUS_CLI_PATH) + " " +
                              args + " " + after + " > " + Quote(out) + " 2> " + Quote(err);
  const int status = std::system(command.c_str());
  CliRun run;
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.out = ReadFile(out);
  run.err = ReadFile(err);
  fs::remove(out);
  fs::remove(err);
  return run;
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::vector<Json> JsonLines(const std::string& text) {
  std::vector<Json> out;
  for (const std::string& line : Lines(text)) out.push_back(Json::parse(line));
  return out;
}

// LM-like rows: a few dominant tokens over a Gaussian bulk.
std::vector<float> Logits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> v(static_cast<size_t>(rows * vocab));
  for (float& x : v) x = normal(rng);
  for (int64_t r = 0; r < rows; ++r) {
    for (int k = 0; k < 4; ++k) v[static_cast<size_t>(r * vocab + rng() % vocab)] += 6.0f - k;
  }
  return v;
}

void WriteDump(const fs::path& path, const std::vector<float>& values, int64_t rows, int64_t vocab,
               DType dtype) {
  detail::DumpWriteSpec spec;
  spec.format = DumpFormat::kAuto;
  spec.dtype = dtype;
  const Status s = detail::write_dump(path, values.data(), rows, vocab, spec);
  ASSERT_TRUE(s.ok()) << s.message();
}

// The dump as the library sees it, held open while the test compares.
struct Loaded {
  DumpReader reader;
  LogitsView view;
};

Loaded Load(const fs::path& path, const DumpOptions& options = {}) {
  Result<DumpReader> reader = DumpReader::open(path, [&] {
    DumpOptions o = options;
    o.block_bytes = int64_t{1} << 40;  // everything in one block
    return o;
  }());
  EXPECT_TRUE(reader.ok()) << reader.status().message();
  Loaded loaded{std::move(reader).value(), {}};
  Result<LogitsView> view = loaded.reader.block(0);
  EXPECT_TRUE(view.ok());
  loaded.view = *view;
  return loaded;
}

// The seeds the tool documents: row r gets S + r.
std::vector<RowRequest> SeededRequests(const RowRequest& base, int64_t rows, uint64_t seed) {
  std::vector<RowRequest> requests(static_cast<size_t>(rows), base);
  for (int64_t r = 0; r < rows; ++r) requests[static_cast<size_t>(r)].seed = seed + r;
  return requests;
}

std::vector<RowResult> LibrarySample(const LogitsView& view, std::span<const RowRequest> requests) {
  Engine engine;
  std::vector<RowResult> results(static_cast<size_t>(view.rows));
  const Status s = engine.sample(view, requests, results);
  EXPECT_TRUE(s.ok()) << s.message();
  return results;
}

float AsFloat(const Json& j) { return static_cast<float>(j.get<double>()); }

// One JSON line against the library's result for the same row.
void ExpectSameRow(const Json& line, const RowResult& want, int64_t row, int top_n) {
  SCOPED_TRACE("row " + std::to_string(row) + ": " + line.dump());
  ASSERT_EQ(line.at("row").get<int64_t>(), row);
  ASSERT_TRUE(want.status.ok()) << want.status.message();
  ASSERT_FALSE(line.contains("error"));
  EXPECT_EQ(line.at("tokens").get<std::vector<int32_t> >(), want.tokens);
  ASSERT_EQ(line.at("logprobs").size(), want.logprobs.size());
  for (size_t j = 0; j < want.logprobs.size(); ++j) {
    EXPECT_EQ(AsFloat(line["logprobs"][j]), want.logprobs[j]);
    EXPECT_EQ(AsFloat(line["raw_logprobs"][j]), want.raw_logprobs[j]);
  }
  EXPECT_EQ(line.at("support").get<int64_t>(), want.support);
  if (top_n == 0) {
    EXPECT_FALSE(line.contains("top_logprobs"));
    return;
  }
  EXPECT_EQ(line.at("ranks").get<std::vector<int32_t> >(), want.ranks);
  ASSERT_EQ(line.at("top_logprobs").size(), want.tokens.size());  // one list per sample
  for (const Json& list : line["top_logprobs"]) {
    ASSERT_EQ(list.size(), want.top_logprobs.size());
    for (size_t k = 0; k < list.size(); ++k) {
      EXPECT_EQ(list[k].at("token").get<int32_t>(), want.top_logprobs[k].token);
      EXPECT_EQ(AsFloat(list[k].at("logprob")), want.top_logprobs[k].logprob);
    }
  }
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Cli, HelpAndVersion) {
  const fs::path dir = TestDir();
  CliRun version = RunCli(dir, "--version");
  EXPECT_EQ(version.code, 0);
  EXPECT_TRUE(Contains(version.out, nucleus::version())) << version.out;
  for (const char* command : {"", "sample ", "probs ", "inspect "}) {
    CliRun help = RunCli(dir, std::string(command) + "--help");
    EXPECT_EQ(help.code, 0) << command;
    EXPECT_TRUE(Contains(help.out, "Examples:")) << command << help.out;
  }
  CliRun none = RunCli(dir, "");
  EXPECT_EQ(none.code, 2);
  EXPECT_TRUE(Contains(none.err, "subcommand")) << none.err;
  CliRun typo = RunCli(dir, "sampel d.npy");
  EXPECT_EQ(typo.code, 2);
  EXPECT_TRUE(Contains(typo.err, "unknown command 'sampel' (expected sample, probs, inspect or"))
      << typo.err;
}

struct FormatCase {
  const char* file;
  DType dtype;
};

void PrintTo(const FormatCase& c, std::ostream* os) { *os << c.file << " " << dtype_name(c.dtype); }

class CliFormats : public ::testing::TestWithParam<FormatCase> {};

TEST_P(CliFormats, SampleGivesTheLibrarysTokens) {
  const fs::path dir = TestDir();
  const int64_t rows = 6, vocab = 3000;
  const fs::path path = dir / GetParam().file;
  WriteDump(path, Logits(rows, vocab, 1), rows, vocab, GetParam().dtype);
  DumpOptions options;
  std::string raw_args;
  if (detail::dump_format_for_path(path) == DumpFormat::kRaw) {
    options.dtype = GetParam().dtype;
    options.vocab = vocab;
    raw_args = std::string(" --dtype ") + dtype_name(GetParam().dtype) + " --vocab 3000";
  }
  CliRun run = RunCli(dir, "sample " + Quote(path) + raw_args +
                               " --seed 11 --temperature 0.8 --top-k 200 --top-p 0.9 -n 2 "
                               "--logprobs 3");
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.err, "");

  Loaded dump = Load(path, options);
  RowRequest base;
  base.params.temperature = 0.8f;
  base.params.top_k = 200;
  base.params.top_p = 0.9f;
  base.params.num_samples = 2;
  base.params.top_logprobs = 3;
  const std::vector<RowRequest> requests = SeededRequests(base, rows, 11);
  const std::vector<RowResult> want = LibrarySample(dump.view, requests);
  const std::vector<Json> lines = JsonLines(run.out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) ExpectSameRow(lines[r], want[r], r, 3);

  CliRun probs =
      RunCli(dir, "probs " + Quote(path) + raw_args + " --temperature 0.8 --top-p 0.9 -o p.npy");
  ASSERT_EQ(probs.code, 0) << probs.err;
  Loaded out = Load(dir / "p.npy");
  ASSERT_EQ(out.view.rows, rows);
  ASSERT_EQ(out.view.dtype, DType::kFloat32);
  std::vector<float> expected(static_cast<size_t>(rows * vocab));
  std::vector<Status> row_status(static_cast<size_t>(rows));
  RowRequest p;
  p.params.temperature = 0.8f;
  p.params.top_p = 0.9f;
  Engine engine;
  ASSERT_TRUE(engine.probs(dump.view, {&p, 1}, expected.data(), vocab, row_status).ok());
  const auto* got = static_cast<const float*>(out.view.data);
  for (int64_t i = 0; i < rows * vocab; ++i) ASSERT_EQ(got[i], expected[i]) << "element " << i;
}

INSTANTIATE_TEST_SUITE_P(
    Dumps, CliFormats,
    ::testing::Values(FormatCase{"d.npy", DType::kFloat32}, FormatCase{"d.npy", DType::kFloat16},
                      FormatCase{"d.safetensors", DType::kFloat32},
                      FormatCase{"d.safetensors", DType::kFloat16},
                      FormatCase{"d.safetensors", DType::kBFloat16},
                      FormatCase{"d.bin", DType::kFloat32}, FormatCase{"d.bin", DType::kFloat16},
                      FormatCase{"d.raw", DType::kBFloat16}),
    [](const ::testing::TestParamInfo<FormatCase>& info) {
      std::string name = std::string(info.param.file) + "_" + dtype_name(info.param.dtype);
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

// `nucleus bench` on a tiny grid: a table line and a JSON result per case,
// every instruction set this machine runs with --isa all, and bad options
// refused with a message that names them.
TEST(Cli, BenchRunsEveryCaseAndInstructionSet) {
  const fs::path dir = TestDir();
  CliRun run = RunCli(dir,
                      "bench --vocab 1000 --batch 1,2 --threads 1 --config greedy,topp "
                      "--isa all --repeat 2 --no-reference -q --json bench.json");
  ASSERT_EQ(run.code, 0) << run.err;
  std::vector<std::string> isas;
  for (Isa isa : runnable_isas()) isas.push_back(isa_name(isa));
  const Json doc = Json::parse(ReadFile(dir / "bench.json"));
  ASSERT_EQ(doc["results"].size(), 2 * 2 * isas.size());  // batches x configs x sets
  std::map<std::string, int> per_isa;
  for (const Json& r : doc["results"]) {
    ++per_isa[r["isa"].get<std::string>()];
    EXPECT_EQ(r["vocab"], 1000);
    EXPECT_GT(r["us_per_row"].get<double>(), 0.0);
    EXPECT_GT(r["softmax_us_per_row"].get<double>(), 0.0);
    EXPECT_GT(r["roofline_us_per_row"].get<double>(), 0.0);
  }
  for (const std::string& isa : isas) EXPECT_EQ(per_isa[isa], 4) << isa;
  // The table: a header and one line per case.
  EXPECT_EQ(Lines(run.out).size(), 1 + doc["results"].size()) << run.out;

  EXPECT_EQ(doc["rows"], "peaked-flat");

  // One kind of row for the whole batch; the grid three times over, one
  // result per case.
  run = RunCli(dir,
               "bench --vocab 1000 --batch 1,2 --threads 1 --config topp --rows flat --repeat 2 "
               "--runs 3 --no-reference -q --json \"flat's run.json\"");
  ASSERT_EQ(run.code, 0) << run.err;
  const Json flat = Json::parse(ReadFile(dir / "flat's run.json"));
  EXPECT_EQ(flat["rows"], "flat");
  EXPECT_EQ(flat["runs"], 3);
  EXPECT_EQ(flat["times_from"], "fastest run");
  EXPECT_EQ(flat["ratios_from"], "median over runs");
  ASSERT_EQ(flat["results"].size(), 2u);
  EXPECT_EQ(flat["results"][0]["batch"], 1);
  EXPECT_EQ(flat["results"][1]["batch"], 2);
  // --no-reference: the reference's fields are null (a 0 would enter
  // averages); beside the figures, the command, the build, the CPU, when.
  EXPECT_TRUE(flat["results"][0]["reference_us_per_row"].is_null());
  EXPECT_TRUE(flat["results"][0]["vs_reference"].is_null());
  // The command as a shell takes it back: an argument with a space or a
  // quote in single quotes.
  EXPECT_TRUE(Contains(flat["command"].get<std::string>(),
                       "bench --vocab 1000 --batch 1,2 --threads 1 --config topp --rows flat"))
      << flat["command"];
  EXPECT_TRUE(Contains(flat["command"].get<std::string>(), " --json 'flat'\\''s run.json'"))
      << flat["command"];
  EXPECT_EQ(flat["version"], version());
  EXPECT_TRUE(flat["cpu"].is_string());
  EXPECT_EQ(flat["best_isa"], isa_name(best_isa()));
  EXPECT_TRUE(Contains(flat["build"].get<std::string>(), __VERSION__)) << flat["build"];
  EXPECT_EQ(flat["date"].get<std::string>().size(), 20u) << flat["date"];
  EXPECT_EQ(Lines(run.out).size(), 3u) << run.out;
  // Three different batches timed in turn; none is refused. (Read ahead:
  // the engines' option, recorded.)
  run = RunCli(dir,
               "bench --vocab 1000 --batch 2 --threads 1 --config penalty-topp,greedy "
               "--distinct 3 --repeat 4 --read-ahead always -q --json distinct.json");
  ASSERT_EQ(run.code, 0) << run.err;
  const Json distinct = Json::parse(ReadFile(dir / "distinct.json"));
  EXPECT_EQ(distinct["distinct"], 3);
  EXPECT_EQ(distinct["read_ahead"], "always");
  EXPECT_EQ(distinct["times_from"], "the run");
  EXPECT_EQ(distinct["ratios_from"], "the run");
  EXPECT_EQ(flat["distinct"], 1);
  ASSERT_EQ(distinct["results"].size(), 2u);
  for (const Json& r : distinct["results"]) {
    EXPECT_GT(r["us_per_row"].get<double>(), 0.0);
    EXPECT_GT(r["reference_us_per_row"].get<double>(), 0.0);
  }
  // A JSON path that cannot be written fails before the grid runs, and
  // leaves nothing behind.
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 -q --json no/such/dir/b.json");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "no/such/dir")) << run.err;
  EXPECT_TRUE(run.out.empty()) << run.out;
  EXPECT_FALSE(fs::exists(dir / "no"));
  // Rows that would not fit in memory are refused before anything is made.
  run = RunCli(dir, "bench --vocab 256000 --batch 256 --threads 1 --distinct 100000 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--distinct 100000")) << run.err;
  EXPECT_TRUE(Contains(run.err, "GiB")) << run.err;
  // (a vocab past token ids' range is refused as such, not after its rows
  // are made: they would take 8 GiB)
  run = RunCli(dir, "bench --vocab 1000,2147483648 --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--vocab = 2147483648 is above 2147483647")) << run.err;
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --distinct 0 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--distinct")) << run.err;
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --rows spiky -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--rows = spiky")) << run.err;

  // A case named twice runs once; the core count is for --threads only.
  run = RunCli(dir,
               "bench --vocab 1000,1000 --batch 1 --threads 1,1 --config greedy,greedy "
               "--isa auto,all --repeat 2 --no-reference -q");
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(Lines(run.out).size(), 1 + isas.size()) << run.out;
  // More threads than the process runs are measured at what it runs, under
  // that label, and said so (not a row labelled 4096 that ran on fewer).
  run = RunCli(dir,
               "bench --vocab 1000 --batch 1 --threads 4096,all --config greedy --repeat 2 "
               "--no-reference --json capped.json");
  ASSERT_EQ(run.code, 0) << run.err;
  const Json capped = Json::parse(ReadFile(dir / "capped.json"));
  ASSERT_EQ(capped["results"].size(), 1u) << "4096 and all are the same case";
  EXPECT_EQ(capped["results"][0]["threads"], capped["machine_threads"]);
  EXPECT_TRUE(Contains(run.err, "the cases asked for more are measured at")) << run.err;
  EXPECT_FALSE(Contains(run.err, "TBB Warning")) << run.err;
  run = RunCli(dir, "bench --vocab all --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--vocab = 'all'")) << run.err;
  // A row split across two threads (fewer rows than threads): the floor is
  // split too, and its time is measured.
  run = RunCli(dir,
               "bench --vocab 40000 --batch 1 --threads 2 --config full --repeat 2 "
               "--no-reference -q --json split.json");
  ASSERT_EQ(run.code, 0) << run.err;
  const Json split = Json::parse(ReadFile(dir / "split.json"));
  ASSERT_EQ(split["results"].size(), 1u);
  EXPECT_GT(split["results"][0]["softmax_us_per_row"].get<double>(), 0.0);

  // A set NUCLEUS_ISA caps runs as the cap, and the note says why (the
  // machine's lack, where it has no AVX2).
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --isa avx2 --repeat 2 --no-reference",
               "NUCLEUS_ISA=sse2 ");
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_TRUE(Contains(run.err, best_isa() >= Isa::kAVX2
                                    ? "--isa avx2 runs as sse2 under NUCLEUS_ISA"
                                    : "--isa avx2 runs as sse2 on this machine"))
      << run.err;
  EXPECT_TRUE(Contains(run.out, " sse2 ")) << run.out;
  run = RunCli(dir,
               "bench --vocab 1000 --batch 1 --threads 1 --isa avx2 --repeat 2 --no-reference -q",
               "NUCLEUS_ISA=sse2 ");
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_TRUE(run.err.empty()) << run.err;  // (-q: no note)
  // A count that is not a positive integer is said so plainly (CLI11's own
  // check printed its range as 0.000000 to 1.79769e+308).
  for (const char* bad : {"--repeat 0", "--runs -3", "--distinct abc"}) {
    SCOPED_TRACE(bad);
    run = RunCli(dir, std::string("bench --vocab 1000 --batch 1 --threads 1 -q ") + bad);
    EXPECT_EQ(run.code, 2);
    EXPECT_TRUE(Contains(run.err, "is below 1") || Contains(run.err, "is not a decimal integer"))
        << run.err;
    EXPECT_FALSE(Contains(run.err, "0.000000")) << run.err;
  }
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --isa neon -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--isa = neon")) << run.err;
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --config nothing -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--config = nothing is not one of greedy, full,")) << run.err;
  // An empty item (a value lost from a script's list) is refused, naming
  // the option (it was dropped: the grid ran without it); so is an empty
  // list, by its own option's name.
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string> >{
           {"--vocab 1000,,2000", "option --vocab = '1000,,2000' has an empty item"},
           {"--vocab 1000 --isa avx2,", "option --isa = 'avx2,' has an empty item"},
           {"--vocab 1000 --config ''", "option --config is empty"},
           {"--vocab 1000 --threads none",
            "--threads = 'none' is not a positive integer or all"}}) {
    run = RunCli(dir, "bench --batch 1 --repeat 2 --no-reference -q " + args);
    EXPECT_EQ(run.code, 2) << args;
    EXPECT_TRUE(Contains(run.err, message)) << run.err;
  }
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 --read-ahead sometimes -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--read-ahead = sometimes")) << run.err;
}

// `nucleus bench --input`: a dump's rows timed in place of LM-like ones,
// its vocab the cases'; options that describe the LM-like rows refused
// with it, and rows that cannot be sampled refused naming row and token.
TEST(Cli, BenchTimesADumpsRows) {
  const fs::path dir = TestDir();
  const int64_t rows = 3, vocab = 1234;
  std::vector<float> values = Logits(rows, vocab, 12);
  WriteDump(dir / "d.npy", values, rows, vocab, DType::kFloat16);
  CliRun run = RunCli(dir,
                      "bench --input d.npy --batch 2 --distinct 2 --threads 1 --config topp,greedy "
                      "--dtype f32,bf16 --repeat 2 -q --json in.json");
  ASSERT_EQ(run.code, 0) << run.err;
  const Json doc = Json::parse(ReadFile(dir / "in.json"));
  EXPECT_EQ(doc["rows"], "input");
  EXPECT_EQ(doc["input"], "d.npy");
  EXPECT_EQ(doc["input_rows"], 3);  // (of the 2 x 2 asked for: the dump's 3, cycled)
  ASSERT_EQ(doc["results"].size(), 4u);
  for (const Json& r : doc["results"]) {
    EXPECT_EQ(r["vocab"], vocab);
    EXPECT_GT(r["us_per_row"].get<double>(), 0.0);
    EXPECT_GT(r["reference_us_per_row"].get<double>(), 0.0);
  }
  EXPECT_EQ(Lines(run.out).size(), 5u) << run.out;

  for (const char* args : {"--input d.npy --vocab 1000", "--input d.npy --rows flat"}) {
    run = RunCli(dir, std::string("bench --batch 1 --threads 1 -q ") + args);
    EXPECT_EQ(run.code, 2) << args;
    EXPECT_TRUE(Contains(run.err, "excludes")) << run.err;
  }
  run = RunCli(dir, "bench --vocab 1000 --batch 1 --threads 1 -q --tensor logits");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--tensor requires --input")) << run.err;
  run = RunCli(dir, "bench --input \"\" --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "option --input is empty")) << run.err;
  // (the memory needed names the dump's vocab, and counts its rows)
  run = RunCli(dir, "bench --input d.npy --batch 100000000000 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "--batch 100000000000 and the vocab 1234 of d.npy need"))
      << run.err;
  // Distinct batches that the dump's rows cannot fill share rows: said so.
  run = RunCli(dir,
               "bench --input d.npy --batch 2 --distinct 3 --threads 1 --config greedy "
               "--repeat 2 --no-reference");
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_TRUE(Contains(run.err, "d.npy holds 3 rows: the 3 distinct batches of 2 rows share some"))
      << run.err;
  // One batch larger than the dump repeats rows (read from cache, their
  // branches learned): said so too, -q or not.
  run = RunCli(dir,
               "bench --input d.npy --batch 8 --threads 1 --config greedy --repeat 2 "
               "--no-reference -q");
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_TRUE(Contains(run.err, "d.npy holds 3 rows: a batch of 8 repeats some")) << run.err;
  WriteDump(dir / "d.safetensors", values, rows, vocab, DType::kBFloat16);
  run = RunCli(dir,
               "bench --input d.safetensors --tensor logits --batch 1 --threads 1 "
               "--config greedy --repeat 2 --no-reference -q --json st.json");
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(Json::parse(ReadFile(dir / "st.json"))["input_tensor"], "logits");
  // A raw dump: said so (bench takes no dtype or vocab for it).
  WriteFile(dir / "d.bin", std::string(64, '\0'));
  run = RunCli(dir, "bench --input d.bin --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "d.bin: bench --input reads .npy and .safetensors dumps"))
      << run.err;
  // Another format: not the reader's advice to give a dtype and a vocab,
  // which bench takes neither of.
  WriteFile(dir / "d.json", "{}");
  run = RunCli(dir, "bench --input d.json --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(
      Contains(run.err, "d.json: unknown format: bench --input reads .npy and .safetensors dumps"))
      << run.err;
  EXPECT_FALSE(Contains(run.err, "give its dtype")) << run.err;
  run = RunCli(dir, "bench --input missing.npy --batch 1 --threads 1 -q");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "missing.npy: cannot open")) << run.err;
  values[static_cast<size_t>(2 * vocab + 5)] = std::nanf("");
  WriteDump(dir / "nan.npy", values, rows, vocab, DType::kFloat32);
  run = RunCli(dir, "bench --input nan.npy --batch 4 --threads 1 -q --json nan.json");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "nan.npy: row 2: token 5 = nan")) << run.err;
  EXPECT_FALSE(fs::exists(dir / "nan.json"));
}

TEST(Cli, OutputDoesNotDependOnBlocksOrThreads) {
  const fs::path dir = TestDir();
  const int64_t rows = 40, vocab = 32000;
  WriteDump(dir / "d.npy", Logits(rows, vocab, 2), rows, vocab, DType::kFloat32);
  const std::string args = "sample d.npy --seed 3 --top-p 0.95 --min-p 0.01 -n 3 --logprobs 2";
  CliRun whole = RunCli(dir, args);
  ASSERT_EQ(whole.code, 0) << whole.err;
  // 1 MiB blocks hold 8 rows of 32000 float32.
  CliRun blocks = RunCli(dir, args + " --block-mb 1 --threads 1");
  ASSERT_EQ(blocks.code, 0) << blocks.err;
  EXPECT_EQ(blocks.out, whole.out);
  EXPECT_EQ(Lines(whole.out).size(), static_cast<size_t>(rows));
  // More threads than cores run on the cores, with nothing on stderr (oneTBB
  // warned there when an engine asked it for more).
  CliRun many = RunCli(dir, args + " --threads 4096 -q");
  ASSERT_EQ(many.code, 0) << many.err;
  EXPECT_EQ(many.out, whole.out);
  EXPECT_EQ(many.err, "");

  CliRun probs_whole = RunCli(dir, "probs d.npy --top-k 50 -o a.npy");
  CliRun probs_blocks = RunCli(dir, "probs d.npy --top-k 50 -o b.npy --block-mb 1 --threads 2");
  ASSERT_EQ(probs_whole.code, 0) << probs_whole.err;
  ASSERT_EQ(probs_blocks.code, 0) << probs_blocks.err;
  EXPECT_EQ(ReadFile(dir / "a.npy"), ReadFile(dir / "b.npy"));
}

TEST(Cli, CsvHasOneLinePerSample) {
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(3, 500, 4), 3, 500, DType::kFloat32);
  CliRun json = RunCli(dir, "sample d.npy --seed 1 -n 2 --logprobs 2");
  CliRun csv = RunCli(dir, "sample d.npy --seed 1 -n 2 --logprobs 2 --format csv -o out.csv");
  ASSERT_EQ(csv.code, 0) << csv.err;
  EXPECT_EQ(csv.out, "");
  const std::vector<std::string> lines = Lines(ReadFile(dir / "out.csv"));
  ASSERT_EQ(lines.size(), 1u + 3 * 2);
  EXPECT_EQ(lines[0], "row,sample,token,logprob,raw_logprob,rank,support,top_logprobs,error");
  const std::vector<Json> rows = JsonLines(json.out);
  for (int r = 0; r < 3; ++r) {
    for (int j = 0; j < 2; ++j) {
      const std::string& line = lines[1 + r * 2 + j];
      const std::string prefix = std::to_string(r) + "," + std::to_string(j) + "," +
                                 std::to_string(rows[r]["tokens"][j].get<int>()) + ",";
      EXPECT_EQ(line.rfind(prefix, 0), 0u) << line;
      // The log-probabilities read back as the same float32s as the JSON's
      // (each the shortest decimal of its float).
      std::vector<std::string> fields;
      std::istringstream in(line);
      for (std::string f; fields.size() < 5 && std::getline(in, f, ',');) fields.push_back(f);
      ASSERT_EQ(fields.size(), 5u) << line;
      EXPECT_EQ(std::strtof(fields[3].c_str(), nullptr), rows[r]["logprobs"][j].get<float>())
          << line;
      EXPECT_EQ(std::strtof(fields[4].c_str(), nullptr), rows[r]["raw_logprobs"][j].get<float>())
          << line;
    }
  }
}

TEST(Cli, AnAllowedTokenAtTheVocabIsRefused) {
  // (a vocab of 64: the token's bit would fall in a third mask word of two)
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(1, 64, 5), 1, 64, DType::kFloat32);
  WriteFile(dir / "p.jsonl", "{\"allowed_tokens\": [3, 64]}\n");
  CliRun run = RunCli(dir, "sample d.npy -q --params p.jsonl");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "allowed_tokens[1]") && Contains(run.err, "[0, 64)")) << run.err;
  EXPECT_TRUE(run.out.empty()) << run.out;
}

TEST(Cli, CsvPrintsALogprobOfZeroWithoutASign) {
  // One token holds all the mass: its log-probability is exactly 0, which
  // JSON and CSV print unsigned (whatever the sign of the float's zero).
  const fs::path dir = TestDir();
  std::vector<float> x(2 * 100, 0.0f);
  x[7] = 200.0f;
  x[100 + 42] = 200.0f;
  WriteDump(dir / "d.npy", x, 2, 100, DType::kFloat32);
  CliRun csv = RunCli(dir, "sample d.npy --temperature 0 --logprobs 1 --format csv -o out.csv");
  ASSERT_EQ(csv.code, 0) << csv.err;
  const std::vector<std::string> lines = Lines(ReadFile(dir / "out.csv"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[1].rfind("0,0,7,0,0,1,100,7:0,", 0), 0u) << lines[1];
  EXPECT_EQ(lines[2].rfind("1,0,42,0,0,1,100,42:0,", 0), 0u) << lines[2];
}

TEST(Cli, ParamsFileOverridesRowByRow) {
  const fs::path dir = TestDir();
  const int64_t rows = 6, vocab = 200;
  WriteDump(dir / "d.npy", Logits(rows, vocab, 5), rows, vocab, DType::kFloat32);
  WriteFile(dir / "params.jsonl",
            "{\"temperature\": 0}\n"
            "{\"seed\": 5, \"top_k\": 3, \"step\": 9}\n"
            "\n"
            "{\"logit_bias\": {\"7\": 100}, \"logprobs\": 2, \"logprobs_mode\": \"raw\"}\n"
            "{\"allowed_tokens\": [42, 43], \"preset\": \"vllm\", \"min_p\": 0.2}\n"
            "{\"history\": [1, 1, 2], \"prompt_tokens\": [3], \"repetition_penalty\": 1.5, "
            "\"frequency_penalty\": 0.3, \"presence_penalty\": 0.1, \"banned\": [4]}\n"
            "{\"row\": 5, \"logit_bias\": [[9, \"-inf\"]], \"num_samples\": 3, \"seed\": null}\n");
  CliRun run = RunCli(dir, "sample d.npy --seed 100 --temperature 0.7 --params params.jsonl");
  ASSERT_EQ(run.code, 0) << run.err;
  const std::vector<Json> lines = JsonLines(run.out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(rows));

  Loaded dump = Load(dir / "d.npy");
  RowRequest base;
  base.params.temperature = 0.7f;
  std::vector<RowRequest> requests = SeededRequests(base, rows, 100);
  requests[0].params.temperature = 0.0f;
  requests[1].seed = 5;
  requests[1].params.top_k = 3;
  requests[1].step = 9;
  const std::vector<TokenBias> bias3 = {{7, 100.0f}};
  requests[2].logit_bias = bias3;
  requests[2].params.top_logprobs = 2;
  requests[2].params.logprobs_mode = LogprobsMode::kRaw;
  std::vector<int32_t> mask((vocab + 31) / 32, 0);
  mask[1] = (1 << 10) | (1 << 11);  // tokens 42 and 43
  requests[3].allowed_mask = mask;
  requests[3].params.preset = Preset::kVLLM;
  requests[3].params.min_p = 0.2f;
  const std::vector<int32_t> history = {1, 1, 2}, prompt = {3}, banned = {4};
  requests[4].generated_tokens = history;
  requests[4].prompt_tokens = prompt;
  requests[4].banned_tokens = banned;
  requests[4].params.repetition_penalty = 1.5f;
  requests[4].params.frequency_penalty = 0.3f;
  requests[4].params.presence_penalty = 0.1f;
  const std::vector<TokenBias> bias5 = {{9, -kInf}};
  requests[5].logit_bias = bias5;
  requests[5].params.num_samples = 3;
  requests[5].seed.reset();
  const std::vector<RowResult> want = LibrarySample(dump.view, requests);
  for (int64_t r = 0; r < 5; ++r) {
    ExpectSameRow(lines[r], want[r], r, requests[r].params.top_logprobs);
  }
  EXPECT_EQ(lines[2]["tokens"][0], 7);
  const int token3 = lines[3]["tokens"][0].get<int>();
  EXPECT_TRUE(token3 == 42 || token3 == 43) << token3;
  // Row 5 is unseeded: only its shape can be checked.
  EXPECT_EQ(lines[5]["tokens"].size(), 3u);
  for (const Json& t : lines[5]["tokens"]) EXPECT_NE(t.get<int>(), 9);
}

TEST(Cli, PenaltiesAndBiasFromTheCommandLine) {
  const fs::path dir = TestDir();
  const int64_t rows = 4, vocab = 100;
  WriteDump(dir / "d.npy", Logits(rows, vocab, 6), rows, vocab, DType::kFloat16);
  const std::string others =
      " --repetition-penalty 1.3 --frequency-penalty 0.5 --presence-penalty 0.25 --preset "
      "llama.cpp --top-k 20 --typical-p 0.9 --top-n-sigma 2";
  CliRun run = RunCli(dir,
                      "sample d.npy --seed 8 --step 4 --history 1,2,2 --prompt-tokens 3,5 "
                      "--banned 7,8 --logit-bias 11:1.5,12:-2" +
                          others);
  ASSERT_EQ(run.code, 0) << run.err;
  Loaded dump = Load(dir / "d.npy");
  RowRequest base;
  const std::vector<int32_t> history = {1, 2, 2}, prompt = {3, 5}, banned = {7, 8};
  const std::vector<TokenBias> bias = {{11, 1.5f}, {12, -2.0f}};
  base.step = 4;
  base.generated_tokens = history;
  base.prompt_tokens = prompt;
  base.banned_tokens = banned;
  base.logit_bias = bias;
  base.params.repetition_penalty = 1.3f;
  base.params.frequency_penalty = 0.5f;
  base.params.presence_penalty = 0.25f;
  base.params.preset = Preset::kLlamaCpp;
  base.params.top_k = 20;
  base.params.typical_p = 0.9f;
  base.params.top_n_sigma = 2.0f;
  const std::vector<RowResult> want = LibrarySample(dump.view, SeededRequests(base, rows, 8));
  const std::vector<Json> lines = JsonLines(run.out);
  ASSERT_EQ(lines.size(), static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) ExpectSameRow(lines[r], want[r], r, 0);
  // Lists may also be spread over arguments or repeated; an empty value is
  // an empty list. The input may follow a list (spread or joined): an
  // argument not written as the list's items ends it. ("--banned=" is an
  // empty value, as "--banned ''" is, which the values after it may follow.)
  for (const std::string args :
       {"sample d.npy --seed 8 --step 4 --history 1 2,2 --prompt-tokens=3,5 --banned 7 --banned 8 "
        "--logit-bias 11:1.5 12:-2 --banned ''",
        "sample --seed 8 --step 4 --history 1 2,2 --prompt-tokens=3,5 --banned 7 8 --logit-bias "
        "11:1.5 12:-2 d.npy",
        "sample --seed 8 --step 4 --history 1 2,2 --banned= 7 8 --logit-bias 11:1.5 12:-2 "
        "--prompt-tokens=3,5 d.npy"}) {
    CliRun spread = RunCli(dir, args + others);
    ASSERT_EQ(spread.code, 0) << args << ": " << spread.err;
    EXPECT_EQ(spread.out, run.out) << args;
  }
  // (a bias of any number's spelling continues the list; "-", standard
  // input, ends it as a path does)
  CliRun stdin_last = RunCli(dir,
                             "sample --seed 8 --step 4 --history 1 2,2 --prompt-tokens=3,5 "
                             "--banned 7 8 --logit-bias 11:1.5 12:-2 58:-Infinity -" +
                                 others,
                             "", "< d.npy");
  ASSERT_EQ(stdin_last.code, 0) << stdin_last.err;
  CliRun stdin_joined = RunCli(dir,
                               "sample d.npy --seed 8 --step 4 --history 1,2,2 --prompt-tokens "
                               "3,5 --banned 7,8 --logit-bias 11:1.5,12:-2,58:-Infinity" +
                                   others);
  ASSERT_EQ(stdin_joined.code, 0) << stdin_joined.err;
  EXPECT_EQ(stdin_last.out, stdin_joined.out);
  EXPECT_NE(stdin_last.out, run.out);  // (token 58, row 0's draw, banned)
  // Integers are decimal whatever their leading zeros, as in --params and
  // Python (the parser read "010" as octal 8); another base is refused.
  CliRun zeros = RunCli(dir,
                        "sample d.npy --seed 08 --step 04 --history 01,02,2 --prompt-tokens 03,005 "
                        "--banned 07,08 --logit-bias 11:1.5,12:-2" +
                            others + " --threads 01");
  ASSERT_EQ(zeros.code, 0) << zeros.err;
  EXPECT_EQ(zeros.out, run.out);
  // (values whose octal reading differs, option by option)
  CliRun ten = RunCli(dir,
                      "sample d.npy --seed 10 --step 10 -n 10 --logprobs 10 --min-keep 10 --top-k "
                      "11 --history 10,11 --prompt-tokens 12 --repetition-penalty 1.5 --banned 13");
  ASSERT_EQ(ten.code, 0) << ten.err;
  CliRun ten_zeros =
      RunCli(dir,
             "sample d.npy --seed 010 --step 010 -n 010 --logprobs 010 --min-keep 010 --top-k 011 "
             "--history 010,011 --prompt-tokens 012 --repetition-penalty 1.5 --banned 013");
  ASSERT_EQ(ten_zeros.code, 0) << ten_zeros.err;
  EXPECT_EQ(ten_zeros.out, ten.out);
  // Decimal numbers in every form JSON writes, and "1." or ".5", are floats.
  CliRun floats = RunCli(dir,
                         "sample d.npy --seed 3 --temperature 0.5 --top-p 0.95 --min-p 0.05 "
                         "--logit-bias 11:-1.5,12:-inf");
  ASSERT_EQ(floats.code, 0) << floats.err;
  CliRun floats_spelled = RunCli(dir,
                                 "sample d.npy --seed 3 --temperature .5 --top-p 95E-2 --min-p "
                                 "5.e-2 --logit-bias 11:-15e-1,12:-Infinity");
  ASSERT_EQ(floats_spelled.code, 0) << floats_spelled.err;
  EXPECT_EQ(floats_spelled.out, floats.out);
  // (--logit-bias's tokens are spelled as --params' keys)
  for (const auto& [args, message] : std::vector<std::pair<std::string, std::string> >{
           {"--seed 0x10", "is not a decimal integer"},
           {"--banned 0x3", "is not a decimal integer"},
           {"--top-k 0b11", "is not a decimal integer"},
           {"--step 1e3", "is not a decimal integer"},
           {"--seed +5", "is not a decimal integer"},
           {"--banned=' 3'", "is not a decimal integer"},
           {"--top-k=+7", "is not a decimal integer"},
           {"--logit-bias=+11:-100", "is not TOKEN:BIAS"},
           {"--logit-bias=' 11:-100'", "is not TOKEN:BIAS"}}) {
    CliRun refused = RunCli(dir, "sample d.npy " + args);
    EXPECT_EQ(refused.code, 2) << args;
    EXPECT_TRUE(Contains(refused.err, message)) << refused.err;
  }
  // The other commands' integers: a raw dump's --vocab, inspect's --top,
  // bench's counts.
  const std::vector<float> raw = Logits(4, 100, 3);
  WriteFile(dir / "r.bin", std::string(reinterpret_cast<const char*>(raw.data()), raw.size() * 4));
  CliRun by_ten = RunCli(dir, "inspect r.bin --dtype f32 --vocab 10 --top 11 --json -q");
  ASSERT_EQ(by_ten.code, 0) << by_ten.err;
  CliRun by_ten_zeros = RunCli(dir, "inspect r.bin --dtype f32 --vocab 010 --top 011 --json -q");
  ASSERT_EQ(by_ten_zeros.code, 0) << by_ten_zeros.err;
  EXPECT_EQ(by_ten_zeros.out, by_ten.out);
  CliRun counts = RunCli(dir,
                         "bench --vocab 1000 --batch 010 --threads 1 --config greedy --repeat 010 "
                         "--distinct 011 --runs 01 --no-reference -q --json counts.json");
  ASSERT_EQ(counts.code, 0) << counts.err;
  const Json doc = Json::parse(ReadFile(dir / "counts.json"));
  EXPECT_EQ(doc["repeat"], 10);
  EXPECT_EQ(doc["distinct"], 11);
  EXPECT_EQ(doc["results"][0]["batch"], 10);
  EXPECT_FALSE(RunCli(dir, "bench --vocab +1000 --batch 1 -q").code == 0);
  // -0 is 0 in --params too (JSON's -0 is a signed integer; it was refused).
  std::string zero, minus_zero;
  for (int r = 0; r < 4; ++r) {
    zero += "{\"seed\": 0, \"step\": 0}\n";
    minus_zero += "{\"seed\": -0, \"step\": -0}\n";
  }
  WriteFile(dir / "zero.jsonl", zero);
  WriteFile(dir / "minus_zero.jsonl", minus_zero);
  CliRun plain = RunCli(dir, "sample d.npy --params zero.jsonl");
  CliRun negated = RunCli(dir, "sample d.npy --params minus_zero.jsonl");
  ASSERT_EQ(negated.code, 0) << negated.err;
  EXPECT_EQ(negated.out, plain.out);
}

// An empty list value ("" from a script's empty variable, or --banned=) is
// an empty list: the same probabilities as none at all (the parser read ""
// as token 0, which banning token 0 shows).
TEST(Cli, AnEmptyListValueIsAnEmptyList) {
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(2, 50, 9), 2, 50, DType::kFloat32);
  CliRun none =
      RunCli(dir, "probs d.npy --repetition-penalty 2 --presence-penalty 0.5 -o none.npy");
  ASSERT_EQ(none.code, 0) << none.err;
  CliRun zero = RunCli(dir, "probs d.npy --banned 0 -o zero.npy");
  ASSERT_EQ(zero.code, 0) << zero.err;
  ASSERT_NE(ReadFile(dir / "zero.npy"), ReadFile(dir / "none.npy"));
  for (const char* lists :
       {"--banned '' --history '' --prompt-tokens '' --logit-bias ''",
        "--banned= --history= --prompt-tokens= --logit-bias=", "--banned '' '' --history ''"}) {
    CliRun empty = RunCli(dir, std::string("probs d.npy --repetition-penalty 2 --presence-penalty "
                                           "0.5 -o empty.npy ") +
                                   lists);
    ASSERT_EQ(empty.code, 0) << lists << ": " << empty.err;
    EXPECT_EQ(ReadFile(dir / "empty.npy"), ReadFile(dir / "none.npy")) << lists;
  }
  // Empty values among others add nothing.
  CliRun mixed = RunCli(dir, "probs d.npy --banned '' 0 '' -o mixed.npy");
  ASSERT_EQ(mixed.code, 0) << mixed.err;
  EXPECT_EQ(ReadFile(dir / "mixed.npy"), ReadFile(dir / "zero.npy"));
}

TEST(Cli, InspectSummarisesAKnownDump) {
  const fs::path dir = TestDir();
  // Row 0: probabilities 0.5, 0.3, 0.12, 0.05 and twelve tokens of 0.0025.
  // Top-p keeps 3 tokens at p = 0.9 (0.8 before the third, 0.92 before the
  // fourth), 4 at 0.95 and, since the tail ties, all 16 at 0.99.
  const int64_t vocab = 16;
  std::vector<double> p = {0.5, 0.3, 0.12, 0.05};
  p.resize(vocab, 0.03 / 12);
  std::vector<float> logits(2 * vocab);
  double entropy = 0.0;
  for (int64_t t = 0; t < vocab; ++t) {
    logits[t] = static_cast<float>(std::log(p[t]) + 3.0);
    logits[vocab + t] = 0.0f;
    entropy -= p[t] * std::log(p[t]);
  }
  logits[vocab + 5] = kNaN;  // row 1 cannot be summarised
  WriteDump(dir / "k.npy", logits, 2, vocab, DType::kFloat32);

  CliRun json = RunCli(dir, "inspect k.npy --json --top 3");
  EXPECT_EQ(json.code, 1) << json.err;
  const Json doc = Json::parse(json.out);
  EXPECT_EQ(doc["format"], "npy");
  EXPECT_EQ(doc["dtype"], "f32");
  EXPECT_EQ(doc["rows"], 2);
  EXPECT_EQ(doc["vocab"], vocab);
  const Json& row0 = doc["rows_summary"][0];
  EXPECT_NEAR(row0["max_logit"].get<double>(), std::log(0.5) + 3.0, 1e-6);
  EXPECT_NEAR(row0["entropy"].get<double>(), entropy, 1e-5);
  EXPECT_EQ(row0["nucleus_sizes"]["0.90"], 3);
  EXPECT_EQ(row0["nucleus_sizes"]["0.95"], 4);
  EXPECT_EQ(row0["nucleus_sizes"]["0.99"], 16);
  ASSERT_EQ(row0["top"].size(), 3u);
  for (int k = 0; k < 3; ++k) {
    EXPECT_EQ(row0["top"][k]["token"], k);
    EXPECT_NEAR(row0["top"][k]["prob"].get<double>(), p[k], 1e-6);
  }
  const Json& row1 = doc["rows_summary"][1];
  // (the row is the "row" field, as in sample's lines: not repeated)
  EXPECT_EQ(row1["error"].get<std::string>().rfind("logit of token 5", 0), 0u) << row1;

  CliRun table = RunCli(dir, "inspect k.npy");
  EXPECT_EQ(table.code, 1);
  EXPECT_TRUE(Contains(table.out, "shape   2 x 16")) << table.out;
  EXPECT_TRUE(Contains(table.out, "0 (0.500)  1 (0.300)  2 (0.120)")) << table.out;
  EXPECT_TRUE(Contains(table.out, "     1  error: logit of token 5")) << table.out;
  EXPECT_TRUE(Contains(table.err, "1 of 2 rows could not be summarised")) << table.err;
}

TEST(Cli, ReadsStandardInput) {
  const fs::path dir = TestDir();
  const int64_t rows = 3, vocab = 300;
  const std::vector<float> logits = Logits(rows, vocab, 7);
  WriteDump(dir / "d.npy", logits, rows, vocab, DType::kFloat16);
  WriteDump(dir / "d.bin", logits, rows, vocab, DType::kFloat16);
  CliRun file = RunCli(dir, "sample d.npy --seed 2");
  ASSERT_EQ(file.code, 0) << file.err;
  CliRun pipe = RunCli(dir, "sample - --seed 2", "cat d.npy | ");
  EXPECT_EQ(pipe.code, 0) << pipe.err;
  EXPECT_EQ(pipe.out, file.out);
  CliRun redirect = RunCli(dir, "sample - --seed 2", "", "< d.npy");
  EXPECT_EQ(redirect.code, 0) << redirect.err;
  EXPECT_EQ(redirect.out, file.out);
  CliRun raw = RunCli(dir, "sample - --seed 2 --dtype f16 --vocab 300", "cat d.bin | ");
  EXPECT_EQ(raw.code, 0) << raw.err;
  EXPECT_EQ(raw.out, file.out);
  for (const char* spelling : {"float16", "half"}) {  // (docs/cli.md's spellings)
    CliRun named =
        RunCli(dir, std::string("sample d.bin --seed 2 --vocab 300 --dtype ") + spelling);
    EXPECT_EQ(named.code, 0) << spelling << ": " << named.err;
    EXPECT_EQ(named.out, file.out) << spelling;
  }
  // A redirected file is read from where its position stands, as cat reads
  // it: here after 100 bytes another program in the same redirect read.
  {
    std::ofstream prefixed(dir / "prefixed.npy", std::ios::binary);
    prefixed << std::string(100, 'x') << ReadFile(dir / "d.npy");
  }
  CliRun after = RunCli(dir, "sample - --seed 2", "{ dd bs=100 count=1 of=/dev/null 2> /dev/null; ",
                        "; } < prefixed.npy");
  EXPECT_EQ(after.code, 0) << after.err;
  EXPECT_EQ(after.out, file.out);
  CliRun unknown = RunCli(dir, "sample - --seed 2", "cat d.bin | ");
  EXPECT_EQ(unknown.code, 2);
  EXPECT_TRUE(Contains(unknown.err, "<stdin>")) << unknown.err;
  EXPECT_TRUE(Contains(unknown.err, "unknown format")) << unknown.err;
}

// A .npy pipe longer than a block is streamed, a block at a time, with the
// file's results; one that ends early or runs on past its header's shape
// stops the run when that shows, with the file's message, and leaves no
// --output file.
TEST(Cli, ALongPipeIsStreamedAndCheckedWhenItEnds) {
  const fs::path dir = TestDir();
  const int64_t rows = 40, vocab = 32000;  // 5 MB: more than the read-ahead (at most 2 MiB)
  WriteDump(dir / "d.npy", Logits(rows, vocab, 8), rows, vocab, DType::kFloat32);
  for (const char* command : {"sample - --seed 4 --block-mb 1", "probs - --block-mb 1 -o p.npy"}) {
    std::string file_command = command;
    file_command.replace(file_command.find(" - "), 3, " d.npy ");
    CliRun file = RunCli(dir, file_command);
    ASSERT_EQ(file.code, 0) << file.err;
    const std::string file_probs = fs::exists(dir / "p.npy") ? ReadFile(dir / "p.npy") : "";
    CliRun pipe = RunCli(dir, command, "cat d.npy | ");
    ASSERT_EQ(pipe.code, 0) << command << ": " << pipe.err;
    EXPECT_EQ(pipe.out, file.out) << command;
    if (!file_probs.empty()) {
      EXPECT_EQ(ReadFile(dir / "p.npy"), file_probs);
    }
    fs::remove(dir / "p.npy");
  }
  const int64_t size = static_cast<int64_t>(fs::file_size(dir / "d.npy"));
  const std::string cut = "head -c " + std::to_string(size - 5000) + " d.npy | ";
  const std::string more = "{ cat d.npy; printf xyz; } | ";
  for (const char* command :
       {"sample - --block-mb 1 -o o.jsonl", "probs - --block-mb 1 -o o.npy"}) {
    CliRun short_run = RunCli(dir, command, cut);
    EXPECT_EQ(short_run.code, 2) << command;
    EXPECT_TRUE(Contains(short_run.err,
                         "<stdin>: header field 'shape' = (40, 32000) of f32 needs "
                         "5120000 bytes of data but the file holds 5115000: "
                         "truncated file"))
        << short_run.err;
    CliRun long_run = RunCli(dir, command, more);
    EXPECT_EQ(long_run.code, 2) << command;
    EXPECT_TRUE(Contains(long_run.err, "holds 5120003: the header does not describe the data"))
        << long_run.err;
    EXPECT_FALSE(fs::exists(dir / "o.jsonl"));
    EXPECT_FALSE(fs::exists(dir / "o.npy"));
  }
  // A .safetensors pipe is recognised by its header and streamed too.
  WriteDump(dir / "d.safetensors", Logits(rows, vocab, 8), rows, vocab, DType::kFloat32);
  CliRun file = RunCli(dir, "sample d.safetensors --seed 4 --block-mb 1");
  ASSERT_EQ(file.code, 0) << file.err;
  CliRun pipe = RunCli(dir, "sample - --seed 4 --block-mb 1", "cat d.safetensors | ");
  ASSERT_EQ(pipe.code, 0) << pipe.err;
  EXPECT_EQ(pipe.out, file.out);
  const int64_t st_size = static_cast<int64_t>(fs::file_size(dir / "d.safetensors"));
  CliRun st_short = RunCli(dir, "sample - --block-mb 1 -o o.jsonl",
                           "head -c " + std::to_string(st_size - 5000) + " d.safetensors | ");
  EXPECT_EQ(st_short.code, 2);
  EXPECT_TRUE(Contains(st_short.err,
                       "<stdin>: tensor 'logits': field 'data_offsets' = [0,5120000] reaches "
                       "past the end of the data (5115000 bytes)"))
      << st_short.err;
  EXPECT_FALSE(fs::exists(dir / "o.jsonl"));
  // A raw pipe without its dtype is refused after the read-ahead (it was
  // read whole first: without end, here)
  CliRun raw = RunCli(dir, "inspect - --input-format raw -q", "cat /dev/zero | timeout 60 ");
  EXPECT_EQ(raw.code, 2);
  EXPECT_TRUE(Contains(raw.err, "<stdin>: a raw dump needs its dtype")) << raw.err;
  // A pipe that never ends is refused soon after the last row (it was read
  // to its end to count what followed).
  CliRun endless =
      RunCli(dir, "sample - --block-mb 1 -q", "{ cat d.npy; cat /dev/zero; } | timeout 60 ");
  EXPECT_EQ(endless.code, 2);
  EXPECT_TRUE(Contains(endless.err, "needs 5120000 bytes of data but the input holds at least"))
      << endless.err;
}

// Standard output that cannot be written (a full disk) fails every command
// with status 2 and a message, not status 0 with the text lost.
TEST(Cli, AFullStandardOutputFailsTheRun) {
  if (!fs::exists("/dev/full")) GTEST_SKIP() << "no /dev/full";
  const fs::path dir = TestDir();
  const int64_t rows = 3, vocab = 300;
  WriteDump(dir / "d.npy", Logits(rows, vocab, 7), rows, vocab, DType::kFloat32);
  for (const std::string args :
       {"sample d.npy --seed 1", "inspect d.npy", "inspect d.npy --json",
        "bench --vocab 100 --batch 1 --threads 1 --config greedy --repeat 1 -q --no-reference"}) {
    const fs::path err = dir / "stderr.txt";
    const std::string command = "cd " + Quote(dir) + " && " + Quote(NUCLEUS_CLI_PATH) + " " + args +
                                " > /dev/full 2> " + Quote(err);
    const int status = std::system(command.c_str());
    ASSERT_TRUE(WIFEXITED(status)) << args;
    EXPECT_EQ(WEXITSTATUS(status), 2) << args;
    EXPECT_TRUE(Contains(ReadFile(err), "standard output: cannot write: No space left on device"))
        << args;
  }
}

TEST(Cli, RowErrorsFailOnlyTheirRow) {
  const fs::path dir = TestDir();
  // 800 KB rows: with --block-mb 1 every block holds one row.
  const int64_t rows = 4, vocab = 200000;
  std::vector<float> logits = Logits(rows, vocab, 8);
  logits[1 * vocab + 17] = kNaN;
  for (int64_t t = 0; t < vocab; ++t) logits[2 * vocab + t] = -kInf;
  WriteDump(dir / "d.npy", logits, rows, vocab, DType::kFloat32);

  CliRun run = RunCli(dir, "sample d.npy --seed 1 -o out.jsonl --block-mb 1");
  EXPECT_EQ(run.code, 1);
  EXPECT_TRUE(Contains(run.err, "2 of 4 rows")) << run.err;
  const std::vector<Json> lines = JsonLines(ReadFile(dir / "out.jsonl"));
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0]["tokens"].size(), 1u);
  EXPECT_EQ(lines[1]["row"], 1);
  EXPECT_FALSE(lines[1].contains("tokens"));
  EXPECT_TRUE(Contains(lines[1]["error"].get<std::string>(), "token 17")) << lines[1];
  EXPECT_TRUE(Contains(lines[1]["error"].get<std::string>(), "NaN")) << lines[1];
  EXPECT_TRUE(Contains(lines[2]["error"].get<std::string>(), "no token left")) << lines[2];
  EXPECT_EQ(lines[3]["tokens"].size(), 1u);

  // The engine's row index is 0 in every one-row block; the messages must
  // still name the dump's rows.
  CliRun probs = RunCli(dir, "probs d.npy -o p.npy --block-mb 1");
  EXPECT_EQ(probs.code, 1);
  EXPECT_TRUE(Contains(probs.err, "row 1: logit of token 17")) << probs.err;
  EXPECT_TRUE(Contains(probs.err, "row 2: no token left")) << probs.err;
  Loaded out = Load(dir / "p.npy");
  const auto* got = static_cast<const float*>(out.view.data);
  double sum0 = 0.0;
  for (int64_t t = 0; t < vocab; ++t) {
    EXPECT_EQ(got[1 * vocab + t], 0.0f);
    EXPECT_EQ(got[2 * vocab + t], 0.0f);
    sum0 += got[t];
  }
  EXPECT_NEAR(sum0, 1.0, 1e-5);

  CliRun csv = RunCli(dir, "sample d.npy --seed 1 --format csv");
  EXPECT_EQ(csv.code, 1);
  const std::vector<std::string> csv_lines = Lines(csv.out);
  ASSERT_EQ(csv_lines.size(), 5u);
  EXPECT_EQ(csv_lines[2].rfind("1,,,,,,,,\"", 0), 0u) << csv_lines[2];
}

// Every way the input or the options can be wrong: exit status 2, one
// message naming the file, the field and the value, and no output file.
struct BadCase {
  const char* name;
  std::string args;  // after "sample"
  std::vector<std::string> message;
};

TEST(Cli, MalformedInputsFailCleanly) {
  const fs::path dir = TestDir();
  const std::vector<float> logits = Logits(2, 8, 9);
  const std::string data(reinterpret_cast<const char*>(logits.data()), logits.size() * 4);
  auto npy = [&](const std::string& file, const std::string& dict, const std::string& payload) {
    const int64_t shape[] = {2, 8};
    std::string header = detail::format_npy_header(DType::kFloat32, shape);
    const size_t open = header.find('{');
    const size_t close = header.rfind('}');
    std::string body = dict;
    body.resize(close + 1 - open, ' ');  // same length: the header stays aligned
    header.replace(open, close + 1 - open, body);
    WriteFile(dir / file, header + payload);
  };
  auto safetensors = [&](const std::string& file, const std::string& json) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
    WriteFile(dir / file, out + json + data);
  };
  npy("good.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }", data);
  npy("truncated.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }",
      data.substr(0, 40));
  npy("f8.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 8), }", data);
  npy("bigendian.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 8), }", data);
  npy("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 8), }", data);
  npy("lying.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 8), }", data);
  WriteFile(dir / "header.npy", std::string("\x93NUMPY\x01\x00\x76\x00{'descr'", 18));
  WriteFile(dir / "notnpy.npy", "hello world, this is text");
  WriteFile(dir / "dump.bin", data);
  WriteFile(dir / "model.pt", data);
  safetensors("json.safetensors", "{\"logits\": {\"dtype\": \"F32\", ");
  safetensors("i64.safetensors",
              R"({"logits":{"dtype":"I64","shape":[1,8],"data_offsets":[0,64]}})");
  safetensors("offsets.safetensors",
              R"({"logits":{"dtype":"F32","shape":[4,8],"data_offsets":[0,128]}})");
  safetensors("two.safetensors", R"({"a":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]},)"
                                 R"("b":{"dtype":"F32","shape":[1,8],"data_offsets":[32,64]}})");
  fs::create_directory(dir / "folder.npy");
  WriteFile(dir / "bad_value.jsonl", "{}\n{\"top_p\": 1.5}\n");
  WriteFile(dir / "bad_key.jsonl", "{\"top-p\": 0.5}\n{}\n");
  WriteFile(dir / "bad_json.jsonl", "{}\n{\"top_p\": \n");
  WriteFile(dir / "bad_number.jsonl", "{}\n{\"temperature\": 1e400}\n");
  WriteFile(dir / "bad_twice.jsonl", "{\"logit_bias\": {\"3\": 1, \"3\": 2}}\n{}\n");
  WriteFile(dir / "bad_deep.jsonl",
            "{}\n" + std::string(100000, '[') + std::string(100000, ']') + "\n");
  WriteFile(dir / "bad_count.jsonl", "{}\n");
  WriteFile(dir / "bad_token.jsonl", "{}\n{\"history\": [1, 8]}\n");

  const std::vector<BadCase> cases = {
      {"missing file", "missing.npy", {"missing.npy", "No such file"}},
      {"directory", "folder.npy", {"folder.npy", "directory"}},
      {"unknown format", "model.pt", {"model.pt", "unknown format", "'.pt'"}},
      {"raw without dtype", "dump.bin", {"dump.bin", "dtype and vocab"}},
      {"not npy", "notnpy.npy", {"notnpy.npy", "magic"}},
      {"truncated header", "header.npy", {"header.npy", "truncated"}},
      {"truncated data", "truncated.npy", {"truncated.npy", "shape", "(2, 8)", "truncated"}},
      {"unsupported dtype", "f8.npy", {"f8.npy", "descr", "'<f8'"}},
      {"byte order", "bigendian.npy", {"bigendian.npy", "descr", "'>f4'", "big-endian"}},
      {"fortran order", "fortran.npy", {"fortran.npy", "fortran_order", "True"}},
      {"lying shape", "lying.npy", {"lying.npy", "shape", "(1, 8)", "does not describe"}},
      {"vocab not dividing",
       "dump.bin --dtype f32 --vocab 5",
       {"dump.bin", "size = 64 bytes", "vocab 5"}},
      {"safetensors json", "json.safetensors", {"json.safetensors", "JSON"}},
      {"safetensors dtype", "i64.safetensors", {"i64.safetensors", "dtype", "'I64'"}},
      {"safetensors offsets",
       "offsets.safetensors",
       {"offsets.safetensors", "data_offsets", "[0,128]"}},
      {"safetensors tensors", "two.safetensors", {"two.safetensors", "2 tensors"}},
      {"safetensors name", "two.safetensors --tensor c", {"two.safetensors", "tensor = 'c'"}},
      {"dtype disagrees", "good.npy --dtype f16", {"good.npy", "dtype = f16", "f32"}},
      {"tensor of npy", "good.npy --tensor x", {"good.npy", "tensor = 'x'", "npy"}},
      {"vocab", "dump.bin --dtype f32 --vocab 0", {"--vocab", "value 0 is below 1"}},
      {"threads", "good.npy --threads -1", {"--threads", "value -1 is below 0"}},
      {"threads range",
       "good.npy --threads 99999999999999999999",
       {"--threads", "99999999999999999999 is out of range"}},
      {"top-k range",
       "good.npy --top-k 99999999999",
       {"option --top-k = 99999999999 is out of range"}},
      {"history item range",
       "good.npy --history 1,3000000000,2",
       {"option --history = 3000000000 is out of range"}},
      {"top-p not a number",
       "good.npy --top-p abc",
       {"--top-p: value 'abc' is not a decimal number"}},
      // (floats are decimal as --params' JSON numbers are: strtod reads
      // hexadecimal, '+' and leading spaces)
      {"temperature hex", "good.npy --temperature 0x10", {"'0x10' is not a decimal number"}},
      {"temperature plus", "good.npy --temperature=+1", {"'+1' is not a decimal number"}},
      // (an empty value is not 0)
      {"temperature empty", "good.npy --temperature ''", {"'' is not a decimal number"}},
      {"top-p empty", "good.npy --top-p=", {"--top-p", "'' is not a decimal number"}},
      {"bias hex", "good.npy --logit-bias 3:0x10", {"--logit-bias = '3:0x10' is not TOKEN:BIAS"}},
      {"bias space", "good.npy --logit-bias='3: 5'", {"--logit-bias = '3: 5' is not TOKEN:BIAS"}},
      {"seed", "good.npy --seed -1", {"--seed", "-1", "[0, 2^64)"}},
      {"top-p", "good.npy --top-p 1.5", {"--top-p", "1.5"}},
      {"temperature", "good.npy --temperature -1", {"--temperature", "-1"}},
      {"temperature past float",
       "good.npy --temperature 1e40",
       {"--temperature", "value 1e40 does not fit a 32-bit float"}},
      {"temperature below float",
       "good.npy --temperature 1e-46",
       {"--temperature", "value 1e-46 is too small for a 32-bit float"}},
      {"bias below float",
       "good.npy --logit-bias 3:-1e-50",
       {"--logit-bias = '3:-1e-50'", "bias -1e-50 is too small for a 32-bit float"}},
      {"bias past float",
       "good.npy --logit-bias 3:1e39",
       {"--logit-bias = '3:1e39'", "bias 1e39 does not fit a 32-bit float"}},
      {"min-keep", "good.npy --min-keep 0", {"--min-keep", "0"}},
      {"typical-p", "good.npy --typical-p 0", {"--typical-p", "0"}},
      {"history token", "good.npy --history 1,8", {"--history[1]", "8", "[0, 8)"}},
      // (the parser dropped empty items, and a value ending in a comma took
      // the next option as more of the list)
      {"history empty item", "good.npy --history 1,,2", {"--history = '1,,2'", "empty item"}},
      {"banned comma", "good.npy --banned , --seed 1", {"--banned = ','", "empty item"}},
      {"banned trailing comma", "good.npy --banned 2 3, --seed 1", {"--banned = '3,'"}},
      {"logit bias empty item", "good.npy --logit-bias=,1:2", {"--logit-bias = ',1:2'"}},
      {"logprobs", "good.npy --logprobs 9", {"--logprobs", "9"}},
      {"logit bias", "good.npy --logit-bias 3", {"--logit-bias", "'3'"}},
      {"preset", "good.npy --preset bogus", {"--preset", "bogus"}},
      {"unknown option", "good.npy --top-q 3", {"--top-q"}},
      {"not a number", "good.npy --top-k many", {"--top-k", "many"}},
      {"params value",
       "good.npy --params bad_value.jsonl",
       {"bad_value.jsonl line 2", "row 1", "top_p", "1.5"}},
      {"params key",
       "good.npy --params bad_key.jsonl",
       {"bad_key.jsonl line 1: row 0", "unknown field 'top-p'"}},
      {"params json",
       "good.npy --params bad_json.jsonl",
       {"bad_json.jsonl line 2", "not valid JSON at column 11", "unexpected end of input"}},
      {"params number",
       "good.npy --params bad_number.jsonl",
       {"bad_number.jsonl line 2", "number overflow", "1e400"}},
      {"params key twice",
       "good.npy --params bad_twice.jsonl",
       {"bad_twice.jsonl line 1", "key \"3\" appears twice"}},
      {"params deep",
       "good.npy --params bad_deep.jsonl",
       {"bad_deep.jsonl line 2", "nested more than 32 levels", "not a JSON object"}},
      {"params count",
       "good.npy --params bad_count.jsonl",
       {"bad_count.jsonl", "holds 1 parameter line", "2 rows"}},
      {"params token",
       "good.npy --params bad_token.jsonl",
       {"bad_token.jsonl line 2: row 1: history[1] = 8"}},
      {"params missing",
       "good.npy --params nothere.jsonl",
       {"nothere.jsonl", "cannot open", "No such file"}},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path out_dir = dir / "out";
    fs::remove_all(out_dir);
    fs::create_directory(out_dir);
    CliRun run = RunCli(dir, "sample " + c.args + " --output out/result.jsonl");
    EXPECT_EQ(run.code, 2) << run.err;
    for (const std::string& part : c.message) {
      EXPECT_TRUE(Contains(run.err, part)) << "stderr: " << run.err << "\nmissing: " << part;
    }
    // One line, as every error of the program (usage errors included).
    EXPECT_EQ(Lines(run.err).size(), 1u) << run.err;
    EXPECT_EQ(run.err.rfind("nucleus: ", 0), 0u) << run.err;
    EXPECT_EQ(run.out, "");
    EXPECT_TRUE(fs::is_empty(out_dir)) << "left " << fs::directory_iterator(out_dir)->path();

    CliRun probs = RunCli(dir, "probs " + c.args + " --output out/p.npy");
    EXPECT_EQ(probs.code, 2) << probs.err;
    EXPECT_TRUE(fs::is_empty(out_dir)) << "left " << fs::directory_iterator(out_dir)->path();
  }
}

TEST(Cli, AClosedStandardDescriptorIsNotTheOutputFile) {
  // With standard error closed (2>&-), the output file would take its
  // number, and a row error's message, printed mid-run, would be written
  // into the .npy. Closed descriptors are /dev/null instead.
  const fs::path dir = TestDir();
  std::vector<float> values = Logits(3, 10, 12);
  values[15] = kNaN;  // row 1: a row error, reported while the file is open
  WriteDump(dir / "d.npy", values, 3, 10, DType::kFloat32);
  CliRun run = RunCli(dir, "probs d.npy -o p.npy", "(exec 2>&- 1>&-; ", ")");
  EXPECT_EQ(run.code, 1) << run.err;
  EXPECT_TRUE(run.err.empty()) << run.err;  // (closed: nothing seen)
  ASSERT_TRUE(fs::exists(dir / "p.npy"));
  // The header and 3 rows of 10 floats: nothing else.
  Result<DumpReader> written = DumpReader::open((dir / "p.npy").string(), DumpOptions());
  ASSERT_TRUE(written.ok()) << written.status().message();
  EXPECT_EQ(fs::file_size(dir / "p.npy"),
            static_cast<uintmax_t>(written->info().data_offset + 3 * 10 * 4));
  // Standard input closed: "-" reads nothing, and says so.
  run = RunCli(dir, "sample - --vocab 10 --dtype f32 -q", "(exec 0<&-; ", ")");
  EXPECT_EQ(run.code, 2);
  EXPECT_TRUE(Contains(run.err, "empty")) << run.err;
}

TEST(Cli, ProbsNeedsAnOutputPath) {
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(1, 10, 10), 1, 10, DType::kFloat32);
  CliRun none = RunCli(dir, "probs d.npy");
  EXPECT_EQ(none.code, 2);
  EXPECT_TRUE(Contains(none.err, "--output")) << none.err;
  CliRun dash = RunCli(dir, "probs d.npy -o -");
  EXPECT_EQ(dash.code, 2);
  CliRun nowhere = RunCli(dir, "probs d.npy -o no/such/dir/p.npy");
  EXPECT_EQ(nowhere.code, 2);
  EXPECT_TRUE(Contains(nowhere.err, "p.npy")) << nowhere.err;
  // A .npy under another name would be read back as another format.
  for (const char* name : {"p.safetensors", "p.bin", "p"}) {
    CliRun other = RunCli(dir, std::string("probs d.npy -o ") + name);
    EXPECT_EQ(other.code, 2) << name;
    EXPECT_TRUE(Contains(other.err, "give a path ending in .npy")) << other.err;
    EXPECT_FALSE(fs::exists(dir / name)) << name;
  }
  CliRun upper = RunCli(dir, "probs d.npy -o P.NPY");
  EXPECT_EQ(upper.code, 0) << upper.err;
  // (a device or the program's own descriptor is written as it stands)
  for (const char* special : {"/dev/null", "/dev/stdout"}) {
    CliRun device = RunCli(dir, std::string("probs d.npy -q -o ") + special);
    EXPECT_EQ(device.code, 0) << special << ": " << device.err;
  }
  // An empty path is refused before any work, by every command that writes
  // to a path (sample would otherwise write to standard output, bench no
  // JSON at all).
  // "--output=" too, where the parser took the next argument for the value
  // (a file named "-q" written).
  for (const char* args :
       {"probs d.npy -o ''", "sample d.npy -q -o ''",
        "bench --vocab 100 --batch 1 --threads 1 -q --json ''", "sample d.npy --output= -q",
        "probs d.npy --output= --top-k 3", "bench --vocab 100 --batch 1 --threads 1 --json= -q",
        "sample d.npy --params= -q", "sample d.npy -q --params ''"}) {
    SCOPED_TRACE(args);
    CliRun empty = RunCli(dir, args);
    EXPECT_EQ(empty.code, 2);
    EXPECT_TRUE(Contains(empty.err, "is empty") || Contains(empty.err, "= ''")) << empty.err;
    EXPECT_TRUE(empty.out.empty()) << empty.out;
    EXPECT_FALSE(fs::exists(dir / "-q"));
  }
  // A flag given '=' is the flag (inspect's --json), and after "--" an
  // argument is a path whatever it ends with.
  CliRun flag = RunCli(dir, "inspect d.npy --json=");
  EXPECT_EQ(flag.code, 0) << flag.err;
  EXPECT_TRUE(Json::parse(flag.out).is_object()) << flag.out;
  fs::copy_file(dir / "d.npy", dir / "--x=");
  CliRun after = RunCli(dir, "inspect --json --input-format npy -- --x=");
  EXPECT_EQ(after.code, 0) << after.err;
  EXPECT_EQ(Json::parse(after.out)["path"], "--x=");
}

TEST(Cli, AMessageIsOneLineWhateverThePathHolds) {
  // A path or an option value with a newline (or another control
  // character) in it is shown escaped: the message stays one line.
  const fs::path dir = TestDir();
  for (const char* args :
       {"sample \"$(printf 'no\\nsuch.npy')\"", "sample \"$(printf 'd\\001.npy')\" --vocab 5"}) {
    SCOPED_TRACE(args);
    CliRun run = RunCli(dir, args);
    EXPECT_EQ(run.code, 2);
    EXPECT_EQ(Lines(run.err).size(), 1u) << run.err;
    EXPECT_TRUE(Contains(run.err, "no\\nsuch.npy") || Contains(run.err, "d\\x01.npy")) << run.err;
  }
}

TEST(Cli, AWrongVocabIsNamedBeforeTheOptionsItMakesLookWrong) {
  // The options are checked against a given --vocab before the dump is
  // opened (a raw pipe is copied whole); a file whose header contradicts
  // --vocab is then the error to name, not a history token past the wrong
  // vocab. From a pipe the option's message stays (the dump is not read).
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(2, 50, 11), 2, 50, DType::kFloat32);
  for (const char* command : {"sample d.npy -q", "probs d.npy -o p.npy"}) {
    SCOPED_TRACE(command);
    CliRun run = RunCli(dir, std::string(command) + " --vocab 10 --history 20");
    EXPECT_EQ(run.code, 2);
    EXPECT_TRUE(Contains(run.err, "vocab = 10 was given but the file's shape (2, 50) has vocab 50"))
        << run.err;
    EXPECT_FALSE(fs::exists(dir / "p.npy"));
  }
  CliRun piped = RunCli(dir, "sample - -q --vocab 10 --history 20", "cat d.npy | ");
  EXPECT_EQ(piped.code, 2);
  EXPECT_TRUE(Contains(piped.err, "--history[0] = 20 is outside [0, 10)")) << piped.err;
}

TEST(Cli, AnUnusableOutputOrParamsFileIsRefusedBeforeThePipeIsRead) {
  // A raw pipe is copied whole when the dump is opened: an output that
  // cannot be made, or a --params file that cannot be opened, is refused
  // first (here the pipe's 3 bytes would be the error otherwise: not a
  // whole row).
  const fs::path dir = TestDir();
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string> >{
           {"probs - --dtype f32 --vocab 4 -o no/such/dir/p.npy", "no/such/dir/p.npy"},
           {"probs - --dtype f32 --vocab 4 --params no.jsonl -o p.npy", "no.jsonl: cannot open"},
           {"sample - -q --dtype f32 --vocab 4 --params no.jsonl", "no.jsonl: cannot open"}}) {
    SCOPED_TRACE(args);
    CliRun run = RunCli(dir, args, "printf abc | ");
    EXPECT_EQ(run.code, 2);
    EXPECT_TRUE(Contains(run.err, expected)) << run.err;
    EXPECT_FALSE(fs::exists(dir / "p.npy"));
  }
}

TEST(Cli, OutputToTheProgramsOwnStandardOutputWritesThrough) {
  // `-o /dev/stdout` with standard output redirected to a log: the rows are
  // appended where the script's own lines go; the log is not replaced.
  const fs::path dir = TestDir();
  WriteDump(dir / "d.npy", Logits(3, 40, 12), 3, 40, DType::kFloat32);
  const std::string script = "exec > log.txt; echo start; " + Quote(NUCLEUS_CLI_PATH) +
                             " sample d.npy -q --seed 1 -o /dev/stdout; echo done";
  const std::string command = "cd " + Quote(dir) + " && sh -c " + Quote(script);
  ASSERT_EQ(std::system(command.c_str()), 0);
  const std::vector<std::string> lines = Lines(ReadFile(dir / "log.txt"));
  ASSERT_EQ(lines.size(), 5u) << ReadFile(dir / "log.txt");
  EXPECT_EQ(lines.front(), "start");
  EXPECT_EQ(lines.back(), "done");
  CliRun plain = RunCli(dir, "sample d.npy -q --seed 1");
  EXPECT_EQ(lines[1] + "\n" + lines[2] + "\n" + lines[3] + "\n", plain.out);
}

// A dump several times larger than the address-space limit goes through in
// blocks; the same run with a block larger than the limit fails, which shows
// that the limit is real. The dump is a sparse file of zeros: no disk space.
TEST(Cli, LargeDumpRunsInBoundedMemory) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve terabytes of address space; ulimit -v would stop them";
#endif
  const fs::path dir = TestDir();
  const int64_t vocab = 32000, rows = 4096;  // 500 MiB of float32
  const int64_t shape[] = {rows, vocab};
  WriteFile(dir / "big.npy", detail::format_npy_header(DType::kFloat32, shape));
  fs::resize_file(dir / "big.npy", fs::file_size(dir / "big.npy") + rows * vocab * 4);
  const std::string limit = "ulimit -v 262144 && ";  // 256 MiB of address space

  CliRun run = RunCli(dir, "sample big.npy --temperature 0 --block-mb 16 -q -o out.jsonl", limit);
  ASSERT_EQ(run.code, 0) << run.err;
  const std::vector<std::string> lines = Lines(ReadFile(dir / "out.jsonl"));
  ASSERT_EQ(lines.size(), static_cast<size_t>(rows));
  EXPECT_EQ(Json::parse(lines.back())["tokens"][0], 0);  // all ties: the lowest id

  // A pipe is streamed the same way (and was read whole: out of memory).
  CliRun piped = RunCli(dir, "sample - --temperature 0 --block-mb 16 -q -o out3.jsonl",
                        limit + "cat big.npy | ");
  ASSERT_EQ(piped.code, 0) << piped.err;
  EXPECT_EQ(ReadFile(dir / "out3.jsonl"), ReadFile(dir / "out.jsonl"));
  // So is a .safetensors pipe.
  WriteFile(dir / "big.safetensors",
            detail::format_safetensors_header("logits", DType::kFloat32, shape));
  fs::resize_file(dir / "big.safetensors",
                  fs::file_size(dir / "big.safetensors") + rows * vocab * 4);
  CliRun piped_st = RunCli(dir, "sample - --temperature 0 --block-mb 16 -q -o out4.jsonl",
                           limit + "cat big.safetensors | ");
  fs::remove(dir / "big.safetensors");
  ASSERT_EQ(piped_st.code, 0) << piped_st.err;
  EXPECT_EQ(ReadFile(dir / "out4.jsonl"), ReadFile(dir / "out.jsonl"));
  // A raw pipe is copied to a temporary file and read from there (it was
  // held whole: past the limit, a message).
  const int64_t data = rows * vocab * 4;
  CliRun raw = RunCli(dir,
                      "sample - --input-format raw --dtype f32 --vocab 32000 --temperature 0 "
                      "--block-mb 16 -q -o out5.jsonl",
                      limit + "tail -c " + std::to_string(data) + " big.npy | ");
  ASSERT_EQ(raw.code, 0) << raw.err;
  EXPECT_EQ(ReadFile(dir / "out5.jsonl"), ReadFile(dir / "out.jsonl"));
  // One that the temporary file cannot hold (here: a 1 MiB limit on the
  // files the program writes) is held in memory instead, as before; where
  // memory cannot hold it either, the message says why the file did not.
  const std::string fsize = "ulimit -f 2048; export TMPDIR=" + dir.string() + "; ";
  const std::string raw_pipe = "tail -c " + std::to_string(data) + " big.npy | ";
  CliRun small_disk = RunCli(
      dir, "sample - --dtype f32 --vocab 32000 --temperature 0 -q -o out6.jsonl", fsize + raw_pipe);
  ASSERT_EQ(small_disk.code, 0) << small_disk.err;
  EXPECT_EQ(ReadFile(dir / "out6.jsonl"), ReadFile(dir / "out.jsonl"));
  CliRun full = RunCli(dir, "inspect - --dtype f32 --vocab 32000 -q", limit + fsize + raw_pipe);
  EXPECT_EQ(full.code, 2);
  EXPECT_TRUE(Contains(full.err, "<stdin>: cannot hold the input in memory past "));
  EXPECT_TRUE(Contains(full.err, "(a temporary file in " + dir.string() + ": File too large)"))
      << full.err;
  // Options that need no dump are refused before a raw pipe is copied (an
  // endless one, here: it was copied until the disk, then memory, ran out).
  for (const char* command : {"sample", "probs -o p.npy"}) {
    CliRun bad_option =
        RunCli(dir, std::string(command) + " - --dtype f32 --vocab 32000 --banned 32000 -q",
               limit + fsize + "cat /dev/zero | timeout 60 ");
    EXPECT_EQ(bad_option.code, 2) << command;
    EXPECT_TRUE(Contains(bad_option.err, "option --banned[0] = 32000 is outside [0, 32000)"))
        << bad_option.err;
  }

  CliRun whole =
      RunCli(dir, "sample big.npy --temperature 0 --block-mb 1024 -q -o out2.jsonl", limit);
  EXPECT_EQ(whole.code, 2);
  EXPECT_TRUE(Contains(whole.err, "big.npy")) << whole.err;
  EXPECT_FALSE(fs::exists(dir / "out2.jsonl"));
  fs::remove(dir / "big.npy");
}

// Many short rows: a block of them is one read, but their results and text
// are not small (here ~3 KB a row against 16 bytes of logits); sample takes
// them a run of rows at a time and inspect --json prints its document as it
// goes, so both stay within the address-space limit that a whole block's
// results overran (sample: out of memory; inspect --json: 2.9 GB for 1M rows).
TEST(Cli, ManyShortRowsRunInBoundedMemory) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve terabytes of address space; ulimit -v would stop them";
#endif
  const fs::path dir = TestDir();
  const int64_t vocab = 4, rows = 100000;
  const int64_t shape[] = {rows, vocab};
  WriteFile(dir / "short.npy", detail::format_npy_header(DType::kFloat32, shape));
  fs::resize_file(dir / "short.npy", fs::file_size(dir / "short.npy") + rows * vocab * 4);
  const std::string limit = "ulimit -v 262144 && ";  // 256 MiB of address space

  CliRun run =
      RunCli(dir, "sample short.npy --temperature 0 -n 8 --logprobs 4 -q -o out.jsonl", limit);
  ASSERT_EQ(run.code, 0) << run.err;
  const std::vector<std::string> lines = Lines(ReadFile(dir / "out.jsonl"));
  ASSERT_EQ(lines.size(), static_cast<size_t>(rows));
  const Json last = Json::parse(lines.back());
  EXPECT_EQ(last["row"], rows - 1);
  EXPECT_EQ(last["tokens"].size(), 8u);

  run = RunCli(dir, "inspect short.npy --json -q", limit);
  ASSERT_EQ(run.code, 0) << run.err;
  const Json doc = Json::parse(run.out);
  EXPECT_EQ(doc["rows"], rows);
  ASSERT_EQ(doc["rows_summary"].size(), static_cast<size_t>(rows));
  EXPECT_EQ(doc["rows_summary"].back()["row"], rows - 1);

  // probs and inspect keep a request, a status and a summary per row: with
  // --block-mb 16 and one thread they fit in 64 MiB of address space (a
  // whole block's summaries did not: inspect ran out of memory).
  const std::string tight = "ulimit -v 65536 && ";
  run = RunCli(dir, "probs short.npy --block-mb 16 --threads 1 -q -o p.npy", tight);
  ASSERT_EQ(run.code, 0) << run.err;
  run = RunCli(dir, "inspect short.npy --block-mb 16 --threads 1 -q", tight);
  ASSERT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(Lines(run.out).size(), static_cast<size_t>(rows) + 5) << run.out.substr(0, 400);
}

#endif  // NUCLEUS_CLI_PATH

}  // namespace
}  // namespace nucleus
