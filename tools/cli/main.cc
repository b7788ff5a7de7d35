// nucleus: sample tokens from logit dumps on the command line, with the same
// engine (and the same semantics, SPEC.md) as the library.
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <csignal>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "nucleus/engine.h"
#include "tools/cli/cli_options.h"
#include "tools/cli/commands.h"

namespace {

constexpr const char* kFooter =
    R"(Dumps: NumPy .npy (float32/float16), .safetensors (F32/F16/BF16) and raw
little-endian rows (--dtype, --vocab); "-" reads standard input. The last axis
is the vocabulary; leading axes are flattened into rows.

Examples:
  nucleus sample data/demo.npy --top-p 0.9 --temperature 0.8 --seed 42 --logprobs 3
  nucleus probs data/demo.npy --min-p 0.05 --output probs.npy
  nucleus inspect data/demo.npy
  nucleus bench --vocab 128256 --batch 1,64 --threads 1,all

Run "nucleus COMMAND --help" for a command's options. Documentation: docs/cli.md)";

}  // namespace

int main(int argc, char** argv) {
  using namespace nucleus::cli;
  // A standard descriptor the caller closed (`2>&-`) is /dev/null: else the
  // next file opened would take its number, and messages meant for standard
  // error (or rows for standard output) would land in the output file.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1) {
      const int null = ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
      if (null != fd && null >= 0) ::close(null);
    }
  }
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, which the
  // program reports (a raw pipe's temporary copy then moves to memory),
  // rather than killing it without a word.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app("nucleus: sample tokens from LLM logit dumps", "nucleus");
  app.set_version_flag("--version", std::string("nucleus ") + nucleus::version());
  app.require_subcommand(1);
  app.footer(kFooter);
  app.get_formatter()->column_width(36);

  SampleCommand sample;
  ProbsCommand probs;
  InspectCommand inspect;
  BenchCommand bench;
  add_sample_command(&app, &sample);
  add_probs_command(&app, &probs);
  add_inspect_command(&app, &inspect);
  add_bench_command(&app, &bench);
  decimal_integers(&app);

  std::vector<const char*> args(argv, argv + argc);
  // (an option of the command named, if any, that takes a value)
  const auto takes_value = [&](const std::string& name) {
    for (const CLI::App* command : {sample.app, probs.app, inspect.app, bench.app}) {
      if (args.size() < 2 || command->get_name() != args[1]) continue;
      const CLI::Option* option = command->get_option_no_throw(name);
      return option != nullptr && option->get_items_expected_min() > 0;
    }
    return false;
  };
  if (std::optional<std::string> error = normalize_list_arguments(&args, takes_value)) {
    print_error(*error);
    return kExitFailure;
  }
  try {
    app.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::ParseError& e) {
    // --help and --version exit 0; every usage error is exit status 2, its
    // message one line, as the program's other errors.
    if (e.get_exit_code() == 0) return app.exit(e) == 0 ? kExitOk : kExitFailure;
    // (a mistyped command is otherwise reported as a missing one)
    if (args.size() > 1 && args[1][0] != '-' && app.get_subcommands().empty()) {
      print_error(std::string("unknown command '") + args[1] +
                  "' (expected sample, probs, inspect or bench; see --help)");
      return kExitFailure;
    }
    const std::vector<CLI::App*> parsed = app.get_subcommands();
    print_error(parse_error_message(parsed.empty() ? app : *parsed.front(), e) + " (see --help)");
    return kExitFailure;
  }
  try {
    if (sample.app->parsed()) return run_sample(sample);
    if (probs.app->parsed()) return run_probs(probs);
    if (inspect.app->parsed()) return run_inspect(inspect);
    if (bench.app->parsed()) return run_bench(bench);
  } catch (const std::exception& e) {
    // The library returns errors as values; this is for exhausted memory
    // and the like, which should still end in a message, not an abort.
    print_error(std::string("internal error: ") + e.what());
  }
  return kExitFailure;
}
