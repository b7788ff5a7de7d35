// Google Benchmark: single row passes timed alone, on one float32 row that
// stays in cache, with the kernels this machine dispatches to (or
// NUCLEUS_ISA's): the scan (max_stats), the scan that copies as it reads
// (widen_max_stats into a buffer, what a row with processors pays), the
// vector repetition penalty over 2,000 history tokens spread over the row
// or all within its first 2,048, the compare-only passes over a set's
// member keys (min_key, the llama.cpp preset's smallest key when typical-p
// dropped the max; count_key_below, a sampled token's rank), top-n-sigma's
// spread moments (squares in double) and an allowed-token bitmask (one word
// in three partly cleared), the mass pass (sum_mass) beside the pivot
// select's store pass and top-p's gathering mass pass (sum_mass_gather) and its second,
// compare-only gather (gather_below), a pivot round
// (keep_and_sum) and the wide-nucleus band pass (sum_mass_band), the compaction of a kept set
// (compact) and a large count target's band pass (count_band), and two baselines: the roofline's
// streaming read (an Eigen sum compiled for the same instruction set) and a plain memcpy of the
// row. The figures in docs/performance.md ("What each pass costs") and in docs/architecture.md
// ("the scan") come from here:
//   kernel_bench --benchmark_filter=/128256 --benchmark_repetitions=5
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "bench/core/floor_kernels.h"
#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"

namespace {

namespace nd = nucleus::detail;

nucleus::Isa isa() { return nucleus::resolve_isa(nucleus::Isa::kAuto); }

// One LM-like row (normal logits) starting on a cache line, and room for a copy.
struct Row {
  explicit Row(int64_t vocab) : n(vocab), x(vocab), copy(vocab), block_max(nd::block_count(vocab)) {
    std::mt19937 rng(1);
    std::normal_distribution<float> logit(0.0f, 3.0f);
    for (float& v : x) v = logit(rng);
  }
  int64_t n;
  nd::AlignedVector<float> x, copy;
  std::vector<float> block_max;
};

void scan(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  for (auto _ : state) {
    benchmark::DoNotOptimize(k.max_stats(row.x.data(), row.n, row.block_max.data()));
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void copying_scan(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  for (auto _ : state) {
    benchmark::DoNotOptimize(k.widen_max_stats(row.x.data(), nucleus::DType::kFloat32, row.n,
                                               row.copy.data(), row.block_max.data()));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void streaming_read(benchmark::State& state) {
  Row row(state.range(0));
  const nucleus::bench::FloorKernels& k = nucleus::bench::floor_kernels_for(isa());
  for (auto _ : state) benchmark::DoNotOptimize(k.read_f32(row.x.data(), row.n));
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void copy(benchmark::State& state) {
  Row row(state.range(0));
  for (auto _ : state) {
    std::memcpy(row.copy.data(), row.x.data(), static_cast<size_t>(row.n) * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// The repetition penalty kernel over 2,000 tokens drawn from the first
// `span` of the row (the whole row, or 2,048 tokens whose lines stay in L1),
// reading the row and writing its copy, with the notes of a row that has
// processors (block maxima from a scan).
void repetition_penalty(benchmark::State& state) {
  Row row(state.range(0));
  const int64_t span = state.range(1) > 0 ? state.range(1) : row.n;
  const nd::Kernels& k = nd::kernels_for(isa());
  std::mt19937 rng(2);
  std::vector<int32_t> history(2000);
  for (int32_t& t : history) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(span));
  std::memcpy(row.copy.data(), row.x.data(), static_cast<size_t>(row.n) * sizeof(float));
  k.max_stats(row.x.data(), row.n, row.block_max.data());
  std::vector<uint8_t> touched(row.block_max.size());
  const auto chunks = static_cast<size_t>((row.n + nd::kChunk - 1) / nd::kChunk);
  std::vector<int64_t> lost(chunks), bad_at(chunks, -1);
  std::vector<uint64_t> seen(static_cast<size_t>(row.n / 64 + 1));
  const nd::RowChanges changes{row.block_max.data(), touched.data(), lost.data(), bad_at.data()};
  for (auto _ : state) {
    k.repeat_penalty(nullptr, 0, history.data(), static_cast<int64_t>(history.size()), 0, row.n,
                     1.3f, row.x.data(), nullptr, row.copy.data(), seen.data(), &changes);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(history.size()));
}

// A set over the whole row whose two scales differ (the llama.cpp preset
// under a temperature), bounded below and above.
nd::SetSpec member_set() {
  nd::SetSpec set;
  set.xmax = 20.0f;
  set.dlo = 1.0f;
  set.dhi = 25.0f;
  set.key_scale = 1.25f;
  return set;
}

void member_min_key(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  for (auto _ : state) benchmark::DoNotOptimize(k.min_key(seg, member_set()));
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void member_count_below(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  for (auto _ : state) benchmark::DoNotOptimize(k.count_key_below(seg, member_set(), 22.0f));
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void spread_moments(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  nd::SetSpec set = member_set();
  set.key_scale = set.scale;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        k.moments(seg, set, 1.0f, nd::MomentKind::kSpread, nullptr, nullptr).sd2);
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

void allowed_mask(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  std::vector<int32_t> words(static_cast<size_t>((row.n + 31) / 32), -1);
  for (size_t w = 0; w < words.size(); w += 3) words[w] = 0x0f0f0f0f;
  for (auto _ : state) {
    // (on a fresh copy each time: the row's values, not yet masked)
    std::memcpy(row.copy.data(), row.x.data(), static_cast<size_t>(row.n) * sizeof(float));
    k.allowed_mask(words.data(), 0, row.n, row.copy.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// The whole row as one set at temperature 1 (top-p's), its pivots a little
// past the middle of the keys (where a wide nucleus's boundary falls).
nd::SetSpec row_set(const Row& row) {
  nd::SetSpec set;
  set.xmax = *std::max_element(row.x.begin(), row.x.end());
  return set;
}
constexpr float kPivotKeys[nd::kPivots] = {10.0f, 11.0f, 12.0f};

// The mass pass alone (sum_mass: the masses and their sum, block by block).
void mass_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  const nd::SetSpec set = row_set(row);
  int64_t count = 0;
  for (auto _ : state) benchmark::DoNotOptimize(k.sum_mass(seg, set, 0.0f, &count, nullptr));
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// A row with its scan's block maxima, and a key bound placed so that
// `members` of its tokens fall under it, with room to gather them.
struct GatherCase {
  GatherCase(int64_t vocab, int64_t members) : row(vocab), cap(4 * members + 4096) {
    nd::kernels_for(isa()).max_stats(row.x.data(), row.n, row.block_max.data());
    seg = nd::Segment{row.x.data(), nullptr, row.n, 0, row.block_max.data(), nullptr};
    set = row_set(row);
    std::vector<float> sorted(row.x.begin(), row.x.end());
    const auto last = static_cast<size_t>(members - 1);
    std::nth_element(sorted.begin(), sorted.begin() + static_cast<ptrdiff_t>(last), sorted.end(),
                     std::greater<>());
    bound = set.xmax - sorted[last];
    out.resize(static_cast<size_t>(cap + nd::kPassBlock + 64));
  }
  Row row;
  nd::Segment seg;
  nd::SetSpec set;
  float bound = 0.0f;
  int64_t cap;
  std::vector<nd::GatheredToken> out;
};

// Top-p's gathering mass pass (sum_mass_gather, with the block maxima the
// scan records): the masses and their sum, and the members within a bound
// placed so that state.range(1) of them fall under it (a peaked row's
// nucleus bound gathers ~100, a flat one's ~600-1,000).
void gather_pass(benchmark::State& state) {
  GatherCase c(state.range(0), state.range(1));
  const nd::Kernels& k = nd::kernels_for(isa());
  int64_t gathered = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        k.sum_mass_gather(c.seg, c.set, 0.0f, c.bound, c.cap, c.out.data(), &gathered));
  }
  if (gathered != state.range(1)) state.SkipWithError("unexpected gather count");
  state.SetBytesProcessed(state.iterations() * c.row.n * 4);
}

// Top-p's second, compare-only gather (gather_below), the same way (a flat
// row's second gather takes ~1,000-3,000).
void gather_below_pass(benchmark::State& state) {
  GatherCase c(state.range(0), state.range(1));
  const nd::Kernels& k = nd::kernels_for(isa());
  int64_t gathered = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(gathered = k.gather_below(c.seg, c.set, c.bound, c.cap, c.out.data()));
    benchmark::ClobberMemory();
  }
  if (gathered != state.range(1)) state.SkipWithError("unexpected gather count");
  state.SetBytesProcessed(state.iterations() * c.row.n * 4);
}

// The pivot select's first pass: every key and mass stored, with the pivot
// sums.
void pivot_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  const nd::SetSpec set = row_set(row);
  nd::AlignedVector<float> keys(static_cast<size_t>(row.n)), weights(static_cast<size_t>(row.n));
  nd::KeyRule rule;
  rule.mass_weight = true;
  double sums[nd::kPivots];
  int64_t counts[nd::kPivots];
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        k.store_keys(seg, set, rule, keys.data(), weights.data(), kPivotKeys, sums, counts));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// A pivot round over stored entries (keep_and_sum: the entries between the
// first and the last pivot copied out, the pivot sums of those in the
// same read).
void interval_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const float xmax = *std::max_element(row.x.begin(), row.x.end());
  nd::AlignedVector<float> keys(static_cast<size_t>(row.n)), weights(static_cast<size_t>(row.n));
  for (size_t j = 0; j < keys.size(); ++j) {
    keys[j] = xmax - row.x[j];
    weights[j] = std::exp(-keys[j]);
  }
  nd::AlignedVector<float> out_key(static_cast<size_t>(row.n + 64));
  nd::AlignedVector<float> out_weight(static_cast<size_t>(row.n + 64));
  double sums[nd::kPivots];
  int64_t counts[nd::kPivots];
  int64_t kept = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(kept =
                                 k.keep_and_sum(keys.data(), weights.data(), row.n, kPivotKeys[0],
                                                kPivotKeys[nd::kPivots - 1], kPivotKeys,
                                                out_key.data(), out_weight.data(), sums, counts));
    benchmark::ClobberMemory();
  }
  state.counters["kept"] = static_cast<double>(kept);
  state.SetBytesProcessed(state.iterations() * row.n * 8);
}

// A wide nucleus's pass (sum_mass_band): the mass, the mass at or before
// the first pivot, and the members between the first and the last listed.
void band_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  const nd::SetSpec set = row_set(row);
  nd::AlignedVector<float> keys(static_cast<size_t>(row.n + 64));
  nd::AlignedVector<float> weights(static_cast<size_t>(row.n + 64));
  int64_t listed = 0, below_count = 0;
  double below = 0.0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(k.sum_mass_band(seg, set, 0.0f, kPivotKeys[0],
                                             kPivotKeys[nd::kPivots - 1], keys.data(),
                                             weights.data(), &listed, &below, &below_count));
    benchmark::ClobberMemory();
  }
  state.counters["listed"] = static_cast<double>(listed);
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// The set of a row's `kept` largest values (top-k's, before compaction).
nd::SetSpec top_set(const Row& row, int64_t kept) {
  nd::SetSpec set = row_set(row);
  std::vector<float> v(row.x.begin(), row.x.end());
  std::nth_element(v.begin(), v.begin() + (kept - 1), v.end(), std::greater<>());
  set.dhi = set.xmax - v[static_cast<size_t>(kept - 1)];
  return set;
}

// Compaction after a filter (compact: the kept set's values and token ids
// copied out of the row), the kept set the range(1) largest values.
void compact_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  const nd::SetSpec set = top_set(row, state.range(1));
  nd::AlignedVector<float> cx(static_cast<size_t>(row.n + 64));
  std::vector<int32_t> ci(static_cast<size_t>(row.n + 64));
  for (auto _ : state) {
    benchmark::DoNotOptimize(k.compact(seg, set, cx.data(), ci.data()));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

// A large count target's band pass (count_band: the members at or before
// the 4000th largest value counted, those up to the 6000th listed).
void count_band_pass(benchmark::State& state) {
  Row row(state.range(0));
  const nd::Kernels& k = nd::kernels_for(isa());
  const nd::Segment seg{row.x.data(), nullptr, row.n, 0, nullptr, nullptr};
  const nd::SetSpec set = row_set(row);
  const float lo = top_set(row, 4000).dhi, hi = top_set(row, 6000).dhi;
  const nd::KeyRule rule;  // (distance keys)
  nd::AlignedVector<float> keys(static_cast<size_t>(row.n + 64));
  int64_t below = 0, listed = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(listed = k.count_band(seg, set, rule, lo, hi, keys.data(), &below));
    benchmark::ClobberMemory();
  }
  state.counters["listed"] = static_cast<double>(listed);
  state.SetBytesProcessed(state.iterations() * row.n * 4);
}

}  // namespace

BENCHMARK(scan)->UseRealTime()->Arg(32000)->Arg(128256);
BENCHMARK(copying_scan)->UseRealTime()->Arg(32000)->Arg(128256);
BENCHMARK(streaming_read)->UseRealTime()->Arg(32000)->Arg(128256);
BENCHMARK(copy)->UseRealTime()->Arg(32000)->Arg(128256);
BENCHMARK(repetition_penalty)->UseRealTime()->Args({128256, 0})->Args({128256, 2048});
BENCHMARK(member_min_key)->UseRealTime()->Arg(128256);
BENCHMARK(member_count_below)->UseRealTime()->Arg(128256);
BENCHMARK(spread_moments)->UseRealTime()->Arg(128256);
BENCHMARK(allowed_mask)->UseRealTime()->Arg(128256);
BENCHMARK(mass_pass)->UseRealTime()->Arg(128256);
BENCHMARK(gather_pass)
    ->UseRealTime()
    ->Args({32000, 600})
    ->Args({128256, 100})
    ->Args({128256, 600})
    ->Args({128256, 1000});
BENCHMARK(gather_below_pass)
    ->UseRealTime()
    ->Args({32000, 500})
    ->Args({32000, 1600})
    ->Args({128256, 100})
    ->Args({128256, 1600})
    ->Args({128256, 5000});
BENCHMARK(pivot_pass)->UseRealTime()->Arg(128256);
BENCHMARK(band_pass)->UseRealTime()->Arg(128256);
BENCHMARK(interval_pass)->UseRealTime()->Arg(128256);
BENCHMARK(compact_pass)->UseRealTime()->Args({128256, 500})->Args({128256, 5000});
BENCHMARK(count_band_pass)->UseRealTime()->Arg(128256);

BENCHMARK_MAIN();
