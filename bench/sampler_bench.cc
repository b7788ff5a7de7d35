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
//
// arena_switch/{none,own_arena,engine_execute}/... time ten sampling calls
// (one 128256 row, full sampling, all threads) after ten roofline passes of
// the host's: none, in an arena of the host's own, or in the engine's
// (Engine::execute); only the sampling calls are timed. oneTBB hands an idle
// worker to another arena only after a while, so own_arena's calls start
// without the engine's other threads.
//
// params/<name>/128256/1/f32/1 time parameter sets the grid's seven
// configurations leave out (one LM-like row, one thread, full sampling's
// request changed): temperature 0.8 with and without logprobs, the
// llama.cpp and vllm presets, top-n-sigma, top_logprobs (with their ranks),
// top-p 0.5 and 0.7,
// an allowed-token mask (one word in three partly cleared), alone and with
// top-p (docs/performance.md, "Paths the benchmark grid does not time").
//
// wide/<row>/{full,topp,typical,topk2000,topk5000,typical_minkeep5000}/
// 128256/1/f32/1 time one row whose top-p nucleus holds thousands of tokens
// (a Gaussian tail under one or five dominant tokens), one thread
// (docs/performance.md, "Wide nuclei"); top-k 2000 and 5000 are full
// sampling's request with that k (count targets past the block maxima's
// 251), typical_minkeep5000 typical-p 0.9's with min_keep 5000 (a count
// target on typical keys).
//
// fork_join/{alone,split}/128256 time the softmax floor's pass over half
// of one row on the calling thread (alone), and over the whole row in two
// halves run by a tbb::parallel_for with a static partitioner in a 2-thread
// arena (split): split - alone is what one fork and join costs on this
// machine, which each split pass of a batch-1 row pays.
#include <benchmark/benchmark.h>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/core/bench_core.h"
#include "bench/core/floor_kernels.h"

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

// (`bytes`: what one pass reads, the batch as stored unless said)
void set_counters(benchmark::State& state, const nb::Workload& w, int64_t bytes = -1) {
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(w.rows * state.iterations()),
                                                benchmark::Counter::kIsRate);
  state.SetBytesProcessed((bytes < 0 ? w.bytes() : bytes) * state.iterations());
}

// Times engine.sample over the batches in turn (requests[k] for ws[k]).
void time_sampling(benchmark::State& state, nucleus::Engine& engine,
                   std::span<const nb::Workload> ws,
                   const std::vector<std::vector<nucleus::RowRequest>>& requests,
                   std::vector<nucleus::RowResult>& results) {
  size_t i = 0;
  for (auto _ : state) {
    const size_t k = i++ % ws.size();
    const nucleus::Status s = engine.sample(ws[k].view(), requests[k], results);
    if (!s.ok()) state.SkipWithError(s.message().c_str());
    benchmark::DoNotOptimize(results.data());
  }
  set_counters(state, ws[0]);
}

void nucleus_case(benchmark::State& state, nb::Config config, int64_t vocab, int64_t batch,
                  nucleus::DType dtype, int threads) {
  const std::span<const nb::Workload> ws = workloads(state, vocab, batch, dtype);
  if (ws.empty()) return;
  std::vector<std::vector<nucleus::RowRequest>> requests;
  for (const nb::Workload& w : ws) requests.push_back(nb::make_requests(config, w, false));
  std::vector<nucleus::RowResult> results(static_cast<size_t>(batch));
  nucleus::Engine engine({.max_threads = threads, .seed = 1});
  time_sampling(state, engine, ws, requests, results);
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
  // (the reference reads the float32 rows, whatever the batch's dtype)
  set_counters(state, ws[0], ws[0].rows * ws[0].vocab * 4);
}

// The parameter sets of params/...: each changes a grid configuration's
// request (full sampling's unless it names another), on a float32 row
// unless it names another type.
struct ParamSet {
  const char* name;
  void (*change)(nucleus::RowRequest& r);
  nb::Config base = nb::Config::kFull;
  nucleus::DType dtype = nucleus::DType::kFloat32;
};
// An allowed-token mask for 128256 tokens that allows the tokens t with
// allowed(t).
std::vector<int32_t> mask_of(bool (*allowed)(int64_t t)) {
  std::vector<int32_t> w((128256 + 31) / 32, 0);
  for (int64_t t = 0; t < 128256; ++t) {
    if (allowed(t)) w[static_cast<size_t>(t / 32)] |= static_cast<int32_t>(1u << (t % 32));
  }
  return w;
}
// One word in three partly cleared (0x0f0f0f0f).
std::span<const int32_t> partial_mask() {
  static const std::vector<int32_t> words =
      mask_of([](int64_t t) { return t / 32 % 3 != 0 || ((0x0f0f0f0fu >> (t % 32)) & 1u) != 0; });
  return words;
}
// Every 64th token left out (2,004 tokens: a grammar's inside a string,
// say, which leaves out the quotes).
std::span<const int32_t> nearly_all_mask() {
  static const std::vector<int32_t> words = mask_of([](int64_t t) { return t % 64 != 0; });
  return words;
}
// A grammar's mask: 511 allowed, every 251st.
std::span<const int32_t> sparse_mask() {
  static const std::vector<int32_t> words = mask_of([](int64_t t) { return t % 251 == 0; });
  return words;
}
constexpr ParamSet kParamSets[] = {
    {"t0.8", [](nucleus::RowRequest& r) { r.params.temperature = 0.8f; }},
    {"t0.8-logprobs",
     [](nucleus::RowRequest& r) {
       r.params.temperature = 0.8f;
       r.params.logprobs = true;
     }},
    {"t0.8-vllm",
     [](nucleus::RowRequest& r) {
       r.params.temperature = 0.8f;
       r.params.preset = nucleus::Preset::kVLLM;
     }},
    {"t0.8-llama",
     [](nucleus::RowRequest& r) {
       r.params.temperature = 0.8f;
       r.params.preset = nucleus::Preset::kLlamaCpp;
     }},
    {"minp-llama",
     [](nucleus::RowRequest& r) {
       r.params.min_p = 0.05f;
       r.params.preset = nucleus::Preset::kLlamaCpp;
     }},
    {"topnsigma", [](nucleus::RowRequest& r) { r.params.top_n_sigma = 1.0f; }},
    {"topnsigma-llama",
     [](nucleus::RowRequest& r) {
       r.params.top_n_sigma = 1.0f;
       r.params.preset = nucleus::Preset::kLlamaCpp;
     }},
    {"top-logprobs5",
     [](nucleus::RowRequest& r) {
       r.params.logprobs = true;
       r.params.top_logprobs = 5;
     }},
    {"top-logprobs5-raw-t0.8",
     [](nucleus::RowRequest& r) {
       r.params.temperature = 0.8f;
       r.params.logprobs = true;
       r.params.top_logprobs = 5;
       r.params.logprobs_mode = nucleus::LogprobsMode::kRaw;
     }},
    {"topp0.5", [](nucleus::RowRequest& r) { r.params.top_p = 0.5f; }},
    {"topp0.7", [](nucleus::RowRequest& r) { r.params.top_p = 0.7f; }},
    {"mask", [](nucleus::RowRequest& r) { r.allowed_mask = partial_mask(); }},
    {"mask-topp",
     [](nucleus::RowRequest& r) {
       r.allowed_mask = partial_mask();
       r.params.top_p = 0.9f;
     }},
    {"mask-penalty",  // (penalty-topp's request: its 2,000-token history)
     [](nucleus::RowRequest& r) { r.allowed_mask = partial_mask(); }, nb::Config::kPenaltyTopP},
    {"mask", [](nucleus::RowRequest& r) { r.allowed_mask = partial_mask(); }, nb::Config::kFull,
     nucleus::DType::kBFloat16},
    {"mask-greedy-logprobs",  // (two exp passes: the masked row's Z and the raw row's)
     [](nucleus::RowRequest& r) {
       r.allowed_mask = partial_mask();
       r.params.logprobs = true;
     },
     nb::Config::kGreedy},
    {"mask-nearly-all-greedy-logprobs",  // (a grammar inside a JSON string, at temperature 0)
     [](nucleus::RowRequest& r) {
       r.allowed_mask = nearly_all_mask();
       r.params.logprobs = true;
     },
     nb::Config::kGreedy},
    {"mask-nearly-all-logprobs",
     [](nucleus::RowRequest& r) {
       r.allowed_mask = nearly_all_mask();
       r.params.logprobs = true;
     }},
    {"mask-sparse", [](nucleus::RowRequest& r) { r.allowed_mask = sparse_mask(); }},
    {"mask-sparse-topp",
     [](nucleus::RowRequest& r) {
       r.allowed_mask = sparse_mask();
       r.params.top_p = 0.9f;
     }},
    {"mask-sparse-penalty",  // (penalty-topp's request: its 2,000-token history)
     [](nucleus::RowRequest& r) { r.allowed_mask = sparse_mask(); }, nb::Config::kPenaltyTopP},
    {"mask-sparse-logprobs",
     [](nucleus::RowRequest& r) {
       r.allowed_mask = sparse_mask();
       r.params.logprobs = true;
     }},
};

void params_case(benchmark::State& state, const ParamSet* set) {
  const std::span<const nb::Workload> ws = workloads(state, 128256, 1, set->dtype);
  if (ws.empty()) return;
  std::vector<std::vector<nucleus::RowRequest>> requests;
  for (const nb::Workload& w : ws) {
    requests.push_back(nb::make_requests(set->base, w, false));
    for (nucleus::RowRequest& r : requests.back()) set->change(r);
  }
  std::vector<nucleus::RowResult> results(1);
  nucleus::Engine engine({.max_threads = 1, .seed = 1});
  time_sampling(state, engine, ws, requests, results);
}

// wide/...: rows whose top-p nucleus holds thousands of tokens, which the
// LM-like rows never have: a Gaussian tail (sd 1 or 2) under one dominant
// token 8 above, or five 12 above, and the parameters full sampling, top-p
// 0.95 and typical-p 0.9 (the ratio to full sampling is what a wide
// nucleus costs).
struct WideRow {
  const char* name;
  double sd;
  int dominant;
  double gap;
};
constexpr WideRow kWideRows[] = {{"gauss1-one8", 1.0, 1, 8.0}, {"gauss2-five12", 2.0, 5, 12.0}};

// A configuration's request with a large count target: top-k, min_keep
// (wide/<row>/topk..., typical_minkeep...).
struct WideCount {
  const char* name;
  nb::Config config;
  int32_t top_k, min_keep;
};
constexpr WideCount kWideCounts[] = {{"topk2000", nb::Config::kFull, 2000, 1},
                                     {"topk5000", nb::Config::kFull, 5000, 1},
                                     {"typical_minkeep5000", nb::Config::kTypical, 0, 5000}};

void wide_case(benchmark::State& state, const WideRow* row, nb::Config config, int32_t top_k,
               int32_t min_keep) {
  nb::Workload w;
  w.rows = 1;
  w.vocab = 128256;
  w.f32.resize(static_cast<size_t>(w.vocab));
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (float& v : w.f32) v = static_cast<float>(row->sd * normal(rng));
  for (int j = 0; j < row->dominant; ++j) {
    w.f32[static_cast<size_t>(rng() % static_cast<uint64_t>(w.vocab))] =
        static_cast<float>(row->gap + normal(rng));
  }
  const nb::Workload ws[] = {std::move(w)};
  std::vector<std::vector<nucleus::RowRequest>> requests = {
      nb::make_requests(config, ws[0], false)};
  if (top_k > 0) requests[0][0].params.top_k = top_k;
  requests[0][0].params.min_keep = min_keep;
  std::vector<nucleus::RowResult> results(1);
  nucleus::Engine engine({.max_threads = 1, .seed = 1});
  time_sampling(state, engine, ws, requests, results);
}

enum class HostWork { kNone, kOwnArena, kEngineExecute };

void arena_switch_case(benchmark::State& state, HostWork host) {
  const int threads = tbb::info::default_concurrency();
  const std::span<const nb::Workload> ws = workloads(state, 128256, 1, nucleus::DType::kFloat32);
  if (ws.empty()) return;
  const nb::Workload& w = ws[0];
  const std::vector<nucleus::RowRequest> requests = nb::make_requests(nb::Config::kFull, w, false);
  std::vector<nucleus::RowResult> results(1);
  nucleus::Engine engine({.max_threads = threads, .seed = 1});
  const nucleus::Isa isa = engine.isa();
  constexpr int kTurn = 10;
  for (auto _ : state) {
    for (int i = 0; i < kTurn; ++i) {
      if (host == HostWork::kOwnArena) {
        benchmark::DoNotOptimize(nb::roofline_pass(w, threads, isa));
      } else if (host == HostWork::kEngineExecute) {
        benchmark::DoNotOptimize(nb::roofline_pass(w, threads, isa, &engine));
      }
    }
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kTurn; ++i) {
      const nucleus::Status s = engine.sample(w.view(), requests, results);
      if (!s.ok()) state.SkipWithError(s.message().c_str());
    }
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / kTurn);
  }
  set_counters(state, w);
}

void fork_join_case(benchmark::State& state, bool split) {
  const std::span<const nb::Workload> ws = workloads(state, 128256, 1, nucleus::DType::kFloat32);
  if (ws.empty()) return;
  const float* row = ws[0].f32.data();
  const int64_t half = ws[0].vocab / 2;
  const nb::FloorKernels& k = nb::floor_kernels_for(nucleus::resolve_isa(nucleus::Isa::kAuto));
  tbb::task_arena arena(2);
  double sums[2] = {0, 0};
  for (auto _ : state) {
    if (split) {
      arena.execute([&] {
        tbb::parallel_for(
            0, 2,
            [&](int h) {
              sums[h] = k.slice_mass(row + h * half, nucleus::DType::kFloat32, half).sum;
            },
            tbb::static_partitioner{});
      });
    } else {
      sums[0] = k.slice_mass(row, nucleus::DType::kFloat32, half).sum;
    }
    benchmark::DoNotOptimize(sums);
  }
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
  for (const ParamSet& set : kParamSets) {
    benchmark::RegisterBenchmark(
        join({"params", set.name, "128256/1", nucleus::dtype_name(set.dtype), "1"}).c_str(),
        params_case, &set)
        ->UseRealTime();
  }
  for (const WideRow& row : kWideRows) {
    for (nb::Config config : {nb::Config::kFull, nb::Config::kTopP, nb::Config::kTypical}) {
      benchmark::RegisterBenchmark(
          join({"wide", row.name, nb::config_name(config), "128256/1/f32/1"}).c_str(), wide_case,
          &row, config, 0, 1)
          ->UseRealTime();
    }
    for (const WideCount& count : kWideCounts) {
      benchmark::RegisterBenchmark(join({"wide", row.name, count.name, "128256/1/f32/1"}).c_str(),
                                   wide_case, &row, count.config, count.top_k, count.min_keep)
          ->UseRealTime();
    }
  }
  if (all > 1) {
    for (auto [name, host] :
         {std::pair{"none", HostWork::kNone}, std::pair{"own_arena", HostWork::kOwnArena},
          std::pair{"engine_execute", HostWork::kEngineExecute}}) {
      benchmark::RegisterBenchmark(
          join({"arena_switch", name, "full/128256/1/f32", std::to_string(all)}).c_str(),
          arena_switch_case, host)
          ->UseManualTime();
    }
    benchmark::RegisterBenchmark("fork_join/alone/128256", fork_join_case, false)->UseRealTime();
    benchmark::RegisterBenchmark("fork_join/split/128256", fork_join_case, true)->UseRealTime();
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
