// The C ABI (include/nucleus/nucleus.h) over the C++ engine. This layer only
// translates: C structs become nucleus::RowRequest spans, nucleus::RowResult
// values are copied into the caller's flat buffers, Status becomes a code plus
// a thread-local message. Every parameter check and every number comes from
// the C++ engine, so the two interfaces cannot drift apart.
//
// Only what the C++ types rule out by construction is checked here: NULL
// pointers and structs, negative lengths and thread counts, output
// capacities, and the enum values of the dump options (the dump reader
// trusts its enum fields).
#include "nucleus/nucleus.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/row/params_check.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

struct nucleus_engine {
  explicit nucleus_engine(const nucleus::EngineOptions& options) : engine(options) {}
  nucleus::Engine engine;
};

struct nucleus_dump {
  explicit nucleus_dump(nucleus::DumpReader r) : reader(std::move(r)) {}
  nucleus::DumpReader reader;
};

namespace {

using nucleus::RowRequest;
using nucleus::RowResult;
using nucleus::Status;

// The last error lives in a fixed thread-local buffer rather than a
// std::string so that recording "out of memory" cannot itself allocate.
constexpr size_t kErrorCapacity = 1024;
thread_local char t_last_error[kErrorCapacity] = "";

// Copies `parts` one after another into dst[0, capacity), cut to fit and
// NUL-terminated (capacity >= 1).
void copy_text(char* dst, size_t capacity, std::initializer_list<std::string_view> parts) {
  size_t used = 0;
  for (std::string_view part : parts) {
    const size_t n = std::min(part.size(), capacity - 1 - used);
    if (n == 0) continue;  // an empty view may have a null data(), which memcpy forbids
    std::memcpy(dst + used, part.data(), n);
    used += n;
  }
  dst[used] = '\0';
}

nucleus_status succeed() {
  t_last_error[0] = '\0';
  return NUCLEUS_OK;
}

nucleus_status fail(nucleus_status code, std::string_view message,
                    std::string_view more = std::string_view()) {
  copy_text(t_last_error, kErrorCapacity, {message, more});
  return code;
}

nucleus_status to_c(nucleus::StatusCode code) {
  // The enums share their values (nucleus.h says so; the asserts keep it so).
  return static_cast<nucleus_status>(code);
}
static_assert(NUCLEUS_OK == static_cast<int>(nucleus::StatusCode::kOk));
static_assert(NUCLEUS_INVALID_ARGUMENT == static_cast<int>(nucleus::StatusCode::kInvalidArgument));
static_assert(NUCLEUS_ROW_ERROR == static_cast<int>(nucleus::StatusCode::kRowError));
static_assert(NUCLEUS_IO_ERROR == static_cast<int>(nucleus::StatusCode::kIoError));
static_assert(NUCLEUS_INTERNAL == static_cast<int>(nucleus::StatusCode::kInternal));
static_assert(NUCLEUS_DTYPE_F32 == static_cast<int>(nucleus::DType::kFloat32));
static_assert(NUCLEUS_DTYPE_F16 == static_cast<int>(nucleus::DType::kFloat16));
static_assert(NUCLEUS_DTYPE_BF16 == static_cast<int>(nucleus::DType::kBFloat16));
static_assert(NUCLEUS_PRESET_HF == static_cast<int>(nucleus::Preset::kHF));
static_assert(NUCLEUS_PRESET_VLLM == static_cast<int>(nucleus::Preset::kVLLM));
static_assert(NUCLEUS_PRESET_LLAMA_CPP == static_cast<int>(nucleus::Preset::kLlamaCpp));
static_assert(NUCLEUS_LOGPROBS_PROCESSED == static_cast<int>(nucleus::LogprobsMode::kProcessed));
static_assert(NUCLEUS_LOGPROBS_RAW == static_cast<int>(nucleus::LogprobsMode::kRaw));
static_assert(NUCLEUS_DUMP_AUTO == static_cast<int>(nucleus::DumpFormat::kAuto));
static_assert(NUCLEUS_DUMP_NPY == static_cast<int>(nucleus::DumpFormat::kNpy));
static_assert(NUCLEUS_DUMP_SAFETENSORS == static_cast<int>(nucleus::DumpFormat::kSafetensors));
static_assert(NUCLEUS_DUMP_RAW == static_cast<int>(nucleus::DumpFormat::kRaw));
static_assert(NUCLEUS_READ_AHEAD_AUTO == static_cast<int>(nucleus::ReadAhead::kAuto));
static_assert(NUCLEUS_READ_AHEAD_ALWAYS == static_cast<int>(nucleus::ReadAhead::kAlways));
static_assert(NUCLEUS_READ_AHEAD_NEVER == static_cast<int>(nucleus::ReadAhead::kNever));

nucleus_status fail(const Status& s) { return fail(to_c(s.code()), s.message()); }

// Runs `body`, turning any exception into NUCLEUS_INTERNAL: nothing may
// unwind into C frames.
template <typename F>
nucleus_status guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail(NUCLEUS_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(NUCLEUS_INTERNAL, "unexpected exception: ", e.what());
  } catch (...) {
    return fail(NUCLEUS_INTERNAL, "unexpected exception of unknown type");
  }
}

Status invalid(std::string message) { return Status::invalid_argument(std::move(message)); }

// How the engine names a request in messages ("row 3", "shared request").
std::string where(int64_t row) {
  return row < 0 ? std::string("shared request") : "row " + std::to_string(row);
}

// A borrowed C array as a span: NULL is allowed only with length 0.
template <typename T>
Status borrow(const T* data, int64_t length, int64_t row, const char* field,
              const char* length_field, std::span<const T>* out) {
  if (length < 0) {
    return invalid(where(row) + ": " + length_field + " = " + std::to_string(length) +
                   " must be >= 0");
  }
  if (data == nullptr && length > 0) {
    return invalid(where(row) + ": " + field + " is NULL but " + length_field + " = " +
                   std::to_string(length));
  }
  *out = length == 0 ? std::span<const T>() : std::span<const T>(data, static_cast<size_t>(length));
  return Status();
}

nucleus::SamplingParams to_cpp(const nucleus_sampling_params& c) {
  nucleus::SamplingParams p;
  p.temperature = c.temperature;
  p.top_k = c.top_k;
  p.top_p = c.top_p;
  p.min_p = c.min_p;
  p.typical_p = c.typical_p;
  p.top_n_sigma = c.top_n_sigma;
  p.min_keep = c.min_keep;
  p.repetition_penalty = c.repetition_penalty;
  p.frequency_penalty = c.frequency_penalty;
  p.presence_penalty = c.presence_penalty;
  // Scoped enums have a fixed underlying type, so any value converts; the
  // engine's request check rejects the unknown ones with the row's name.
  p.preset = static_cast<nucleus::Preset>(c.preset);
  p.num_samples = c.num_samples;
  p.logprobs = c.logprobs != 0;
  p.top_logprobs = c.top_logprobs;
  p.logprobs_mode = static_cast<nucleus::LogprobsMode>(c.logprobs_mode);
  return p;
}

// `bias_copy` has room for the row's logit bias: nucleus_token_bias has the
// layout of nucleus::TokenBias, but reading one through the other would break
// C++'s aliasing rules, so the (short) list is copied.
Status to_cpp(const nucleus_row_request& c, int64_t row, std::span<nucleus::TokenBias> bias_copy,
              RowRequest* out) {
  out->params = to_cpp(c.params);
  out->seed = c.has_seed != 0 ? std::optional<uint64_t>(c.seed) : std::nullopt;
  out->step = c.step;
  if (Status s = borrow(c.prompt_tokens, c.num_prompt_tokens, row, "prompt_tokens",
                        "num_prompt_tokens", &out->prompt_tokens);
      !s.ok()) {
    return s;
  }
  if (Status s = borrow(c.generated_tokens, c.num_generated_tokens, row, "generated_tokens",
                        "num_generated_tokens", &out->generated_tokens);
      !s.ok()) {
    return s;
  }
  std::span<const nucleus_token_bias> bias;
  if (Status s = borrow(c.logit_bias, c.num_logit_bias, row, "logit_bias", "num_logit_bias", &bias);
      !s.ok()) {
    return s;
  }
  for (size_t i = 0; i < bias.size(); ++i) bias_copy[i] = {bias[i].token, bias[i].bias};
  out->logit_bias = bias_copy.first(bias.size());
  if (Status s = borrow(c.banned_tokens, c.num_banned_tokens, row, "banned_tokens",
                        "num_banned_tokens", &out->banned_tokens);
      !s.ok()) {
    return s;
  }
  if (c.allowed_mask != nullptr && c.allowed_mask_words == 0) {
    // An empty mask means "no mask" to the engine: refuse it rather than
    // allow every token.
    return invalid(where(row) +
                   ": allowed_mask is not NULL but allowed_mask_words = 0 (a mask holds "
                   "ceil(vocab / 32) words; NULL for no mask)");
  }
  return borrow(c.allowed_mask, c.allowed_mask_words, row, "allowed_mask", "allowed_mask_words",
                &out->allowed_mask);
}

nucleus::LogitsView to_cpp(const nucleus_logits_view& v) {
  return nucleus::LogitsView{v.data, v.rows, v.vocab, v.row_stride,
                             static_cast<nucleus::DType>(v.dtype)};
}

// Per host thread, reused across calls: the translated requests and the C++
// results. They only grow, so a server calling with a steady batch shape
// allocates nothing here after its first calls (SPEC section 8).
struct CallScratch {
  std::vector<nucleus::VerifyResult> verify;
  std::vector<RowRequest> requests;
  std::vector<nucleus::TokenBias> bias;
  std::vector<RowResult> results;
  std::vector<Status> statuses;
};

CallScratch& call_scratch() {
  thread_local CallScratch scratch;
  return scratch;
}

template <typename T>
std::span<T> first(std::vector<T>& v, int64_t n) {
  // (more than a vector can hold is out of memory too, not a length_error)
  if (static_cast<size_t>(n) > v.max_size()) throw std::bad_alloc();
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return std::span<T>(v.data(), static_cast<size_t>(n));
}

// Translates the requests of a call into the thread's scratch. Rows <= 0 is
// left for the engine to report (with the view's other checks).
Status translate_requests(const nucleus_logits_view& logits, const nucleus_row_request* requests,
                          int64_t num_requests, std::span<const RowRequest>* out) {
  *out = {};
  if (logits.rows <= 0) return Status();
  if (num_requests != 1 && num_requests != logits.rows) {
    return invalid("requests: num_requests = " + std::to_string(num_requests) +
                   " must be 1 or rows = " + std::to_string(logits.rows));
  }
  if (requests == nullptr) return invalid("requests: requests is NULL");
  const bool shared = num_requests == 1 && logits.rows > 1;
  // Room for every row's bias list first: the spans must not move afterwards.
  int64_t total_bias = 0;
  for (int64_t r = 0; r < num_requests; ++r) {
    if (requests[r].logit_bias != nullptr && requests[r].num_logit_bias > 0) {
      // (lengths no memory holds: refused before their sum could overflow)
      if (requests[r].num_logit_bias > (int64_t{1} << 40) - total_bias) {
        return invalid(where(shared ? -1 : r) +
                       ": num_logit_bias = " + std::to_string(requests[r].num_logit_bias) +
                       (total_bias > 0
                            ? " (after " + std::to_string(total_bias) + " in the rows before)"
                            : std::string()) +
                       " is more entries than memory holds");
      }
      total_bias += requests[r].num_logit_bias;
    }
  }
  std::span<nucleus::TokenBias> bias = first(call_scratch().bias, total_bias);
  std::span<RowRequest> cpp = first(call_scratch().requests, num_requests);
  for (int64_t r = 0; r < num_requests; ++r) {
    if (Status s = to_cpp(requests[r], shared ? -1 : r, bias, &cpp[static_cast<size_t>(r)]);
        !s.ok()) {
      return s;
    }
    bias = bias.subspan(cpp[static_cast<size_t>(r)].logit_bias.size());
  }
  *out = cpp;
  return Status();
}

Status check_message_buffer(const char* messages, int64_t size) {
  if (messages != nullptr && size < 1) {
    return invalid("output: row_message_size = " + std::to_string(size) +
                   " must be >= 1 when row_messages is given");
  }
  return Status();
}

// The output must hold what every row asks for; checked before any work so
// that a call error still writes nothing.
Status check_sample_output(const nucleus_sample_output& out, std::span<const RowRequest> requests,
                           int64_t rows) {
  if (out.tokens == nullptr) return invalid("output: tokens is NULL");
  if (out.samples_per_row < 1) {
    return invalid("output: samples_per_row = " + std::to_string(out.samples_per_row) +
                   " must be >= 1");
  }
  const bool wants_top = out.top_tokens != nullptr || out.top_logprobs != nullptr;
  if (wants_top && out.top_per_row < 0) {
    return invalid("output: top_per_row = " + std::to_string(out.top_per_row) + " must be >= 0");
  }
  if (Status s = check_message_buffer(out.row_messages, out.row_message_size); !s.ok()) return s;
  const bool shared = requests.size() == 1 && rows > 1;
  for (size_t r = 0; r < requests.size(); ++r) {
    const nucleus::SamplingParams& p = requests[r].params;
    const int64_t row = shared ? -1 : static_cast<int64_t>(r);
    if (p.num_samples > out.samples_per_row) {
      return invalid(where(row) + ": num_samples = " + std::to_string(p.num_samples) +
                     " exceeds output samples_per_row = " + std::to_string(out.samples_per_row));
    }
    if (wants_top && p.top_logprobs > out.top_per_row) {
      return invalid(where(row) + ": top_logprobs = " + std::to_string(p.top_logprobs) +
                     " exceeds output top_per_row = " + std::to_string(out.top_per_row));
    }
  }
  return Status();
}

void write_row_status(int32_t* codes, char* messages, int64_t message_size, int64_t row,
                      const Status& s) {
  if (codes != nullptr) codes[row] = to_c(s.code());
  if (messages != nullptr) {
    copy_text(messages + row * message_size, static_cast<size_t>(message_size), {s.message()});
  }
}

// Copies row `row`'s result into the caller's buffers, filling every slot it
// does not cover so that no stale value survives (nucleus.h lists the fills).
void write_row(const nucleus_sample_output& out, int64_t row, const RowResult& res) {
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  const int64_t n = out.samples_per_row;
  const auto at = [](const auto& v, int64_t j, auto fill) {
    return j < static_cast<int64_t>(v.size()) ? v[static_cast<size_t>(j)] : fill;
  };
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = row * n + j;
    out.tokens[i] = at(res.tokens, j, int32_t{-1});
    if (out.logprobs != nullptr) out.logprobs[i] = at(res.logprobs, j, kNaN);
    if (out.raw_logprobs != nullptr) out.raw_logprobs[i] = at(res.raw_logprobs, j, kNaN);
    if (out.ranks != nullptr) out.ranks[i] = at(res.ranks, j, int32_t{0});
  }
  const bool wants_top = out.top_tokens != nullptr || out.top_logprobs != nullptr;
  const int64_t top = wants_top ? out.top_per_row : 0;
  for (int64_t j = 0; j < top; ++j) {
    const int64_t i = row * top + j;
    const bool has = j < static_cast<int64_t>(res.top_logprobs.size());
    const nucleus::TokenLogprob t =
        has ? res.top_logprobs[static_cast<size_t>(j)] : nucleus::TokenLogprob{-1, kNaN};
    if (out.top_tokens != nullptr) out.top_tokens[i] = t.token;
    if (out.top_logprobs != nullptr) out.top_logprobs[i] = t.logprob;
  }
  if (out.top_counts != nullptr) {
    out.top_counts[row] = static_cast<int32_t>(res.top_logprobs.size());
  }
  if (out.support != nullptr) out.support[row] = res.support;
  write_row_status(out.row_status, out.row_messages, out.row_message_size, row, res.status);
}

// NUCLEUS_OK, or NUCLEUS_ROW_ERROR with the first failed row's message.
nucleus_status summarise(std::span<const Status> statuses) {
  for (const Status& s : statuses) {
    if (!s.ok()) return fail(to_c(s.code()), s.message());
  }
  return succeed();
}

// What nucleus_sample and nucleus_probs check first: the handles, then the
// requests (translated into the thread's scratch).
Status check_batch_call(const nucleus_engine* engine, const nucleus_logits_view* logits,
                        const void* output, const nucleus_row_request* requests,
                        int64_t num_requests, std::span<const RowRequest>* cpp_requests) {
  if (engine == nullptr) return invalid("engine is NULL");
  if (logits == nullptr) return invalid("logits is NULL");
  if (output == nullptr) return invalid("output is NULL");
  // The view first: its rows size this thread's scratch (a view that cannot
  // exist, INT64_MAX rows, would otherwise fail there as out of memory).
  if (Status s = nucleus::detail::check_view(to_cpp(*logits)); !s.ok()) return s;
  return translate_requests(*logits, requests, num_requests, cpp_requests);
}

nucleus_status write_view(nucleus::Result<nucleus::LogitsView> block, nucleus_logits_view* view) {
  if (!block.ok()) return fail(block.status());
  view->data = block->data;
  view->rows = block->rows;
  view->vocab = block->vocab;
  view->row_stride = block->row_stride;
  view->dtype = static_cast<int32_t>(block->dtype);
  return succeed();
}

}  // namespace

extern "C" {

const char* nucleus_status_name(nucleus_status status) {
  return nucleus::status_code_name(static_cast<nucleus::StatusCode>(status));
}

const char* nucleus_last_error(void) { return t_last_error; }

const char* nucleus_version(void) { return nucleus::version(); }

nucleus_sampling_params nucleus_sampling_params_default(void) {
  // Taken from the C++ defaults so that the two cannot disagree.
  const nucleus::SamplingParams p;
  nucleus_sampling_params c;
  c.temperature = p.temperature;
  c.top_k = p.top_k;
  c.top_p = p.top_p;
  c.min_p = p.min_p;
  c.typical_p = p.typical_p;
  c.top_n_sigma = p.top_n_sigma;
  c.min_keep = p.min_keep;
  c.repetition_penalty = p.repetition_penalty;
  c.frequency_penalty = p.frequency_penalty;
  c.presence_penalty = p.presence_penalty;
  c.preset = static_cast<int32_t>(p.preset);
  c.num_samples = p.num_samples;
  c.logprobs = p.logprobs ? 1 : 0;
  c.top_logprobs = p.top_logprobs;
  c.logprobs_mode = static_cast<int32_t>(p.logprobs_mode);
  return c;
}

nucleus_row_request nucleus_row_request_default(void) {
  nucleus_row_request r;
  std::memset(&r, 0, sizeof r);
  r.params = nucleus_sampling_params_default();
  return r;
}

nucleus_sample_output nucleus_sample_output_default(void) {
  nucleus_sample_output o;
  std::memset(&o, 0, sizeof o);
  return o;
}

nucleus_probs_output nucleus_probs_output_default(void) {
  nucleus_probs_output o;
  std::memset(&o, 0, sizeof o);
  return o;
}

nucleus_verify_output nucleus_verify_output_default(void) {
  nucleus_verify_output o;
  std::memset(&o, 0, sizeof o);
  return o;
}

nucleus_engine_options nucleus_engine_options_default(void) {
  nucleus_engine_options o;
  std::memset(&o, 0, sizeof o);
  return o;
}

nucleus_status nucleus_engine_create(const nucleus_engine_options* options,
                                     nucleus_engine** engine) {
  return guarded([&] {
    if (engine == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "engine: out pointer is NULL");
    *engine = nullptr;
    const nucleus_engine_options o =
        options != nullptr ? *options : nucleus_engine_options_default();
    if (o.max_threads < 0) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "engine options: max_threads = " + std::to_string(o.max_threads) +
                      " must be >= 0 (0 = every core)");
    }
    if (o.isa < NUCLEUS_ISA_AUTO || o.isa > NUCLEUS_ISA_AVX512) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "engine options: isa = " + std::to_string(o.isa) +
                      " is not a NUCLEUS_ISA_ value (0 auto, 1 sse2, 2 avx2, 3 avx512)");
    }
    if (o.read_ahead < NUCLEUS_READ_AHEAD_AUTO || o.read_ahead > NUCLEUS_READ_AHEAD_NEVER) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "engine options: read_ahead = " + std::to_string(o.read_ahead) +
                      " is not a NUCLEUS_READ_AHEAD_ value (0 auto, 1 always, 2 never)");
    }
    nucleus::EngineOptions cpp;
    cpp.max_threads = o.max_threads;
    cpp.isa = static_cast<nucleus::Isa>(o.isa);
    cpp.read_ahead = static_cast<nucleus::ReadAhead>(o.read_ahead);
    if (o.has_seed != 0) cpp.seed = o.seed;
    *engine = new nucleus_engine(cpp);
    return succeed();
  });
}

nucleus_status nucleus_engine_destroy(nucleus_engine* engine) {
  return guarded([&] {
    delete engine;
    return succeed();
  });
}

nucleus_status nucleus_engine_max_threads(const nucleus_engine* engine, int32_t* max_threads) {
  return guarded([&] {
    if (engine == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "engine is NULL");
    if (max_threads == nullptr) {
      return fail(NUCLEUS_INVALID_ARGUMENT, "max_threads: out pointer is NULL");
    }
    *max_threads = engine->engine.max_threads();
    return succeed();
  });
}

nucleus_status nucleus_engine_isa(const nucleus_engine* engine, int32_t* isa, const char** name) {
  return guarded([&] {
    if (engine == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "engine is NULL");
    if (isa == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "isa: out pointer is NULL");
    const nucleus::Isa chosen = engine->engine.isa();
    *isa = static_cast<int32_t>(chosen);
    if (name != nullptr) *name = nucleus::isa_name(chosen);
    return succeed();
  });
}

nucleus_status nucleus_engine_read_ahead(const nucleus_engine* engine, int32_t* read_ahead,
                                         const char** name) {
  return guarded([&] {
    if (engine == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "engine is NULL");
    if (read_ahead == nullptr) {
      return fail(NUCLEUS_INVALID_ARGUMENT, "read_ahead: out pointer is NULL");
    }
    const nucleus::ReadAhead mode = engine->engine.read_ahead();
    *read_ahead = static_cast<int32_t>(mode);
    if (name != nullptr) *name = nucleus::read_ahead_name(mode);
    return succeed();
  });
}

nucleus_status nucleus_sample(nucleus_engine* engine, const nucleus_logits_view* logits,
                              const nucleus_row_request* requests, int64_t num_requests,
                              const nucleus_sample_output* output) {
  return guarded([&] {
    std::span<const RowRequest> cpp_requests;
    if (Status s = check_batch_call(engine, logits, output, requests, num_requests, &cpp_requests);
        !s.ok()) {
      return fail(s);
    }
    if (Status s = check_sample_output(*output, cpp_requests, logits->rows); !s.ok()) {
      return fail(s);
    }
    const int64_t rows = std::max<int64_t>(logits->rows, 0);
    std::span<RowResult> results = first(call_scratch().results, rows);
    const Status s = engine->engine.sample(to_cpp(*logits), cpp_requests, results);
    if (!s.ok()) return fail(s);
    for (int64_t r = 0; r < rows; ++r) write_row(*output, r, results[static_cast<size_t>(r)]);
    for (const RowResult& res : results) {
      if (!res.status.ok()) return fail(res.status);  // the first failed row
    }
    return succeed();
  });
}

nucleus_status nucleus_probs(nucleus_engine* engine, const nucleus_logits_view* logits,
                             const nucleus_row_request* requests, int64_t num_requests,
                             const nucleus_probs_output* output) {
  return guarded([&] {
    std::span<const RowRequest> cpp_requests;
    if (Status s = check_batch_call(engine, logits, output, requests, num_requests, &cpp_requests);
        !s.ok()) {
      return fail(s);
    }
    if (Status s = check_message_buffer(output->row_messages, output->row_message_size); !s.ok()) {
      return fail(s);
    }
    // The engine checks these too, but under its own parameter names.
    if (output->probs == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "output: probs is NULL");
    const int64_t stride = output->probs_stride == 0 ? logits->vocab : output->probs_stride;
    if (logits->vocab > 0 && stride < logits->vocab) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "output: probs_stride = " + std::to_string(stride) +
                      " is smaller than vocab = " + std::to_string(logits->vocab));
    }
    const int64_t rows = std::max<int64_t>(logits->rows, 0);
    std::span<Status> statuses = first(call_scratch().statuses, rows);
    const Status s =
        engine->engine.probs(to_cpp(*logits), cpp_requests, output->probs, stride, statuses);
    if (!s.ok()) return fail(s);
    for (int64_t r = 0; r < rows; ++r) {
      write_row_status(output->row_status, output->row_messages, output->row_message_size, r,
                       statuses[static_cast<size_t>(r)]);
    }
    return summarise(statuses);
  });
}

nucleus_status nucleus_verify(nucleus_engine* engine, const nucleus_logits_view* target_logits,
                              int64_t num_draft, const int32_t* draft_tokens,
                              const float* draft_probs, const nucleus_row_request* requests,
                              int64_t num_requests, const nucleus_verify_output* output) {
  return guarded([&] {
    if (engine == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "engine is NULL");
    if (target_logits == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "target_logits is NULL");
    if (output == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "output is NULL");
    if (output->accepted == nullptr || output->tokens == nullptr) {
      return fail(NUCLEUS_INVALID_ARGUMENT, "output: accepted and tokens are required");
    }
    // The target view first, with the engine's checks and messages (as
    // check_batch_call: its rows size the scratch); the requests are per
    // batch row, K + 1 target rows each.
    int64_t rows = 0;
    if (Status s = nucleus::detail::check_verify_view(to_cpp(*target_logits), num_draft, &rows);
        !s.ok()) {
      return fail(s);
    }
    const int64_t per_row = num_draft + 1;
    nucleus_logits_view by_row = *target_logits;
    by_row.rows = rows;
    std::span<const RowRequest> cpp_requests;
    if (Status s = translate_requests(by_row, requests, num_requests, &cpp_requests); !s.ok()) {
      return fail(s);
    }
    if (Status s = check_message_buffer(output->row_messages, output->row_message_size); !s.ok()) {
      return fail(s);
    }
    if (num_draft > 0 && draft_tokens == nullptr) {
      return fail(NUCLEUS_INVALID_ARGUMENT, "draft_tokens is NULL");
    }
    std::span<nucleus::VerifyResult> results = first(call_scratch().verify, rows);
    const Status s = engine->engine.verify(
        to_cpp(*target_logits), num_draft,
        std::span<const int32_t>(draft_tokens,
                                 draft_tokens ? static_cast<size_t>(rows * num_draft) : 0),
        draft_probs, cpp_requests, results);
    if (!s.ok()) return fail(s);
    std::vector<Status>& statuses = call_scratch().statuses;
    statuses.resize(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) {
      const nucleus::VerifyResult& res = results[static_cast<size_t>(r)];
      int32_t* out = output->tokens + r * per_row;
      std::fill(out, out + per_row, -1);
      output->accepted[r] = res.status.ok() ? res.accepted : -1;
      if (res.status.ok()) std::copy(res.tokens.begin(), res.tokens.end(), out);
      statuses[static_cast<size_t>(r)] = res.status;
      write_row_status(output->row_status, output->row_messages, output->row_message_size, r,
                       res.status);
    }
    return summarise(std::span<const Status>(statuses.data(), static_cast<size_t>(rows)));
  });
}

nucleus_dump_options nucleus_dump_options_default(void) {
  nucleus_dump_options o;
  std::memset(&o, 0, sizeof o);
  return o;
}

nucleus_status nucleus_dump_open(const char* path, const nucleus_dump_options* options,
                                 nucleus_dump** dump) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump: out pointer is NULL");
    *dump = nullptr;
    if (path == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump: path is NULL");
    const nucleus_dump_options o = options != nullptr ? *options : nucleus_dump_options_default();
    if (o.format < NUCLEUS_DUMP_AUTO || o.format > NUCLEUS_DUMP_RAW) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "dump options: format = " + std::to_string(o.format) + " is unknown");
    }
    if (o.has_dtype != 0 && (o.dtype < NUCLEUS_DTYPE_F32 || o.dtype > NUCLEUS_DTYPE_BF16)) {
      return fail(NUCLEUS_INVALID_ARGUMENT,
                  "dump options: dtype = " + std::to_string(o.dtype) + " is unknown");
    }
    nucleus::DumpOptions cpp;
    cpp.format = static_cast<nucleus::DumpFormat>(o.format);
    if (o.tensor != nullptr) cpp.tensor = o.tensor;
    if (o.has_dtype != 0) cpp.dtype = static_cast<nucleus::DType>(o.dtype);
    cpp.vocab = o.vocab;
    if (o.block_bytes != 0) cpp.block_bytes = o.block_bytes;
    nucleus::Result<nucleus::DumpReader> reader = nucleus::DumpReader::open(path, cpp);
    if (!reader.ok()) return fail(reader.status());
    *dump = new nucleus_dump(std::move(reader).value());
    return succeed();
  });
}

nucleus_status nucleus_dump_get_info(const nucleus_dump* dump, nucleus_dump_info* info) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump is NULL");
    if (info == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "info: out pointer is NULL");
    const nucleus::DumpInfo& i = dump->reader.info();
    info->format = static_cast<int32_t>(i.format);
    info->dtype = static_cast<int32_t>(i.dtype);
    info->rows = i.rows;
    info->vocab = i.vocab;
    info->block_rows = dump->reader.block_rows();
    info->num_blocks = dump->reader.num_blocks();
    info->streamed = i.streamed ? 1 : 0;
    return succeed();
  });
}

nucleus_status nucleus_dump_read_block(nucleus_dump* dump, int64_t index, nucleus_logits_view* view,
                                       int64_t* first_row) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump is NULL");
    if (view == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "view: out pointer is NULL");
    const nucleus_status s = write_view(dump->reader.block(index), view);
    if (s == NUCLEUS_OK && first_row != nullptr) *first_row = dump->reader.block_first_row(index);
    return s;
  });
}

nucleus_status nucleus_dump_read(nucleus_dump* dump, int64_t first, int64_t count,
                                 nucleus_logits_view* view) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump is NULL");
    if (view == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "view: out pointer is NULL");
    return write_view(dump->reader.read(first, count), view);
  });
}

nucleus_status nucleus_dump_read_into(nucleus_dump* dump, int64_t first, int64_t count, void* dst) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump is NULL");
    const Status s = dump->reader.read_into(first, count, dst);  // (a NULL dst its call error)
    return s.ok() ? succeed() : fail(s);
  });
}

nucleus_status nucleus_dump_read_into_float32(nucleus_dump* dump, int64_t first, int64_t count,
                                              float* dst) {
  return guarded([&] {
    if (dump == nullptr) return fail(NUCLEUS_INVALID_ARGUMENT, "dump is NULL");
    const Status s = dump->reader.read_into_float32(first, count, dst);
    return s.ok() ? succeed() : fail(s);
  });
}

nucleus_status nucleus_dump_close(nucleus_dump* dump) {
  return guarded([&] {
    delete dump;
    return succeed();
  });
}

}  // extern "C"
