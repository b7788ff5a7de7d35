// The benchmark's harness (bench/core): the softmax floor of a batch with
// fewer rows than threads splits each row into slices (each slice's max and
// sum in one pass, combined per row) as the engine splits such rows; split
// or not, it must form Σ exp(x - max) per row, for every dtype, slice tail
// and order of the values (its running max rescales the sum). A dump's
// rows (bench --input) become batches that hold exactly them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "bench/core/bench_core.h"
#include "engine/io/dump_writer.h"
#include "engine/io/half.h"
#include "nucleus/engine.h"
#include "test_files.h"

namespace nucleus::bench {
namespace {

// (on every instruction set this machine runs: each has its own kernels)
TEST(BenchFloor, ASplitRowSumsWhatAWholeRowSums) {
  for (const Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    // 40000 tokens: two whole 16384-token slices and a tail; 16384 exactly
    // is not split (one slice), 16385 leaves a one-token tail.
    for (const int64_t vocab : {40000, 16384, 16385}) {
      for (const DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
        for (const int64_t rows : {1, 3}) {
          SCOPED_TRACE(testing::Message()
                       << "vocab " << vocab << " " << dtype_name(dtype) << " rows " << rows);
          Workload w = make_workload(rows, vocab, dtype, 7);
          // The max in the last slice (30.0 is exact in every dtype), so the
          // slices' sums must be brought to the row's max when combined.
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
          // (w.f32 holds the rows' values, half ones widened)
          double want = 0.0;
          for (int64_t r = 0; r < rows; ++r) {
            const float* row = w.f32.data() + r * vocab;
            const double max = *std::max_element(row, row + vocab);
            for (int64_t i = 0; i < vocab; ++i) want += std::exp(row[i] - max);
          }
          EXPECT_NEAR(whole, want, 1e-5 * want);
        }
      }
    }
  }
}

// Values that rise along the row (every packet raises the running max),
// fall, and hold -inf (masked tokens), whole and split: the float64 sum.
TEST(BenchFloor, TheOnePassSumHoldsWhereverTheMaxIs) {
  const int64_t vocab = 40000;
  Workload w = make_workload(3, vocab, DType::kFloat32, 5);
  for (int64_t i = 0; i < vocab; ++i) {
    w.f32[static_cast<size_t>(i)] = static_cast<float>(i) * 1e-3f;
    w.f32[static_cast<size_t>(vocab + i)] = -static_cast<float>(i) * 1e-3f;
    w.f32[static_cast<size_t>(2 * vocab + i)] =
        i % 3 == 0 ? -std::numeric_limits<float>::infinity() : static_cast<float>(i % 7);
  }
  double want = 0.0;
  for (int64_t r = 0; r < 3; ++r) {
    const float* row = w.f32.data() + r * vocab;
    const double max = *std::max_element(row, row + vocab);
    for (int64_t i = 0; i < vocab; ++i) want += std::exp(row[i] - max);
  }
  // (three rows on four threads are split, on one thread whole)
  for (const Isa isa : runnable_isas()) {
    for (const int threads : {1, 4}) {
      SCOPED_TRACE(testing::Message() << isa_name(isa) << " threads " << threads);
      EXPECT_NEAR(softmax_floor_pass(w, threads, isa), want, 1e-5 * want);
    }
  }
}

// The reference (the sort-based sampler, timed for the speed-up column)
// must not draw what the engine's filters remove: its token is one the
// engine's final distribution keeps, for every configuration (its own ties
// at a cut may keep fewer, as HF's do, never others), and greedy's is the
// engine's. (A weak check of its filters: on these rows a reference that
// skipped them all would still land inside the kept set in all 64 draws
// with probability ~0.6 % for penalty + top-p, ~5 % typical-p, ~17 %
// top-p; min-p's skipped fails it; full sampling cannot.)
TEST(BenchReference, DrawsOnlyTokensTheEngineKeeps) {
  Engine engine({.max_threads = 1});
  const int64_t rows = 64, vocab = 32000;
  for (const DType dtype : {DType::kFloat32, DType::kBFloat16}) {
    const Workload w = make_workload(rows, vocab, dtype, 3);
    for (const Config config : all_configs()) {
      SCOPED_TRACE(testing::Message() << config_name(config) << " " << dtype_name(dtype));
      std::vector<int32_t> tokens;
      reference_pass(config, w, 1, tokens, &engine);
      const std::vector<RowRequest> requests = make_requests(config, w, false);
      std::vector<float> probs(static_cast<size_t>(rows * vocab));
      std::vector<Status> row_status(static_cast<size_t>(rows));
      ASSERT_TRUE(engine.probs(w.view(), requests, probs.data(), vocab, row_status).ok());
      std::vector<RowResult> results(static_cast<size_t>(rows));
      ASSERT_TRUE(engine.sample(w.view(), requests, results).ok());
      for (int64_t r = 0; r < rows; ++r) {
        const auto t = static_cast<size_t>(tokens[static_cast<size_t>(r)]);
        ASSERT_TRUE(row_status[static_cast<size_t>(r)].ok());
        ASSERT_LT(t, static_cast<size_t>(vocab));
        EXPECT_GT(probs[static_cast<size_t>(r * vocab) + t], 0.0f) << "row " << r << " token " << t;
        if (config == Config::kGreedy) {
          EXPECT_EQ(tokens[static_cast<size_t>(r)], results[static_cast<size_t>(r)].tokens[0]);
        }
      }
    }
  }
}

namespace fs = std::filesystem;

fs::path TestDir() { return test_files::TestDir("bench_core_test"); }

std::vector<float> Values(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// Rows of a dump are read as float32 (a bfloat16 dump widened exactly), at
// most as many as asked for; batches take them in turn, from row k × batch
// of batch k, round to row 0 after the last, rounded to the batch's dtype.
TEST(BenchInput, BatchesHoldTheDumpsRowsInTurn) {
  const fs::path dir = TestDir();
  const int64_t rows = 5, vocab = 300;
  const std::vector<float> values = Values(rows * vocab, 3);
  detail::DumpWriteSpec spec;
  spec.format = DumpFormat::kSafetensors;
  spec.dtype = DType::kBFloat16;
  ASSERT_TRUE(detail::write_dump(dir / "d.safetensors", values.data(), rows, vocab, spec).ok());
  auto stored = [&](int64_t r, int64_t i) {  // (the dump holds bfloat16, a .safetensors)
    const float x = values[static_cast<size_t>(r * vocab + i)];
    return detail::bfloat16_bits_to_float(detail::float_to_bfloat16_bits(x));
  };

  const DType f32[] = {DType::kFloat32};
  Result<InputRows> few = read_input_rows((dir / "d.safetensors").string(), "", 3, f32);
  ASSERT_TRUE(few.ok()) << few.status().message();
  EXPECT_EQ(few->rows, 3);
  EXPECT_EQ(few->tensor, "logits");
  // (the rows and vocab to read are shown before they are read; an error
  // there is the call's)
  int64_t shown_rows = 0, shown_vocab = 0;
  Result<InputRows> refused =
      read_input_rows((dir / "d.safetensors").string(), "", 100, f32, [&](int64_t r, int64_t v) {
        shown_rows = r;
        shown_vocab = v;
        return Status::invalid_argument("too big");
      });
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().message(), "too big");
  EXPECT_EQ(shown_rows, rows);
  EXPECT_EQ(shown_vocab, vocab);
  Result<InputRows> all = read_input_rows((dir / "d.safetensors").string(), "logits", 100, f32);
  ASSERT_TRUE(all.ok()) << all.status().message();
  ASSERT_EQ(all->rows, rows);
  ASSERT_EQ(all->vocab, vocab);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < vocab; ++i) {
      ASSERT_EQ(all->values[static_cast<size_t>(r * vocab + i)], stored(r, i)) << r << " " << i;
    }
  }

  // Batch 1 of three rows: rows 3, 4, 0.
  for (const DType dtype : {DType::kFloat32, DType::kFloat16}) {
    const Workload w = input_workload(*all, 3, 3, dtype, 9);
    ASSERT_EQ(w.rows, 3);
    ASSERT_EQ(w.vocab, vocab);
    EXPECT_EQ(w.history.size(), 2000u);
    const int64_t from[] = {3, 4, 0};
    for (int64_t r = 0; r < 3; ++r) {
      for (int64_t i = 0; i < vocab; ++i) {
        const float want =
            dtype == DType::kFloat32
                ? stored(from[r], i)
                : detail::half_bits_to_float(detail::float_to_half_bits(stored(from[r], i)));
        const auto at = static_cast<size_t>(r * vocab + i);
        ASSERT_EQ(w.f32[at], want) << r << " " << i;
        if (dtype == DType::kFloat16) {
          ASSERT_EQ(w.half[at], detail::float_to_half_bits(want));
        }
      }
    }
  }

  // A case on the input: its rows, its vocab.
  Options options;
  options.repeat = 2;
  options.reference = false;
  options.input = std::make_shared<const InputRows>(std::move(all).value());
  const Result<CaseResult> r = run_case({Config::kTopP, vocab, 2, DType::kFloat32, 1}, options);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_GT(r->us_per_row, 0.0);
  EXPECT_GT(r->vs_softmax, 0.0);
}

// A case whose calls fail is an error, not a table line of failing calls'
// times: here a row the engine cannot sample (rows read from a dump are
// checked before, but not every failure can be: a vocabulary of 2^31
// tokens, which the engine refuses, was timed).
TEST(BenchCase, ARowErrorIsTheCasesError) {
  auto input = std::make_shared<InputRows>();
  input->rows = 2;
  input->vocab = 100;
  input->values.assign(200, 0.5f);
  input->values[100 + 7] = std::numeric_limits<float>::quiet_NaN();
  Options options;
  options.repeat = 2;
  options.reference = false;
  options.input = input;
  const Result<CaseResult> r = run_case({Config::kGreedy, 100, 2, DType::kFloat32, 1}, options);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("token 7"), std::string::npos) << r.status().message();
}

// Rows that cannot be sampled (a NaN or +inf logit, nothing finite), as
// read or as stored in a dtype asked for, are refused, naming the row,
// token and dtype; so is a raw dump.
TEST(BenchInput, RefusesRowsThatCannotBeSampled) {
  const fs::path dir = TestDir();
  const int64_t rows = 3, vocab = 40;
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    int64_t row, token;
    float value;
    DType dtype;
    std::string says;
  };
  const Case cases[] = {
      {1, 7, std::nanf(""), DType::kFloat32, "row 1: token 7 = nan:"},
      {2, 39, inf, DType::kFloat32, "row 2: token 39 = inf:"},
      {0, -1, -inf, DType::kFloat32, "row 0 has no finite logit:"},
      {2, 3, 70000.0f, DType::kFloat16, "row 2: token 3 = 70000 is +inf as f16:"},
      {1, 0, std::numeric_limits<float>::max(), DType::kBFloat16,
       "row 1: token 0 = 3.40282347e+38 is +inf as bf16:"},
      {1, -1, -1e6f, DType::kFloat16, "row 1 has no finite logit as f16:"},
  };
  for (const Case& c : cases) {
    std::vector<float> values = Values(rows * vocab, 4);
    if (c.token >= 0) {
      values[static_cast<size_t>(c.row * vocab + c.token)] = c.value;
    } else {
      std::fill_n(values.begin() + c.row * vocab, vocab, c.value);
    }
    ASSERT_TRUE(detail::write_dump(dir / "bad.npy", values.data(), rows, vocab, {}).ok());
    const DType dtypes[] = {DType::kFloat32, c.dtype};
    Result<InputRows> read = read_input_rows((dir / "bad.npy").string(), "", rows, dtypes);
    ASSERT_FALSE(read.ok()) << c.says;
    EXPECT_NE(read.status().message().find(c.says), std::string::npos) << read.status().message();
  }
  // (a -inf token is a masked one: fine)
  std::vector<float> masked = Values(rows * vocab, 5);
  masked[3] = -inf;
  ASSERT_TRUE(detail::write_dump(dir / "masked.npy", masked.data(), rows, vocab, {}).ok());
  const DType every[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};
  EXPECT_TRUE(read_input_rows((dir / "masked.npy").string(), "", rows, every).ok());
  detail::DumpWriteSpec raw;
  raw.format = DumpFormat::kRaw;
  ASSERT_TRUE(detail::write_dump(dir / "d.bin", masked.data(), rows, vocab, raw).ok());
  Result<InputRows> read = read_input_rows((dir / "d.bin").string(), "", rows, every);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.status().message().find("d.bin"), std::string::npos) << read.status().message();
}

}  // namespace
}  // namespace nucleus::bench
