// The benchmark's baselines (bench/core): the softmax floor of a batch with
// fewer rows than threads splits each row into slices (a max pass, then an
// exp-sum pass) as the engine splits such rows; split or not, it must form
// the same Σ exp(x - max) per row, for every dtype and slice tail.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/core/bench_core.h"
#include "nucleus/engine.h"

namespace nucleus::bench {
namespace {

TEST(BenchFloor, ASplitRowSumsWhatAWholeRowSums) {
  const Isa isa = resolve_isa(Isa::kAuto);
  // 40000 tokens: two whole 16384-token slices and a tail; 16384 exactly
  // is not split (one slice), 16385 leaves a one-token tail.
  for (const int64_t vocab : {40000, 16384, 16385}) {
    for (const DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      for (const int64_t rows : {1, 3}) {
        SCOPED_TRACE(testing::Message()
                     << "vocab " << vocab << " " << dtype_name(dtype) << " rows " << rows);
        Workload w = make_workload(rows, vocab, dtype, 7);
        // The max in the last slice (30.0 is exact in every dtype), so the
        // slices' maxima must be combined before the exp-sum pass.
        for (int64_t r = 0; r < rows; ++r) {
          const size_t last = static_cast<size_t>(r * vocab + vocab - 1);
          w.f32[last] = 30.0f;
          if (dtype == DType::kBFloat16) w.half[last] = 0x41f0;
          if (dtype == DType::kFloat16) w.half[last] = 0x4f80;
        }
        // One thread: whole rows. Four threads: rows < threads, split.
        const double whole = softmax_floor_pass(w, 1, isa);
        const double split = softmax_floor_pass(w, 4, isa);
        ASSERT_TRUE(std::isfinite(whole) && whole >= static_cast<double>(rows));
        EXPECT_NEAR(split, whole, 1e-5 * whole);
      }
    }
  }
}

}  // namespace
}  // namespace nucleus::bench
