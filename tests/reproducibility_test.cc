// Tests of the reproducibility contract (SPEC section 5): a seeded row's tokens and logprobs
// depend only on its logits, parameters, history, seed, step and sample index -- never on the
// batch size, its position, its neighbours, the thread count, how a long row is split into
// chunks, or how calls are grouped and interleaved across host threads.

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <tbb/task_scheduler_observer.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {
namespace {

constexpr int kSmallVocab = 1000;
constexpr int kLargeVocab = 300000;  // large enough to be split into chunks

// History for the kinds of request that use penalties.
const int32_t kPrompt[] = {1, 5, 9, 5, 200};
const int32_t kGenerated[] = {7, 7, 3, 11, 999};
const TokenBias kBias[] = {{4, 1.5f}, {17, -2.0f}};

// A row: where its logits come from and how it is sampled.
struct RowSpec {
  uint64_t logits_seed = 0;
  int kind = 0;
  std::optional<uint64_t> seed;
  uint64_t step = 0;
};

constexpr int kKinds = 8;

RowRequest MakeRequest(const RowSpec& spec) {
  RowRequest req;
  req.seed = spec.seed;
  req.step = spec.step;
  SamplingParams& p = req.params;
  switch (spec.kind) {
    case 0:
      p.temperature = 0.8f;
      p.top_k = 40;
      p.top_p = 0.9f;
      p.top_logprobs = 3;
      break;
    case 1:
      p.temperature = 1.2f;
      p.min_p = 0.05f;
      p.repetition_penalty = 1.3f;
      p.num_samples = 3;
      req.prompt_tokens = kPrompt;
      req.generated_tokens = kGenerated;
      break;
    case 2:
      p.typical_p = 0.9f;
      p.num_samples = 2;
      break;
    case 3:
      p.preset = Preset::kLlamaCpp;
      p.temperature = 0.7f;
      p.top_n_sigma = 1.5f;
      p.top_k = 100;
      p.min_p = 0.01f;
      break;
    case 4:  // the whole vocabulary: the draw walks every token
      p.num_samples = 4;
      p.top_logprobs = 5;
      p.logprobs_mode = LogprobsMode::kRaw;
      break;
    case 5:
      p.preset = Preset::kVLLM;
      p.temperature = 0.9f;
      p.top_k = 100;
      p.top_p = 0.95f;
      p.min_p = 0.02f;
      p.frequency_penalty = 0.25f;
      p.presence_penalty = 0.5f;
      req.generated_tokens = kGenerated;
      req.logit_bias = kBias;
      break;
    case 6:
      p.temperature = 0.0f;
      p.num_samples = 2;
      p.top_logprobs = 2;
      break;
    default:
      p.temperature = 1.5f;
      p.top_p = 0.5f;
      p.min_keep = 5;
      p.top_logprobs = 4;
      break;
  }
  return req;
}

// Gaussian logits (std 2.5): peaked enough for the filters to bite, with a long tail.
std::vector<float> MakeLogits(uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 2.5f);
  std::vector<float> row(vocab);
  for (float& v : row) v = normal(rng);
  return row;
}

class Batch {
 public:
  Batch(const std::vector<RowSpec>& specs, int vocab) : vocab_(vocab) {
    logits_.reserve(specs.size() * vocab);
    for (const RowSpec& s : specs) {
      const std::vector<float>& row = Cached(s.logits_seed, vocab);
      logits_.insert(logits_.end(), row.begin(), row.end());
      requests_.push_back(MakeRequest(s));
    }
  }

  std::vector<RowResult> Sample(Engine& engine) const {
    std::vector<RowResult> results(requests_.size());
    const Status s = engine.sample(View(), requests_, results);
    EXPECT_TRUE(s.ok()) << s.to_string();
    for (const RowResult& r : results) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
    return results;
  }

  std::vector<float> Probs(Engine& engine) const {
    std::vector<float> out(logits_.size());
    std::vector<Status> row_status(requests_.size());
    const Status s = engine.probs(View(), requests_, out.data(), vocab_, row_status);
    EXPECT_TRUE(s.ok()) << s.to_string();
    return out;
  }

 private:
  LogitsView View() const {
    return {logits_.data(), static_cast<int64_t>(requests_.size()), vocab_, vocab_,
            DType::kFloat32};
  }

  // Logits are deterministic in their seed; caching keeps the large-vocab tests fast.
  static const std::vector<float>& Cached(uint64_t seed, int vocab) {
    static std::map<std::pair<uint64_t, int>, std::vector<float>> cache;
    auto [it, inserted] = cache.try_emplace({seed, vocab});
    if (inserted) it->second = MakeLogits(seed, vocab);
    return it->second;
  }

  int64_t vocab_;
  std::vector<float> logits_;
  std::vector<RowRequest> requests_;
};

std::vector<uint32_t> Bits(const std::vector<float>& v) {
  std::vector<uint32_t> bits;
  for (float f : v) bits.push_back(std::bit_cast<uint32_t>(f));
  return bits;
}

// Bit-identical: tokens, logprobs, support, ranks and top logprobs.
void ExpectIdentical(const RowResult& a, const RowResult& b) {
  EXPECT_EQ(a.status.code(), b.status.code());
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(Bits(a.logprobs), Bits(b.logprobs));
  EXPECT_EQ(Bits(a.raw_logprobs), Bits(b.raw_logprobs));
  EXPECT_EQ(a.ranks, b.ranks);
  EXPECT_EQ(a.support, b.support);
  ASSERT_EQ(a.top_logprobs.size(), b.top_logprobs.size());
  for (size_t i = 0; i < a.top_logprobs.size(); ++i) {
    EXPECT_EQ(a.top_logprobs[i].token, b.top_logprobs[i].token);
    EXPECT_EQ(std::bit_cast<uint32_t>(a.top_logprobs[i].logprob),
              std::bit_cast<uint32_t>(b.top_logprobs[i].logprob));
  }
}

// The target rows: every kind, seeded, at assorted steps.
std::vector<RowSpec> Targets(int kinds) {
  std::vector<RowSpec> targets;
  for (int k = 0; k < kinds; ++k) {
    targets.push_back({.logits_seed = 1000u + k,
                       .kind = k,
                       .seed = 77u + 1000003u * k,
                       .step = static_cast<uint64_t>(3 * k)});
  }
  return targets;
}

// A random neighbour: any kind, sometimes unseeded.
RowSpec Neighbour(std::mt19937& rng) {
  RowSpec s;
  s.logits_seed = 50000 + rng() % 16;  // few distinct rows: the logits cache stays small
  s.kind = static_cast<int>(rng() % kKinds);
  if (rng() % 4 != 0) s.seed = rng();
  s.step = rng() % 100;
  return s;
}

// Samples every target alone, then in batches of each size, at several positions, with
// random neighbours, on engines of 1, 2 and 4 threads: the target's result never changes.
void CheckBatchInvariance(int vocab, int kinds, const std::vector<int>& batch_sizes,
                          ReadAhead read_ahead = ReadAhead::kAuto) {
  const std::vector<RowSpec> targets = Targets(kinds);
  Engine reference_engine(EngineOptions{.max_threads = 1, .seed = 1});
  std::vector<RowResult> reference;
  for (const RowSpec& t : targets)
    reference.push_back(Batch({t}, vocab).Sample(reference_engine)[0]);

  // (4 threads even on fewer cores: an engine takes no more threads than
  // oneTBB allows the process)
  const tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 4);
  for (int threads : {1, 2, 4}) {
    Engine engine(EngineOptions{
        .max_threads = threads, .seed = 2, .isa = Isa::kAuto, .read_ahead = read_ahead});
    ASSERT_EQ(engine.max_threads(), threads);
    for (int size : batch_sizes) {
      // Each target gets a batch of its own with the target at position (k * 5 + 1) % size,
      // and every target at once when the batch is big enough.
      std::mt19937 rng(static_cast<uint32_t>(threads * 1000 + size));
      for (size_t k = 0; k < targets.size(); ++k) {
        std::vector<RowSpec> specs;
        for (int i = 0; i < size; ++i) specs.push_back(Neighbour(rng));
        const size_t position = (k * 5 + 1) % size;
        specs[position] = targets[k];
        SCOPED_TRACE(::testing::Message() << "threads " << threads << ", batch " << size
                                          << ", position " << position << ", kind " << k);
        ExpectIdentical(Batch(specs, vocab).Sample(engine)[position], reference[k]);
      }
      if (size >= static_cast<int>(targets.size())) {
        std::vector<RowSpec> specs;
        for (int i = 0; i < size; ++i) specs.push_back(Neighbour(rng));
        std::vector<int> positions(size);
        for (int i = 0; i < size; ++i) positions[i] = i;
        std::shuffle(positions.begin(), positions.end(), rng);
        for (size_t k = 0; k < targets.size(); ++k) specs[positions[k]] = targets[k];
        const std::vector<RowResult> results = Batch(specs, vocab).Sample(engine);
        for (size_t k = 0; k < targets.size(); ++k) {
          SCOPED_TRACE(::testing::Message() << "threads " << threads << ", all targets in batch "
                                            << size << ", kind " << k);
          ExpectIdentical(results[positions[k]], reference[k]);
        }
      }
    }
  }
}

TEST(ReproducibilityTest, SmallVocabIgnoresBatchPositionNeighboursAndThreads) {
  CheckBatchInvariance(kSmallVocab, kKinds, {1, 3, 17, 64});
}

TEST(ReproducibilityTest, LargeVocabIgnoresChunkingBatchAndThreads) {
  // With fewer rows than threads each row is split into chunks; the result must be the one
  // a single thread computes.
  CheckBatchInvariance(kLargeVocab, kKinds, {1, 3, 9});
}

// Sets NUCLEUS_READ_AHEAD for the engines made in its scope (read when an
// engine is made), and puts back what was there.
class ReadAheadEnv {
 public:
  explicit ReadAheadEnv(const char* value) {
    if (const char* old = std::getenv("NUCLEUS_READ_AHEAD")) old_ = old;
    setenv("NUCLEUS_READ_AHEAD", value, 1);
  }
  ~ReadAheadEnv() {
    if (old_) {
      setenv("NUCLEUS_READ_AHEAD", old_->c_str(), 1);
    } else {
      unsetenv("NUCLEUS_READ_AHEAD");
    }
  }
  ReadAheadEnv(const ReadAheadEnv&) = delete;
  ReadAheadEnv& operator=(const ReadAheadEnv&) = delete;

 private:
  std::optional<std::string> old_;
};

TEST(ReproducibilityTest, RowsOfABatchReadAheadGiveWhatTheyGiveAlone) {
  // 30 rows of 300000 float32 logits (36 MB) pass the size from which each
  // row's exp passes bring the next row into L2 (engine.cc, kAheadFromBytes):
  // what the rows give must not change.
  const ReadAheadEnv automatic("auto");
  CheckBatchInvariance(kLargeVocab, kKinds, {30});
}

TEST(ReproducibilityTest, ReadAheadAlwaysOrNeverChangesNothingRowsGive) {
  {
    // Batches of two rows or more read ahead, short rows too (but not 3 long
    // rows on 4 threads, which split their passes instead).
    const ReadAheadEnv always("always");
    CheckBatchInvariance(kSmallVocab, kKinds, {3, 17});
    CheckBatchInvariance(kLargeVocab, kKinds, {3});
  }
  const ReadAheadEnv never("never");
  CheckBatchInvariance(kLargeVocab, kKinds, {30});
}

ReadAhead ReadAheadOf(ReadAhead option) {
  return Engine(EngineOptions{.max_threads = 1, .seed = 1, .isa = Isa::kAuto, .read_ahead = option})
      .read_ahead();
}

TEST(ReproducibilityTest, ReadAheadOptionOverridesTheEnvironment) {
  for (ReadAhead mode : {ReadAhead::kAuto, ReadAhead::kAlways, ReadAhead::kNever}) {
    ASSERT_TRUE(parse_read_ahead(read_ahead_name(mode)).has_value()) << read_ahead_name(mode);
    EXPECT_EQ(*parse_read_ahead(read_ahead_name(mode)), mode);
  }
  EXPECT_EQ(parse_read_ahead("NEVER"), ReadAhead::kNever);
  EXPECT_FALSE(parse_read_ahead("").has_value());
  EXPECT_FALSE(parse_read_ahead("sometimes").has_value());
  {
    // The option wins; auto leaves the choice to the environment.
    const ReadAheadEnv never("never");
    EXPECT_EQ(ReadAheadOf(ReadAhead::kAlways), ReadAhead::kAlways);
    EXPECT_EQ(ReadAheadOf(ReadAhead::kAuto), ReadAhead::kNever);
    // Under the option small batches read ahead, whatever the environment says.
    CheckBatchInvariance(kSmallVocab, kKinds, {3, 17}, ReadAhead::kAlways);
  }
  {
    const ReadAheadEnv always("Always");
    EXPECT_EQ(ReadAheadOf(ReadAhead::kAuto), ReadAhead::kAlways);
    EXPECT_EQ(ReadAheadOf(ReadAhead::kNever), ReadAhead::kNever);
    // A value outside the enumeration (a cast) is auto's: the environment's.
    EXPECT_EQ(ReadAheadOf(static_cast<ReadAhead>(7)), ReadAhead::kAlways);
    EXPECT_EQ(ReadAheadOf(static_cast<ReadAhead>(-1)), ReadAhead::kAlways);
  }
  for (const char* unset : {"", "auto", "sometimes"}) {
    const ReadAheadEnv env(unset);
    EXPECT_EQ(ReadAheadOf(ReadAhead::kAuto), ReadAhead::kAuto) << unset;
  }
}

TEST(ReproducibilityTest, LargeVocabProbsAreBitIdenticalAcrossThreads) {
  std::vector<RowSpec> specs;
  for (int k = 0; k < kKinds; k += 2)
    specs.push_back({.logits_seed = 9000u + k, .kind = k, .seed = std::nullopt, .step = 0});
  for (size_t rows : {size_t{1}, specs.size()}) {
    const Batch batch(std::vector<RowSpec>(specs.begin(), specs.begin() + rows), kLargeVocab);
    Engine one(EngineOptions{.max_threads = 1, .seed = std::nullopt});
    const std::vector<uint32_t> expected = Bits(batch.Probs(one));
    for (int threads : {2, 4}) {
      SCOPED_TRACE(threads);
      Engine engine(EngineOptions{.max_threads = threads, .seed = std::nullopt});
      EXPECT_TRUE(Bits(batch.Probs(engine)) == expected);
    }
  }
}

TEST(ReproducibilityTest, ProbsDoNotDependOnTheOutputAddress) {
  // The same row written at every float offset of a 64-byte line: the same bits each time.
  // (Where `out` sits is decided by the host's allocator, never by the row.)
  for (int vocab : {20, 1000}) {
    SCOPED_TRACE(vocab);
    std::vector<float> row(vocab);
    for (int i = 0; i < vocab; ++i) row[i] = static_cast<float>((i * 5) % 17) * 0.25f - 1.0f;
    const RowRequest req;
    Engine engine(EngineOptions{.max_threads = 1, .seed = 1});
    std::vector<float> buffer(vocab + 64);
    float* base = buffer.data();
    while (reinterpret_cast<uintptr_t>(base) % 64 != 0) ++base;
    std::vector<uint32_t> expected;
    for (int offset = 0; offset < 16; ++offset) {
      std::vector<Status> row_status(1);
      ASSERT_TRUE(engine
                      .probs({row.data(), 1, vocab, vocab, DType::kFloat32}, std::span(&req, 1),
                             base + offset, vocab, row_status)
                      .ok());
      const std::vector<uint32_t> bits =
          Bits(std::vector<float>(base + offset, base + offset + vocab));
      if (offset == 0) {
        expected = bits;
      } else {
        for (int i = 0; i < vocab; ++i) {
          EXPECT_EQ(bits[i], expected[i]) << "offset " << offset << ", token " << i;
        }
      }
    }
  }
}

// Nearly uniform logits over 1000 tokens: independent draws rarely repeat.
std::vector<float> FlatRow() {
  std::vector<float> row(kSmallVocab);
  for (int i = 0; i < kSmallVocab; ++i) row[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f;
  return row;
}

RowResult SampleFlat(Engine& engine, std::optional<uint64_t> seed, uint64_t step, int n) {
  static const std::vector<float> row = FlatRow();
  RowRequest req;
  req.seed = seed;
  req.step = step;
  req.params.num_samples = n;
  std::vector<RowResult> results(1);
  const Status s = engine.sample({row.data(), 1, kSmallVocab, kSmallVocab, DType::kFloat32},
                                 std::span(&req, 1), results);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return results[0];
}

// An engine takes the threads it is asked for up to what oneTBB allows the
// process (its cores, unless the host raised or lowered that limit): more
// would get no workers, and oneTBB would print a warning on stderr.
TEST(ReproducibilityTest, EngineThreadsAreCappedAtWhatOneTbbAllows) {
  const auto limit = static_cast<int>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism));
  EXPECT_EQ(Engine(EngineOptions{.max_threads = 0, .seed = 1}).max_threads(), limit);
  EXPECT_EQ(Engine(EngineOptions{.max_threads = limit + 3, .seed = 1}).max_threads(), limit);
  EXPECT_EQ(Engine(EngineOptions{.max_threads = 1, .seed = 1}).max_threads(), 1);
  {
    const tbb::global_control raised(tbb::global_control::max_allowed_parallelism, limit + 3);
    EXPECT_EQ(Engine(EngineOptions{.max_threads = limit + 3, .seed = 1}).max_threads(), limit + 3);
    EXPECT_EQ(Engine(EngineOptions{.max_threads = 0, .seed = 1}).max_threads(), limit + 3);
  }
  const tbb::global_control lowered(tbb::global_control::max_allowed_parallelism, 1);
  EXPECT_EQ(Engine(EngineOptions{.max_threads = 0, .seed = 1}).max_threads(), 1);
  EXPECT_EQ(Engine(EngineOptions{.max_threads = 2, .seed = 1}).max_threads(), 1);
}

// Counts the threads that enter one oneTBB arena.
class ArenaEntries : public tbb::task_scheduler_observer {
 public:
  explicit ArenaEntries(tbb::task_arena& arena) : tbb::task_scheduler_observer(arena) {
    observe(true);
  }
  ~ArenaEntries() override { observe(false); }
  void on_scheduler_entry(bool) override { ++count; }
  std::atomic<int> count{0};
};

// Engine::execute runs the host's work in the arena the engine samples in
// (an observer on the arena the work finds itself in sees sampling calls
// made from outside enter it; one on another arena of the same size sees
// none): a parallel_for there sees the engine's concurrency and uses no
// more threads, a sampling call made from it draws what one made outside
// draws, and an exception thrown by the work reaches the caller.
TEST(ReproducibilityTest, ExecuteRunsTheHostsWorkInTheEnginesArena) {
  const std::vector<float> row = MakeLogits(7, kLargeVocab);
  RowRequest req;
  req.seed = 11;
  req.params.top_p = 0.9f;
  const LogitsView view{row.data(), 1, kLargeVocab, kLargeVocab, DType::kFloat32};
  for (int threads : {1, 0}) {
    SCOPED_TRACE(threads);
    Engine engine(EngineOptions{.max_threads = threads, .seed = 1});
    std::unique_ptr<tbb::task_arena> arena;
    int concurrency = 0;
    std::set<std::thread::id> ids;
    std::mutex m;
    engine.execute([&] {
      arena = std::make_unique<tbb::task_arena>(tbb::task_arena::attach());
      concurrency = tbb::this_task_arena::max_concurrency();
      tbb::parallel_for(0, 256, [&](int) {
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        const std::lock_guard<std::mutex> lock(m);
        ids.insert(std::this_thread::get_id());
      });
    });
    ASSERT_TRUE(arena && arena->is_active());
    EXPECT_EQ(concurrency, engine.max_threads());
    EXPECT_LE(ids.size(), static_cast<size_t>(engine.max_threads()));

    tbb::task_arena other(engine.max_threads());
    other.initialize();
    std::vector<RowResult> outside(1), inside(1);
    {
      ArenaEntries engines(*arena);
      ArenaEntries others(other);
      ASSERT_TRUE(engine.sample(view, std::span(&req, 1), outside).ok());
      EXPECT_GT(engines.count.load(), 0);
      EXPECT_EQ(others.count.load(), 0);
    }
    Status s;
    engine.execute([&] { s = engine.sample(view, std::span(&req, 1), inside); });
    ASSERT_TRUE(s.ok()) << s.to_string();
    EXPECT_EQ(inside[0].tokens, outside[0].tokens);

    EXPECT_THROW(engine.execute([] { throw std::runtime_error("host work failed"); }),
                 std::runtime_error);
  }
}

// A call made from a host loop run in the engine's arena (Engine::execute)
// waits for its rows without taking up the host loop's other iterations: a
// thread that did would run one inside another, and an iteration that held
// a lock across its call would wait on itself for ever.
TEST(ReproducibilityTest, ACallInsideTheArenaRunsOnlyItsOwnRows) {
  const std::vector<float> row = MakeLogits(9, kLargeVocab);
  const LogitsView view{row.data(), 1, kLargeVocab, kLargeVocab, DType::kFloat32};
  Engine engine(EngineOptions{.max_threads = 2, .seed = 1});
  if (engine.max_threads() < 2) GTEST_SKIP() << "one thread: nothing to take up";
  RowRequest req;
  req.seed = 5;
  req.params.top_p = 0.9f;
  std::vector<RowResult> expected(1);
  ASSERT_TRUE(engine.sample(view, std::span(&req, 1), expected).ok());
  constexpr int kIterations = 3000;
  std::atomic<int> nested{0}, differ{0};
  thread_local bool in_call = false;
  engine.execute([&] {
    tbb::parallel_for(0, kIterations, [&](int) {
      if (in_call) ++nested;  // (an iteration taken up while a call waits)
      const bool outer = std::exchange(in_call, true);
      std::vector<RowResult> out(1);
      if (!engine.sample(view, std::span(&req, 1), out).ok() ||
          out[0].tokens != expected[0].tokens) {
        ++differ;
      }
      in_call = outer;
    });
  });
  EXPECT_EQ(nested.load(), 0) << "of " << kIterations << " iterations";
  EXPECT_EQ(differ.load(), 0);
}

// Many host threads share one engine for sampling and for work of their own
// through execute: every result is what one thread alone gets.
TEST(ReproducibilityTest, ExecuteAndSampleFromManyHostThreads) {
  const std::vector<float> row = MakeLogits(8, kLargeVocab);
  const LogitsView view{row.data(), 1, kLargeVocab, kLargeVocab, DType::kFloat32};
  Engine engine(EngineOptions{.max_threads = 0, .seed = 1});
  constexpr int kHosts = 4, kCalls = 20;
  auto request = [](int host, int call) {
    RowRequest req;
    req.seed = static_cast<uint64_t>(100 * host + call);
    req.params.top_p = 0.95f;
    return req;
  };
  auto work_sum = [](int host, int call) {
    int64_t sum = 0;
    for (int i = 0; i < 4096; ++i) sum += (i * (host + 1)) ^ call;
    return sum;
  };
  std::vector<std::vector<int32_t>> expected(kHosts * kCalls);
  for (int h = 0; h < kHosts; ++h) {
    for (int c = 0; c < kCalls; ++c) {
      const RowRequest req = request(h, c);
      std::vector<RowResult> out(1);
      ASSERT_TRUE(engine.sample(view, std::span(&req, 1), out).ok());
      expected[static_cast<size_t>(h * kCalls + c)] = out[0].tokens;
    }
  }
  std::vector<std::vector<int32_t>> got(kHosts * kCalls);
  std::vector<int64_t> sums(kHosts * kCalls, 0);
  std::vector<std::thread> hosts;
  for (int h = 0; h < kHosts; ++h) {
    hosts.emplace_back([&, h] {
      for (int c = 0; c < kCalls; ++c) {
        const size_t at = static_cast<size_t>(h * kCalls + c);
        engine.execute([&] {
          std::atomic<int64_t> sum{0};
          tbb::parallel_for(0, 4096, [&](int i) { sum += (i * (h + 1)) ^ c; });
          sums[at] = sum.load();
        });
        const RowRequest req = request(h, c);
        std::vector<RowResult> out(1);
        if (engine.sample(view, std::span(&req, 1), out).ok()) got[at] = out[0].tokens;
      }
    });
  }
  for (std::thread& t : hosts) t.join();
  for (int h = 0; h < kHosts; ++h) {
    for (int c = 0; c < kCalls; ++c) {
      const size_t at = static_cast<size_t>(h * kCalls + c);
      EXPECT_EQ(got[at], expected[at]) << "host " << h << " call " << c;
      EXPECT_EQ(sums[at], work_sum(h, c)) << "host " << h << " call " << c;
    }
  }
}

TEST(ReproducibilityTest, MultipleSamplesDifferButAreReproducible) {
  Engine engine(EngineOptions{.max_threads = 2, .seed = 9});
  const RowResult a = SampleFlat(engine, 1234, 5, 16);
  ASSERT_EQ(a.tokens.size(), 16u);
  const std::set<int32_t> distinct(a.tokens.begin(), a.tokens.end());
  EXPECT_GE(distinct.size(), 12u) << "16 draws from ~1000 tokens should rarely collide";
  // Same call again, on another engine with other threads: identical.
  Engine other(EngineOptions{.max_threads = 4, .seed = 10});
  ExpectIdentical(SampleFlat(other, 1234, 5, 16), a);
  // Sample j depends on its index only: fewer samples give a prefix of the same draws.
  const RowResult b = SampleFlat(engine, 1234, 5, 4);
  EXPECT_EQ(b.tokens, std::vector<int32_t>(a.tokens.begin(), a.tokens.begin() + 4));
  EXPECT_EQ(Bits(b.logprobs), Bits(std::vector<float>(a.logprobs.begin(), a.logprobs.begin() + 4)));
}

TEST(ReproducibilityTest, StepsAndSeedsGiveDifferentStreams) {
  Engine engine(EngineOptions{.max_threads = 2, .seed = 9});
  std::set<int32_t> by_step, by_seed;
  std::vector<int32_t> low_seed, high_seed, low_step, high_step;
  for (uint64_t i = 0; i < 20; ++i) {
    by_step.insert(SampleFlat(engine, 42, i, 1).tokens[0]);
    by_seed.insert(SampleFlat(engine, i, 42, 1).tokens[0]);
    // Seeds and steps are 64-bit: their high words count.
    low_seed.push_back(SampleFlat(engine, 5 + i, 0, 1).tokens[0]);
    high_seed.push_back(SampleFlat(engine, 5 + i + (uint64_t{1} << 32), 0, 1).tokens[0]);
    low_step.push_back(SampleFlat(engine, 6, i, 1).tokens[0]);
    high_step.push_back(SampleFlat(engine, 6, i + (uint64_t{1} << 32), 1).tokens[0]);
  }
  EXPECT_GE(by_step.size(), 15u);
  EXPECT_GE(by_seed.size(), 15u);
  EXPECT_NE(low_seed, high_seed);
  EXPECT_NE(low_step, high_step);
  // A step is not a sample index: step 1 sample 0 is not step 0 sample 1.
  const RowResult two = SampleFlat(engine, 77, 0, 8);
  std::vector<int32_t> steps;
  for (uint64_t s = 0; s < 8; ++s) steps.push_back(SampleFlat(engine, 77, s, 1).tokens[0]);
  EXPECT_EQ(steps[0], two.tokens[0]);
  EXPECT_NE(steps, two.tokens);
}

TEST(ReproducibilityTest, UnseededRowsFollowTheEngineSeed) {
  // Two engines with the same seed and the same sequence of calls agree; successive calls
  // differ; another engine seed differs; an engine without a seed still samples.
  Engine a(EngineOptions{.max_threads = 2, .seed = 123});
  Engine b(EngineOptions{.max_threads = 2, .seed = 123});
  Engine c(EngineOptions{.max_threads = 2, .seed = 124});
  Engine d(EngineOptions{.max_threads = 2, .seed = std::nullopt});
  std::vector<std::vector<int32_t>> from_a, from_c;
  for (int call = 0; call < 3; ++call) {
    SCOPED_TRACE(call);
    const RowResult ra = SampleFlat(a, std::nullopt, 0, 8);
    const RowResult rb = SampleFlat(b, std::nullopt, 0, 8);
    ExpectIdentical(ra, rb);
    from_a.push_back(ra.tokens);
    from_c.push_back(SampleFlat(c, std::nullopt, 0, 8).tokens);
    const RowResult rd = SampleFlat(d, std::nullopt, 0, 8);
    ASSERT_TRUE(rd.status.ok());
    ASSERT_EQ(rd.tokens.size(), 8u);
    for (int32_t t : rd.tokens) EXPECT_TRUE(t >= 0 && t < kSmallVocab) << t;
  }
  EXPECT_NE(from_a[0], from_a[1]);
  EXPECT_NE(from_a[1], from_a[2]);
  EXPECT_NE(from_a, from_c);

  // Unseeded rows in a batch also follow the engine seed.
  std::vector<RowSpec> specs;
  for (int i = 0; i < 6; ++i)
    specs.push_back({.logits_seed = 300u + i, .kind = i % kKinds, .seed = std::nullopt, .step = 0});
  const Batch batch(specs, kSmallVocab);
  Engine e(EngineOptions{.max_threads = 2, .seed = 55});
  Engine f(EngineOptions{.max_threads = 2, .seed = 55});
  for (int call = 0; call < 2; ++call) {
    const std::vector<RowResult> re = batch.Sample(e);
    const std::vector<RowResult> rf = batch.Sample(f);
    for (size_t i = 0; i < re.size(); ++i) ExpectIdentical(re[i], rf[i]);
  }
}

// The tokens of one call of 8 unseeded draws made in a forked child, read
// back through a pipe (empty when the child failed).
std::vector<int32_t> SampleFlatInAChild(Engine& engine) {
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    const RowResult r = SampleFlat(engine, std::nullopt, 0, 8);
    const auto bytes = static_cast<ssize_t>(r.tokens.size() * sizeof(int32_t));
    const bool sent = r.status.ok() && write(fds[1], r.tokens.data(), bytes) == bytes;
    _exit(sent ? 0 : 1);
  }
  close(fds[1]);
  std::vector<int32_t> tokens(8);
  const auto bytes = static_cast<ssize_t>(tokens.size() * sizeof(int32_t));
  const bool got = pid > 0 && read(fds[0], tokens.data(), bytes) == bytes;
  close(fds[0]);
  int status = 0;
  if (pid > 0) waitpid(pid, &status, 0);
  if (!got || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return {};
  return tokens;
}

TEST(ReproducibilityTest, AnEngineSeededFromTheSystemReseedsInAForkedChild) {
  // A forked child's copy of an engine seeded from the system would draw
  // what the parent draws next (Python's random module reseeds at fork for
  // this): it takes a new system seed. One seeded by the host keeps its
  // stream in the child. 8 draws from 1,000 flat tokens: all 8 alike by
  // chance once in 10^24.
  Engine host(EngineOptions{.max_threads = 1, .seed = 77});
  Engine twin(EngineOptions{.max_threads = 1, .seed = 77});  // (never forked)
  Engine system(EngineOptions{.max_threads = 1, .seed = std::nullopt});
  for (Engine* engine : {&host, &system}) {
    SampleFlat(*engine, std::nullopt, 0, 8);  // (a call before the fork)
    const std::vector<int32_t> child = SampleFlatInAChild(*engine);
    ASSERT_EQ(child.size(), 8u);
    const std::vector<int32_t> parent = SampleFlat(*engine, std::nullopt, 0, 8).tokens;
    if (engine == &host) {
      EXPECT_EQ(child, parent);
    } else {
      EXPECT_NE(child, parent);
    }
  }
  // The parent's own stream goes on as a twin's that never forked.
  for (int call = 0; call < 3; ++call) {
    const std::vector<int32_t> expected = SampleFlat(twin, std::nullopt, 0, 8).tokens;
    if (call < 2) continue;  // (the host's calls before and after the fork)
    EXPECT_EQ(SampleFlat(host, std::nullopt, 0, 8).tokens, expected);
  }
  // Another child draws apart from the parent too (a new salt each fork).
  const std::vector<int32_t> first = SampleFlatInAChild(system);
  EXPECT_EQ(first.size(), 8u);
  EXPECT_NE(first, SampleFlat(system, std::nullopt, 0, 8).tokens);
}

TEST(ReproducibilityTest, SplitFullSamplingRowsFromManyHostThreads) {
  // Full sampling of rows split over threads (fewer rows than threads: the
  // scan and the exp pass each spread over the engine's threads) from several
  // host threads at once (the ThreadSanitizer build runs this): every call
  // gives one thread's results, probabilities included.
  const tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 4);
  constexpr int kVocab = 40000;  // three chunks, past the split threshold
  const std::vector<RowSpec> specs = {{.logits_seed = 71, .kind = 4, .seed = 5, .step = 0},
                                      {.logits_seed = 72, .kind = 4, .seed = 6, .step = 2}};
  const Batch one({specs[0]}, kVocab), two(specs, kVocab);
  Engine single(EngineOptions{.max_threads = 1, .seed = 1});
  const std::vector<RowResult> one_expected = one.Sample(single), two_expected = two.Sample(single);
  const std::vector<uint32_t> probs_expected = Bits(two.Probs(single));
  Engine engine(EngineOptions{.max_threads = 4, .seed = 1});
  std::vector<std::thread> hosts;
  std::atomic<int> mismatches{0};
  for (int h = 0; h < 3; ++h) {
    hosts.emplace_back([&] {
      for (int i = 0; i < 8; ++i) {
        const std::vector<RowResult> a = one.Sample(engine), b = two.Sample(engine);
        bool same = a[0].tokens == one_expected[0].tokens &&
                    Bits(a[0].logprobs) == Bits(one_expected[0].logprobs) &&
                    Bits(two.Probs(engine)) == probs_expected;
        for (size_t r = 0; r < b.size(); ++r) {
          same = same && b[r].tokens == two_expected[r].tokens &&
                 Bits(b[r].logprobs) == Bits(two_expected[r].logprobs);
        }
        if (!same) ++mismatches;
      }
    });
  }
  for (std::thread& t : hosts) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(ReproducibilityTest, ConcurrentCallsMatchSequentialCalls) {
  constexpr int kThreads = 8;
  constexpr int kCallsPerThread = 6;
  std::vector<Batch> batches;
  std::mt19937 rng(2024);
  for (int i = 0; i < kThreads * kCallsPerThread; ++i) {
    std::vector<RowSpec> specs;
    const int rows = 1 + i % 9;
    for (int r = 0; r < rows; ++r) {
      RowSpec s = Neighbour(rng);
      s.seed = rng();  // seeded: the results are promised
      specs.push_back(s);
    }
    batches.emplace_back(specs, i % 5 == 0 ? 50000 : kSmallVocab);
  }
  Engine engine(EngineOptions{.max_threads = 4, .seed = 3});
  std::vector<std::vector<RowResult>> sequential;
  std::vector<std::vector<float>> sequential_probs;
  for (const Batch& b : batches) {
    sequential.push_back(b.Sample(engine));
    sequential_probs.push_back(b.Probs(engine));
  }

  std::vector<std::vector<RowResult>> concurrent(batches.size());
  std::vector<std::vector<float>> concurrent_probs(batches.size());
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Interleave: thread t takes batches t, t + 8, ...; each twice, keeping the last.
      for (int round = 0; round < 2; ++round) {
        for (int c = 0; c < kCallsPerThread; ++c) {
          const size_t i = static_cast<size_t>(t + kThreads * c);
          concurrent[i] = batches[i].Sample(engine);
          concurrent_probs[i] = batches[i].Probs(engine);
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();

  for (size_t i = 0; i < batches.size(); ++i) {
    SCOPED_TRACE(i);
    ASSERT_EQ(concurrent[i].size(), sequential[i].size());
    for (size_t r = 0; r < sequential[i].size(); ++r)
      ExpectIdentical(concurrent[i][r], sequential[i][r]);
    EXPECT_TRUE(Bits(concurrent_probs[i]) == Bits(sequential_probs[i]));
  }
}

}  // namespace
}  // namespace nucleus
