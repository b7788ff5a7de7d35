// Compares nucleus::Engine (probs and sample) with the plain reference of
// tests/reference_sampler.h on thousands of random rows: every vocabulary size
// from 1 to 256000, every preset and filter, penalties, biases, bans, masks,
// ties, -inf entries, half-precision inputs, padded strides and shared
// requests.
//
// Exactness policy. The engine computes exp in float32 and sums in its own
// order, so a token lying within rounding distance of a filter boundary may
// legitimately fall on the other side. The reference names those tokens (see
// reference_sampler.h for the tolerances and why); a row whose engine kept set
// differs from the exact-arithmetic one only through such tokens is counted as
// a "boundary row", and the test fails when boundary rows exceed 1% of the
// rows. Any other difference fails at once. Probabilities must agree within
// 1e-5 (absolute), log-probabilities within 1e-4 (plus 4 float ulps).
//
// Seeded draws are also replayed token by token: Philox4x32-10 and the
// inverse-CDF walk of docs/semantics.md, computed here in double.
#include <Random123/philox.h>
#include <Random123/u01fixedpt.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"
#include "reference_sampler.h"
#include "tools/lm_logits.h"

namespace {

using nucleus::DType;
using nucleus::Engine;
using nucleus::LogitsView;
using nucleus::LogprobsMode;
using nucleus::Preset;
using nucleus::RowRequest;
using nucleus::RowResult;
using nucleus::SamplingParams;
using nucleus::Status;
using nucleus::StatusCode;
using nucleus::TokenBias;
using nucleus::TokenLogprob;
using nucleus_ref::Distribution;
using nucleus_ref::ReferenceSampler;

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr double kProbTol = 1e-5;     // engine probabilities vs the reference
constexpr double kLogprobTol = 1e-4;  // sampled and top-N log-probabilities
// Log-probabilities come back as float32: far from 0 (a zero-mass token of a
// tiny temperature has logprob -1e5 and more) a few float ulps exceed
// kLogprobTol, so the tolerance grows with the magnitude (2^-21 = 4 ulps).
bool LogprobClose(double got, double want) {
  return std::abs(got - want) <= kLogprobTol + std::ldexp(std::abs(want), -21);
}
// Two reference log-probabilities closer than this may be ordered either way
// by the engine's float32 values (top-N lists, ranks).
constexpr double kNearTie = 1e-6;
// Inverse-CDF draw: how far (relative to the total mass) the engine's
// cumulative sums may stray from the double-precision ones.
constexpr double kDrawTol = 1e-5;
constexpr double kMaxBoundaryRowFraction = 0.01;

// ---------------------------------------------------------------------------
// Half-precision encodings. Only the decoders need to be exact: the reference
// sees the decoded values, so the encoders may simply truncate.

uint16_t FloatToHalf(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (b >> 16) & 0x8000u;
  const int32_t exp = static_cast<int32_t>((b >> 23) & 0xffu);
  const uint32_t mant = b & 0x7fffffu;
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant != 0 ? 0x200u : 0u));
  const int32_t e = exp - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7bffu);  // clamp to the largest half
  if (e <= 0) return static_cast<uint16_t>(sign);             // flush tiny values to zero
  return static_cast<uint16_t>(sign | (static_cast<uint32_t>(e) << 10) | (mant >> 13));
}

float HalfToFloat(uint16_t h) {
  const float sign = (h & 0x8000u) != 0 ? -1.0f : 1.0f;
  const int32_t exp = (h >> 10) & 0x1f;
  const int32_t mant = h & 0x3ff;
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -24);
  if (exp == 31) {
    return mant != 0 ? std::numeric_limits<float>::quiet_NaN()
                     : sign * std::numeric_limits<float>::infinity();
  }
  return sign * std::ldexp(static_cast<float>(1024 + mant), exp - 25);
}

uint16_t FloatToBFloat16(float f) {
  const uint32_t b = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((b >> 16) | 0x40u);
  return static_cast<uint16_t>(b >> 16);
}

float BFloat16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// ---------------------------------------------------------------------------
// Random inputs.

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(gen_); }
  double Uniform(double lo, double hi) { return lo + (hi - lo) * Uniform(); }
  int64_t Int(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  bool Chance(double p) { return Uniform() < p; }
  double Normal() { return std::normal_distribution<double>(0.0, 1.0)(gen_); }
  uint64_t Bits() { return gen_(); }
  template <typename T>
  T Pick(std::initializer_list<T> values) {
    return *(values.begin() + Int(0, static_cast<int64_t>(values.size()) - 1));
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// LM-like rows (a few dominant tokens over a heavy Zipf tail), plain Gaussian
// ones, peaked, flat, and rows full of exact ties.
std::vector<float> MakeLogits(Rng& rng, int64_t vocab, std::string* kind) {
  std::vector<float> x(vocab);
  switch (rng.Int(0, 6)) {
    case 0: {
      const double sigma = rng.Pick({0.3, 1.0, 3.0, 8.0});
      *kind = "gauss(" + std::to_string(sigma) + ")";
      for (float& v : x) v = static_cast<float>(sigma * rng.Normal());
      break;
    }
    case 1: {
      *kind = "lm";
      std::vector<int64_t> rank(vocab);
      for (int64_t i = 0; i < vocab; ++i) rank[i] = i;
      std::shuffle(rank.begin(), rank.end(), rng.gen());
      const double alpha = rng.Uniform(0.7, 1.6);
      for (int64_t i = 0; i < vocab; ++i) {
        x[i] = static_cast<float>(-alpha * std::log1p(static_cast<double>(rank[i])) +
                                  0.3 * rng.Normal());
      }
      const int64_t dominant = rng.Int(1, 4);
      for (int64_t j = 0; j < dominant; ++j) {
        x[rng.Int(0, vocab - 1)] += static_cast<float>(rng.Uniform(2.0, 10.0));
      }
      break;
    }
    case 2:
      *kind = "flat";
      std::fill(x.begin(), x.end(), static_cast<float>(rng.Uniform(-3.0, 3.0)));
      break;
    case 3:
      *kind = "nearly-flat";
      for (float& v : x) v = static_cast<float>(1e-3 * rng.Normal());
      break;
    case 4:
      *kind = "peaked";
      for (float& v : x) v = static_cast<float>(rng.Normal());
      x[rng.Int(0, vocab - 1)] += static_cast<float>(rng.Uniform(10.0, 40.0));
      break;
    case 5:
      *kind = "quantized";  // many exact ties
      for (float& v : x) v = static_cast<float>(std::round(2.0 * rng.Normal() * 4.0) / 4.0);
      break;
    default: {
      *kind = "duplicated";  // ties copied from random tokens, often the maximum
      for (float& v : x) v = static_cast<float>(2.0 * rng.Normal());
      const int64_t copies = rng.Int(1, std::max<int64_t>(1, vocab / 3));
      const int64_t top = std::max_element(x.begin(), x.end()) - x.begin();
      for (int64_t j = 0; j < copies; ++j) {
        const int64_t from = rng.Chance(0.5) ? top : rng.Int(0, vocab - 1);
        x[rng.Int(0, vocab - 1)] = x[from];
      }
      break;
    }
  }
  const float offset = static_cast<float>(rng.Uniform(-30.0, 30.0));
  for (float& v : x) v += offset;
  if (rng.Chance(0.2)) {
    *kind += "+neginf";
    const double fraction = rng.Uniform(0.0, 0.95);
    for (float& v : x) {
      if (rng.Chance(fraction)) v = kNegInf;
    }
  } else if (rng.Chance(0.03)) {
    *kind += "+one-finite";
    const int64_t keep = rng.Int(0, vocab - 1);
    for (int64_t i = 0; i < vocab; ++i) {
      if (i != keep) x[i] = kNegInf;
    }
  }
  return x;
}

SamplingParams RandomParams(Rng& rng, int64_t vocab) {
  SamplingParams p;
  const double t = rng.Uniform();
  if (t < 0.1) {
    p.temperature = 0.0f;
  } else if (t < 0.17) {
    p.temperature = rng.Pick({1e-3f, 1e-6f, 1e-20f, 1e-30f});
  } else if (t < 0.3) {
    p.temperature = 1.0f;
  } else {
    p.temperature = static_cast<float>(rng.Uniform(0.05, 2.5));
  }
  if (rng.Chance(0.5)) {
    p.top_k = static_cast<int32_t>(rng.Pick<int64_t>({0, -1, vocab, vocab + 5}));
  } else {
    p.top_k = static_cast<int32_t>(rng.Int(1, std::min<int64_t>(vocab, 200)));
  }
  if (rng.Chance(0.45)) {
    p.top_p = rng.Pick({0.0f, static_cast<float>(rng.Uniform(0.01, 0.999)), 0.5f, 0.9f, 0.95f});
  }
  if (rng.Chance(0.4)) {
    p.min_p = rng.Pick({static_cast<float>(rng.Uniform()), 1.0f, 0.05f, 0.1f, 1e-4f});
  }
  if (rng.Chance(0.35)) {
    p.typical_p = rng.Pick({static_cast<float>(rng.Uniform(0.05, 0.999)), 0.2f, 0.5f, 0.9f, 0.95f});
  }
  if (rng.Chance(0.35)) {
    p.top_n_sigma = static_cast<float>(rng.Uniform(0.1, 3.0));
  } else {
    p.top_n_sigma = rng.Pick({0.0f, -1.0f});
  }
  p.min_keep = rng.Chance(0.6) ? 1 : static_cast<int32_t>(rng.Int(1, 5));
  p.preset = rng.Pick({Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp});
  p.num_samples =
      rng.Chance(0.95) ? static_cast<int32_t>(rng.Int(1, 4)) : static_cast<int32_t>(rng.Int(5, 16));
  p.logprobs = rng.Chance(0.9);
  if (p.logprobs && rng.Chance(0.5)) {
    p.top_logprobs = static_cast<int32_t>(rng.Int(1, std::min<int64_t>(vocab, 20)));
  }
  p.logprobs_mode = rng.Chance(0.5) ? LogprobsMode::kProcessed : LogprobsMode::kRaw;
  return p;
}

// One row: the logits as the engine will see them (decoded from the batch
// dtype) and the request, whose spans point into this object.
struct RowCase {
  std::string kind;
  std::vector<float> logits;
  std::vector<int32_t> prompt, generated, banned, mask;
  std::vector<TokenBias> bias;
  RowRequest request;
};

std::unique_ptr<RowCase> MakeRow(Rng& rng, int64_t vocab) {
  auto row = std::make_unique<RowCase>();
  row->logits = MakeLogits(rng, vocab, &row->kind);
  RowRequest& req = row->request;
  req.params = RandomParams(rng, vocab);
  if (rng.Chance(0.85)) req.seed = rng.Bits();
  req.step = rng.Chance(0.5) ? static_cast<uint64_t>(rng.Int(0, 1000)) : rng.Bits();

  if (rng.Chance(0.4)) {
    // Draw history from a small pool so that tokens repeat.
    const int64_t pool = rng.Int(1, std::min<int64_t>(vocab, 40));
    std::vector<int32_t> ids(pool);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng.Int(0, vocab - 1));
    const int64_t np = rng.Int(0, 30), ng = rng.Int(0, 30);
    for (int64_t i = 0; i < np; ++i) row->prompt.push_back(ids[rng.Int(0, pool - 1)]);
    for (int64_t i = 0; i < ng; ++i) row->generated.push_back(ids[rng.Int(0, pool - 1)]);
    SamplingParams& p = req.params;
    if (rng.Chance(0.7)) p.repetition_penalty = static_cast<float>(rng.Uniform(0.5, 2.0));
    if (rng.Chance(0.5)) p.frequency_penalty = static_cast<float>(rng.Uniform(-1.0, 1.0));
    if (rng.Chance(0.5)) p.presence_penalty = static_cast<float>(rng.Uniform(-1.0, 1.0));
  }
  if (rng.Chance(0.25)) {
    // Distinct tokens, so that the order of additions cannot matter.
    std::vector<char> used(vocab, 0);
    const int64_t n = rng.Int(1, std::min<int64_t>(vocab, 10));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t t = static_cast<int32_t>(rng.Int(0, vocab - 1));
      if (used[t]) continue;
      used[t] = 1;
      const double kind = rng.Uniform();
      const float b = kind < 0.1   ? kNegInf
                      : kind < 0.2 ? static_cast<float>(rng.Uniform(10.0, 30.0))
                                   : static_cast<float>(rng.Uniform(-5.0, 5.0));
      row->bias.push_back({t, b});
    }
  }
  if (rng.Chance(0.15)) {
    const int64_t n = rng.Int(1, std::min<int64_t>(vocab, 10));
    for (int64_t i = 0; i < n; ++i)
      row->banned.push_back(static_cast<int32_t>(rng.Int(0, vocab - 1)));
  }
  if (rng.Chance(0.15)) {
    // Bits past the vocabulary in the last word are random too: they must be
    // ignored.
    const double density = rng.Uniform(0.05, 1.0);
    row->mask.assign((vocab + 31) / 32, 0);
    for (int64_t i = 0; i < static_cast<int64_t>(row->mask.size()) * 32; ++i) {
      if (rng.Chance(density)) {
        row->mask[i / 32] =
            static_cast<int32_t>(static_cast<uint32_t>(row->mask[i / 32]) | (1u << (i % 32)));
      }
    }
  }
  req.prompt_tokens = row->prompt;
  req.generated_tokens = row->generated;
  req.banned_tokens = row->banned;
  req.logit_bias = row->bias;
  req.allowed_mask = row->mask;
  return row;
}

// Rows sharing one vocabulary, dtype and stride: one engine call.
struct Batch {
  int64_t vocab = 0;
  int64_t stride = 0;
  DType dtype = DType::kFloat32;
  bool shared_request = false;
  std::vector<std::unique_ptr<RowCase>> rows;
  std::vector<float> f32;
  std::vector<uint16_t> f16;

  LogitsView view() const {
    LogitsView v;
    v.data = dtype == DType::kFloat32 ? static_cast<const void*>(f32.data())
                                      : static_cast<const void*>(f16.data());
    v.rows = static_cast<int64_t>(rows.size());
    v.vocab = vocab;
    v.row_stride = stride;
    v.dtype = dtype;
    return v;
  }
  const RowRequest& request(size_t r) const {
    return shared_request ? rows[0]->request : rows[r]->request;
  }
};

Batch MakeBatch(Rng& rng, int64_t vocab, int64_t rows) {
  Batch b;
  b.vocab = vocab;
  b.stride = rng.Chance(0.7) ? vocab : vocab + rng.Int(1, 7);
  const double d = rng.Uniform();
  b.dtype = d < 0.7 ? DType::kFloat32 : d < 0.85 ? DType::kFloat16 : DType::kBFloat16;
  b.shared_request = rows > 1 && rng.Chance(0.1);
  for (int64_t r = 0; r < rows; ++r) b.rows.push_back(MakeRow(rng, vocab));
  // Padding holds NaN: only the first `vocab` columns count.
  const float pad = std::numeric_limits<float>::quiet_NaN();
  if (b.dtype == DType::kFloat32) {
    b.f32.assign(rows * b.stride, pad);
  } else {
    b.f16.assign(rows * b.stride,
                 b.dtype == DType::kFloat16 ? FloatToHalf(pad) : FloatToBFloat16(pad));
  }
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<float>& x = b.rows[r]->logits;
    for (int64_t i = 0; i < vocab; ++i) {
      if (b.dtype == DType::kFloat32) {
        b.f32[r * b.stride + i] = x[i];
      } else if (b.dtype == DType::kFloat16) {
        const uint16_t h = FloatToHalf(x[i]);
        b.f16[r * b.stride + i] = h;
        x[i] = HalfToFloat(h);
      } else {
        const uint16_t h = FloatToBFloat16(x[i]);
        b.f16[r * b.stride + i] = h;
        x[i] = BFloat16ToFloat(h);
      }
    }
  }
  return b;
}

// ---------------------------------------------------------------------------
// Comparison.

struct Stats {
  int64_t rows = 0;
  int64_t row_errors = 0;
  int64_t greedy_rows = 0;
  int64_t ambiguous_rows = 0;  // the reference saw tokens within tolerance
  int64_t boundary_rows = 0;   // the engine took a non-exact but allowed kept set
  int64_t exhausted_rows = 0;  // too many allowed kept sets to explore
  int64_t failures = 0;
  // Draw convention: the two orders in which two Philox words make 64 bits.
  int64_t draws = 0;
  int64_t draw_ok[2] = {0, 0};
  int64_t draw_exact[2] = {0, 0};
  double draw_worst[2] = {0.0, 0.0};  // worst distance outside the token's CDF step / Z
  int64_t rank_checks = 0;
  int64_t rank_inexact = 0;
  int64_t top_near_tie_orders = 0;  // equal float logprobs ordered by the exact value
  std::vector<std::string> boundary_examples;
};

const char* DTypeName(DType d) {
  return d == DType::kFloat32 ? "f32" : d == DType::kFloat16 ? "f16" : "bf16";
}

std::string Describe(const Batch& b, size_t r, int64_t batch_index) {
  const RowCase& row = *b.rows[r];
  const RowRequest& req = b.request(r);
  const SamplingParams& p = req.params;
  std::ostringstream os;
  os << "batch " << batch_index << " row " << r << ": vocab=" << b.vocab << " stride=" << b.stride
     << " dtype=" << DTypeName(b.dtype) << (b.shared_request ? " shared-request" : "")
     << " logits=" << row.kind << " T=" << p.temperature << " top_k=" << p.top_k
     << " top_p=" << p.top_p << " min_p=" << p.min_p << " typical_p=" << p.typical_p
     << " top_n_sigma=" << p.top_n_sigma << " min_keep=" << p.min_keep
     << " preset=" << nucleus::preset_name(p.preset) << " rep=" << p.repetition_penalty
     << " freq=" << p.frequency_penalty << " pres=" << p.presence_penalty << " n=" << p.num_samples
     << " top_logprobs=" << p.top_logprobs
     << (p.logprobs_mode == LogprobsMode::kRaw ? "(raw)" : "(processed)")
     << " seed=" << (req.seed ? std::to_string(*req.seed) : std::string("none"))
     << " step=" << req.step << " prompt=" << req.prompt_tokens.size()
     << " generated=" << req.generated_tokens.size() << " bias=" << req.logit_bias.size()
     << " banned=" << req.banned_tokens.size() << " mask=" << req.allowed_mask.size();
  return os.str();
}

// The reference decisions along the exact path, for failure messages.
std::string DescribeStages(const ReferenceSampler& ref) {
  std::ostringstream os;
  for (const nucleus_ref::StageDecision& d : ref.stages()) {
    size_t ambiguous = 0;
    for (const auto& g : d.groups) ambiguous += g.size();
    os << " [" << nucleus_ref::FilterName(d.filter) << ": in=" << d.input_size
       << " sure=" << d.sure.size() << " ambiguous=" << ambiguous << " margin=" << d.margin << "]";
  }
  return os.str();
}

// Whether the engine's probabilities are those of `kept` under the reference.
bool ProbsMatch(const ReferenceSampler& ref, const std::vector<int32_t>& kept, const float* got,
                std::string* why) {
  const Distribution d = ref.Final(kept);
  const double tol_underflow = nucleus_ref::kFloatRelTol * -nucleus_ref::kUnderflowExponent;
  for (int64_t i = 0; i < ref.vocab(); ++i) {
    const bool in_set = d.exponent[i] != -nucleus_ref::kInfinity;
    const double g = got[i];
    std::string bad;
    if (!(g >= 0.0 && g <= 1.0)) {
      bad = "not a probability";
    } else if (std::abs(g - d.prob[i]) > kProbTol) {
      bad = "differs";
    } else if (!in_set && g != 0.0) {
      bad = "removed token has non-zero probability";
    } else if (in_set && d.prob[i] >= 1e-30 && g == 0.0) {
      bad = "kept token has zero probability";
    } else if (in_set && d.exponent[i] < nucleus_ref::kUnderflowExponent - tol_underflow &&
               g != 0.0) {
      bad = "underflowed token (exponent " + std::to_string(d.exponent[i]) +
            ") has non-zero probability";
    }
    if (!bad.empty()) {
      if (why != nullptr) {
        std::ostringstream os;
        os << "token " << i << ": " << bad << ": engine " << g << ", reference " << d.prob[i]
           << (in_set ? " (kept)" : " (removed)");
        *why = os.str();
      }
      return false;
    }
  }
  return true;
}

// Checks a top-N list against a reference distribution: `candidates` are the
// tokens that may be listed, `key` orders them exactly, `lp` gives their
// reference log-probabilities and `zero` marks those of zero probability (for
// which the engine may report -inf).
std::string CheckTopList(const std::vector<TokenLogprob>& got, int64_t n,
                         const std::vector<int32_t>& candidates, const std::vector<float>& key,
                         const std::vector<double>& lp, const std::vector<char>& zero,
                         int64_t* near_tie_orders) {
  std::ostringstream err;
  std::vector<char> is_candidate(key.size(), 0), listed(key.size(), 0);
  int64_t nonzero = 0;
  for (int32_t c : candidates) {
    is_candidate[c] = 1;
    nonzero += zero[c] ? 0 : 1;
  }
  const int64_t lo = std::min<int64_t>(n, nonzero);
  const int64_t hi = std::min<int64_t>(n, static_cast<int64_t>(candidates.size()));
  const int64_t len = static_cast<int64_t>(got.size());
  if (len < lo || len > hi) {
    err << "top_logprobs has " << len << " entries, expected " << lo << ".." << hi;
    return err.str();
  }
  for (int64_t j = 0; j < len; ++j) {
    const TokenLogprob& e = got[j];
    if (e.token < 0 || e.token >= static_cast<int32_t>(key.size()) || !is_candidate[e.token] ||
        listed[e.token]) {
      err << "top_logprobs[" << j << "] token " << e.token << " is not a distinct candidate";
      return err.str();
    }
    listed[e.token] = 1;
    const bool value_ok =
        LogprobClose(e.logprob, lp[e.token]) || (zero[e.token] && e.logprob == kNegInf);
    if (!value_ok) {
      err << "top_logprobs[" << j << "] token " << e.token << " logprob " << e.logprob
          << ", reference " << lp[e.token];
      return err.str();
    }
    if (j > 0) {
      const TokenLogprob& prev = got[j - 1];
      // Equal float32 logprobs out of id order are accepted when the first
      // token is truly more probable: the engine ordered by the exact value.
      const bool tie_order_ok =
          prev.token < e.token || (key[prev.token] > key[e.token] && !zero[e.token]);
      if (prev.logprob == e.logprob && !tie_order_ok) {
        err << "top_logprobs: equal logprobs not ordered by id at " << j << ": (" << prev.token
            << ", " << prev.logprob << ") before (" << e.token << ", " << e.logprob << ")";
        return err.str();
      }
      if (prev.logprob == e.logprob && prev.token > e.token) ++*near_tie_orders;
      if (prev.logprob < e.logprob) {
        err << "top_logprobs out of order at " << j << ": (" << prev.token << ", " << prev.logprob
            << ") before (" << e.token << ", " << e.logprob << ")";
        return err.str();
      }
    }
  }
  if (len == 0) return "";
  // Nothing left out may be clearly more probable than the last entry, and
  // within an exact tie the lowest ids come first.
  const TokenLogprob& last = got.back();
  const bool full = len == hi;
  for (int32_t c : candidates) {
    if (listed[c]) continue;
    if (!full && !zero[c]) {
      err << "top_logprobs has " << len << " entries but leaves out token " << c;
      return err.str();
    }
    // Zero-probability tokens may be reported as -inf (all tied) or by their
    // log-space value, so any choice among them is accepted.
    if (zero[c]) continue;
    if (zero[last.token]) {
      err << "top_logprobs lists zero-probability token " << last.token << " but leaves out " << c;
      return err.str();
    }
    if (key[c] > key[last.token] && lp[c] - lp[last.token] > kNearTie) {
      err << "top_logprobs leaves out token " << c << " (logprob " << lp[c] << ") but lists token "
          << last.token << " (logprob " << lp[last.token] << ")";
      return err.str();
    }
    if (key[c] == key[last.token] && c < last.token) {
      err << "top_logprobs: tie broken against the lowest id: lists " << last.token << " but not "
          << c;
      return err.str();
    }
  }
  return "";
}

class EngineReferenceTest : public ::testing::Test {
 protected:
  // Checks one row; returns "" or what went wrong.
  std::string CheckRow(const Batch& b, size_t r, const float* probs, const Status& probs_status,
                       const RowResult& res, Stats& st) {
    const RowRequest& req = b.request(r);
    const SamplingParams& p = req.params;
    const ReferenceSampler ref(b.rows[r]->logits, req);
    std::ostringstream err;
    ++st.rows;

    if (ref.row_error()) {
      ++st.row_errors;
      if (probs_status.code() != StatusCode::kRowError) {
        err << "probs: expected ROW_ERROR (every token masked), got " << probs_status.to_string();
      } else if (res.status.code() != StatusCode::kRowError) {
        err << "sample: expected ROW_ERROR (every token masked), got " << res.status.to_string();
      } else if (!res.tokens.empty()) {
        err << "sample: a row error still returned " << res.tokens.size() << " tokens";
      } else {
        for (int64_t i = 0; i < b.vocab; ++i) {
          if (probs[i] != 0.0f) {
            err << "probs: a row error left probability " << probs[i] << " at token " << i;
            break;
          }
        }
      }
      return err.str();
    }
    if (!probs_status.ok()) return "probs: row status " + probs_status.to_string();
    if (!res.status.ok()) return "sample: row status " + res.status.to_string();
    if (ref.greedy()) ++st.greedy_rows;
    if (ref.ambiguous()) ++st.ambiguous_rows;

    // Which kept set did the engine take?
    std::vector<int32_t> positive;
    for (int64_t i = 0; i < b.vocab; ++i) {
      if (probs[i] > 0.0f) positive.push_back(static_cast<int32_t>(i));
    }
    std::vector<char> mark(b.vocab, 0);
    auto viable = [&](const std::vector<int32_t>& set) {
      for (int32_t t : set) mark[t] = 1;
      bool ok = true;
      for (int32_t t : positive) ok = ok && mark[t];
      for (int32_t t : set) mark[t] = 0;
      return ok;
    };
    auto accept = [&](const std::vector<int32_t>& set) {
      return static_cast<int64_t>(set.size()) == res.support &&
             ProbsMatch(ref, set, probs, nullptr);
    };
    const ReferenceSampler::SearchResult found = ref.FindKeptSet(viable, accept);
    if (found.exhausted) {
      ++st.exhausted_rows;
      return "";
    }
    if (!found.found) {
      std::string why;
      ProbsMatch(ref, ref.kept(), probs, &why);
      err << "kept set: engine support " << res.support << ", reference " << ref.kept().size()
          << "; " << (why.empty() ? "probabilities match" : why) << ";" << DescribeStages(ref);
      // The first few tokens on which the two disagree.
      const Distribution d = ref.Final(ref.kept());
      int shown = 0;
      for (int64_t i = 0; i < b.vocab && shown < 6; ++i) {
        const bool ref_in = d.exponent[i] != -nucleus_ref::kInfinity;
        if (ref_in == (probs[i] > 0.0f) && std::abs(probs[i] - d.prob[i]) <= kProbTol) continue;
        ++shown;
        err << " | token " << i << ": x=" << b.rows[r]->logits[i]
            << " processed=" << ref.processed()[i] << " filter=" << ref.filter_values()[i]
            << " ref=" << d.prob[i] << (ref_in ? "(kept)" : "(removed)") << " engine=" << probs[i];
      }
      return err.str();
    }
    if (!found.principal) {
      ++st.boundary_rows;
      if (st.boundary_examples.size() < 5) {
        st.boundary_examples.push_back(Describe(b, r, -1) + DescribeStages(ref));
      }
    }
    const std::vector<int32_t>& kept = found.kept;
    const Distribution d = ref.Final(kept);

    // Tokens.
    if (static_cast<int64_t>(res.tokens.size()) != p.num_samples) {
      err << "sample: " << res.tokens.size() << " tokens, expected " << p.num_samples;
      return err.str();
    }
    for (int32_t t : res.tokens) {
      if (t < 0 || t >= b.vocab) {
        err << "sample: token " << t << " outside the vocabulary";
        return err.str();
      }
      if (ref.greedy() ? t != ref.greedy_token() : d.mass[t] == 0.0) {
        err << "sample: token " << t << " (reference probability " << d.prob[t] << ")";
        if (ref.greedy()) err << " but greedy argmax is " << ref.greedy_token();
        return err.str();
      }
    }
    if (req.seed && !ref.greedy()) CheckDraws(req, d, res.tokens, st);

    // Log-probabilities of the samples.
    if (p.logprobs) {
      if (res.logprobs.size() != res.tokens.size() ||
          res.raw_logprobs.size() != res.tokens.size()) {
        return "sample: logprobs sizes differ from num_samples";
      }
      for (size_t j = 0; j < res.tokens.size(); ++j) {
        const int32_t t = res.tokens[j];
        if (!LogprobClose(res.logprobs[j], d.logprob[t])) {
          err << "logprobs[" << j << "] of token " << t << ": engine " << res.logprobs[j]
              << ", reference " << d.logprob[t];
          return err.str();
        }
        if (!LogprobClose(res.raw_logprobs[j], ref.raw_logprobs()[t])) {
          err << "raw_logprobs[" << j << "] of token " << t << ": engine " << res.raw_logprobs[j]
              << ", reference " << ref.raw_logprobs()[t];
          return err.str();
        }
      }
    } else {
      for (float v : res.logprobs) {
        if (!std::isnan(v)) return "logprobs = false, yet a processed logprob is not NaN";
      }
      for (float v : res.raw_logprobs) {
        if (!std::isnan(v)) return "logprobs = false, yet a raw logprob is not NaN";
      }
    }

    // Top-N lists and ranks.
    if (p.top_logprobs == 0) {
      if (!res.top_logprobs.empty()) return "top_logprobs = 0, yet a top list came back";
      if (!res.ranks.empty()) return "top_logprobs = 0, yet ranks came back";
      return "";
    }
    const bool raw = p.logprobs_mode == LogprobsMode::kRaw;
    std::vector<int32_t> all;
    if (raw) {
      all.resize(b.vocab);
      for (int64_t i = 0; i < b.vocab; ++i) all[i] = static_cast<int32_t>(i);
    }
    const std::vector<int32_t>& candidates = raw ? all : kept;
    const std::vector<float>& key = raw ? b.rows[r]->logits : ref.final_values();
    const std::vector<double>& lp = raw ? ref.raw_logprobs() : d.logprob;
    std::vector<char> zero(b.vocab, 0);
    for (int64_t i = 0; i < b.vocab; ++i) {
      zero[i] = raw ? b.rows[r]->logits[i] == kNegInf : d.mass[i] == 0.0;
    }
    const std::string top = CheckTopList(res.top_logprobs, p.top_logprobs, candidates, key, lp,
                                         zero, &st.top_near_tie_orders);
    if (!top.empty()) return top;
    if (res.ranks.size() != res.tokens.size()) return "ranks: size differs from num_samples";
    for (size_t j = 0; j < res.tokens.size(); ++j) {
      const int32_t t = res.tokens[j];
      int64_t strictly = 0, clearly = 0;
      for (int32_t c : candidates) {
        if (zero[c]) continue;
        strictly += key[c] > key[t] ? 1 : 0;
        clearly += lp[c] > lp[t] + kNearTie ? 1 : 0;
      }
      ++st.rank_checks;
      if (res.ranks[j] != strictly + 1) ++st.rank_inexact;
      if (res.ranks[j] < clearly + 1 || res.ranks[j] > strictly + 1) {
        err << "ranks[" << j << "] of token " << t << " = " << res.ranks[j] << ", expected "
            << strictly + 1;
        return err.str();
      }
    }
    return "";
  }

  // docs/semantics.md "Randomness": Philox4x32-10, key = seed (low word
  // first), counter = (step low, step high, sample index, 0); two output words
  // make a 64-bit integer turned into u in (0, 1]; the token is the first, in
  // id order, whose cumulative mass reaches u * Z. Which output word is the
  // low half is not written down, so both orders are tracked and the test
  // requires the engine to follow one of them for every draw.
  void CheckDraws(const RowRequest& req, const Distribution& d, const std::vector<int32_t>& tokens,
                  Stats& st) {
    const size_t vocab = d.mass.size();
    std::vector<double> cum(vocab);
    double run = 0.0;
    for (size_t i = 0; i < vocab; ++i) cum[i] = run += d.mass[i];
    const double z = run;
    const uint64_t seed = *req.seed;
    using Philox = r123::Philox4x32;
    Philox philox;
    const Philox::key_type key = {{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)}};
    for (size_t j = 0; j < tokens.size(); ++j) {
      const Philox::ctr_type ctr = {{static_cast<uint32_t>(req.step),
                                     static_cast<uint32_t>(req.step >> 32),
                                     static_cast<uint32_t>(j), 0u}};
      const Philox::ctr_type out = philox(ctr, key);
      const uint64_t words[2] = {
          static_cast<uint64_t>(out[0]) | (static_cast<uint64_t>(out[1]) << 32),
          static_cast<uint64_t>(out[1]) | (static_cast<uint64_t>(out[0]) << 32)};
      const int32_t t = tokens[j];
      const double lo = t == 0 ? 0.0 : cum[t - 1];
      const double hi = cum[t];
      ++st.draws;
      for (int c = 0; c < 2; ++c) {
        const double target = u01fixedpt_open_closed_64_double(words[c]) * z;
        const double outside = std::max({0.0, lo - target, target - hi}) / z;
        if (lo < target && target <= hi) ++st.draw_exact[c];
        if (outside <= kDrawTol) ++st.draw_ok[c];
        st.draw_worst[c] = std::max(st.draw_worst[c], outside);
      }
    }
  }

  // One engine call of probs() and one of sample() on a batch, then every row
  // checked against the reference.
  void RunBatch(Engine& engine, const Batch& b, int64_t out_stride, int64_t bi,
                std::vector<RowResult>& results, Stats& st) {
    const int64_t rows = static_cast<int64_t>(b.rows.size());
    std::vector<RowRequest> requests;
    if (b.shared_request) {
      requests.push_back(b.rows[0]->request);
    } else {
      for (const auto& row : b.rows) requests.push_back(row->request);
    }
    constexpr float kSentinel = -7.0f;
    std::vector<float> out(rows * out_stride, kSentinel);
    std::vector<Status> row_status(rows);
    const Status ps = engine.probs(b.view(), requests, out.data(), out_stride, row_status);
    ASSERT_TRUE(ps.ok()) << ps.to_string() << " at " << Describe(b, 0, bi);
    if (static_cast<int64_t>(results.size()) < rows) results.resize(rows);
    const Status ss = engine.sample(b.view(), requests, std::span(results.data(), rows));
    ASSERT_TRUE(ss.ok()) << ss.to_string() << " at " << Describe(b, 0, bi);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = b.vocab; i < out_stride; ++i) {
        if (out[r * out_stride + i] != kSentinel) {
          ++st.failures;
          ADD_FAILURE() << "probs wrote past the vocabulary at column " << i << ": "
                        << Describe(b, r, bi);
          break;
        }
      }
      const std::string e =
          CheckRow(b, r, out.data() + r * out_stride, row_status[r], results[r], st);
      if (!e.empty()) {
        ++st.failures;
        if (st.failures <= 25) ADD_FAILURE() << Describe(b, r, bi) << "\n  " << e;
      }
    }
  }

  // Runs `batches` random batches whose vocabulary sizes come from `vocab_of`.
  // The RowResult objects are reused from call to call, as servers do.
  template <typename VocabFn>
  void RunRandom(uint64_t seed, int64_t batches, int64_t max_rows, VocabFn vocab_of, Stats& st) {
    Rng rng(seed);
    Engine engine({.max_threads = 2, .seed = 99});
    std::vector<RowResult> results(max_rows);
    for (int64_t bi = 0; bi < batches && !HasFatalFailure(); ++bi) {
      const int64_t vocab = vocab_of(rng);
      const Batch b = MakeBatch(rng, vocab, rng.Int(1, max_rows));
      RunBatch(engine, b, b.vocab + (rng.Chance(0.5) ? 0 : 3), bi, results, st);
    }
  }

  static void Report(const char* name, const Stats& st) {
    std::printf(
        "[%s] rows=%lld row_errors=%lld greedy=%lld ambiguous=%lld boundary=%lld "
        "exhausted=%lld failures=%lld\n",
        name, static_cast<long long>(st.rows), static_cast<long long>(st.row_errors),
        static_cast<long long>(st.greedy_rows), static_cast<long long>(st.ambiguous_rows),
        static_cast<long long>(st.boundary_rows), static_cast<long long>(st.exhausted_rows),
        static_cast<long long>(st.failures));
    for (int c = 0; c < 2; ++c) {
      std::printf(
          "[%s] draws (word %d low): %lld checked, %lld within tolerance, %lld exact, worst "
          "%.3g\n",
          name, c, static_cast<long long>(st.draws), static_cast<long long>(st.draw_ok[c]),
          static_cast<long long>(st.draw_exact[c]), st.draw_worst[c]);
    }
    std::printf(
        "[%s] ranks: %lld checked, %lld off by a near tie; top lists: %lld equal logprobs "
        "ordered by exact value rather than id\n",
        name, static_cast<long long>(st.rank_checks), static_cast<long long>(st.rank_inexact),
        static_cast<long long>(st.top_near_tie_orders));
    for (const std::string& s : st.boundary_examples)
      std::printf("[%s] boundary: %s\n", name, s.c_str());
  }

  static void ExpectAggregates(const Stats& st) {
    EXPECT_EQ(st.failures, 0);
    EXPECT_LE(st.boundary_rows + st.exhausted_rows,
              static_cast<int64_t>(kMaxBoundaryRowFraction * static_cast<double>(st.rows)))
        << "too many rows off the exact kept set";
    EXPECT_TRUE(st.draw_ok[0] == st.draws || st.draw_ok[1] == st.draws)
        << "seeded draws do not follow the documented Philox inverse-CDF walk";
  }
};

TEST_F(EngineReferenceTest, TinyVocabularies) {
  Stats st;
  auto vocab = [](Rng& rng) { return rng.Int(1, 50); };
  RunRandom(1, 3000, 6, vocab, st);
  Report("tiny", st);
  ExpectAggregates(st);
  EXPECT_GT(st.rows, 9000);
}

TEST_F(EngineReferenceTest, MediumVocabularies) {
  Stats st;
  auto vocab = [](Rng& rng) { return rng.Int(51, 4000); };
  RunRandom(2, 1200, 4, vocab, st);
  Report("medium", st);
  ExpectAggregates(st);
}

TEST_F(EngineReferenceTest, LargeVocabularies) {
  Stats st;
  auto vocab = [](Rng& rng) { return rng.Int(4001, 40000); };
  RunRandom(3, 150, 3, vocab, st);
  Report("large", st);
  ExpectAggregates(st);
}

TEST_F(EngineReferenceTest, ModelVocabularies) {
  Stats st;
  auto vocab = [](Rng& rng) { return rng.Pick<int64_t>({32000, 50257, 128256, 151936, 256000}); };
  RunRandom(4, 30, 2, vocab, st);
  Report("model", st);
  ExpectAggregates(st);
}

// A repetition penalty before top-p alone, on float32 rows of 16384 tokens or
// more, with nothing asked but the tokens (the decoding step of a server with
// a repetition penalty), which the random rows above almost never reach:
// long histories (up to vocab / 8 tokens), repeated, often holding the row's
// top tokens (the max lowered, or raised past the rest by a penalty below 1).
TEST_F(EngineReferenceTest, RepetitionPenaltyBeforeTopP) {
  Stats st;
  Rng rng(6);
  Engine engine({.max_threads = 2, .seed = 99});
  std::vector<RowResult> results(3);
  for (int64_t bi = 0; bi < 48 && !HasFatalFailure(); ++bi) {
    Batch b;
    b.vocab = rng.Pick<int64_t>({16384, 20011, 32000, 50257, 128256});
    b.stride = b.vocab;
    const int64_t rows = rng.Int(1, 3);
    for (int64_t r = 0; r < rows; ++r) {
      auto row = std::make_unique<RowCase>();
      row->logits = MakeLogits(rng, b.vocab, &row->kind);
      std::vector<int32_t> top(b.vocab);
      for (int64_t i = 0; i < b.vocab; ++i) top[i] = static_cast<int32_t>(i);
      std::partial_sort(top.begin(), top.begin() + 16, top.end(),
                        [&](int32_t a, int32_t c) { return row->logits[a] > row->logits[c]; });
      const int64_t length = rng.Chance(0.3) ? b.vocab / 8 : rng.Int(1, 3000);
      for (int64_t i = 0; i < length; ++i) {
        const int32_t t = rng.Chance(0.1)   ? top[rng.Int(0, 15)]
                          : rng.Chance(0.2) ? static_cast<int32_t>(rng.Int(0, 40))
                                            : static_cast<int32_t>(rng.Int(0, b.vocab - 1));
        (rng.Chance(0.3) ? row->prompt : row->generated).push_back(t);
      }
      RowRequest& req = row->request;
      SamplingParams& p = req.params;
      p.temperature = rng.Chance(0.3) ? 1.0f : static_cast<float>(rng.Uniform(0.2, 2.0));
      p.top_p = rng.Pick({0.5f, 0.9f, 0.95f, static_cast<float>(rng.Uniform(0.01, 0.999))});
      p.repetition_penalty = rng.Pick({1.2f, 1.05f, static_cast<float>(rng.Uniform(0.5, 2.0))});
      p.preset = rng.Pick({Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp});
      p.num_samples = static_cast<int32_t>(rng.Int(1, 4));
      p.logprobs = false;
      req.seed = rng.Bits();
      req.step = static_cast<uint64_t>(rng.Int(0, 1000));
      req.prompt_tokens = row->prompt;
      req.generated_tokens = row->generated;
      b.rows.push_back(std::move(row));
    }
    for (const auto& row : b.rows)
      b.f32.insert(b.f32.end(), row->logits.begin(), row->logits.end());
    RunBatch(engine, b, b.vocab, bi, results, st);
  }
  Report("penalty-topp", st);
  ExpectAggregates(st);
  EXPECT_GT(st.draws, 60);
}

// Rows whose top-p nucleus or typical-p set holds thousands of tokens: a
// Gaussian tail under a few dominant tokens, or none, at gaps that put from
// 1 % to 95 % of the mass in the tail; some rows quantized (ties at every
// value) or with the dominant tokens in one block. Such rows take the
// wide-set selects (a band around the estimated threshold, listed in one
// pass) or, when their estimate misses, the pivot select; the random rows
// above seldom reach either with a wide set.
std::unique_ptr<RowCase> WideRow(Rng& rng, int64_t vocab) {
  auto row = std::make_unique<RowCase>();
  const double sd = rng.Pick({0.5, 1.0, 2.0, 3.0});
  const int64_t dominant = rng.Pick<int64_t>({0, 1, 5, 20});
  const double gap = rng.Uniform(2.0, 14.0);
  const bool quantized = rng.Chance(0.2);
  const bool one_block = rng.Chance(0.2);
  row->kind = "gauss tail sd " + std::to_string(sd) + ", " + std::to_string(dominant) +
              " dominant at +" + std::to_string(gap) + (quantized ? ", quantized" : "") +
              (one_block ? ", in one block" : "");
  row->logits.resize(static_cast<size_t>(vocab));
  for (float& v : row->logits) {
    v = static_cast<float>(sd * rng.Normal());
    if (quantized) v = std::round(v * 4.0f) / 4.0f;
  }
  const int64_t first = rng.Int(0, vocab - 64);
  for (int64_t j = 0; j < dominant; ++j) {
    const int64_t at = one_block ? first + j : rng.Int(0, vocab - 1);
    row->logits[static_cast<size_t>(at)] = static_cast<float>(gap + rng.Normal());
  }
  RowRequest& req = row->request;
  SamplingParams& p = req.params;
  p.temperature = rng.Pick({1.0f, 1.0f, 0.7f, 1.3f});
  if (rng.Chance(0.15)) p.top_k = static_cast<int32_t>(vocab / 2);
  if (rng.Chance(0.15)) p.min_p = 1e-6f;
  p.preset = rng.Pick({Preset::kHF, Preset::kVLLM, Preset::kLlamaCpp});
  p.num_samples = static_cast<int32_t>(rng.Int(1, 4));
  p.logprobs = rng.Chance(0.5);
  req.seed = rng.Bits();
  req.step = static_cast<uint64_t>(rng.Int(0, 1000));
  return row;
}

class WideSetTest : public EngineReferenceTest {
 protected:
  // 40 batches of one or two wide rows, `configure` setting the filter.
  template <typename Configure>
  void Run(uint64_t seed, const char* name, Configure configure) {
    Stats st;
    Rng rng(seed);
    Engine engine({.max_threads = 2, .seed = 99});
    std::vector<RowResult> results(2);
    for (int64_t bi = 0; bi < 40 && !HasFatalFailure(); ++bi) {
      Batch b;
      b.vocab = rng.Pick<int64_t>({20011, 32000, 128256, 151936});
      b.stride = b.vocab;
      const int64_t rows = rng.Int(1, 2);
      for (int64_t r = 0; r < rows; ++r) {
        b.rows.push_back(WideRow(rng, b.vocab));
        configure(rng, b.rows.back()->request.params);
      }
      for (const auto& row : b.rows)
        b.f32.insert(b.f32.end(), row->logits.begin(), row->logits.end());
      RunBatch(engine, b, b.vocab, bi, results, st);
    }
    Report(name, st);
    ExpectAggregates(st);
    EXPECT_GT(st.draws, 60);
  }
};

TEST_F(WideSetTest, TopP) {
  Run(7, "wide top-p", [](Rng& rng, SamplingParams& p) {
    p.top_p = rng.Pick({0.2f, 0.3f, 0.5f, 0.7f, 0.8f, 0.9f, 0.95f, 0.99f});
  });
}

// top-p below 0.75, where the wide-nucleus check also asks whether the
// ~2048 heaviest tokens fall short of p of the total (estimate_nucleus).
TEST_F(WideSetTest, LowTopP) {
  Run(11, "wide low top-p", [](Rng& rng, SamplingParams& p) {
    p.top_p = rng.Pick({0.05f, 0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f, 0.7f});
    p.min_p = 0.0f;
  });
}

// top-k past the block maxima's count (251 blocks in a 128256 row) and up
// to 2048, where the sample places the gather's bound.
TEST_F(WideSetTest, TopKPastTheBlockCount) {
  Run(9, "wide top-k", [](Rng& rng, SamplingParams& p) {
    p.top_k = static_cast<int32_t>(rng.Pick<int64_t>({300, 1000, 2000, rng.Int(100, 2048)}));
    p.min_p = 0.0f;
    if (rng.Chance(0.3)) p.top_p = 0.9f;
  });
}

// Count targets past 2048 (top-k, min_keep), up to past the whole row,
// where the sample places a band around the boundary (count_band_select);
// on quantized rows, ties at the boundary.
TEST_F(WideSetTest, LargeCountTargets) {
  Run(10, "wide large counts", [](Rng& rng, SamplingParams& p) {
    p.min_p = 0.0f;
    if (rng.Chance(0.7)) {
      p.top_k = static_cast<int32_t>(
          rng.Pick<int64_t>({2049, 3000, 5000, 10000, 30000, rng.Int(2049, 200000)}));
      if (rng.Chance(0.3)) p.top_p = 0.9f;
    } else {
      p.top_p = rng.Pick({0.3f, 0.5f, 0.9f});
      p.min_keep = static_cast<int32_t>(rng.Int(2049, 40000));
    }
  });
}

TEST_F(WideSetTest, TypicalP) {
  Run(8, "wide typical-p", [](Rng& rng, SamplingParams& p) {
    p.typical_p = rng.Pick({0.2f, 0.5f, 0.8f, 0.9f, 0.95f, 0.99f});
    if (rng.Chance(0.2)) p.top_p = 0.9f;
  });
}

// min_keep beside typical-p: a count target on typical keys, placed by a
// band around the sampled boundary (count_band_select), small or large;
// some past the whole row.
TEST_F(WideSetTest, TypicalMinKeep) {
  Run(12, "wide typical-p with min_keep", [](Rng& rng, SamplingParams& p) {
    p.typical_p = rng.Pick({0.2f, 0.5f, 0.9f});
    p.min_keep = static_cast<int32_t>(
        rng.Pick<int64_t>({2, 50, 500, 2049, 5000, 30000, rng.Int(2, 200000)}));
  });
}

// Logits whose softmax is the given distribution.
std::vector<float> LogOfProbs(std::initializer_list<double> probs) {
  std::vector<float> x;
  for (double q : probs) x.push_back(static_cast<float>(std::log(q)));
  return x;
}

// Hand-picked corners: each row alone, float32, seeded.
Batch OneRow(std::vector<float> logits, const SamplingParams& params, std::string kind) {
  Batch b;
  b.vocab = static_cast<int64_t>(logits.size());
  b.stride = b.vocab;
  auto row = std::make_unique<RowCase>();
  row->kind = std::move(kind);
  row->logits = std::move(logits);
  row->request.params = params;
  row->request.seed = 77;
  row->request.step = 3;
  b.f32 = row->logits;
  b.rows.push_back(std::move(row));
  return b;
}

std::vector<float> Ramp(int64_t n, float step) {
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = -step * static_cast<float>(i);
  return x;
}

TEST_F(EngineReferenceTest, TargetedRows) {
  std::vector<Batch> batches;
  auto add = [&](std::vector<float> x, auto configure, std::string kind) {
    SamplingParams p;
    p.num_samples = 4;
    p.top_logprobs = static_cast<int32_t>(std::min<size_t>(3, x.size()));
    configure(p);
    batches.push_back(OneRow(std::move(x), p, std::move(kind)));
  };
  // Each of `count` LM-like rows of `n` tokens (tools/lm_logits.h), as
  // each(row index, logits).
  auto each_lm_row = [](int64_t count, int64_t n, nucleus::tools::LmRowKind kind, uint64_t seed,
                        auto each) {
    const std::vector<float> rows = nucleus::tools::make_lm_logits(count, n, kind, seed);
    for (int64_t r = 0; r < count; ++r) {
      each(r, std::vector<float>(rows.begin() + r * n, rows.begin() + (r + 1) * n));
    }
  };
  // top-nσ on tempered values beyond 1e19, where float32 squares overflow.
  for (float t : {1e-10f, 1e-19f, 1e-20f, 1e-30f}) {
    add(
        {0, -1, -2, -3},
        [&](SamplingParams& p) {
          p.temperature = t;
          p.top_n_sigma = 1.0f;
        },
        "ramp, tiny T, top-nsigma");
  }
  // Every token tied: every filter keeps them all.
  add(
      std::vector<float>(7, 1.5f),
      [](SamplingParams& p) {
        p.top_k = 3;
        p.top_p = 0.2f;
      },
      "all tied, top-k + top-p");
  add(
      std::vector<float>(7, 1.5f),
      [](SamplingParams& p) {
        p.typical_p = 0.1f;
        p.min_p = 1.0f;
      },
      "all tied, typical + min-p 1");
  // top_p = 0 keeps the maximum's ties; min_keep widens it.
  add(
      {1, 3, 3, 2, 3}, [](SamplingParams& p) { p.top_p = 0.0f; }, "top-p 0 with ties");
  add(
      {1, 3, 3, 2, 3},
      [](SamplingParams& p) {
        p.top_p = 0.0f;
        p.min_keep = 4;
      },
      "top-p 0, min_keep 4");
  // top-p with min_keep > 1: min_keep widens the top-p set to the two best.
  add(
      Ramp(4, 1.0f),
      [](SamplingParams& p) {
        p.top_p = 0.5f;
        p.min_keep = 2;
      },
      "top-p 0.5, min_keep 2");
  // min_keep above the vocabulary.
  add(
      {0, -1, -2},
      [](SamplingParams& p) {
        p.top_k = 1;
        p.min_keep = 5;
      },
      "min_keep > vocab");
  // top-k just below the vocabulary, ties at the boundary.
  add(
      {5, 4, 4, 4, 1, 1}, [](SamplingParams& p) { p.top_k = 5; }, "top-k vocab-1, tie");
  add(
      {5, 4, 4, 4, 1, 1}, [](SamplingParams& p) { p.top_k = 2; }, "top-k 2 inside a tie");
  // Underflow: a tiny temperature leaves zero-mass tokens in the set.
  add(
      Ramp(50, 0.01f),
      [](SamplingParams& p) {
        p.temperature = 1e-3f;
        p.typical_p = 0.5f;
      },
      "tiny T, typical-p over zero-mass tokens");
  add(
      Ramp(50, 0.01f),
      [](SamplingParams& p) {
        p.temperature = 1e-3f;
        p.top_k = 20;
      },
      "tiny T, top-k counts zero-mass tokens");
  add(
      Ramp(50, 0.01f),
      [](SamplingParams& p) {
        p.temperature = 1e-3f;
        p.top_p = 0.5f;
      },
      "tiny T, top-p drops zero-mass ties");
  // llama.cpp: typical-p may drop the most probable token before T applies.
  add(
      LogOfProbs({0.4, 0.3, 0.2, 0.1}),
      [](SamplingParams& p) {
        p.preset = Preset::kLlamaCpp;
        p.typical_p = 0.25f;
        p.temperature = 0.5f;
      },
      "llama.cpp, typical drops the top token");
  add(
      LogOfProbs({0.4, 0.3, 0.2, 0.1}), [](SamplingParams& p) { p.typical_p = 0.45f; },
      "hf typical-p");
  // ... and a top-p after it over a row long enough for top-p's small-nucleus
  // path, whose gather must leave out the tokens typical-p dropped above the
  // set (the AVX2 mass pass once gathered them: a wrong kept set, or no
  // token left).
  {
    std::vector<float> zipf(32000);
    for (size_t i = 0; i < zipf.size(); ++i) {
      zipf[i] = static_cast<float>(-0.8 * std::log(static_cast<double>(i + 1)));
    }
    for (const auto& [typical, top_p] :
         {std::pair{0.9f, 0.5f}, {0.5f, 0.05f}, {0.5f, 0.2f}, {0.5f, 0.0f}}) {
      add(
          zipf,
          [=](SamplingParams& p) {
            p.preset = Preset::kLlamaCpp;
            p.typical_p = typical;
            p.top_p = top_p;
          },
          "llama.cpp, typical drops the top, then top-p, long row");
    }
    // top_p = 0 after typical-p on a nearly flat row: the gather below the
    // largest block maxima, all of them above typical-p's set, found no
    // member, and an empty list "reached" the target 0 (no token left).
    std::vector<float> flat(16384);
    for (size_t i = 0; i < flat.size(); ++i) {
      flat[i] = -0.001f * static_cast<float>((i * 7919) % 1000);
    }
    add(
        flat,
        [](SamplingParams& p) {
          p.preset = Preset::kLlamaCpp;
          p.typical_p = 0.5f;
          p.top_p = 0.0f;
        },
        "llama.cpp, typical drops the top, then top-p 0, flat row");
  }
  // Greedy ties go to the lowest id.
  add(
      {1, 4, 2, 4, 4}, [](SamplingParams& p) { p.temperature = 0.0f; }, "greedy tie");
  add(
      {7},
      [](SamplingParams& p) {
        p.temperature = 0.7f;
        p.top_p = 0.1f;
      },
      "vocab 1");
  // Masked maximum: the filters see the remaining tokens only.
  add(
      {10, 1, 0.5f, kNegInf, 0}, [](SamplingParams& p) { p.min_p = 0.5f; }, "-inf entry");
  // Large flat rows take the pivot select (top-p, typical-p): runs of equal
  // keys that no pivot splits (it falls back to the histogram), a few levels
  // only, min_keep beside typical-p (the stored keys no longer serve the
  // bounds), zero-mass tails, a target a hair below the total, masked runs.
  const int64_t big = 40000;
  add(
      std::vector<float>(big, 0.25f), [](SamplingParams& p) { p.top_p = 0.5f; },
      "large, all tied, top-p");
  add(
      std::vector<float>(big, 0.25f), [](SamplingParams& p) { p.typical_p = 0.5f; },
      "large, all tied, typical-p");
  auto levels = [&](int k) {
    std::vector<float> x(big);
    for (int64_t i = 0; i < big; ++i) x[i] = -static_cast<float>((i * 7919) % k) * 0.5f;
    return x;
  };
  add(
      levels(3), [](SamplingParams& p) { p.top_p = 0.6f; }, "large, three levels, top-p");
  add(
      levels(5), [](SamplingParams& p) { p.typical_p = 0.7f; }, "large, five levels, typical-p");
  add(
      levels(1000),
      [](SamplingParams& p) {
        p.typical_p = 0.9f;
        p.min_keep = 30000;
      },
      "large, typical-p with min_keep");
  add(
      levels(1000), [](SamplingParams& p) { p.top_p = 0.99999f; }, "large, top-p near 1");
  add(
      Ramp(big, 0.01f),
      [](SamplingParams& p) {
        p.temperature = 0.02f;
        p.typical_p = 0.9f;
      },
      "large ramp, zero-mass tail, typical-p");
  {
    std::vector<float> x = levels(700);
    for (int64_t i = 0; i < big; i += 3) x[i] = kNegInf;
    add(
        std::move(x), [](SamplingParams& p) { p.top_p = 0.8f; }, "large, masked thirds, top-p");
  }
  // Rows long enough for top-p's small-nucleus path (a sample estimates the
  // total, one pass gathers and totals): a nucleus of one token, one that
  // reaches into the tail past the block maxima's bound (hundreds of tokens),
  // and one too large for the path (the pivot select takes over).
  {
    // A nucleus of a few hundred middling tokens under one top token: more
    // than the block maxima's bound holds, fewer than the sample's (the
    // second gather).
    Rng mid(78);
    const int64_t n = 70000;
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = static_cast<float>(-20.0 - 3.0 * std::fabs(mid.Normal()));
    x[static_cast<size_t>(mid.Int(0, n - 1))] = 0.0f;
    for (int j = 0; j < 300; ++j) {
      x[static_cast<size_t>(mid.Int(0, n - 1))] = static_cast<float>(-mid.Uniform(4.0, 6.0));
    }
    for (float p_top : {0.8f, 0.9f}) {
      add(
          x, [&](SamplingParams& p) { p.top_p = p_top; },
          "large, a nucleus of middling tokens, top-p " + std::to_string(p_top));
    }
  }
  {
    Rng lm(77);
    const int64_t n = 70000;
    for (double margin : {10.0, 6.0, 2.0}) {
      std::vector<float> x(static_cast<size_t>(n));
      for (float& v : x) v = static_cast<float>(1.6 * lm.Normal());
      const float top = *std::max_element(x.begin(), x.end());
      for (int j = 0; j < 6; ++j) {
        x[static_cast<size_t>(lm.Int(0, n - 1))] =
            top + static_cast<float>(margin - 2.0 * std::log1p(static_cast<double>(j)));
      }
      for (float p_top : {0.5f, 0.9f, 0.95f, 0.99f}) {
        add(
            x, [&](SamplingParams& p) { p.top_p = p_top; },
            "large LM-like, margin " + std::to_string(margin) + ", top-p " + std::to_string(p_top));
      }
      // typical-p: the kept set among the block maxima's tokens (peaked),
      // or not (the pivot select); with a temperature and top-k before it.
      for (float p_typ : {0.2f, 0.9f, 0.99f}) {
        const std::string tag = "large LM-like, margin " + std::to_string(margin) + ", typical-p " +
                                std::to_string(p_typ);
        add(
            x, [&](SamplingParams& p) { p.typical_p = p_typ; }, tag);
        add(
            x,
            [&](SamplingParams& p) {
              p.typical_p = p_typ;
              p.temperature = 0.6f;
              p.top_k = 1000;
            },
            tag + ", T 0.6, top-k 1000");
      }
    }
  }
  // Flat and medium LM-like rows (the benchmark's kind): typical-p's kept
  // set is large there, found in one pass around an estimated band (or, when
  // the estimate misplaces it, by the pivot select); under each preset.
  for (const nucleus::tools::LmRowKind kind :
       {nucleus::tools::LmRowKind::kFlat, nucleus::tools::LmRowKind::kMedium}) {
    each_lm_row(3, 40000, kind, 11, [&](int64_t r, const std::vector<float>& x) {
      for (float p_typ : {0.2f, 0.5f, 0.9f, 0.95f, 0.99f}) {
        const std::string tag = std::string("LM-like ") +
                                (kind == nucleus::tools::LmRowKind::kFlat ? "flat" : "medium") +
                                " row " + std::to_string(r) + ", typical-p " +
                                std::to_string(p_typ);
        struct Variant {
          const char* tag;
          float temperature;
          Preset preset;
        };
        for (const Variant& v :
             {Variant{"", 1.0f, Preset::kHF}, Variant{", T 0.7", 0.7f, Preset::kHF},
              Variant{", T 1.3, llama.cpp", 1.3f, Preset::kLlamaCpp}}) {
          add(
              x,
              [&](SamplingParams& p) {
                p.typical_p = p_typ;
                p.temperature = v.temperature;
                p.preset = v.preset;
              },
              tag + v.tag);
        }
      }
    });
  }
  // Flat LM-like rows of 32000 tokens (Llama 2's vocabulary): on about one
  // in six, typical-p's kept set reaches past the band its first pass
  // gathers (the estimate falls short of the mass, or the threshold found
  // lies past the band's end), and the members are gathered again below a
  // looser bound by compares alone; both ways happen among these rows.
  each_lm_row(16, 32000, nucleus::tools::LmRowKind::kFlat, 9,
              [&](int64_t r, const std::vector<float>& x) {
                for (float p_typ : {0.9f, 0.95f}) {
                  add(
                      x, [&](SamplingParams& p) { p.typical_p = p_typ; },
                      "LM-like flat row " + std::to_string(r) + " of 32000, typical-p " +
                          std::to_string(p_typ));
                }
              });
  // Flat LM-like rows at a model's vocabulary (the benchmark's): top-p's
  // small-nucleus path, whose sample misses the few heavy tokens, so that
  // on some rows (the second here) the bound the sample gives holds too
  // little mass and a second, looser gather finds the nucleus.
  each_lm_row(4, 151936, nucleus::tools::LmRowKind::kFlat, 2,
              [&](int64_t r, const std::vector<float>& x) {
                for (float p_top : {0.9f, 0.95f}) {
                  // (at T 0.7 too: the pass that gathers the nucleus then scales the
                  // distances, and its keys must be those the select ranks by)
                  for (float t : {1.0f, 0.7f}) {
                    add(
                        x,
                        [&](SamplingParams& p) {
                          p.top_p = p_top;
                          p.temperature = t;
                        },
                        "LM-like flat row " + std::to_string(r) + " of 151936, top-p " +
                            std::to_string(p_top) + ", T " + std::to_string(t));
                  }
                }
              });
  Stats st;
  Engine engine({.max_threads = 2, .seed = 5});
  std::vector<RowResult> results(1);
  for (size_t i = 0; i < batches.size() && !HasFatalFailure(); ++i) {
    RunBatch(engine, batches[i], batches[i].vocab, static_cast<int64_t>(i), results, st);
  }
  Report("targeted", st);
  EXPECT_EQ(st.failures, 0);
  EXPECT_EQ(st.boundary_rows, 0);
}

// ---------------------------------------------------------------------------
// The reference itself, on rows small enough to work out by hand.

std::vector<int32_t> KeptBy(std::vector<float> logits, SamplingParams p) {
  RowRequest req;
  req.params = p;
  const ReferenceSampler ref(logits, req);
  EXPECT_FALSE(ref.ambiguous()) << DescribeStages(ref);
  return ref.kept();
}

TEST(ReferenceSampler, HandWorkedRows) {
  SamplingParams p;
  p.top_k = 1;  // ties at the boundary are kept
  EXPECT_EQ(KeptBy({1, 3, 3, 2}, p), (std::vector<int32_t>{1, 2}));
  p = {};
  p.top_p = 0.7f;  // masses 0.5, 0.3, 0.2: the mass above 0.2 is 0.8
  EXPECT_EQ(KeptBy(LogOfProbs({0.5, 0.3, 0.2}), p), (std::vector<int32_t>{0, 1}));
  p.top_p = 0.0f;  // the most probable token(s) only
  EXPECT_EQ(KeptBy({2, 5, 5, 1}, p), (std::vector<int32_t>{1, 2}));
  p.min_keep = 3;
  EXPECT_EQ(KeptBy({2, 5, 5, 1}, p), (std::vector<int32_t>{0, 1, 2}));
  p = {};
  p.min_p = 0.5f;  // keeps π >= 0.25
  EXPECT_EQ(KeptBy(LogOfProbs({0.5, 0.3, 0.2}), p), (std::vector<int32_t>{0, 1}));
  p = {};
  p.top_n_sigma = 1.0f;  // values 0, -1, -2, -3: σ = 1.118, threshold -1.118
  EXPECT_EQ(KeptBy({0, -1, -2, -3}, p), (std::vector<int32_t>{0, 1}));
  // typical-p on (0.4, 0.3, 0.2, 0.1): H = 1.2799; s = 0.364, 0.076, 0.330,
  // 1.023; the order is 1, 2, 0, 3 with cumulative 0.3, 0.5, 0.9, 1.0.
  p = {};
  p.typical_p = 0.45f;  // last = 1: keeps tokens 1 and 2
  EXPECT_EQ(KeptBy(LogOfProbs({0.4, 0.3, 0.2, 0.1}), p), (std::vector<int32_t>{1, 2}));
  p.typical_p = 0.25f;  // last = 0
  EXPECT_EQ(KeptBy(LogOfProbs({0.4, 0.3, 0.2, 0.1}), p), (std::vector<int32_t>{1}));
  // llama.cpp filters the untempered distribution; hf the tempered one.
  p = {};
  p.top_k = 2;
  p.top_p = 0.9f;
  p.preset = Preset::kLlamaCpp;
  p.temperature = 0.01f;  // filters see the untempered distribution
  EXPECT_EQ(KeptBy({0, -0.1f, -5}, p), (std::vector<int32_t>{0, 1}));
  p.preset = Preset::kHF;  // tempered: token 1 has mass e^-10, above 0.9 cut
  EXPECT_EQ(KeptBy({0, -0.1f, -5}, p), (std::vector<int32_t>{0}));
}

TEST(ReferenceSampler, UnderflowedTokensStayKeptButHaveNoMass) {
  RowRequest req;
  req.params.temperature = 1e-3f;  // z = -1000 for the second token
  const std::vector<float> logits = {0.0f, -1.0f, -1.0f};
  const ReferenceSampler ref(logits, req);
  EXPECT_EQ(ref.kept().size(), 3u);
  const Distribution d = ref.Final(ref.kept());
  EXPECT_EQ(d.prob[0], 1.0);
  EXPECT_EQ(d.prob[1], 0.0);
  // top-p sees the zero-mass tokens as tied, and above p.
  req.params.top_p = 0.5f;
  const ReferenceSampler ref_p(logits, req);
  EXPECT_EQ(ref_p.kept(), (std::vector<int32_t>{0}));
}

TEST(ReferenceSampler, ProcessorsFollowTheContract) {
  RowRequest req;
  const std::vector<float> logits = {2.0f, -2.0f, 1.0f, 3.0f, 0.5f};
  const std::vector<int32_t> prompt = {0, 1};
  const std::vector<int32_t> generated = {2, 2, 1};
  const std::vector<int32_t> banned = {3};
  const std::vector<TokenBias> bias = {{4, 1.5f}, {3, 10.0f}};
  const std::vector<int32_t> mask = {0b11111};
  req.prompt_tokens = prompt;
  req.generated_tokens = generated;
  req.banned_tokens = banned;
  req.logit_bias = bias;
  req.allowed_mask = mask;
  req.params.repetition_penalty = 2.0f;
  req.params.frequency_penalty = 0.5f;
  req.params.presence_penalty = 0.25f;
  const std::vector<float> x = nucleus_ref::ProcessLogits(logits, req);
  EXPECT_EQ(x[0], 1.0f);                  // 2 / 2, prompt only
  EXPECT_EQ(x[1], -4.0f - 0.5f - 0.25f);  // -2 * 2, generated once
  EXPECT_EQ(x[2], 0.5f - 1.0f - 0.25f);   // 1 / 2, generated twice
  EXPECT_EQ(x[3], kNegInf);               // banned, bias cannot undo it
  EXPECT_EQ(x[4], 2.0f);                  // bias only
  EXPECT_EQ(nucleus_ref::Argmax(x), 4);
}

}  // namespace
