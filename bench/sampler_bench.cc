// Google Benchmark grid: every configuration × vocab {32000, 128256, 151936,
// 256000} × batch {1, 8, 64, 256} × {f32, bf16} × {1 thread, all threads},
// with the three baselines (roofline, softmax floor, sort-based reference)
// registered over the same buffers so one run measures them side by side.
//
// The whole grid takes a long time (the reference sorts every row); pick a
// slice with --benchmark_filter, e.g.
//   sampler_bench --benchmark_filter='/128256/1/f32/1/'
// Counters: rows/s and bytes/s of logits read. `nucleus bench` prints the same
// measurements as ratios. --distinct=N (read here, before Google Benchmark's
// flags) times N different batches of each shape in turn, every baseline
// too, as `nucleus bench --distinct N` does (Options::distinct: with the
// default 1 every iteration reads the same, cached batch); a shape whose N
// batches would take more than half of the machine's memory is skipped with
// that reason (bench_core's rows_memory_error, as `nucleus bench` checks).
#include <benchmark/benchmark.h>
#include <tbb/info.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "bench/core/bench_core.h"

namespace nb = nucleus::bench;

namespace {

constexpr int64_t kVocabs[] = {32000, 128256, 151936, 256000};
constexpr int64_t kBatches[] = {1, 8, 64, 256};
constexpr nucleus::DType kDtypes[] = {nucleus::DType::kFloat32, nucleus::DType::kBFloat16};

int distinct = 1;  // --distinct=N

// A shape's `distinct` batches (iteration i reads batch i mod distinct),
// shared by the benchmarks over it, which run one after another (registered
// shape by shape): only the last shape's are kept, so memory holds one
// shape's batches, not the grid's (interleaved benchmarks rebuild them as
// shapes alternate: the same batches, only slower to start). None, with the
// benchmark skipped and the reason given, when they would take more than
// half of the machine's memory (as `nucleus bench` refuses such a grid).
std::span<const nb::Workload> workloads(benchmark::State& state, int64_t vocab, int64_t batch,
                                        nucleus::DType dtype) {
  static std::tuple<int64_t, int64_t, int> shape{-1, -1, -1};
  static std::vector<nb::Workload> kept;
  const std::tuple<int64_t, int64_t, int> wanted{vocab, batch, static_cast<int>(dtype)};
  if (wanted != shape) {
    kept.clear();
    shape = {-1, -1, -1};
    const std::string why = nb::rows_memory_error(distinct, batch, vocab, {&dtype, 1});
    if (!why.empty()) {
      state.SkipWithError(("--distinct=" + std::to_string(distinct) + " batches " + why).c_str());
      return {};
    }
    for (int k = 0; k < distinct; ++k) {
      kept.push_back(nb::make_workload(batch, vocab, dtype, nb::batch_seed(1, k)));
    }
    shape = wanted;
  }
  return kept;
}

void set_counters(benchmark::State& state, const nb::Workload& w) {
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(w.rows * state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.SetBytesProcessed(w.bytes() * state.iterations());
}

void nucleus_case(benchmark::State& state, nb::Config config, int64_t vocab, int64_t batch,
                  nucleus::DType dtype, int threads) {
  const std::span<const nb::Workload> ws = workloads(state, vocab, batch, dtype);
  if (ws.empty()) return;
  std::vector<std::vector<nucleus::RowRequest>> requests;
  for (const nb::Workload& w : ws) requests.push_back(nb::make_requests(config, w, false));
  std::vector<nucleus::RowResult> results(static_cast<size_t>(batch));
  nucleus::Engine engine({.max_threads = threads, .seed = 1});
  size_t i = 0;
  for (auto _ : state) {
    const size_t k = i++ % ws.size();
    const nucleus::Status s = engine.sample(ws[k].view(), requests[k], results);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(results.data());
  }
  set_counters(state, ws[0]);
}

void roofline_case(benchmark::State& state, int64_t vocab, int64_t batch, nucleus::DType dtype,
                   int threads) {
  const std::span<const nb::Workload> ws = workloads(state, vocab, batch, dtype);
  if (ws.empty()) return;
  size_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(
        nb::roofline_pass(ws[i++ % ws.size()], threads, nucleus::resolve_isa(nucleus::Isa::kAuto)));
  set_counters(state, ws[0]);
}

void softmax_case(benchmark::State& state, int64_t vocab, int64_t batch, nucleus::DType dtype,
                  int threads) {
  const std::span<const nb::Workload> ws = workloads(state, vocab, batch, dtype);
  if (ws.empty()) return;
  size_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(nb::softmax_floor_pass(ws[i++ % ws.size()], threads,
                                                    nucleus::resolve_isa(nucleus::Isa::kAuto)));
  set_counters(state, ws[0]);
}

void reference_case(benchmark::State& state, nb::Config config, int64_t vocab, int64_t batch,
                    nucleus::DType dtype, int threads) {
  const std::span<const nb::Workload> ws = workloads(state, vocab, batch, dtype);
  if (ws.empty()) return;
  std::vector<int32_t> tokens;
  size_t i = 0;
  for (auto _ : state) {
    nb::reference_pass(config, ws[i++ % ws.size()], threads, tokens);
    benchmark::DoNotOptimize(tokens.data());
  }
  set_counters(state, ws[0]);
}

std::string join(std::initializer_list<std::string> parts) {
  std::string out;
  for (const std::string& p : parts) {
    if (!out.empty()) out += '/';
    out += p;
  }
  return out;
}

void register_grid() {
  const int all = tbb::info::default_concurrency();
  for (int64_t vocab : kVocabs) {
    for (int64_t batch : kBatches) {
      for (nucleus::DType dtype : kDtypes) {
        for (int threads : {1, all}) {
          const std::string shape = join({std::to_string(vocab), std::to_string(batch),
                                          nucleus::dtype_name(dtype), std::to_string(threads)});
          benchmark::RegisterBenchmark(join({"roofline", shape}).c_str(), roofline_case, vocab,
                                       batch, dtype, threads)
              ->UseRealTime();
          benchmark::RegisterBenchmark(join({"softmax_floor", shape}).c_str(), softmax_case, vocab,
                                       batch, dtype, threads)
              ->UseRealTime();
          for (nb::Config config : nb::all_configs()) {
            benchmark::RegisterBenchmark(join({"nucleus", nb::config_name(config), shape}).c_str(),
                                         nucleus_case, config, vocab, batch, dtype, threads)
                ->UseRealTime();
            benchmark::RegisterBenchmark(
                join({"reference", nb::config_name(config), shape}).c_str(), reference_case, config,
                vocab, batch, dtype, threads)
                ->UseRealTime();
          }
          if (all == 1) break;
        }
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // (our one flag, taken out of argv before Google Benchmark checks it)
  int kept = 1;
  for (int a = 1; a < argc; ++a) {
    if (std::strncmp(argv[a], "--distinct=", 11) == 0) {
      char* end = nullptr;
      const long n = std::strtol(argv[a] + 11, &end, 10);
      if (*end != '\0' || n < 1 || n > 1000) {
        std::fprintf(stderr, "sampler_bench: --distinct wants a count from 1 to 1000, not '%s'\n",
                     argv[a] + 11);
        return 2;
      }
      distinct = static_cast<int>(n);
      continue;
    }
    argv[kept++] = argv[a];
  }
  argc = kept;
  register_grid();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
