/* Samples a small generated batch through the C ABI and prints the tokens.
 *
 * A C99 program, as an inference server's host code written in C (or called
 * through a C foreign-function interface) would use the library: one engine,
 * caller-owned buffers, a status code from every call.
 *
 * Usage: nucleus_example_c            (prints one line per row; exit 1 on error)
 */
#include <stdint.h>
#include <stdio.h>

#include "nucleus/nucleus.h"

enum { kRows = 4, kVocab = 1000, kSamples = 2, kTop = 3, kMessageSize = 256 };

/* A deterministic, LM-like row: a few likely tokens over a long tail. */
static void fill_logits(float* logits) {
  uint32_t state = 12345u;
  int i;
  for (i = 0; i < kRows * kVocab; ++i) {
    state = state * 1664525u + 1013904223u; /* a 32-bit LCG is enough here */
    logits[i] = (float)(state >> 8) / 16777216.0f * 4.0f - 2.0f;
    if (i % kVocab < 5) logits[i] += 6.0f;
  }
}

static int check(nucleus_status status, const char* what) {
  if (status == NUCLEUS_OK) return 1;
  fprintf(stderr, "%s: %s: %s\n", what, nucleus_status_name(status), nucleus_last_error());
  return 0;
}

int main(void) {
  static float logits[kRows * kVocab];
  nucleus_engine* engine = NULL;
  nucleus_engine_options options = nucleus_engine_options_default();
  nucleus_logits_view view;
  nucleus_row_request requests[kRows];
  nucleus_sample_output out = nucleus_sample_output_default();
  int32_t tokens[kRows * kSamples];
  float logprobs[kRows * kSamples];
  int32_t top_tokens[kRows * kTop];
  float top_logprobs[kRows * kTop];
  int32_t top_counts[kRows];
  int64_t support[kRows];
  int32_t row_status[kRows];
  char messages[kRows * kMessageSize];
  nucleus_status status;
  int r, j;

  fill_logits(logits);
  options.max_threads = 2;
  if (!check(nucleus_engine_create(&options, &engine), "engine")) return 1;

  view.data = logits;
  view.rows = kRows;
  view.vocab = kVocab;
  view.row_stride = kVocab;
  view.dtype = NUCLEUS_DTYPE_F32;

  /* One request per row, each seeded so that the output is reproducible. */
  for (r = 0; r < kRows; ++r) {
    requests[r] = nucleus_row_request_default();
    requests[r].seed = 1000u + (uint64_t)r;
    requests[r].has_seed = 1;
    requests[r].params.num_samples = kSamples;
    requests[r].params.top_logprobs = kTop;
  }
  requests[0].params.temperature = 0.0f; /* greedy */
  requests[1].params.temperature = 0.7f;
  requests[1].params.top_p = 0.9f;
  requests[2].params.top_k = 3;
  requests[3].params.min_p = 0.05f;
  requests[3].params.preset = NUCLEUS_PRESET_VLLM;

  out.samples_per_row = kSamples;
  out.tokens = tokens;
  out.logprobs = logprobs;
  out.top_per_row = kTop;
  out.top_tokens = top_tokens;
  out.top_logprobs = top_logprobs;
  out.top_counts = top_counts;
  out.support = support;
  out.row_status = row_status;
  out.row_messages = messages;
  out.row_message_size = kMessageSize;

  status = nucleus_sample(engine, &view, requests, kRows, &out);
  /* NUCLEUS_ROW_ERROR would still leave the other rows sampled; this batch
   * has no bad row, so anything but OK is a failure here. */
  if (!check(status, "sample")) {
    nucleus_engine_destroy(engine);
    return 1;
  }

  printf("nucleus %s\n", nucleus_version());
  for (r = 0; r < kRows; ++r) {
    printf("row %d: tokens", r);
    for (j = 0; j < kSamples; ++j) {
      printf(" %d (%.3f)", (int)tokens[r * kSamples + j], logprobs[r * kSamples + j]);
    }
    printf("; support %lld; top", (long long)support[r]);
    for (j = 0; j < top_counts[r]; ++j) {
      printf(" %d:%.3f", (int)top_tokens[r * kTop + j], top_logprobs[r * kTop + j]);
    }
    printf("\n");
  }

  nucleus_engine_destroy(engine);
  return 0;
}
