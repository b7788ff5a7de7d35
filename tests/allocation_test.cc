// The steady state allocates nothing (SPEC section 8): once an engine has seen
// a batch shape, calling it again with the same shape and reused RowResult
// objects makes no heap allocation. Counted with a replaced global operator
// new, so any allocation through the C++ allocator on any thread shows up.
// The same operator new can fail on demand: an allocation that fails inside
// a call is a status, never an exception out of the C++ API.
#include <gtest/gtest.h>

#include <atomic>
#include <bit>
#include <cstdlib>
#include <memory>
#include <new>
#include <random>
#include <utility>
#include <vector>

#include "engine/row/row_sampler.h"
#include "engine/row/verify.h"
#include "nucleus/engine.h"
#include "tools/lm_logits.h"

// Allocation counting and fault injection.
#include "counting_new.h"

namespace nucleus {
namespace {

std::vector<float> make_logits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (float& v : x) v = normal(gen);
  return x;
}

// Runs the same call until it has settled, then counts one more.
int64_t allocations_in_steady_state(Engine& engine, const LogitsView& view,
                                    const std::vector<RowRequest>& requests) {
  std::vector<RowResult> results(static_cast<size_t>(view.rows));
  // The first call sizes the scratch and the results: the counter must see it
  // (otherwise a zero below would prove nothing).
  g_allocations = 0;
  g_counting = true;
  EXPECT_TRUE(engine.sample(view, requests, results).ok());
  g_counting = false;
  EXPECT_GT(g_allocations.load(), 0);
  for (int i = 0; i < 20; ++i) EXPECT_TRUE(engine.sample(view, requests, results).ok());
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < 5; ++i) {
    const Status s = engine.sample(view, requests, results);
    if (!s.ok()) ADD_FAILURE() << s.to_string();
  }
  g_counting = false;
  for (const RowResult& r : results) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
  return g_allocations.load();
}

std::vector<RowRequest> requests_for(int64_t rows, const SamplingParams& params) {
  std::vector<RowRequest> requests(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    requests[static_cast<size_t>(r)].params = params;
    requests[static_cast<size_t>(r)].seed = 100 + static_cast<uint64_t>(r);
  }
  return requests;
}

SamplingParams params_for(int config) {
  SamplingParams p;
  p.num_samples = 2;
  switch (config) {
    case 0:
      break;  // full-vocabulary sampling
    case 1:
      p.temperature = 0.7f;
      p.top_k = 50;
      p.top_p = 0.9f;
      break;
    case 2:
      p.top_p = 0.95f;
      p.top_logprobs = 5;
      break;
    case 3:
      p.min_p = 0.05f;
      p.typical_p = 0.9f;
      p.top_n_sigma = 1.5f;
      p.min_keep = 3;
      break;
    case 4:
      p.temperature = 0.0f;
      break;
    case 5:
      p.typical_p = 0.9f;
      break;
  }
  return p;
}

class AllocationTest : public ::testing::TestWithParam<int> {};

TEST_P(AllocationTest, SteadyStateAllocatesNothing) {
  const int config = GetParam();
  const SamplingParams p = params_for(config);
  std::vector<int32_t> history = {1, 5, 5, 9, 200, 3999};
  for (int64_t vocab : {4000, 128256}) {
    for (int64_t rows : {1, 4}) {
      const auto x = make_logits(rows, vocab, 7);
      const LogitsView view{x.data(), rows, vocab, vocab, DType::kFloat32};
      auto requests = requests_for(rows, p);
      for (auto& r : requests) {
        r.generated_tokens = history;
        r.params.repetition_penalty = config == 1 ? 1.2f : 1.0f;
      }
      Engine engine({.max_threads = 2, .seed = 1});
      EXPECT_EQ(allocations_in_steady_state(engine, view, requests), 0)
          << "config " << config << " vocab " << vocab << " rows " << rows;
    }
  }
}

// Which pooled scratch a row is handed depends on thread timing, so the pool
// sizes every scratch the first time a call brings rows of a new length
// (RowScratch::prepare). A prepared scratch must then serve its first row of
// that length, whatever the request, without allocating.
TEST_P(AllocationTest, PreparedScratchAllocatesNothingOnItsFirstRow) {
  const int config = GetParam();
  const detail::Runner serial{false, &detail::kernels_for(resolve_isa(Isa::kAuto))};
  const std::vector<int32_t> history = {1, 5, 5, 9, 200, 3999};
  enum Row { kGaussian, kPeaked, kLmFlat };
  for (const auto& [vocab, kind] : {std::pair<int64_t, Row>{4000, kGaussian},
                                    {128256, kGaussian},
                                    {128256, kPeaked},
                                    {128256, kLmFlat}}) {
    // (a Gaussian row takes the pivot selects; one dominant token the paths
    // for peaked rows; an LM-like flat row typical-p's band)
    auto x = kind == kLmFlat ? tools::make_lm_logits(1, vocab, tools::LmRowKind::kFlat, 3)
                             : make_logits(1, vocab, 7);
    const bool peaked = kind == kPeaked;
    if (peaked) x[static_cast<size_t>(vocab / 3)] += 15.0f;
    std::vector<uint16_t> bf16(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      bf16[i] = static_cast<uint16_t>(std::bit_cast<uint32_t>(x[i]) >> 16);
    for (bool half : {false, true}) {
      for (bool penalised : {false, true}) {
        RowRequest req;
        req.params = params_for(config);
        req.seed = 11;
        if (penalised) {
          req.generated_tokens = history;
          req.params.repetition_penalty = 1.2f;
          req.params.frequency_penalty = 0.5f;
        }
        const detail::RowInput in{half ? static_cast<const void*>(bf16.data()) : x.data(),
                                  half ? DType::kBFloat16 : DType::kFloat32, vocab};
        RowResult result;
        {
          // (sizes the result's vectors, which the caller owns and reuses)
          detail::RowScratch other;
          other.prepare(vocab);
          detail::sample_row(in, req, 1, 0, result, other, serial);
        }
        detail::RowScratch fresh;
        fresh.prepare(vocab);
        g_allocations = 0;
        g_counting = true;
        detail::sample_row(in, req, 1, 0, result, fresh, serial);
        g_counting = false;
        EXPECT_TRUE(result.status.ok()) << result.status.to_string();
        EXPECT_EQ(g_allocations.load(), 0)
            << "config " << config << " vocab " << vocab << (peaked ? " peaked" : "")
            << (kind == kLmFlat ? " LM-like flat" : "") << (half ? " bf16" : " f32")
            << (penalised ? " penalised" : "");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, AllocationTest, ::testing::Range(0, 6));

// Rows, drafts and requests for the verification and probs tests below: K
// drafts per row, draft probabilities, a history with penalties.
struct VerifyCall {
  static constexpr int64_t kDraft = 3;
  int64_t rows, vocab;
  std::vector<float> target, draft_probs;
  std::vector<int32_t> drafts, history;
  std::vector<RowRequest> requests;

  VerifyCall(int64_t rows_, int64_t vocab_) : rows(rows_), vocab(vocab_) {
    target = make_logits(rows * (kDraft + 1), vocab, 21);
    draft_probs.assign(static_cast<size_t>(rows * kDraft * vocab),
                       1.0f / static_cast<float>(vocab));
    std::mt19937 gen(5);
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(vocab - 1));
    for (int64_t i = 0; i < rows * kDraft; ++i) drafts.push_back(token(gen));
    for (int i = 0; i < 40; ++i) history.push_back(token(gen));
    SamplingParams p;
    p.temperature = 0.8f;
    p.top_p = 0.9f;
    p.repetition_penalty = 1.2f;
    p.frequency_penalty = 0.3f;
    requests = requests_for(rows, p);
    for (auto& r : requests) r.generated_tokens = history;
  }
  LogitsView view() const {
    return {target.data(), rows * (kDraft + 1), vocab, vocab, DType::kFloat32};
  }
  LogitsView one_per_row() const {
    return {target.data(), rows, vocab, vocab * (kDraft + 1), DType::kFloat32};
  }
};

// Verification and probs reach a steady state too: every pooled scratch is
// sized for them on the first call of a shape, whichever row it serves later.
TEST(AllocationVerifyAndProbs, SteadyStateAllocatesNothing) {
  for (int64_t vocab : {4000, 128256}) {
    for (int64_t rows : {1, 4}) {
      const VerifyCall c(rows, vocab);
      Engine engine({.max_threads = 2, .seed = 1});
      std::vector<VerifyResult> results(static_cast<size_t>(rows));
      std::vector<float> probs(static_cast<size_t>(rows * vocab));
      std::vector<Status> status(static_cast<size_t>(rows));
      auto both = [&] {
        EXPECT_TRUE(
            engine.verify(c.view(), c.kDraft, c.drafts, c.draft_probs.data(), c.requests, results)
                .ok());
        EXPECT_TRUE(engine.probs(c.one_per_row(), c.requests, probs.data(), vocab, status).ok());
      };
      g_allocations = 0;
      g_counting = true;
      both();
      g_counting = false;
      EXPECT_GT(g_allocations.load(), 0);  // the counter sees the first call
      for (int i = 0; i < 20; ++i) both();
      g_allocations = 0;
      g_counting = true;
      for (int i = 0; i < 5; ++i) both();
      g_counting = false;
      EXPECT_EQ(g_allocations.load(), 0) << "vocab " << vocab << " rows " << rows;
      for (const VerifyResult& r : results) EXPECT_TRUE(r.status.ok()) << r.status.to_string();
      for (const Status& s : status) EXPECT_TRUE(s.ok()) << s.to_string();
    }
  }
}

// Which pooled scratch serves a verified row depends on thread timing (above,
// two threads rarely show it), so the pool sizes every scratch's lists for
// the call's rows and histories first (RowScratch::prepare_verify): a
// prepared scratch must verify its first row without allocating.
TEST(AllocationVerifyAndProbs, PreparedScratchVerifiesItsFirstRowWithoutAllocating) {
  const detail::Runner serial{false, &detail::kernels_for(resolve_isa(Isa::kAuto))};
  const VerifyCall c(1, 4000);
  const int64_t k = c.kDraft;
  auto prepared = [&] {
    auto s = std::make_unique<detail::RowScratch>();
    s->prepare(c.vocab);
    s->prepare_verify(k + 1, static_cast<int64_t>(c.history.size()) + k);
    s->verify_positions.resize(static_cast<size_t>(k + 1));
    for (int64_t i = 0; i <= k; ++i) {
      s->verify_positions[static_cast<size_t>(i)] =
          detail::RowInput{c.target.data() + i * c.vocab, DType::kFloat32, c.vocab};
    }
    return s;
  };
  VerifyResult result;
  for (const float* q :
       {static_cast<const float*>(c.draft_probs.data()), static_cast<const float*>(nullptr)}) {
    // (sizes the result's vector, which the caller owns and reuses)
    auto other = prepared();
    detail::verify_row(other->verify_positions, c.drafts, q, c.requests[0], 9, 0, result, *other,
                       serial);
    auto fresh = prepared();
    g_allocations = 0;
    g_counting = true;
    detail::verify_row(fresh->verify_positions, c.drafts, q, c.requests[0], 9, 0, result, *fresh,
                       serial);
    g_counting = false;
    EXPECT_TRUE(result.status.ok()) << result.status.to_string();
    EXPECT_EQ(g_allocations.load(), 0) << (q ? "with" : "without") << " draft probabilities";
  }
}

// Each allocation of a first call on a fresh engine (the one that sizes the
// scratch) and of a later call, failed in turn: sample, probs and verify
// return a status, the call's or a row's "out of memory", and never throw.
TEST(AllocationFailure, EveryCallReturnsAStatus) {
  const VerifyCall c(3, 1000);
  std::vector<RowRequest> sample_requests = c.requests;
  for (auto& r : sample_requests) {
    r.params.logprobs = true;
    r.params.top_logprobs = 3;
    r.params.num_samples = 2;
  }
  enum Call { kSample, kProbs, kVerify };
  for (Call call : {kSample, kProbs, kVerify}) {
    int failed = 0;
    for (bool warm : {false, true}) {
      for (int64_t n = 1; n <= 120; ++n) {
        Engine engine({.max_threads = 1, .seed = 1});  // one thread: a fixed order
        std::vector<RowResult> results(static_cast<size_t>(c.rows));
        std::vector<VerifyResult> verified(static_cast<size_t>(c.rows));
        std::vector<float> probs(static_cast<size_t>(c.rows * c.vocab));
        std::vector<Status> row_status(static_cast<size_t>(c.rows));
        auto run = [&] {
          switch (call) {
            case kSample:
              return engine.sample(c.one_per_row(), sample_requests, results);
            case kProbs:
              return engine.probs(c.one_per_row(), c.requests, probs.data(), c.vocab, row_status);
            case kVerify:
              return engine.verify(c.view(), c.kDraft, c.drafts, c.draft_probs.data(), c.requests,
                                   verified);
          }
          return Status();
        };
        if (warm) {
          ASSERT_TRUE(run().ok());
        }
        Status s;
        g_fail_countdown = n;
        EXPECT_NO_THROW(s = run()) << "call " << call << " allocation " << n;
        g_fail_countdown = 0;
        std::vector<Status> outcomes = {s};
        for (const RowResult& r : results) outcomes.push_back(r.status);
        for (const VerifyResult& r : verified) outcomes.push_back(r.status);
        for (const Status& r : row_status) outcomes.push_back(r);
        for (const Status& o : outcomes) {
          if (o.ok()) continue;
          ++failed;
          EXPECT_EQ(o.code(), StatusCode::kInternal) << o.to_string();
          EXPECT_NE(o.message().find("out of memory"), std::string::npos) << o.to_string();
        }
        // And the engine still works.
        EXPECT_TRUE(run().ok()) << "call " << call << " allocation " << n;
      }
    }
    EXPECT_GT(failed, 0) << "call " << call << ": the injection never reached it";
  }
}

}  // namespace
}  // namespace nucleus
