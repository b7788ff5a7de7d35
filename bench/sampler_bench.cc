// Google Benchmark grid: every configuration × vocab {32000, 128256, 151936,
// 256000} × batch {1, 8, 64, 256} × {f32, bf16} × {1 thread, all threads},
// with the three baselines (roofline, softmax floor, sort-based reference)
// registered over the same buffers so one run measures them side by side.
//
// The whole grid takes a long time (the reference sorts every row); pick a
// slice with --benchmark_filter, e.g.
//   sampler_bench --benchmark_filter='/128256/1/f32/1$'
// Counters: rows/s and bytes/s of logits read. `nucleus bench` prints the same
// measurements as ratios.
#include <benchmark/benchmark.h>
#include <tbb/info.h>

#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "bench/core/bench_core.h"

namespace nb = nucleus::bench;

namespace {

constexpr int64_t kVocabs[] = {32000, 128256, 151936, 256000};
constexpr int64_t kBatches[] = {1, 8, 64, 256};
constexpr nucleus::DType kDtypes[] = {nucleus::DType::kFloat32, nucleus::DType::kBFloat16};

// Workloads are built once per shape and shared by every benchmark over it.
const nb::Workload& workload(int64_t vocab, int64_t batch, nucleus::DType dtype) {
  static std::map<std::tuple<int64_t, int64_t, int>, std::unique_ptr<nb::Workload>> cache;
  auto& slot = cache[{vocab, batch, static_cast<int>(dtype)}];
  if (!slot) slot = std::make_unique<nb::Workload>(nb::make_workload(batch, vocab, dtype, 1));
  return *slot;
}

void set_counters(benchmark::State& state, const nb::Workload& w) {
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(w.rows * state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.SetBytesProcessed(w.bytes() * state.iterations());
}

void nucleus_case(benchmark::State& state, nb::Config config, int64_t vocab, int64_t batch,
                  nucleus::DType dtype, int threads) {
  const nb::Workload& w = workload(vocab, batch, dtype);
  const auto requests = nb::make_requests(config, w, /*logprobs=*/false);
  std::vector<nucleus::RowResult> results(static_cast<size_t>(batch));
  nucleus::Engine engine({.max_threads = threads, .seed = 1});
  for (auto _ : state) {
    const nucleus::Status s = engine.sample(w.view(), requests, results);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(results.data());
  }
  set_counters(state, w);
}

void roofline_case(benchmark::State& state, int64_t vocab, int64_t batch, nucleus::DType dtype,
                   int threads) {
  const nb::Workload& w = workload(vocab, batch, dtype);
  for (auto _ : state)
    benchmark::DoNotOptimize(
        nb::roofline_pass(w, threads, nucleus::resolve_isa(nucleus::Isa::kAuto)));
  set_counters(state, w);
}

void softmax_case(benchmark::State& state, int64_t vocab, int64_t batch, nucleus::DType dtype,
                  int threads) {
  const nb::Workload& w = workload(vocab, batch, dtype);
  for (auto _ : state)
    benchmark::DoNotOptimize(
        nb::softmax_floor_pass(w, threads, nucleus::resolve_isa(nucleus::Isa::kAuto)));
  set_counters(state, w);
}

void reference_case(benchmark::State& state, nb::Config config, int64_t vocab, int64_t batch,
                    nucleus::DType dtype, int threads) {
  const nb::Workload& w = workload(vocab, batch, dtype);
  std::vector<int32_t> tokens;
  for (auto _ : state) {
    nb::reference_pass(config, w, threads, tokens);
    benchmark::DoNotOptimize(tokens.data());
  }
  set_counters(state, w);
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
  register_grid();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
