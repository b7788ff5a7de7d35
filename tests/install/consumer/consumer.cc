// The C++ twin of consumer.c: the same batch through nucleus::Engine, printed
// the same way, so the two outputs must be identical.
#include <cstdio>
#include <vector>

#include "nucleus/engine.h"

int main() {
  constexpr int kRows = 2, kVocab = 16, kSamples = 4;
  std::vector<float> logits(kRows * kVocab);
  for (int i = 0; i < kRows * kVocab; ++i) logits[i] = static_cast<float>((i * 7) % 11) * 0.25f;
  nucleus::Engine engine({.max_threads = 1});
  // (designated initialisers, as a consumer may write them: no member
  // left out draws a warning)
  const nucleus::RowRequest request{.params = {.temperature = 0.8f, .num_samples = kSamples},
                                    .seed = 42};
  std::vector<nucleus::RowResult> results(kRows);
  const nucleus::LogitsView view{logits.data(), kRows, kVocab, kVocab, nucleus::DType::kFloat32};
  if (nucleus::Status s = engine.sample(view, {&request, 1}, results); !s.ok()) {
    std::fprintf(stderr, "sample: %s\n", s.to_string().c_str());
    return 1;
  }
  std::printf("nucleus %s tokens:", nucleus::version());
  for (const nucleus::RowResult& r : results) {
    if (!r.status.ok()) {
      std::fprintf(stderr, "%s\n", r.status.to_string().c_str());
      return 1;
    }
    for (int token : r.tokens) std::printf(" %d", token);
  }
  std::printf("\n");
  return 0;
}
