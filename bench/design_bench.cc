// Designs for a row with a repetition penalty that were measured and set
// aside (docs/performance.md, "Penalty + top-p: what else was measured"):
// the engine copies such a row as its scan reads it and applies the penalty
// to the copy; these are the pieces of the ways round that copy, timed alone
// on one 128256-token float32 row in cache with AVX-512 (this file is
// compiled for x86-64-v4; design_bench_main.cc registers the cases only on a
// CPU that runs it).
//
// - exp_pass/...: an exp-sum pass (Eigen's packet exp, as the softmax floor)
//   as it is (plain), and with a penalty patched into each packet from a
//   bitmap of the history's tokens: the mask load, a multiply and a blend
//   (mask_blend); the penalty with a multiply and a correction (patch_fma);
//   with a division (patch_div); or with each packet also stored to a
//   second buffer, the copy moved into the pass (store_copy).
// - history_dedup: the distinct tokens of a 2,000-token history, marked in a
//   bitmap by test-and-set and the bitmap cleared after; history_by_block:
//   the same, then sorted by 512-token block with their values gathered.
// - copy_scan: the engine's form (one loop of loads, stores and four max
//   chains); chunked_copy_scan/N: `rep movsb` of each N-token chunk, then a
//   max over the chunk from L1; memcpy: the row copied alone.
#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include <benchmark/benchmark.h>

#include "engine/kernels/row_kernels.h"

namespace nucleus::bench {
namespace {

namespace ei = Eigen::internal;
namespace nd = nucleus::detail;

constexpr int64_t kVocab = 128256;
constexpr int64_t kHistory = 2000;
constexpr float kPenalty = 1.3f;

// One LM-like row on a cache line, room for its copy, and a random history
// with its bitmap (bit t % 64 of word t / 64).
struct Setup {
  Setup() : x(kVocab), copy(kVocab), bits(kVocab / 64 + 1), history(kHistory) {
    std::mt19937 rng(1);
    std::normal_distribution<float> logit(0.0f, 3.0f);
    for (float& v : x) v = logit(rng);
    x[777] = 25.0f;
    for (int32_t& t : history) t = static_cast<int32_t>(rng() % kVocab);
    for (int32_t t : history) bits[static_cast<size_t>(t) / 64] |= uint64_t{1} << (t % 64);
  }
  nd::AlignedVector<float> x, copy;
  std::vector<uint64_t> bits;
  std::vector<int32_t> history;
};

enum class Patch { kNone, kMaskBlend, kFma, kDiv, kStore };

template <Patch kPatch>
void exp_pass(benchmark::State& state) {
  Setup s;
  const __m512 xmax = _mm512_set1_ps(25.0f);
  const __m512 rp = _mm512_set1_ps(kPenalty);
  const __m512 inv = _mm512_set1_ps(1.0f / kPenalty);
  const __m512 zero = _mm512_setzero_ps();
  const auto* marks = reinterpret_cast<const uint16_t*>(s.bits.data());
  for (auto _ : state) {
    __m512 sum0 = zero, sum1 = zero;
    for (int64_t g = 0, p = 0; g + 16 <= kVocab; g += 16, ++p) {
      __m512 x = _mm512_load_ps(s.x.data() + g);
      if constexpr (kPatch == Patch::kStore) _mm512_store_ps(s.copy.data() + g, x);
      if constexpr (kPatch == Patch::kMaskBlend || kPatch == Patch::kFma || kPatch == Patch::kDiv) {
        const __mmask16 m = marks[p];
        const __mmask16 pos = _mm512_mask_cmp_ps_mask(m, x, zero, _CMP_GT_OQ);
        if constexpr (kPatch == Patch::kMaskBlend) {
          x = _mm512_mask_mov_ps(x, m, _mm512_mul_ps(x, rp));
        } else if constexpr (kPatch == Patch::kFma) {
          // x / rp: the product by 1 / rp, corrected by its residual.
          __m512 q = _mm512_mul_ps(x, inv);
          q = _mm512_fmadd_ps(_mm512_fnmadd_ps(q, rp, x), inv, q);
          x = _mm512_mask_mov_ps(_mm512_mask_mul_ps(x, m & ~pos, x, rp), pos, q);
        } else {
          x = _mm512_mask_mul_ps(_mm512_mask_div_ps(x, pos, x, rp), m & ~pos, x, rp);
        }
      }
      const __m512 e = ei::pexp(_mm512_sub_ps(x, xmax));
      if (p & 1) {
        sum1 = _mm512_add_ps(sum1, e);
      } else {
        sum0 = _mm512_add_ps(sum0, e);
      }
    }
    benchmark::DoNotOptimize(_mm512_reduce_add_ps(_mm512_add_ps(sum0, sum1)));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kVocab * 4);
}

template <bool kByBlock>
void history_list(benchmark::State& state) {
  Setup s;
  constexpr int64_t kBlocks = (kVocab + nd::kPassBlock - 1) / nd::kPassBlock;
  std::vector<uint64_t> seen(s.bits.size());
  std::vector<int32_t> distinct(kHistory), start(kBlocks + 1), tokens(kHistory);
  std::vector<float> values(kHistory);
  for (auto _ : state) {
    int64_t n = 0;
    for (int32_t t : s.history) {
      const uint64_t bit = uint64_t{1} << (t % 64);
      const uint64_t word = seen[static_cast<size_t>(t) / 64];
      distinct[static_cast<size_t>(n)] = t;
      n += (word & bit) ? 0 : 1;
      seen[static_cast<size_t>(t) / 64] = word | bit;
    }
    if constexpr (kByBlock) {
      std::fill(start.begin(), start.end(), 0);
      for (int64_t i = 0; i < n; ++i)
        ++start[static_cast<size_t>(distinct[i] / nd::kPassBlock) + 1];
      for (int64_t b = 0; b < kBlocks; ++b) start[b + 1] += start[b];
      for (int64_t i = 0; i < n; ++i) {
        const int32_t t = distinct[static_cast<size_t>(i)];
        const auto at = static_cast<size_t>(start[static_cast<size_t>(t / nd::kPassBlock)]++);
        const float v = s.x[static_cast<size_t>(t)];
        tokens[at] = t;
        values[at] = v > 0.0f ? v / kPenalty : v * kPenalty;
      }
    }
    for (int32_t t : s.history) seen[static_cast<size_t>(t) / 64] = 0;
    benchmark::DoNotOptimize(n);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kHistory);
}

float max_of(const float* x, int64_t n) {
  __m512 m0 = _mm512_set1_ps(-1e30f), m1 = m0, m2 = m0, m3 = m0;
  int64_t g = 0;
  for (; g + 64 <= n; g += 64) {
    m0 = _mm512_max_ps(m0, _mm512_load_ps(x + g));
    m1 = _mm512_max_ps(m1, _mm512_load_ps(x + g + 16));
    m2 = _mm512_max_ps(m2, _mm512_load_ps(x + g + 32));
    m3 = _mm512_max_ps(m3, _mm512_load_ps(x + g + 48));
  }
  float r = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
  for (; g < n; ++g) r = std::max(r, x[g]);
  return r;
}

void copy_scan(benchmark::State& state) {
  Setup s;
  for (auto _ : state) {
    const float* x = s.x.data();
    float* y = s.copy.data();
    __m512 m0 = _mm512_set1_ps(-1e30f), m1 = m0, m2 = m0, m3 = m0;
    int64_t g = 0;
#pragma GCC unroll 1
    for (; g + 64 <= kVocab; g += 64) {
      const __m512 a = _mm512_load_ps(x + g), b = _mm512_load_ps(x + g + 16);
      const __m512 c = _mm512_load_ps(x + g + 32), d = _mm512_load_ps(x + g + 48);
      _mm512_store_ps(y + g, a);
      _mm512_store_ps(y + g + 16, b);
      _mm512_store_ps(y + g + 32, c);
      _mm512_store_ps(y + g + 48, d);
      m0 = _mm512_max_ps(m0, a);
      m1 = _mm512_max_ps(m1, b);
      m2 = _mm512_max_ps(m2, c);
      m3 = _mm512_max_ps(m3, d);
    }
    float r = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
    for (; g < kVocab; ++g) {
      y[g] = x[g];
      r = std::max(r, x[g]);
    }
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kVocab * 4);
}

void chunked_copy_scan(benchmark::State& state) {
  Setup s;
  const int64_t chunk = state.range(0);
  for (auto _ : state) {
    float r = -1e30f;
    for (int64_t c = 0; c < kVocab; c += chunk) {
      const int64_t n = std::min(chunk, kVocab - c);
      void* dst = s.copy.data() + c;
      const void* src = s.x.data() + c;
      auto bytes = static_cast<size_t>(n) * sizeof(float);
      asm volatile("rep movsb" : "+D"(dst), "+S"(src), "+c"(bytes) : : "memory");
      r = std::max(r, max_of(s.copy.data() + c, n));
    }
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kVocab * 4);
}

void copy(benchmark::State& state) {
  Setup s;
  for (auto _ : state) {
    std::memcpy(s.copy.data(), s.x.data(), kVocab * sizeof(float));
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(state.iterations() * kVocab * 4);
}

}  // namespace

void register_design_benchmarks() {
  benchmark::RegisterBenchmark("exp_pass/plain", exp_pass<Patch::kNone>)->UseRealTime();
  benchmark::RegisterBenchmark("exp_pass/mask_blend", exp_pass<Patch::kMaskBlend>)->UseRealTime();
  benchmark::RegisterBenchmark("exp_pass/patch_fma", exp_pass<Patch::kFma>)->UseRealTime();
  benchmark::RegisterBenchmark("exp_pass/patch_div", exp_pass<Patch::kDiv>)->UseRealTime();
  benchmark::RegisterBenchmark("exp_pass/store_copy", exp_pass<Patch::kStore>)->UseRealTime();
  benchmark::RegisterBenchmark("history_dedup", history_list<false>)->UseRealTime();
  benchmark::RegisterBenchmark("history_by_block", history_list<true>)->UseRealTime();
  benchmark::RegisterBenchmark("copy_scan", copy_scan)->UseRealTime();
  benchmark::RegisterBenchmark("chunked_copy_scan", chunked_copy_scan)
      ->UseRealTime()
      ->Arg(2048)
      ->Arg(8192);
  benchmark::RegisterBenchmark("memcpy", copy)->UseRealTime();
}

}  // namespace nucleus::bench
