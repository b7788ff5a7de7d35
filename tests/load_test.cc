// Load and thread-count properties of the engine (SPEC sections 5 and 8):
//   - many host threads (at least 16) hammer one engine with mixed batches --
//     sample, probs and verify; every dtype; padded strides; shared and
//     per-row requests; rows that fail -- for a bounded time: no crash, no
//     deadlock (a watchdog aborts a run that stops making progress), and
//     every seeded result is bit-identical to the one a single-threaded
//     engine computed beforehand;
//   - over more than 10,000 random rows, engines of 1, 2, 4 and 8 threads
//     give the same seeded tokens, logprobs and supports, and so does a
//     random permutation of each batch.
// NUCLEUS_LOAD_SECONDS shortens or lengthens the hammering (default 3); the
// sanitizer runs (scripts/sanitize.sh) set it.
//
// Memory bounds are tested elsewhere: tests/cli_test.cc
// (Cli.LargeDumpRunsInBoundedMemory) runs a 500 MiB dump under a 256 MiB
// address-space limit, tests/allocation_test.cc checks that the steady state
// allocates nothing, and LeakSanitizer runs the whole suite in
// scripts/sanitize.sh.
#include <gtest/gtest.h>
#include <tbb/global_control.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "engine/io/half.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

using Clock = std::chrono::steady_clock;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

// Token lists a request borrows; they live as long as the batch.
struct Owned {
  std::vector<int32_t> prompt, generated, banned, mask;
  std::vector<TokenBias> bias;
};

// A random but valid request (seeded unless `unseeded`).
RowRequest RandomRequest(std::mt19937_64& rng, int64_t vocab, bool unseeded, Owned* owned) {
  auto pick = [&](auto... values) {
    const std::array all{values...};
    return all[rng() % all.size()];
  };
  auto token = [&] { return static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)); };
  RowRequest r;
  SamplingParams& p = r.params;
  p.temperature = pick(1.0f, 0.7f, 1.3f, 0.0f, 0.05f);
  p.top_k = pick(0, 0, 1, 5, 40, static_cast<int32_t>(vocab));
  p.top_p = pick(1.0f, 0.9f, 0.5f, 0.0f);
  p.min_p = pick(0.0f, 0.0f, 0.05f);
  p.typical_p = pick(1.0f, 1.0f, 0.9f);
  p.top_n_sigma = pick(0.0f, 0.0f, 1.5f);
  p.min_keep = pick(1, 1, 3);
  p.preset = pick(Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp);
  p.num_samples = pick(1, 1, 2, 4);
  p.top_logprobs = static_cast<int32_t>(std::min<int64_t>(pick(0, 0, 2, 5), vocab));
  p.logprobs_mode = pick(LogprobsMode::kProcessed, LogprobsMode::kRaw);
  if (rng() % 3 == 0) {
    p.repetition_penalty = pick(1.2f, 0.8f);
    p.frequency_penalty = pick(0.0f, 0.5f);
    p.presence_penalty = pick(0.0f, 0.3f);
    for (int i = 0; i < 5; ++i) owned->generated.push_back(token());
    for (int i = 0; i < 3; ++i) owned->prompt.push_back(token());
  }
  if (rng() % 4 == 0) {
    owned->bias = {{token(), 2.0f}, {token(), -kInf}};
    owned->banned = {token()};
  }
  if (rng() % 5 == 0) {
    owned->mask.assign(static_cast<size_t>((vocab + 31) / 32), 0);
    for (int32_t& w : owned->mask) w = static_cast<int32_t>(rng());
    owned->mask[0] |= 1;  // token 0 stays allowed: the row can be sampled
  }
  r.prompt_tokens = owned->prompt;
  r.generated_tokens = owned->generated;
  r.banned_tokens = owned->banned;
  r.logit_bias = owned->bias;
  r.allowed_mask = owned->mask;
  if (!unseeded) r.seed = rng();
  r.step = rng() % 1000;
  return r;
}

// A batch of logit rows in any dtype, rows padded to `stride`.
struct Logits {
  int64_t rows = 0, vocab = 0, stride = 0;
  DType dtype = DType::kFloat32;
  std::vector<uint32_t> words;  // 4-byte words: aligned for every dtype

  LogitsView View() const { return {words.data(), rows, vocab, stride, dtype}; }

  void Set(int64_t row, int64_t token, float x) {
    auto* bytes = reinterpret_cast<unsigned char*>(words.data());
    const int64_t i = row * stride + token;
    if (dtype == DType::kFloat32) {
      std::memcpy(bytes + i * 4, &x, 4);
    } else {
      const uint16_t h = dtype == DType::kFloat16 ? detail::float_to_half_bits(x)
                                                  : detail::float_to_bfloat16_bits(x);
      std::memcpy(bytes + i * 2, &h, 2);
    }
  }

  // Row `from` of `other` copied into row `to` (same shape and dtype).
  void CopyRow(const Logits& other, int64_t from, int64_t to) {
    const int item = dtype_size(dtype);
    std::memcpy(reinterpret_cast<unsigned char*>(words.data()) + to * stride * item,
                reinterpret_cast<const unsigned char*>(other.words.data()) + from * stride * item,
                static_cast<size_t>(vocab * item));
  }
};

Logits MakeLogits(std::mt19937_64& rng, int64_t rows, int64_t vocab, int64_t pad, DType dtype) {
  Logits l;
  l.rows = rows;
  l.vocab = vocab;
  l.stride = vocab + pad;
  l.dtype = dtype;
  l.words.assign(static_cast<size_t>((rows * l.stride * dtype_size(dtype) + 3) / 4), 0);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < vocab; ++t) l.Set(r, t, normal(rng));
    for (int k = 0; k < 3; ++k) {
      l.Set(r, static_cast<int64_t>(rng() % static_cast<uint64_t>(vocab)), 6.0f + normal(rng));
    }
    for (int64_t t = vocab; t < l.stride; ++t) l.Set(r, t, kNaN);  // padding: never read
  }
  return l;
}

std::vector<uint32_t> Bits(const std::vector<float>& v) {
  std::vector<uint32_t> out(v.size());
  std::transform(v.begin(), v.end(), out.begin(),
                 [](float f) { return std::bit_cast<uint32_t>(f); });
  return out;
}

bool Same(const RowResult& a, const RowResult& b) {
  if (a.status.code() != b.status.code() || a.status.message() != b.status.message() ||
      a.tokens != b.tokens || a.ranks != b.ranks || a.support != b.support ||
      Bits(a.logprobs) != Bits(b.logprobs) || Bits(a.raw_logprobs) != Bits(b.raw_logprobs) ||
      a.top_logprobs.size() != b.top_logprobs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.top_logprobs.size(); ++i) {
    if (a.top_logprobs[i].token != b.top_logprobs[i].token ||
        std::bit_cast<uint32_t>(a.top_logprobs[i].logprob) !=
            std::bit_cast<uint32_t>(b.top_logprobs[i].logprob)) {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Many host threads, one engine.

enum class Op { kSample, kProbs, kVerify };

// One unit of work and the answers a single-threaded engine gave for it.
struct Job {
  Op op = Op::kSample;
  Logits logits;
  std::vector<Owned> owned;
  std::vector<RowRequest> requests;
  int64_t num_draft = 0;  // verify
  std::vector<int32_t> drafts;
  std::vector<float> draft_probs;

  std::vector<RowResult> sampled;
  std::vector<float> probs;
  std::vector<Status> probs_status;
  std::vector<VerifyResult> verified;

  int64_t Groups() const { return op == Op::kVerify ? logits.rows / (num_draft + 1) : logits.rows; }
  bool Seeded(int64_t group) const {
    return requests[requests.size() == 1 ? 0 : static_cast<size_t>(group)].seed.has_value();
  }
};

Job MakeJob(std::mt19937_64& rng, int index) {
  Job job;
  job.op = static_cast<Op>(index % 3);
  const int64_t vocab = std::array<int64_t, 6>{7, 100, 1000, 5000, 32000, 40000}[rng() % 6];
  const int64_t groups = vocab >= 32000 ? 1 + rng() % 3 : 1 + rng() % 24;
  job.num_draft = job.op == Op::kVerify ? static_cast<int64_t>(rng() % 4) : 0;
  const int64_t rows = groups * (job.num_draft + 1);
  const auto dtype = static_cast<DType>(rng() % 3);
  job.logits = MakeLogits(rng, rows, vocab, static_cast<int64_t>(rng() % 3) * 5, dtype);
  if (rng() % 4 == 0) job.logits.Set(rng() % rows, rng() % vocab, kNaN);  // a row error
  const bool shared = rng() % 4 == 0;
  const size_t n = shared ? 1 : static_cast<size_t>(groups);
  job.owned.resize(n);
  for (size_t i = 0; i < n; ++i) {
    job.requests.push_back(RandomRequest(rng, vocab, rng() % 8 == 0, &job.owned[i]));
  }
  if (job.op == Op::kVerify) {
    for (int64_t i = 0; i < groups * job.num_draft; ++i) {
      job.drafts.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)));
    }
    if (rng() % 2 == 0 && job.num_draft > 0) {
      job.draft_probs.resize(static_cast<size_t>(groups * job.num_draft * vocab));
      for (int64_t d = 0; d < groups * job.num_draft; ++d) {  // each row a distribution
        float* q = job.draft_probs.data() + d * vocab;
        double sum = 0.0;
        for (int64_t t = 0; t < vocab; ++t) sum += q[t] = static_cast<float>(1 + rng() % 1000);
        for (int64_t t = 0; t < vocab; ++t) q[t] = static_cast<float>(q[t] / sum);
      }
    }
  }
  return job;
}

// Runs `job` on `engine`; returns whether every seeded answer (all of probs)
// equals the recorded one. With record = true it records them instead.
bool RunJob(Engine& engine, Job& job, bool record, std::vector<RowResult>& sampled,
            std::vector<float>& probs, std::vector<Status>& status,
            std::vector<VerifyResult>& verified) {
  const LogitsView view = job.logits.View();
  const int64_t groups = job.Groups();
  switch (job.op) {
    case Op::kSample: {
      sampled.resize(static_cast<size_t>(groups));
      if (!engine.sample(view, job.requests, sampled).ok()) return false;
      if (record) {
        job.sampled = sampled;
        return true;
      }
      for (int64_t r = 0; r < groups; ++r) {
        const RowResult& got = sampled[static_cast<size_t>(r)];
        if (job.Seeded(r)
                ? !Same(got, job.sampled[static_cast<size_t>(r)])
                : got.status.code() != job.sampled[static_cast<size_t>(r)].status.code()) {
          return false;
        }
      }
      return true;
    }
    case Op::kProbs: {
      probs.assign(static_cast<size_t>(view.rows * view.vocab), -1.0f);
      status.resize(static_cast<size_t>(view.rows));
      if (!engine.probs(view, job.requests, probs.data(), view.vocab, status).ok()) return false;
      if (record) {
        job.probs = probs;
        job.probs_status = status;
        return true;
      }
      for (size_t r = 0; r < status.size(); ++r) {
        if (status[r].message() != job.probs_status[r].message()) return false;
      }
      return Bits(probs) == Bits(job.probs);
    }
    case Op::kVerify: {
      verified.resize(static_cast<size_t>(groups));
      if (!engine
               .verify(view, job.num_draft, job.drafts,
                       job.draft_probs.empty() ? nullptr : job.draft_probs.data(), job.requests,
                       verified)
               .ok()) {
        return false;
      }
      if (record) {
        job.verified = verified;
        return true;
      }
      for (int64_t r = 0; r < groups; ++r) {
        const VerifyResult& got = verified[static_cast<size_t>(r)];
        const VerifyResult& want = job.verified[static_cast<size_t>(r)];
        if (got.status.code() != want.status.code()) return false;
        if (job.Seeded(r) && (got.tokens != want.tokens || got.accepted != want.accepted)) {
          return false;
        }
      }
      return true;
    }
  }
  return false;
}

double LoadSeconds() {
  if (const char* s = std::getenv("NUCLEUS_LOAD_SECONDS")) return std::max(0.1, std::atof(s));
  return 3.0;
}

TEST(LoadTest, ManyHostThreadsHammerOneEngine) {
  constexpr int kHostThreads = 16;
  constexpr int kJobs = 36;
  std::mt19937_64 rng(7);
  std::vector<Job> jobs;
  for (int i = 0; i < kJobs; ++i) jobs.push_back(MakeJob(rng, i));
  {
    Engine single(EngineOptions{.max_threads = 1, .seed = 3});
    std::vector<RowResult> s;
    std::vector<float> p;
    std::vector<Status> st;
    std::vector<VerifyResult> v;
    for (Job& job : jobs) ASSERT_TRUE(RunJob(single, job, true, s, p, st, v));
  }

  // The shared engine uses every core (at least 4 threads, so that rows and
  // chunks of rows spread even on a small machine).
  Engine engine(EngineOptions{
      .max_threads = std::max(4, static_cast<int>(std::thread::hardware_concurrency())),
      .seed = 9});
  const auto deadline = Clock::now() + std::chrono::duration<double>(LoadSeconds());
  std::atomic<int64_t> calls{0};
  std::atomic<int64_t> mismatches{0};
  std::atomic<int> running{kHostThreads};
  std::mutex mu;
  std::condition_variable done;

  // A deadlock would hang the test until ctest's timeout; the watchdog says
  // so much sooner, and names the last progress it saw.
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(mu);
    int64_t last = -1;
    while (running.load() > 0) {
      if (done.wait_for(lock, std::chrono::seconds(120), [&] { return running.load() == 0; })) {
        break;
      }
      const int64_t now = calls.load();
      if (now == last) {
        std::fprintf(stderr, "load test: no call finished in 120 s (%lld calls so far): deadlock\n",
                     static_cast<long long>(now));
        std::abort();
      }
      last = now;
    }
  });

  std::vector<std::thread> threads;
  for (int t = 0; t < kHostThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 pick(static_cast<uint32_t>(t));
      std::vector<RowResult> s;
      std::vector<float> p;
      std::vector<Status> st;
      std::vector<VerifyResult> v;
      // Every thread makes a few calls however slow the build (sanitizers),
      // then keeps going until the deadline.
      for (int n = 0; n < 3 || Clock::now() < deadline; ++n) {
        Job& job = jobs[pick() % jobs.size()];
        if (!RunJob(engine, job, false, s, p, st, v)) mismatches.fetch_add(1);
        calls.fetch_add(1);
      }
      if (running.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mu);
        done.notify_all();
      }
    });
  }
  for (std::thread& th : threads) th.join();
  watchdog.join();
  EXPECT_EQ(mismatches.load(), 0) << "of " << calls.load() << " calls";
  EXPECT_GE(calls.load(), 3 * kHostThreads);
  std::fprintf(stderr, "load test: %lld calls from %d host threads\n",
               static_cast<long long>(calls.load()), kHostThreads);
}

TEST(LoadTest, EnginesComeAndGoWhileOthersWork) {
  // Engines (and their oneTBB arenas) created and destroyed on some threads
  // while other threads sample on their own engines: arenas must not share
  // state that a destruction could pull from under a running call.
  std::mt19937_64 rng(11);
  Job job = MakeJob(rng, 0);
  {
    Engine single(EngineOptions{.max_threads = 1, .seed = 1});
    std::vector<RowResult> s;
    std::vector<float> p;
    std::vector<Status> st;
    std::vector<VerifyResult> v;
    ASSERT_TRUE(RunJob(single, job, true, s, p, st, v));
  }
  std::atomic<int64_t> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<RowResult> s;
      std::vector<float> p;
      std::vector<Status> st;
      std::vector<VerifyResult> v;
      for (int i = 0; i < 4; ++i) {
        Engine engine(EngineOptions{.max_threads = 1 + (t + i) % 3, .seed = 2});
        if (!RunJob(engine, job, false, s, p, st, v)) mismatches.fetch_add(1);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// Thread counts and permutations over many random rows.

TEST(LoadTest, TenThousandRowsIgnoreThreadCountAndOrder) {
  std::mt19937_64 rng(2025);
  // (8 threads even on fewer cores: an engine takes no more than oneTBB allows)
  const tbb::global_control allow(tbb::global_control::max_allowed_parallelism, 8);
  Engine engines[] = {Engine(EngineOptions{.max_threads = 1, .seed = 1}),
                      Engine(EngineOptions{.max_threads = 2, .seed = 1}),
                      Engine(EngineOptions{.max_threads = 4, .seed = 1}),
                      Engine(EngineOptions{.max_threads = 8, .seed = 1})};
  int64_t total_rows = 0;
  int64_t batches = 0;
  while (total_rows < 10000) {
    // Mostly many small rows; now and then a few long ones, which take the
    // chunked path when there are fewer rows than threads.
    const bool long_rows = batches % 8 == 7;
    const int64_t vocab = long_rows ? 17000 + static_cast<int64_t>(rng() % 50000)
                                    : 2 + static_cast<int64_t>(rng() % 1500);
    const int64_t rows =
        long_rows ? 1 + static_cast<int64_t>(rng() % 3) : 50 + static_cast<int64_t>(rng() % 400);
    const auto dtype = static_cast<DType>(rng() % 3);
    const int64_t pad = static_cast<int64_t>(rng() % 2) * 3;
    const Logits logits = MakeLogits(rng, rows, vocab, pad, dtype);
    std::vector<Owned> owned(static_cast<size_t>(rows));
    std::vector<RowRequest> requests;
    for (int64_t r = 0; r < rows; ++r) {
      requests.push_back(RandomRequest(rng, vocab, false, &owned[static_cast<size_t>(r)]));
    }
    SCOPED_TRACE(::testing::Message() << "batch " << batches << ": " << rows << " x " << vocab
                                      << " " << dtype_name(dtype));

    std::vector<RowResult> reference(static_cast<size_t>(rows));
    ASSERT_TRUE(engines[0].sample(logits.View(), requests, reference).ok());
    for (size_t e = 1; e < std::size(engines); ++e) {
      std::vector<RowResult> got(static_cast<size_t>(rows));
      ASSERT_TRUE(engines[e].sample(logits.View(), requests, got).ok());
      for (int64_t r = 0; r < rows; ++r) {
        ASSERT_TRUE(Same(got[static_cast<size_t>(r)], reference[static_cast<size_t>(r)]))
            << "threads " << engines[e].max_threads() << ", row " << r;
      }
    }

    // The same rows in a random order, on a random engine.
    std::vector<int64_t> order(static_cast<size_t>(rows));
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    Logits permuted = logits;
    std::vector<RowRequest> permuted_requests;
    for (int64_t i = 0; i < rows; ++i) {
      permuted.CopyRow(logits, order[static_cast<size_t>(i)], i);
      permuted_requests.push_back(requests[static_cast<size_t>(order[static_cast<size_t>(i)])]);
    }
    Engine& engine = engines[rng() % std::size(engines)];
    std::vector<RowResult> got(static_cast<size_t>(rows));
    ASSERT_TRUE(engine.sample(permuted.View(), permuted_requests, got).ok());
    for (int64_t i = 0; i < rows; ++i) {
      const RowResult& want = reference[static_cast<size_t>(order[static_cast<size_t>(i)])];
      RowResult g = got[static_cast<size_t>(i)];
      // Row errors name the row's position in its batch, which moved.
      if (!want.status.ok()) g.status = want.status;
      ASSERT_TRUE(Same(g, want)) << "permuted row " << i << " (was " << order[i] << ")";
    }
    total_rows += rows;
    ++batches;
  }
  std::fprintf(stderr, "%lld rows in %lld batches\n", static_cast<long long>(total_rows),
               static_cast<long long>(batches));
}

}  // namespace
}  // namespace nucleus
