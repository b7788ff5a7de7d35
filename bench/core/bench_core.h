// nucleus — the benchmark harness shared by `nucleus bench` and the Google
// Benchmark programs in bench/: LM-like workloads, the seven decoding
// configurations, and the three baselines every figure is compared with,
// measured in the same run on the same buffers:
//   roofline      one streaming read (sum) of the batch as stored;
//   softmax floor one fused max + exp + sum pass per row (Eigen's exp): a
//                 plain online softmax (rows split across threads as the
//                 engine splits them when there are fewer rows than threads);
//   reference     a sort-based sampler, the way HF transformers, vLLM's CPU
//                 path and CTranslate2 do it (std::sort / std::partial_sort of
//                 the row, cumulative sums, a draw).
//
// Example:
//   Result<CaseResult> r =
//       nucleus::bench::run_case({Config::kTopP, 128256, 1, DType::kFloat32, 1}, opts);
//   std::printf("%.1f us/row, %.2fx the softmax floor\n", r.us_per_row, r.vs_softmax);
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"
#include "nucleus/status.h"

namespace nucleus::bench {

enum class Config {
  kGreedy,       // temperature 0
  kFull,         // full-vocabulary sampling, no filters
  kTopKTopP,     // temperature 0.7 + top-k 50 + top-p 0.9
  kTopP,         // top-p 0.95, no top-k
  kMinP,         // min-p 0.05
  kTypical,      // typical-p 0.9
  kPenaltyTopP,  // repetition penalty 1.2 over a 2,000-token history + top-p 0.9
};

std::span<const Config> all_configs();
const char* config_name(Config config);
std::optional<Config> parse_config(std::string_view name);
SamplingParams params_for(Config config);

// Which LM-like rows a workload holds (tools/lm_logits.h): peaked and flat
// alternating (the default: served traffic has both, and the nucleus size is
// what top-p and typical-p pay for), or every row of one kind.
enum class Rows { kPeakedFlat, kPeaked, kMedium, kFlat };
const char* rows_name(Rows rows);
std::optional<Rows> parse_rows(std::string_view name);

// A batch of LM-like logits, stored in the requested dtype.
struct Workload {
  int64_t rows = 0;
  int64_t vocab = 0;
  DType dtype = DType::kFloat32;
  // Rows start on 64-byte boundaries, as a framework's tensors do (PyTorch's
  // CPU allocator aligns to 64 bytes; each row of these vocabularies is a
  // whole number of cache lines).
  detail::AlignedVector<float> f32;      // the values, as float32 (after rounding to dtype)
  detail::AlignedVector<uint16_t> half;  // the stored bits for f16 / bf16
  std::vector<int32_t> history;          // 2,000 tokens for the penalty configuration

  LogitsView view() const;
  int64_t bytes() const { return rows * vocab * dtype_size(dtype); }
};
Workload make_workload(int64_t rows, int64_t vocab, DType dtype, uint64_t seed,
                       Rows kind = Rows::kPeakedFlat);

// Rows of a real model's logits to time in place of the LM-like ones: the
// first rows of a dump, as float32.
struct InputRows {
  std::string path;
  std::string tensor;  // .safetensors: the tensor read
  int64_t rows = 0;    // read (at most the max_rows asked for)
  int64_t vocab = 0;
  std::vector<float> values;  // rows × vocab
};

// Reads up to `max_rows` rows of a .npy or .safetensors dump (`tensor`: the
// .safetensors tensor; empty = the only one). Every row must sample, as
// read and as stored in each of `dtypes`: a NaN or +inf logit (70000 is +inf
// in f16), or a row without a finite one, is refused, naming the row, the
// token and the dtype (the sort-based reference cannot order NaN).
// `before_read(rows, vocab)`, when given, runs once the header is read and
// before the rows are: an error from it is returned (a memory check).
Result<InputRows> read_input_rows(
    const std::string& path, const std::string& tensor, int64_t max_rows,
    std::span<const DType> dtypes,
    const std::function<Status(int64_t rows, int64_t vocab)>& before_read = {});

// A batch of `rows` of the input's rows, from row `first` on (wrapping
// round to row 0 after the last), stored in `dtype` (rounded to it as
// make_workload rounds); its penalty history is made as make_workload's.
Workload input_workload(const InputRows& input, int64_t rows, int64_t first, DType dtype,
                        uint64_t seed);

// One request per row: the configuration's parameters, a per-row seed.
std::vector<RowRequest> make_requests(Config config, const Workload& w, bool logprobs);

struct Case {
  Config config = Config::kFull;
  int64_t vocab = 128256;
  int64_t batch = 1;
  DType dtype = DType::kFloat32;
  int threads = 1;
  Isa isa = Isa::kAuto;  // the highest instruction set (EngineOptions::isa); resolved in results
};

struct Options {
  int repeat = 30;        // timed calls per measurement (the median is kept)
  bool reference = true;  // also time the sort-based sampler (slow at large sizes)
  bool logprobs = false;  // ask for the sampled tokens' logprobs too
  uint64_t seed = 1;
  // The engines' EngineOptions::read_ahead.
  ReadAhead read_ahead = ReadAhead::kAuto;
  Rows rows = Rows::kPeakedFlat;
  // Batches timed in turn (call i reads batch i mod distinct), all of the
  // same kind, each with its own values. With 1, every call reads the same
  // batch: its rows stay in cache and the CPU's branch predictors learn the
  // data-dependent branches of its passes, which a decoder, sampling each
  // row once, never enjoys. Every baseline takes its batches in the same turn.
  int distinct = 1;
  // The rows to time, when not LM-like ones (Case::vocab must be its vocab):
  // batch k of a case starts at row k × batch of it.
  std::shared_ptr<const InputRows> input;
};

struct CaseResult {
  Case c;
  double us_per_row = 0;  // nucleus, median
  double rows_per_s = 0;
  double gb_per_s = 0;  // bytes of logits read per second
  double roofline_us_per_row = 0;
  double softmax_us_per_row = 0;
  double reference_us_per_row = 0;  // 0 when not measured
  double vs_roofline = 0;           // nucleus bandwidth / roofline bandwidth
  double vs_softmax = 0;            // nucleus time / softmax floor time
  double vs_reference = 0;          // reference time / nucleus time (speed-up); 0 when not measured
};

// Batch k of a case's Options::distinct batches: the first is the workload of
// `seed`, the others have seeds of their own.
uint64_t batch_seed(uint64_t seed, int k);

// Whether `distinct` batches of `batch` x `vocab` rows (the largest of the
// dtypes asked for: a half-precision one is kept with its float32 copy),
// and `input_rows` float32 rows of an --input dump kept beside them, fit
// in half of this machine's memory: empty when they do, else why not, as
// "need 12.3 GiB of rows, more than half of this machine's 23.4 GiB".
std::string rows_memory_error(int distinct, int64_t batch, int64_t vocab,
                              std::span<const DType> dtypes, int64_t input_rows = 0);

// Times one case: nucleus, the roofline and the floor, each the median of
// `options.repeat` calls in alternating turns on the same buffers
// (options.distinct batches in turn) with the same thread count; then the
// reference, the median of max(3, repeat / 5) calls over the float32 rows.
// Each batch is sampled once first, untimed: a call or row error there is
// the case's error (times of failing calls would be no measure). Not
// thread-safe (it keeps the last workload for the next case).
Result<CaseResult> run_case(const Case& c, const Options& options);

// The three baselines, exposed for the Google Benchmark programs. Each runs
// over the whole batch with up to `threads` threads, in an oneTBB arena of
// the bench's own, or, given an engine, in that engine's arena with its
// max_threads (Engine::execute: on the threads the engine samples with, as
// `nucleus bench` runs them), and returns a value that depends on every
// element (so nothing is optimised away). `isa` is the instruction set
// their kernels are built for (never kAuto).
double roofline_pass(const Workload& w, int threads, Isa isa, Engine* engine = nullptr);
double softmax_floor_pass(const Workload& w, int threads, Isa isa, Engine* engine = nullptr);
// The sort-based sampler; writes one token per row.
void reference_pass(Config config, const Workload& w, int threads, std::vector<int32_t>& tokens,
                    Engine* engine = nullptr);

// A fixed-width table of results, one line per case.
std::string format_table(std::span<const CaseResult> results);

}  // namespace nucleus::bench
