// The nucleus commands: each registers its options on the CLI11 app and runs
// once parsing succeeded, returning the process exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "nucleus/status.h"
#include "tools/cli/cli_options.h"

namespace nucleus::cli {

struct SampleCommand {
  CLI::App* app = nullptr;
  InputOptions input;
  SamplingOptions sampling;
  std::string output;
  std::string format = "jsonl";
};
void add_sample_command(CLI::App* app, SampleCommand* command);
int run_sample(const SampleCommand& command);

struct ProbsCommand {
  CLI::App* app = nullptr;
  InputOptions input;
  SamplingOptions sampling;
  std::string output;
};
void add_probs_command(CLI::App* app, ProbsCommand* command);
int run_probs(const ProbsCommand& command);

struct InspectCommand {
  CLI::App* app = nullptr;
  InputOptions input;
  int top = 5;
  bool json = false;
  int threads = 0;
  bool quiet = false;
};
void add_inspect_command(CLI::App* app, InspectCommand* command);
int run_inspect(const InspectCommand& command);

struct BenchCommand {
  CLI::App* app = nullptr;
  std::string vocab = "32000,128256";
  std::string batch = "1,8";
  std::string config = "all";
  std::string threads = "1,all";
  std::string dtype = "f32";
  std::string isa = "auto";
  std::string read_ahead = "auto";
  std::string rows = "peaked-flat";
  std::string input;   // a dump whose rows are timed instead
  std::string tensor;  // its .safetensors tensor
  int repeat = 30;
  int runs = 1;
  int distinct = 1;
  bool no_reference = false;
  bool logprobs = false;
  std::string json;
  bool quiet = false;
};
void add_bench_command(CLI::App* app, BenchCommand* command);
int run_bench(const BenchCommand& command);

}  // namespace nucleus::cli
