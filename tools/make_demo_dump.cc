// nucleus_make_demo: writes logit dumps that look like a language model's, for
// demos, tests and benchmarks, without needing a model or NumPy. The logits
// come from tools/lm_logits.h.
//
// Example:
//   nucleus_make_demo --rows 8 --vocab 32000 --dtype f16 --output data/demo.npy
#include <CLI/CLI.hpp>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/io/dump_writer.h"
#include "nucleus/dump.h"
#include "tools/lm_logits.h"

int main(int argc, char** argv) {
  CLI::App app("Write language-model-like logit dumps (.npy, .safetensors or raw)",
               "nucleus_make_demo");
  int64_t rows = 8;
  int64_t vocab = 32000;
  std::string dtype_text = "f16";
  uint64_t seed = 1;
  std::string kind = "mixed";
  std::string output;
  std::string tensor = "logits";
  app.add_option("--rows", rows, "Rows")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--vocab", vocab, "Vocabulary size (32000: Llama 2, 128256: Llama 3)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--dtype", dtype_text, "f32, f16 or bf16 (bf16: .safetensors or raw only)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}))
      ->capture_default_str();
  app.add_option("--seed", seed, "Seed; the same seed gives the same dump")->capture_default_str();
  app.add_option("--kind", kind, "Row kinds: mixed (cycles), peaked, medium or flat")
      ->check(CLI::IsMember({"mixed", "peaked", "medium", "flat"}))
      ->capture_default_str();
  app.add_option("--tensor", tensor, "Tensor name in a .safetensors file")->capture_default_str();
  app.add_option("--output,-o", output, "File to write; the extension picks the format")
      ->required();
  app.footer(
      "Examples:\n"
      "  nucleus_make_demo --rows 8 --vocab 32000 --dtype f16 -o data/demo.npy\n"
      "  nucleus_make_demo --rows 64 --vocab 128256 --dtype bf16 -o llama3.safetensors\n"
      "  nucleus_make_demo --rows 4 --kind flat --dtype f32 -o flat.bin");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  if (vocab > INT32_MAX) {
    std::fprintf(stderr, "nucleus_make_demo: option --vocab = %lld does not fit token ids\n",
                 static_cast<long long>(vocab));
    return 2;
  }

  const std::vector<float> logits =
      nucleus::tools::make_lm_logits(rows, vocab, *nucleus::tools::parse_lm_row_kind(kind), seed);
  nucleus::detail::DumpWriteSpec spec;
  spec.format = nucleus::DumpFormat::kAuto;
  spec.dtype = *nucleus::parse_dtype(dtype_text);
  spec.tensor = tensor;
  if (nucleus::Status s = nucleus::detail::write_dump(output, logits.data(), rows, vocab, spec);
      !s.ok()) {
    std::fprintf(stderr, "nucleus_make_demo: %s\n", s.message().c_str());
    return 2;
  }
  return 0;
}
