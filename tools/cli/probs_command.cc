// nucleus probs: the final distribution of every row, as a float32 .npy.
#include <algorithm>
#include <vector>

#include "engine/io/dump_extension.h"
#include "engine/io/file_io.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "tools/cli/commands.h"
#include "tools/cli/progress.h"
#include "tools/cli/row_requests.h"

namespace nucleus::cli {
namespace {

constexpr const char* kProbsFooter =
    R"(The output is a float32 .npy of shape (rows, vocab): each row's final
distribution after masks, penalties, temperature and filters (what sample
draws from), zero for removed tokens. A greedy row (--temperature 0) gives the
softmax of its processed logits. A row that cannot be processed is left zero
and reported on stderr (exit status 1). The file appears only when the run
finishes; on failure (exit status 2) nothing is left behind.

Examples:
  nucleus probs data/demo.npy --top-p 0.9 --temperature 0.8 -o probs.npy
  nucleus probs dump.safetensors --preset llama.cpp --top-k 40 --min-p 0.05 -o p.npy)";

}  // namespace

void add_probs_command(CLI::App* app, ProbsCommand* c) {
  c->app = app->add_subcommand("probs", "Write each row's final distribution to a .npy file");
  c->app->footer(kProbsFooter);
  add_input_options(c->app, &c->input);
  add_sampling_options(c->app, &c->sampling, SamplingFlags{.draws = false});
  c->app->add_option("--output,-o", c->output, "The .npy file to write")->required();
}

int run_probs(const ProbsCommand& c) {
  if (c.output == "-" || c.output.empty()) {
    print_error("option --output = '" + c.output + "': probs writes a .npy file; give its path");
    return kExitFailure;
  }
  // (a .npy file under another name would be read back as that format: a
  // raw .bin with its header taken for logits, a .safetensors refused;
  // devices, FIFOs and the program's own descriptors are written as they
  // stand, whatever their names)
  const bool in_place = detail::written_in_place(c.output);
  if (!in_place && detail::extension_of(c.output) != ".npy") {
    print_error("option --output = '" + c.output +
                "': probs writes a .npy file; give a path ending in .npy");
    return kExitFailure;
  }
  // (the options against a given --vocab, and the output, before the dump:
  // opening a raw pipe copies it whole. The writer needs the dump's shape, so
  // the output is made once here and dropped; a device or FIFO, written in
  // place, is opened once only, by the writer)
  if (Status s = RequestTable::check_before_dump(c.sampling, c.input.vocab); !s.ok()) {
    print_error(dump_or_option_error(c.input, std::move(s)).message());
    return kExitFailure;
  }
  if (!in_place) {
    if (Result<detail::AtomicFile> trial = detail::AtomicFile::create(c.output); !trial.ok()) {
      print_error(trial.status().message());
      return kExitFailure;
    }
  }
  // Each block needs a float32 row of output per row of input.
  Result<DumpReader> reader = open_input(c.input, 4);
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
  Result<NpyWriter> writer = NpyWriter::create(c.output, info.rows, info.vocab);
  if (!writer.ok()) {
    print_error(writer.status().message());
    return kExitFailure;
  }
  Engine engine(EngineOptions{.max_threads = c.sampling.threads, .seed = std::nullopt});
  // (a .npy is never meant for a terminal)
  Progress progress(info.rows, c.sampling.quiet, /*results_on_terminal=*/false);
  Result<std::vector<float>> probs = block_output(*reader);
  if (!probs.ok()) {
    print_error(probs.status().message());
    return kExitFailure;
  }
  std::vector<Status> row_status;
  int64_t failed = 0;
  // (a run of rows: a request and a status each)
  const Status read = for_each_run(
      *reader, c.input, progress, [](int64_t) { return int64_t{512}; },
      [&](const LogitsView& view, int64_t first) {
        row_status.assign(static_cast<size_t>(view.rows), Status());
        Status s = engine.probs(view, table->requests(first, view.rows), probs->data(), info.vocab,
                                row_status);
        if (!s.ok()) return s;
        for (int64_t i = 0; i < view.rows; ++i) {
          const Status& rs = row_status[static_cast<size_t>(i)];
          if (rs.ok()) continue;
          ++failed;
          // The engine promises zeros here; the buffer is reused across
          // blocks, so make sure no earlier block's row shows through.
          std::fill_n(probs->begin() + i * info.vocab, info.vocab, 0.0f);
          progress.finish();
          print_error(row_error_message(rs, i, first));
        }
        return writer->write_rows(probs->data(), view.rows);
      });
  progress.finish();  // (the bar's line erased first: a message is one line)
  if (!read.ok()) {
    print_error(read.message());
    return kExitFailure;
  }
  if (Status s = writer->commit(); !s.ok()) {
    print_error(s.message());
    return kExitFailure;
  }
  return failed > 0 ? kExitRowErrors : kExitOk;
}

}  // namespace nucleus::cli
