/* nucleus — the C ABI: the engine's batch calls for C and for any language
 * with a C foreign-function interface (an inference server's host code, ctypes,
 * cgo, Rust's bindgen).
 *
 * C99, usable from C and C++. Every call below forwards to the C++ engine
 * (include/nucleus/engine.h), so the sampling semantics are exactly those of
 * SPEC.md and docs/semantics.md; docs/c_api.md describes this layer.
 *
 * Conventions:
 *   - Every call that can fail returns a nucleus_status. On failure,
 *     nucleus_last_error() gives the message (naming the row, the field and
 *     the bad value) on the calling thread, until that thread's next call.
 *   - Handles (nucleus_engine, nucleus_dump) are opaque; create and destroy
 *     them with the calls below.
 *   - Every buffer is owned by the caller: nothing returned needs freeing
 *     except the handles.
 *   - No C++ exception ever leaves a call; an exhausted resource or a bug is
 *     NUCLEUS_INTERNAL.
 *   - Enumerated fields of structs are int32_t (not the enum type) so that the
 *     struct layout does not depend on how a compiler sizes an enum; their
 *     values are those of the enums below, and unknown values are call errors.
 *
 * Example:
 *   nucleus_engine* engine = NULL;
 *   nucleus_engine_options options = nucleus_engine_options_default();
 *   options.max_threads = 4;
 *   if (nucleus_engine_create(&options, &engine) != NUCLEUS_OK) {
 *     fprintf(stderr, "%s\n", nucleus_last_error());
 *   }
 *   nucleus_logits_view view = {logits, rows, vocab, vocab, NUCLEUS_DTYPE_F32};
 *   nucleus_row_request request = nucleus_row_request_default();
 *   request.params.temperature = 0.7f;
 *   request.params.top_p = 0.9f;
 *   request.seed = 1234;
 *   request.has_seed = 1;
 *   nucleus_sample_output out = nucleus_sample_output_default();
 *   out.samples_per_row = 1;
 *   out.tokens = tokens;          (rows entries)
 *   out.row_status = row_status;  (rows entries)
 *   nucleus_status s = nucleus_sample(engine, &view, &request, 1, &out);
 *   (s == NUCLEUS_ROW_ERROR: some rows failed, see row_status; the others
 *    were sampled)
 *   nucleus_engine_destroy(engine);
 */
#ifndef NUCLEUS_NUCLEUS_H_
#define NUCLEUS_NUCLEUS_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status ------------------------------------------------------------ */

/* The values equal those of nucleus::StatusCode. */
typedef enum nucleus_status {
  NUCLEUS_OK = 0,
  /* A call error: nothing was written (SPEC section 7). */
  NUCLEUS_INVALID_ARGUMENT = 1,
  /* At least one row could not be sampled; every other row was, and its
   * results are written. The per-row codes say which rows failed. */
  NUCLEUS_ROW_ERROR = 2,
  /* A file could not be read. */
  NUCLEUS_IO_ERROR = 3,
  /* A bug or an exhausted resource (out of memory). */
  NUCLEUS_INTERNAL = 4
} nucleus_status;

/* "OK", "INVALID_ARGUMENT", "ROW_ERROR", "IO_ERROR", "INTERNAL", or "UNKNOWN". */
const char* nucleus_status_name(nucleus_status status);

/* The message of the calling thread's last failed call ("" after a call that
 * succeeded). Owned by the library; valid until this thread's next call.
 * After NUCLEUS_ROW_ERROR it is the message of the first row that failed. */
const char* nucleus_last_error(void);

/* Library version, "MAJOR.MINOR.PATCH". */
const char* nucleus_version(void);

/* ---- Inputs ------------------------------------------------------------ */

typedef enum nucleus_dtype {
  NUCLEUS_DTYPE_F32 = 0,
  NUCLEUS_DTYPE_F16 = 1, /* IEEE half */
  NUCLEUS_DTYPE_BF16 = 2
} nucleus_dtype;

/* The order in which the filters run (SPEC section 4). */
typedef enum nucleus_preset {
  NUCLEUS_PRESET_HF = 0,
  NUCLEUS_PRESET_VLLM = 1,
  NUCLEUS_PRESET_LLAMA_CPP = 2
} nucleus_preset;

/* Which distribution top-logprobs and ranks describe. */
typedef enum nucleus_logprobs_mode {
  NUCLEUS_LOGPROBS_PROCESSED = 0, /* the final distribution */
  NUCLEUS_LOGPROBS_RAW = 1        /* log_softmax of the raw input row */
} nucleus_logprobs_mode;

/* A batch of logits, row-major. Only the first `vocab` columns of a row count.
 * `data` is aligned to the dtype's size (4 or 2 bytes). */
typedef struct nucleus_logits_view {
  const void* data;
  int64_t rows;
  int64_t vocab;
  int64_t row_stride; /* in elements, >= vocab; 0 means vocab */
  int32_t dtype;      /* a nucleus_dtype */
} nucleus_logits_view;

/* The fields, defaults and ranges of nucleus::SamplingParams. Start from
 * nucleus_sampling_params_default(): a zeroed struct is not the default
 * (typical_p = 0 is a call error). */
typedef struct nucleus_sampling_params {
  float temperature;        /* 1; 0 = greedy */
  int32_t top_k;            /* 0; 0 or -1 = off, >= vocab = off */
  float top_p;              /* 1 = off */
  float min_p;              /* 0 = off */
  float typical_p;          /* 1 = off; in (0, 1] */
  float top_n_sigma;        /* 0; <= 0 = off */
  int32_t min_keep;         /* 1 */
  float repetition_penalty; /* 1 = off */
  float frequency_penalty;  /* 0 = off */
  float presence_penalty;   /* 0 = off */
  int32_t preset;           /* a nucleus_preset; NUCLEUS_PRESET_HF */
  int32_t num_samples;      /* 1; independent draws with replacement */
  /* Nonzero (default): compute the sampled tokens' log-probabilities. Zero:
   * they come back NaN and greedy rows skip their exp passes. */
  int32_t logprobs;
  int32_t top_logprobs;  /* 0; N > 0: also return the top-N and the ranks */
  int32_t logprobs_mode; /* a nucleus_logprobs_mode; NUCLEUS_LOGPROBS_PROCESSED */
} nucleus_sampling_params;

typedef struct nucleus_token_bias {
  int32_t token;
  float bias;
} nucleus_token_bias;

/* One row's request. The arrays are borrowed for the duration of the call; a
 * NULL array must have length 0. */
typedef struct nucleus_row_request {
  nucleus_sampling_params params;
  uint64_t seed;    /* used when has_seed is nonzero */
  int32_t has_seed; /* zero: the engine's own generator (not reproducible) */
  uint64_t step;    /* the decoding step; enters the Philox counter */

  const int32_t* prompt_tokens; /* repetition penalty only */
  int64_t num_prompt_tokens;
  const int32_t* generated_tokens; /* repetition, frequency, presence */
  int64_t num_generated_tokens;
  const nucleus_token_bias* logit_bias;
  int64_t num_logit_bias;
  const int32_t* banned_tokens;
  int64_t num_banned_tokens;
  /* NULL, or ceil(vocab / 32) words: bit (i % 32) of word (i / 32) set means
   * token i is allowed (the xgrammar / llguidance layout). */
  const int32_t* allowed_mask;
  int64_t allowed_mask_words;
} nucleus_row_request;

nucleus_sampling_params nucleus_sampling_params_default(void);
/* Default parameters, no seed, step 0, no history, bias, bans or mask. */
nucleus_row_request nucleus_row_request_default(void);

/* ---- Outputs ----------------------------------------------------------- */

/* Where nucleus_sample writes, all buffers owned by the caller. Row r's
 * entries start at r * samples_per_row (samples), r * top_per_row (top-N) or
 * r (per-row values). Only `tokens` is required; a NULL buffer is not written.
 *
 * Entries with nothing to say are filled, never left stale: a row that failed
 * has tokens -1, logprobs NaN, ranks 0, top_counts 0, support 0; slots past a
 * row's num_samples hold token -1, logprobs NaN, rank 0; top slots past a
 * row's top_counts hold token -1, logprob NaN; ranks are 0 for a row with
 * top_logprobs = 0. */
typedef struct nucleus_sample_output {
  /* Capacity per row of tokens, logprobs, raw_logprobs and ranks: must be >=
   * every row's num_samples. */
  int64_t samples_per_row;
  int32_t* tokens;     /* rows * samples_per_row */
  float* logprobs;     /* rows * samples_per_row: under the final distribution */
  float* raw_logprobs; /* rows * samples_per_row: under log_softmax of the raw row */
  int32_t* ranks;      /* rows * samples_per_row: 1-based, in the logprobs_mode distribution */

  /* Capacity per row of the top-N arrays: when top_tokens or top_logprobs is
   * given, must be >= every row's top_logprobs. */
  int64_t top_per_row;
  int32_t* top_tokens; /* rows * top_per_row; logprob descending, ties by token id */
  float* top_logprobs; /* rows * top_per_row */
  int32_t* top_counts; /* rows: entries written (processed mode may give fewer than N) */

  int64_t* support;    /* rows: tokens left after the filters */
  int32_t* row_status; /* rows: a nucleus_status per row */
  /* rows * row_message_size bytes: row r's message (NUL-terminated, cut to
   * fit; "" for a row that succeeded) at row_messages + r * row_message_size. */
  char* row_messages;
  int64_t row_message_size;
} nucleus_sample_output;

/* Where nucleus_probs writes. */
typedef struct nucleus_probs_output {
  float* probs;         /* required: row r at probs + r * probs_stride */
  int64_t probs_stride; /* in floats; 0 means vocab; must be >= vocab */
  int32_t* row_status;  /* rows, optional: a nucleus_status per row */
  char* row_messages;   /* optional, as in nucleus_sample_output */
  int64_t row_message_size;
} nucleus_probs_output;

/* Where nucleus_verify writes (speculative decoding). */
typedef struct nucleus_verify_output {
  int32_t* accepted; /* rows: draft tokens accepted (0..num_draft); -1 for a failed row */
  /* rows * (num_draft + 1): the accepted drafts, then the recovered or bonus
   * token; the slots after them hold -1. */
  int32_t* tokens;
  int32_t* row_status; /* rows, optional: a nucleus_status per row */
  char* row_messages;  /* optional, as in nucleus_sample_output */
  int64_t row_message_size;
} nucleus_verify_output;

/* All fields zero / NULL. */
nucleus_sample_output nucleus_sample_output_default(void);
nucleus_probs_output nucleus_probs_output_default(void);
nucleus_verify_output nucleus_verify_output_default(void);

/* ---- Engine ------------------------------------------------------------ */

typedef struct nucleus_engine nucleus_engine;

typedef struct nucleus_engine_options {
  int32_t max_threads; /* 0: every core the process may use; must be >= 0 */
  uint64_t seed;       /* the generator of unseeded rows, when has_seed is nonzero */
  int32_t has_seed;    /* zero: seeded from the system */
  /* The highest instruction set of the row passes: NUCLEUS_ISA_AUTO (the
   * best the CPU runs), _SSE2, _AVX2 or _AVX512; also capped by the CPU and
   * by the NUCLEUS_ISA environment variable. */
  int32_t isa;
  /* Whether each row's passes bring the next row of a batch into cache
   * (speed only, never results): NUCLEUS_READ_AHEAD_AUTO (as the
   * NUCLEUS_READ_AHEAD environment variable says; unset: batches of 32 MiB
   * or more, and from 1 MB those whose rows a probe finds coming from
   * memory, as rows copied from a device do), _ALWAYS (every batch of two
   * rows or more) or _NEVER. */
  int32_t read_ahead;
} nucleus_engine_options;

enum { NUCLEUS_ISA_AUTO = 0, NUCLEUS_ISA_SSE2 = 1, NUCLEUS_ISA_AVX2 = 2, NUCLEUS_ISA_AVX512 = 3 };
enum { NUCLEUS_READ_AHEAD_AUTO = 0, NUCLEUS_READ_AHEAD_ALWAYS = 1, NUCLEUS_READ_AHEAD_NEVER = 2 };

nucleus_engine_options nucleus_engine_options_default(void);

/* Creates an engine (`options` may be NULL: the defaults) into *engine. */
nucleus_status nucleus_engine_create(const nucleus_engine_options* options,
                                     nucleus_engine** engine);
/* Destroys an engine; NULL is allowed. No call may be running on it. */
nucleus_status nucleus_engine_destroy(nucleus_engine* engine);
/* The number of threads the engine may use. */
nucleus_status nucleus_engine_max_threads(const nucleus_engine* engine, int32_t* max_threads);
/* The instruction set the engine's row passes run (a NUCLEUS_ISA_ value, never
 * AUTO), and its name ("sse2", "avx2", "avx512") when `name` is not NULL. */
nucleus_status nucleus_engine_isa(const nucleus_engine* engine, int32_t* isa, const char** name);
/* When the engine reads the next row ahead (a NUCLEUS_READ_AHEAD_ value: the
 * option, or the environment variable's mode where the option was AUTO), and
 * its name ("auto", "always", "never") when `name` is not NULL. */
nucleus_status nucleus_engine_read_ahead(const nucleus_engine* engine, int32_t* read_ahead,
                                         const char** name);

/* Samples every row of `logits`. `requests` holds num_requests = rows
 * requests, or 1 shared by every row. Returns NUCLEUS_OK when every row was
 * sampled, NUCLEUS_ROW_ERROR when some rows failed (the others were sampled
 * and written), NUCLEUS_INVALID_ARGUMENT when the call is invalid (nothing
 * written). Safe to call from many threads at once on one engine. */
nucleus_status nucleus_sample(nucleus_engine* engine, const nucleus_logits_view* logits,
                              const nucleus_row_request* requests, int64_t num_requests,
                              const nucleus_sample_output* output);

/* The final distribution of each row (after masks, penalties, temperature
 * and filters): probabilities, zero for removed tokens. Greedy rows give the
 * softmax of the processed logits. Rows that fail are left zero. Returns as
 * nucleus_sample does. */
nucleus_status nucleus_probs(nucleus_engine* engine, const nucleus_logits_view* logits,
                             const nucleus_row_request* requests, int64_t num_requests,
                             const nucleus_probs_output* output);

/* Speculative-decoding verification (Engine::verify in nucleus/engine.h):
 * target_logits holds rows * (num_draft + 1) rows, row r's positions at
 * r * (num_draft + 1) + i; draft_tokens rows * num_draft ids; draft_probs NULL
 * (a deterministic drafter) or rows * num_draft * vocab float32
 * probabilities, each row summing to 1 within 0.01 (used as given). The
 * output is distributed exactly as sampling from the target for drafter rows
 * that sum to 1. Returns as nucleus_sample does. */
nucleus_status nucleus_verify(nucleus_engine* engine, const nucleus_logits_view* target_logits,
                              int64_t num_draft, const int32_t* draft_tokens,
                              const float* draft_probs, const nucleus_row_request* requests,
                              int64_t num_requests, const nucleus_verify_output* output);

/* ---- Logit dumps (.npy, .safetensors, raw) ------------------------------ */

typedef struct nucleus_dump nucleus_dump;

typedef enum nucleus_dump_format {
  NUCLEUS_DUMP_AUTO = 0, /* by extension: .npy, .safetensors, anything else raw */
  NUCLEUS_DUMP_NPY = 1,
  NUCLEUS_DUMP_SAFETENSORS = 2,
  NUCLEUS_DUMP_RAW = 3 /* headerless little-endian rows: dtype and vocab given */
} nucleus_dump_format;

typedef struct nucleus_dump_options {
  int32_t format;      /* a nucleus_dump_format */
  const char* tensor;  /* safetensors: the tensor to read; NULL or "" = the only one */
  int32_t dtype;       /* raw: a nucleus_dtype, used when has_dtype is nonzero */
  int32_t has_dtype;   /* raw: required */
  int64_t vocab;       /* raw: required (> 0) */
  int64_t block_bytes; /* a block reads at most this many bytes (>= one row); 0 = 64 MiB */
} nucleus_dump_options;

typedef struct nucleus_dump_info {
  int32_t format; /* the format found (never NUCLEUS_DUMP_AUTO) */
  int32_t dtype;
  int64_t rows;
  int64_t vocab;
  int64_t block_rows; /* rows per block */
  int64_t num_blocks;
  int32_t streamed; /* nonzero: read a block at a time, from a file or (a .npy or .safetensors
                       pipe longer than its read-ahead, min(block_bytes, 2 MiB)) from the pipe,
                       once, front to back, or (a longer raw pipe) from its copy in a temporary
                       file; zero: held whole in memory (a shorter pipe, or a raw one no
                       temporary file took) */
} nucleus_dump_info;

nucleus_dump_options nucleus_dump_options_default(void);

/* Opens `path` ("-" = standard input) and validates its header; reads no
 * logits yet. `options` may be NULL (the defaults). */
nucleus_status nucleus_dump_open(const char* path, const nucleus_dump_options* options,
                                 nucleus_dump** dump);
nucleus_status nucleus_dump_get_info(const nucleus_dump* dump, nucleus_dump_info* info);
/* Block `index` (in [0, num_blocks)) as a view that stays valid until the
 * next read or close of this dump; *first_row (may be NULL) receives the row
 * of the dump where the block starts. */
nucleus_status nucleus_dump_read_block(nucleus_dump* dump, int64_t index, nucleus_logits_view* view,
                                       int64_t* first_row);
/* Rows [first, first + count) as a view, valid as for nucleus_dump_read_block. */
nucleus_status nucleus_dump_read(nucleus_dump* dump, int64_t first, int64_t count,
                                 nucleus_logits_view* view);
/* Rows [first, first + count) as stored (the dump's dtype, vocab values a
 * row, no padding) copied into dst, which holds count * vocab of them: for a
 * caller that keeps the rows, one copy fewer than nucleus_dump_read. A view
 * read before stays valid. */
nucleus_status nucleus_dump_read_into(nucleus_dump* dump, int64_t first, int64_t count, void* dst);
/* The same rows widened to float32 into dst, which holds count * vocab
 * floats (exact: every float16 and bfloat16 value is a float32 one; a half
 * dump's rows are widened in place in dst, with no buffer beside it). A dst
 * not aligned to 4 bytes is NUCLEUS_INVALID_ARGUMENT. */
nucleus_status nucleus_dump_read_into_float32(nucleus_dump* dump, int64_t first, int64_t count,
                                              float* dst);
/* Closes a dump; NULL is allowed. A dump is not safe to share between threads. */
nucleus_status nucleus_dump_close(nucleus_dump* dump);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* NUCLEUS_NUCLEUS_H_ */
