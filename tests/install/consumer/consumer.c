/* Samples a fixed batch through the C ABI and prints the tokens. Built against
 * an installed nucleus (find_package or pkg-config) or the source tree
 * (add_subdirectory); every build must print the same line, which is also
 * what consumer.cc prints through the C++ API. */
#include <stdint.h>
#include <stdio.h>

#include "nucleus/nucleus.h"

enum { kRows = 2, kVocab = 16, kSamples = 4 };

int main(void) {
  float logits[kRows * kVocab];
  int32_t tokens[kRows * kSamples];
  nucleus_engine* engine = NULL;
  nucleus_engine_options options = nucleus_engine_options_default();
  nucleus_logits_view view;
  nucleus_row_request request = nucleus_row_request_default();
  nucleus_sample_output out = nucleus_sample_output_default();
  int i;

  for (i = 0; i < kRows * kVocab; ++i) logits[i] = (float)((i * 7) % 11) * 0.25f;
  options.max_threads = 1;
  if (nucleus_engine_create(&options, &engine) != NUCLEUS_OK) {
    fprintf(stderr, "engine: %s\n", nucleus_last_error());
    return 1;
  }
  view.data = logits;
  view.rows = kRows;
  view.vocab = kVocab;
  view.row_stride = kVocab;
  view.dtype = NUCLEUS_DTYPE_F32;
  request.seed = 42;
  request.has_seed = 1;
  request.params.temperature = 0.8f;
  request.params.num_samples = kSamples;
  out.samples_per_row = kSamples;
  out.tokens = tokens;
  if (nucleus_sample(engine, &view, &request, 1, &out) != NUCLEUS_OK) {
    fprintf(stderr, "sample: %s\n", nucleus_last_error());
    nucleus_engine_destroy(engine);
    return 1;
  }
  printf("nucleus %s tokens:", nucleus_version());
  for (i = 0; i < kRows * kSamples; ++i) printf(" %d", (int)tokens[i]);
  printf("\n");
  nucleus_engine_destroy(engine);
  return 0;
}
