#include "bench/core/bench_core.h"

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <tuple>
#include <type_traits>

#include "bench/core/floor_kernels.h"
#include "engine/io/dump_extension.h"
#include "engine/io/half.h"
#include "nucleus/dump.h"
#include "tools/lm_logits.h"

namespace nucleus::bench {
namespace {

constexpr Config kAll[] = {Config::kGreedy, Config::kFull,    Config::kTopKTopP,   Config::kTopP,
                           Config::kMinP,   Config::kTypical, Config::kPenaltyTopP};
constexpr int64_t kHistory = 2000;

// The median of the times (the mean of the middle two for an even count).
double median_of(std::vector<double>& times) {
  const size_t n = times.size(), mid = n / 2;
  std::nth_element(times.begin(), times.begin() + static_cast<int64_t>(mid), times.end());
  if (n % 2 == 1) return times[mid];
  const double upper = times[mid];
  return 0.5 *
         (upper + *std::max_element(times.begin(), times.begin() + static_cast<int64_t>(mid)));
}

// Times one call of f into `into` (seconds).
template <typename F>
void timed(F& f, std::vector<double>& into) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  const auto t1 = std::chrono::steady_clock::now();
  into.push_back(std::chrono::duration<double>(t1 - t0).count());
}

// Median wall times of `repeat` calls of each of three functions, after two
// warm-up calls of each, taken in turns of kTurn calls (a × kTurn, b × kTurn,
// c × kTurn, a × kTurn, ...): on a shared machine whose speed drifts, every
// median sees the same stretch of time, so their ratios hold even when the
// absolute times move; within a turn each function runs back to back, warm,
// as when it was timed alone (calls taken one by one in turn made the
// softmax floor ~4 % slower here, which would flatter the ratios).
constexpr int kTurn = 10;
template <typename A, typename B, typename C>
std::array<double, 3> interleaved_medians(int repeat, A&& a, B&& b, C&& c) {
  for (int i = 0; i < 2; ++i) {
    a();
    b();
    c();
  }
  std::array<std::vector<double>, 3> times;
  for (auto& t : times) t.reserve(static_cast<size_t>(repeat));
  for (int done = 0; done < repeat; done += kTurn) {
    const int turn = std::min(kTurn, repeat - done);
    for (int i = 0; i < turn; ++i) timed(a, times[0]);
    for (int i = 0; i < turn; ++i) timed(b, times[1]);
    for (int i = 0; i < turn; ++i) timed(c, times[2]);
  }
  std::array<double, 3> medians{};
  for (size_t k = 0; k < 3; ++k) medians[k] = median_of(times[k]);
  return medians;
}

// Median wall times of `a` and `b` over `rounds` rounds of `a_calls` calls
// of a then `b_calls` calls of b, after a warm-up call of each: for a
// function too slow to take turns of kTurn (the reference) beside one that
// is not, so that the two medians still cover the same stretch of time.
template <typename A, typename B>
std::array<double, 2> alternating_medians(int rounds, A&& a, int a_calls, B&& b, int b_calls) {
  a();
  b();
  std::array<std::vector<double>, 2> times;
  for (int round = 0; round < rounds; ++round) {
    for (int i = 0; i < a_calls; ++i) timed(a, times[0]);
    for (int i = 0; i < b_calls; ++i) timed(b, times[1]);
  }
  return {median_of(times[0]), median_of(times[1])};
}

// The row as float32 values, whatever the stored dtype.
const float* row_f32(const Workload& w, int64_t row) { return w.f32.data() + row * w.vocab; }

// One row the way a sort-based sampler does it (HF TopK/TopP/MinP/Typical
// warpers, vLLM's CPU path): full-vocabulary sorts, then cumulative sums.
int32_t reference_row(Config config, const float* raw, int64_t vocab, const SamplingParams& p,
                      std::span<const int32_t> history, uint64_t seed) {
  std::vector<float> x(raw, raw + vocab);
  if (p.repetition_penalty != 1.0f) {
    std::vector<int32_t> seen(history.begin(), history.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t t : seen)
      x[t] = x[t] > 0 ? x[t] / p.repetition_penalty : x[t] * p.repetition_penalty;
  }
  if (config == Config::kGreedy) {
    return static_cast<int32_t>(std::max_element(x.begin(), x.end()) - x.begin());
  }
  const float inv_t = 1.0f / p.temperature;
  for (float& v : x) v *= inv_t;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  auto by_logit = [&](int32_t a, int32_t b) { return x[a] > x[b]; };
  size_t kept = order.size();
  if (p.top_k > 0) {
    kept = std::min<size_t>(kept, static_cast<size_t>(p.top_k));
    std::partial_sort(order.begin(), order.begin() + static_cast<int64_t>(kept), order.end(),
                      by_logit);
  } else if (config != Config::kFull) {
    std::sort(order.begin(), order.end(), by_logit);
  }
  const float xmax = *std::max_element(x.begin(), x.end());
  std::vector<double> prob(kept);
  double z = 0;
  for (size_t i = 0; i < kept; ++i)
    z += prob[i] = std::exp(static_cast<double>(x[order[i]] - xmax));
  for (double& v : prob) v /= z;
  if (p.top_p < 1.0f) {
    double cum = 0;
    size_t i = 0;
    while (i < kept && cum < p.top_p) cum += prob[i++];
    kept = std::max<size_t>(i, 1);
  }
  if (p.min_p > 0.0f) {
    size_t i = 1;
    while (i < kept && prob[i] >= p.min_p * prob[0]) ++i;
    kept = i;
  }
  if (p.typical_p < 1.0f) {
    double h = 0;
    for (size_t i = 0; i < kept; ++i) h -= prob[i] > 0 ? prob[i] * std::log(prob[i]) : 0.0;
    std::vector<size_t> by_s(kept);
    std::iota(by_s.begin(), by_s.end(), 0);
    auto s = [&](size_t i) { return std::fabs(-std::log(prob[i]) - h); };
    std::sort(by_s.begin(), by_s.end(), [&](size_t a, size_t b) { return s(a) < s(b); });
    double cum = 0;
    size_t n = 0;
    while (n < kept && cum < p.typical_p) cum += prob[by_s[n++]];
    std::vector<int32_t> chosen;
    std::vector<double> chosen_p;
    for (size_t i = 0; i < n; ++i) {
      chosen.push_back(order[by_s[i]]);
      chosen_p.push_back(prob[by_s[i]]);
    }
    std::copy(chosen.begin(), chosen.end(), order.begin());
    std::copy(chosen_p.begin(), chosen_p.end(), prob.begin());
    kept = n;
  }
  double total = 0;
  for (size_t i = 0; i < kept; ++i) total += prob[i];
  std::mt19937_64 rng(seed);
  const double target = std::uniform_real_distribution<double>(0.0, total)(rng);
  double cum = 0;
  for (size_t i = 0; i < kept; ++i) {
    cum += prob[i];
    if (cum >= target) return order[i];
  }
  return order[kept - 1];
}

// One arena per thread count for the whole run (as a server keeps its
// engine): creating one per pass, thousands of times, disturbed how oneTBB
// hands its workers to the engine's arena in the cases that followed.
tbb::task_arena& arena_for(int threads) {
  static std::map<int, std::unique_ptr<tbb::task_arena>> arenas;
  std::unique_ptr<tbb::task_arena>& a = arenas[threads];
  if (!a) a = std::make_unique<tbb::task_arena>(threads);
  return *a;
}

// f() run in `engine`'s arena when one is given (Engine::execute: the
// baselines then share the threads nucleus uses, which oneTBB would
// otherwise hand from one arena to the other only after a while), else in
// an arena of `threads` of the bench's own; returns what f returns.
// (Engine::execute takes a std::function: the wrapper it gets holds one
// reference, small enough to be stored without an allocation, so the timed
// baselines allocate nothing, as nucleus's calls do not.)
template <typename F>
auto in_arena(int threads, Engine* engine, F&& f) {
  auto run = [&](auto&& g) {
    if (engine) {
      engine->execute([&g] { g(); });
    } else {
      arena_for(threads).execute(g);
    }
  };
  if constexpr (std::is_void_v<decltype(f())>) {
    run(f);
  } else {
    decltype(f()) out{};
    run([&] { out = f(); });
    return out;
  }
}

// f(0) .. f(rows - 1) over the calling thread's arena.
template <typename F>
void for_rows(int64_t rows, F&& f) {
  tbb::parallel_for(int64_t{0}, rows, [&](int64_t r) { f(r); });
}

// A buffer kept between calls (one per type and slot), so that the timed
// baselines do not allocate, as the engine's steady state does not.
template <typename T, int kSlot>
std::vector<T>& kept(int64_t n) {
  thread_local std::vector<T> v;
  v.resize(static_cast<size_t>(n));
  return v;
}

}  // namespace

std::span<const Config> all_configs() { return kAll; }

const char* config_name(Config config) {
  switch (config) {
    case Config::kGreedy:
      return "greedy";
    case Config::kFull:
      return "full";
    case Config::kTopKTopP:
      return "topk-topp";
    case Config::kTopP:
      return "topp";
    case Config::kMinP:
      return "minp";
    case Config::kTypical:
      return "typical";
    case Config::kPenaltyTopP:
      return "penalty-topp";
  }
  return "?";
}

std::optional<Config> parse_config(std::string_view name) {
  for (Config c : kAll) {
    if (name == config_name(c)) return c;
  }
  return std::nullopt;
}

SamplingParams params_for(Config config) {
  SamplingParams p;
  switch (config) {
    case Config::kGreedy:
      p.temperature = 0.0f;
      break;
    case Config::kFull:
      break;
    case Config::kTopKTopP:
      p.temperature = 0.7f;
      p.top_k = 50;
      p.top_p = 0.9f;
      break;
    case Config::kTopP:
      p.top_p = 0.95f;
      break;
    case Config::kMinP:
      p.min_p = 0.05f;
      break;
    case Config::kTypical:
      p.typical_p = 0.9f;
      break;
    case Config::kPenaltyTopP:
      p.repetition_penalty = 1.2f;
      p.top_p = 0.9f;
      break;
  }
  return p;
}

LogitsView Workload::view() const {
  const void* data = dtype == DType::kFloat32 ? static_cast<const void*>(f32.data())
                                              : static_cast<const void*>(half.data());
  return LogitsView{data, rows, vocab, vocab, dtype};
}

const char* rows_name(Rows rows) {
  switch (rows) {
    case Rows::kPeakedFlat:
      return "peaked-flat";
    case Rows::kPeaked:
      return "peaked";
    case Rows::kMedium:
      return "medium";
    case Rows::kFlat:
      return "flat";
  }
  return "?";
}

std::optional<Rows> parse_rows(std::string_view name) {
  for (Rows r : {Rows::kPeakedFlat, Rows::kPeaked, Rows::kMedium, Rows::kFlat}) {
    if (name == rows_name(r)) return r;
  }
  return std::nullopt;
}

namespace {

// Rounds a workload's float32 values to its dtype, keeping the stored bits,
// and draws its penalty history.
void finish_workload(Workload& w, uint64_t seed) {
  if (w.dtype != DType::kFloat32) {
    w.half.resize(w.f32.size());
    const bool f16 = w.dtype == DType::kFloat16;
    for (size_t i = 0; i < w.f32.size(); ++i) {
      w.half[i] =
          f16 ? detail::float_to_half_bits(w.f32[i]) : detail::float_to_bfloat16_bits(w.f32[i]);
      w.f32[i] = detail::half_to_float(w.half[i], w.dtype);
    }
  }
  std::mt19937_64 rng(seed + 7);
  w.history.resize(kHistory);
  for (int32_t& t : w.history) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(w.vocab));
}

}  // namespace

Workload make_workload(int64_t rows, int64_t vocab, DType dtype, uint64_t seed, Rows kind) {
  Workload w;
  w.rows = rows;
  w.vocab = vocab;
  w.dtype = dtype;
  w.f32.resize(static_cast<size_t>(rows * vocab));
  if (kind == Rows::kPeakedFlat) {
    // Alternate peaked and flat rows: the nucleus size is what top-p pays for.
    const auto peaked =
        tools::make_lm_logits((rows + 1) / 2, vocab, tools::LmRowKind::kPeaked, seed);
    const auto flat = tools::make_lm_logits(rows / 2, vocab, tools::LmRowKind::kFlat, seed + 1);
    for (int64_t r = 0; r < rows; ++r) {
      const float* src =
          (r % 2 == 0) ? peaked.data() + (r / 2) * vocab : flat.data() + (r / 2) * vocab;
      std::copy_n(src, vocab, w.f32.data() + r * vocab);
    }
  } else {
    // (the same rows as the alternating workload's of that kind)
    const auto one = kind == Rows::kPeaked   ? tools::LmRowKind::kPeaked
                     : kind == Rows::kMedium ? tools::LmRowKind::kMedium
                                             : tools::LmRowKind::kFlat;
    const auto x = tools::make_lm_logits(rows, vocab, one, kind == Rows::kFlat ? seed + 1 : seed);
    std::copy(x.begin(), x.end(), w.f32.begin());
  }
  finish_workload(w, seed);
  return w;
}

namespace {

// `x` as stored in `dtype` (rounded to nearest even), back as float32.
float stored_as(float x, DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return detail::half_bits_to_float(detail::float_to_half_bits(x));
    case DType::kBFloat16:
      return detail::bfloat16_bits_to_float(detail::float_to_bfloat16_bits(x));
    case DType::kFloat32:
      break;
  }
  return x;
}

// Every row must sample as stored in `dtype`: no NaN or +inf (a row error),
// at least one finite logit (-inf is a masked token).
Status check_samplable(const InputRows& input, DType dtype) {
  const std::string as = dtype == DType::kFloat32 ? "" : std::string(" as ") + dtype_name(dtype);
  for (int64_t r = 0; r < input.rows; ++r) {
    const float* row = input.values.data() + r * input.vocab;
    bool finite = false;
    for (int64_t i = 0; i < input.vocab; ++i) {
      const float x = stored_as(row[i], dtype);
      if (std::isnan(x) || x == std::numeric_limits<float>::infinity()) {
        char value[32];
        std::snprintf(value, sizeof value, "%.9g", static_cast<double>(row[i]));
        return Status::invalid_argument(
            input.path + ": row " + std::to_string(r) + ": token " + std::to_string(i) + " = " +
            value + (std::isnan(row[i]) || as.empty() ? "" : " is +inf" + as) +
            ": bench rows must sample (a NaN or +inf logit is a row error)");
      }
      finite = finite || std::isfinite(x);
    }
    if (!finite) {
      return Status::invalid_argument(input.path + ": row " + std::to_string(r) +
                                      " has no finite logit" + as + ": bench rows must sample");
    }
  }
  return Status();
}

}  // namespace

Result<InputRows> read_input_rows(const std::string& path, const std::string& tensor,
                                  int64_t max_rows, std::span<const DType> dtypes,
                                  const std::function<Status(int64_t, int64_t)>& before_read) {
  DumpOptions options;
  options.tensor = tensor;
  // (a raw dump's extension, before the reader says it needs a dtype and a
  // vocab, which bench takes neither of; without dtype and vocab the reader
  // opens nothing else as raw)
  if (detail::raw_dump_extension(detail::extension_of(path))) {
    return Status::invalid_argument(path + ": bench --input reads .npy and .safetensors dumps");
  }
  Result<DumpReader> reader = DumpReader::open(path, options);
  if (!reader.ok()) {
    // (the reader's "unknown format" suggests reading the file as raw rows
    // with a dtype and a vocab, which bench takes neither of)
    if (reader.status().message().find(": unknown format:") != std::string::npos) {
      return Status::io_error(path +
                              ": unknown format: bench --input reads .npy and .safetensors "
                              "dumps (save raw rows as .npy)");
    }
    return reader.status();
  }
  const DumpInfo& info = reader->info();
  InputRows input;
  input.path = path;
  input.tensor = info.tensor;
  input.vocab = info.vocab;
  input.rows = std::min(info.rows, std::max<int64_t>(max_rows, 1));
  if (before_read) {
    if (Status s = before_read(input.rows, input.vocab); !s.ok()) return s;
  }
  input.values.resize(static_cast<size_t>(input.rows * input.vocab));
  for (int64_t first = 0; first < input.rows; first += reader->block_rows()) {
    const int64_t count = std::min(reader->block_rows(), input.rows - first);
    float* out = input.values.data() + first * input.vocab;
    if (Status s = reader->read_into_float32(first, count, out); !s.ok()) return s;
  }
  if (Status s = check_samplable(input, DType::kFloat32); !s.ok()) return s;
  for (const DType dtype : dtypes) {
    if (Status s = check_samplable(input, dtype); !s.ok()) return s;
  }
  return input;
}

Workload input_workload(const InputRows& input, int64_t rows, int64_t first, DType dtype,
                        uint64_t seed) {
  Workload w;
  w.rows = rows;
  w.vocab = input.vocab;
  w.dtype = dtype;
  w.f32.resize(static_cast<size_t>(rows * input.vocab));
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t from = (first + r) % input.rows;
    std::copy_n(input.values.data() + from * input.vocab, input.vocab,
                w.f32.data() + r * input.vocab);
  }
  finish_workload(w, seed);
  return w;
}

std::vector<RowRequest> make_requests(Config config, const Workload& w, bool logprobs) {
  std::vector<RowRequest> requests(static_cast<size_t>(w.rows));
  for (int64_t r = 0; r < w.rows; ++r) {
    RowRequest& req = requests[static_cast<size_t>(r)];
    req.params = params_for(config);
    req.params.logprobs = logprobs;
    req.seed = 1000 + static_cast<uint64_t>(r);
    if (config == Config::kPenaltyTopP) req.generated_tokens = w.history;
  }
  return requests;
}

double roofline_pass(const Workload& w, int threads, Isa isa, Engine* engine) {
  // Fixed slices of the flat buffer, so a single long row still uses the
  // threads. (Not the engine's 16384-token chunks: a read is so cheap that
  // splitting a short one costs more than it saves, a 32000-token row on
  // two threads 0.9 -> 1.6 us on the development machine, and a roofline is
  // the fastest read.)
  constexpr int64_t kSlice = 1 << 16;
  const FloorKernels& k = floor_kernels_for(isa);
  const int64_t n = w.rows * w.vocab;
  const int64_t slices = (n + kSlice - 1) / kSlice;
  return in_arena(threads, engine, [&] {
    std::vector<double>& partial = kept<double, 0>(slices);
    for_rows(slices, [&](int64_t s) {
      const int64_t begin = s * kSlice;
      const int64_t len = std::min(kSlice, n - begin);
      partial[static_cast<size_t>(s)] = w.dtype == DType::kFloat32
                                            ? k.read_f32(w.f32.data() + begin, len)
                                            : k.read_u16(w.half.data() + begin, len);
    });
    return std::accumulate(partial.begin(), partial.end(), 0.0);
  });
}

double softmax_floor_pass(const Workload& w, int threads, Isa isa, Engine* engine) {
  const FloorKernels& k = floor_kernels_for(isa);
  auto at = [&](int64_t r, int64_t j) {
    return w.dtype == DType::kFloat32 ? static_cast<const void*>(row_f32(w, r) + j)
                                      : static_cast<const void*>(w.half.data() + r * w.vocab + j);
  };
  if (engine) threads = engine->max_threads();
  // Fewer rows than threads: each row split into the engine's chunks, each
  // chunk's max and sum in one pass, combined per row, as the engine splits
  // such rows (its own condition and chunk size), so the floor uses the
  // threads it does.
  constexpr int64_t kSlice = detail::kChunk;
  const bool split = w.rows < threads && w.vocab > kSlice;
  return in_arena(threads, engine, [&] {
    if (!split) {
      std::vector<double>& partial = kept<double, 0>(w.rows);
      for_rows(w.rows, [&](int64_t r) {
        partial[static_cast<size_t>(r)] = k.slice_mass(at(r, 0), w.dtype, w.vocab).sum;
      });
      return std::accumulate(partial.begin(), partial.end(), 0.0);
    }
    const int64_t per_row = (w.vocab + kSlice - 1) / kSlice;
    const int64_t slices = w.rows * per_row;
    auto len = [&](int64_t s) { return std::min(kSlice, w.vocab - (s % per_row) * kSlice); };
    std::vector<Mass>& masses = kept<Mass, 0>(slices);
    for_rows(slices, [&](int64_t s) {
      masses[static_cast<size_t>(s)] =
          k.slice_mass(at(s / per_row, (s % per_row) * kSlice), w.dtype, len(s));
    });
    double total = 0.0;
    for (int64_t r = 0; r < w.rows; ++r) {
      const auto first = masses.begin() + r * per_row;
      total += std::accumulate(first + 1, first + per_row, *first, combined).sum;
    }
    return total;
  });
}

void reference_pass(Config config, const Workload& w, int threads, std::vector<int32_t>& tokens,
                    Engine* engine) {
  tokens.resize(static_cast<size_t>(w.rows));
  const SamplingParams p = params_for(config);
  std::span<const int32_t> history;
  if (config == Config::kPenaltyTopP) history = w.history;
  in_arena(threads, engine, [&] {
    for_rows(w.rows, [&](int64_t r) {
      tokens[static_cast<size_t>(r)] = reference_row(config, row_f32(w, r), w.vocab, p, history,
                                                     1000 + static_cast<uint64_t>(r));
    });
  });
}

namespace {
uint64_t cached_seed = 0;
Rows cached_rows = Rows::kPeakedFlat;
std::shared_ptr<const InputRows> cached_input;
}  // namespace

uint64_t batch_seed(uint64_t seed, int k) { return seed + 1000 * static_cast<uint64_t>(k); }

std::string rows_memory_error(int distinct, int64_t batch, int64_t vocab,
                              std::span<const DType> dtypes, int64_t input_rows) {
  int64_t elem = 4;
  for (DType d : dtypes) elem = std::max<int64_t>(elem, d == DType::kFloat32 ? 4 : 6);
  const double need =
      (static_cast<double>(distinct) * static_cast<double>(batch) * static_cast<double>(elem) +
       static_cast<double>(input_rows) * 4.0) *
      static_cast<double>(vocab);
  const double have =
      static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  if (!(have > 0 && need > have / 2)) return {};
  char text[128];
  std::snprintf(text, sizeof text,
                "need %.1f GiB of rows, more than half of this machine's %.1f GiB",
                need / (1u << 30), have / (1u << 30));
  return text;
}

Result<CaseResult> run_case(const Case& c, const Options& options) {
  CaseResult out;
  out.c = c;
  // Cases of a grid share their workloads while only the threads or the
  // configuration change: keep the last ones.
  static std::vector<Workload> cached;
  const auto distinct = static_cast<size_t>(std::max(1, options.distinct));
  if (cached.size() != distinct || cached[0].rows != c.batch || cached[0].vocab != c.vocab ||
      cached[0].dtype != c.dtype || cached_seed != options.seed || cached_rows != options.rows ||
      cached_input != options.input) {
    cached.clear();  // (freed before the next ones are made)
    for (size_t k = 0; k < distinct; ++k) {
      const uint64_t seed = batch_seed(options.seed, static_cast<int>(k));
      cached.push_back(options.input
                           ? input_workload(*options.input, c.batch,
                                            static_cast<int64_t>(k) * c.batch, c.dtype, seed)
                           : make_workload(c.batch, c.vocab, c.dtype, seed, options.rows));
    }
    cached_seed = options.seed;
    cached_rows = options.rows;
    cached_input = options.input;
  }
  const std::vector<Workload>& ws = cached;
  std::vector<std::vector<RowRequest>> requests;
  std::vector<LogitsView> views;
  for (const Workload& w : ws) {
    requests.push_back(make_requests(c.config, w, options.logprobs));
    views.push_back(w.view());
  }
  // Each timed function takes the batches in turn, from its own count.
  auto next = [distinct](size_t& i) { return i++ % distinct; };
  size_t at_nucleus = 0, at_roof = 0, at_soft = 0, at_ref = 0;
  std::vector<RowResult> results(static_cast<size_t>(c.batch));
  // One engine per (threads, instruction set) for the whole run, as a server
  // keeps one: its arena and scratch stay warm from case to case.
  static std::map<std::tuple<int, Isa, uint64_t, ReadAhead>, std::unique_ptr<Engine>> engines;
  std::unique_ptr<Engine>& slot = engines[{c.threads, c.isa, options.seed, options.read_ahead}];
  if (!slot) {
    slot = std::make_unique<Engine>(EngineOptions{.max_threads = c.threads,
                                                  .seed = options.seed,
                                                  .isa = c.isa,
                                                  .read_ahead = options.read_ahead});
  }
  Engine& engine = *slot;
  const Isa isa = engine.isa();
  out.c.isa = isa;
  const double rows = static_cast<double>(c.batch);

  // The baselines run in the engine's arena (Engine::execute), on its
  // threads (max_threads, should the engine have capped c.threads): oneTBB hands
  // an idle worker to another arena only after ~0.2 ms, so in an arena of
  // their own either they or nucleus would start each turn without the
  // other thread (at batch 1 on two threads the floor then ran no faster
  // than on one, and nucleus at 1.2x or 1.55x its one-thread speed,
  // depending on which arena kept the worker).
  for (size_t k = 0; k < ws.size(); ++k) {
    // (named by the batch when --distinct times several)
    const std::string batch = ws.size() > 1 ? "batch " + std::to_string(k) + ": " : "";
    if (Status s = engine.sample(views[k], requests[k], results); !s.ok()) {
      return Status::invalid_argument(batch + s.message());
    }
    for (const RowResult& r : results) {
      if (!r.status.ok()) return Status::invalid_argument(batch + r.status.message());
    }
  }
  volatile double sink = 0;
  const auto [t_nucleus, t_roof, t_soft] = interleaved_medians(
      options.repeat,
      [&] {
        const size_t k = next(at_nucleus);
        // (checked above: the same call on the same rows)
        (void)engine.sample(views[k], requests[k], results);
      },
      [&] { sink = sink + roofline_pass(ws[next(at_roof)], c.threads, isa, &engine); },
      [&] { sink = sink + softmax_floor_pass(ws[next(at_soft)], c.threads, isa, &engine); });
  out.us_per_row = t_nucleus / rows * 1e6;
  out.rows_per_s = rows / t_nucleus;
  out.gb_per_s = static_cast<double>(ws[0].bytes()) / t_nucleus / 1e9;
  out.roofline_us_per_row = t_roof / rows * 1e6;
  out.softmax_us_per_row = t_soft / rows * 1e6;
  out.vs_roofline = t_roof / t_nucleus;
  out.vs_softmax = t_nucleus / t_soft;
  if (options.reference) {
    std::vector<int32_t> tokens;
    // The reference is slow: fewer calls keep a grid affordable, each
    // followed by a turn of the engine's, whose median over those turns is
    // what the reference's is compared with (the engine's median above saw
    // another stretch of time).
    const int rounds = std::max(3, options.repeat / 5);
    const auto [t_ref, t_beside] = alternating_medians(
        rounds, [&] { reference_pass(c.config, ws[next(at_ref)], c.threads, tokens, &engine); }, 1,
        [&] {
          const size_t k = next(at_nucleus);
          (void)engine.sample(views[k], requests[k], results);
        },
        kTurn);
    out.reference_us_per_row = t_ref / rows * 1e6;
    out.vs_reference = t_ref / t_beside;
  }
  return out;
}

std::string format_table(std::span<const CaseResult> results) {
  std::string text;
  char line[256];
  std::snprintf(line, sizeof line, "%-13s %7s %5s %4s %3s %6s %10s %11s %7s %8s %9s %9s %9s\n",
                "config", "vocab", "batch", "type", "thr", "isa", "us/row", "rows/s", "GB/s",
                "roofline", "x softmax", "ref us", "x faster");
  text += line;
  for (const CaseResult& r : results) {
    char ref_us[32] = "-";
    char speedup[32] = "-";
    if (r.reference_us_per_row > 0) {
      std::snprintf(ref_us, sizeof ref_us, "%.1f", r.reference_us_per_row);
      std::snprintf(speedup, sizeof speedup, "%.1f", r.vs_reference);
    }
    std::snprintf(line, sizeof line,
                  "%-13s %7lld %5lld %4s %3d %6s %10.2f %11.0f %7.2f %7.0f%% %9.2f %9s %9s\n",
                  config_name(r.c.config), static_cast<long long>(r.c.vocab),
                  static_cast<long long>(r.c.batch), dtype_name(r.c.dtype), r.c.threads,
                  isa_name(r.c.isa), r.us_per_row, r.rows_per_s, r.gb_per_s, 100.0 * r.vs_roofline,
                  r.vs_softmax, ref_us, speedup);
    text += line;
  }
  return text;
}

}  // namespace nucleus::bench
