// A deliberately plain reference for SPEC.md sections 2-4 and the final
// distribution, written from SPEC.md and docs/semantics.md alone: it sorts the
// whole set at every filter and works in double precision after the float32
// steps that docs/semantics.md fixes (the processors, the tempered logits and
// the llama.cpp filter space). It is slow on purpose; the engine tests compare
// the fast path against it.
//
// The engine computes exp in float32 and sums in its own order, so a token that
// lies within rounding distance of a filter boundary may legitimately land on
// the other side. Every filter therefore reports, besides the tokens it keeps
// whatever the rounding, the "ambiguous" tokens that lie within a stated
// tolerance of its boundary, and FindKeptSet() explores the kept sets those
// ambiguous tokens allow, the exact-arithmetic one first.
#pragma once

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "nucleus/sampling.h"

namespace nucleus_ref {

using nucleus::Preset;
using nucleus::RowRequest;
using nucleus::SamplingParams;

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();
inline constexpr double kInfinity = std::numeric_limits<double>::infinity();

// docs/semantics.md: a term whose exponent (relative to the set's maximum) is
// below ln(FLT_MIN) underflows to exactly 0.
inline constexpr double kUnderflowExponent = -87.33654;

// Relative tolerance on decision quantities the engine derives from float32
// exponentials (cumulative masses, entropies, the underflow exponent). Each
// float32 exp carries a relative error of a few 1e-7 (its argument is itself a
// rounded float difference), so sums of them are good to about 1e-6; 1e-5 is a
// tenfold margin.
inline constexpr double kFloatRelTol = 1e-5;

// Relative tolerance on top-nσ's threshold, which the engine computes in double
// from the same float32 values: only the summation order differs.
inline constexpr double kDoubleRelTol = 1e-9;

enum class Filter { kTopK, kTopP, kMinP, kTypicalP, kTopNSigma };

inline const char* FilterName(Filter f) {
  switch (f) {
    case Filter::kTopK:
      return "top-k";
    case Filter::kTopP:
      return "top-p";
    case Filter::kMinP:
      return "min-p";
    case Filter::kTypicalP:
      return "typical-p";
    case Filter::kTopNSigma:
      return "top-nsigma";
  }
  return "?";
}

// SPEC section 4, with the filters a preset does not list appended in hf order.
inline std::vector<Filter> FilterOrder(Preset preset) {
  switch (preset) {
    case Preset::kHF:
      return {Filter::kTopK, Filter::kTopP, Filter::kMinP, Filter::kTypicalP, Filter::kTopNSigma};
    case Preset::kVLLM:
      return {Filter::kMinP, Filter::kTopK, Filter::kTopP, Filter::kTypicalP, Filter::kTopNSigma};
    case Preset::kLlamaCpp:
      return {Filter::kTopNSigma, Filter::kTopK, Filter::kTypicalP, Filter::kTopP, Filter::kMinP};
  }
  return {};
}

// docs/semantics.md "Filters": off values. An off filter is skipped entirely.
inline bool FilterOn(Filter f, const SamplingParams& p, int64_t vocab) {
  switch (f) {
    case Filter::kTopK:
      return p.top_k > 0 && p.top_k < vocab;
    case Filter::kTopP:
      return p.top_p != 1.0f;
    case Filter::kMinP:
      return p.min_p != 0.0f;
    case Filter::kTypicalP:
      return p.typical_p != 1.0f;
    case Filter::kTopNSigma:
      return p.top_n_sigma > 0.0f;
  }
  return false;
}

// SPEC section 2, steps 1-4, in float32 as the contract writes them.
inline std::vector<float> ProcessLogits(std::span<const float> raw, const RowRequest& req) {
  std::vector<float> x(raw.begin(), raw.end());
  const size_t vocab = x.size();
  if (!req.allowed_mask.empty()) {
    for (size_t i = 0; i < vocab; ++i) {
      const uint32_t word = static_cast<uint32_t>(req.allowed_mask[i / 32]);
      if (((word >> (i % 32)) & 1u) == 0) x[i] = kNegInf;
    }
  }
  for (int32_t t : req.banned_tokens) x[t] = kNegInf;
  for (const nucleus::TokenBias& b : req.logit_bias) x[b.token] += b.bias;

  std::vector<int32_t> generated_count(vocab, 0);
  std::vector<char> seen(vocab, 0);
  for (int32_t t : req.prompt_tokens) seen[t] = 1;
  for (int32_t t : req.generated_tokens) {
    seen[t] = 1;
    ++generated_count[t];
  }
  const SamplingParams& p = req.params;
  for (size_t i = 0; i < vocab; ++i) {
    if (!seen[i]) continue;
    const float r = p.repetition_penalty;
    x[i] = x[i] > 0.0f ? x[i] / r : x[i] * r;
    if (generated_count[i] > 0) {
      x[i] -= p.frequency_penalty * static_cast<float>(generated_count[i]);
      x[i] -= p.presence_penalty;
    }
  }
  return x;
}

// Argmax over the finite values, lowest id on ties; -1 when none is finite.
inline int32_t Argmax(std::span<const float> x) {
  int32_t best = -1;
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] == kNegInf) continue;
    if (best < 0 || x[i] > x[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

// log_softmax in double; -inf entries stay -inf. Used for raw logprobs, where
// no underflow rule applies (the result is a logarithm).
inline std::vector<double> LogSoftmax(std::span<const float> x) {
  double m = -kInfinity;
  for (float v : x) m = std::max(m, static_cast<double>(v));
  std::vector<double> out(x.size(), -kInfinity);
  if (m == -kInfinity) return out;
  double z = 0.0;
  for (float v : x) {
    if (v != kNegInf) z += std::exp(static_cast<double>(v) - m);
  }
  const double log_z = std::log(z);
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] != kNegInf) out[i] = static_cast<double>(x[i]) - m - log_z;
  }
  return out;
}

// The distribution of a set of tokens under softmax of `values`, with the
// underflow rule. Dense over the vocabulary.
struct Distribution {
  std::vector<double> mass;      // exp(value - max over set); 0 outside or underflowed
  std::vector<double> prob;      // mass / total
  std::vector<double> exponent;  // value - max over set; -inf outside
  std::vector<double> logprob;   // exponent - ln(total): finite for every token of the set
  double total = 0.0;
  double max_value = -kInfinity;
};

inline Distribution Distribute(const std::vector<int32_t>& set, const std::vector<float>& values) {
  Distribution d;
  const size_t vocab = values.size();
  d.mass.assign(vocab, 0.0);
  d.prob.assign(vocab, 0.0);
  d.exponent.assign(vocab, -kInfinity);
  d.logprob.assign(vocab, -kInfinity);
  for (int32_t t : set) d.max_value = std::max(d.max_value, static_cast<double>(values[t]));
  for (int32_t t : set) {
    const double e = static_cast<double>(values[t]) - d.max_value;
    d.exponent[t] = e;
    d.mass[t] = e < kUnderflowExponent ? 0.0 : std::exp(e);
    d.total += d.mass[t];
  }
  const double log_total = std::log(d.total);
  for (int32_t t : set) {
    d.prob[t] = d.mass[t] / d.total;
    d.logprob[t] = d.exponent[t] - log_total;
  }
  return d;
}

// One filter's verdict on the set it was given. A kept set is `sure` plus a
// choice of the ambiguous groups: any prefix (the filter's kept sets are
// intervals of its preference order) or, when `any_subset`, any combination.
struct StageDecision {
  Filter filter = Filter::kTopK;
  size_t input_size = 0;
  std::vector<int32_t> sure;
  // Ambiguous tokens in the filter's order of preference; tokens tied in that
  // order share a group because ties are always kept together.
  std::vector<std::vector<int32_t>> groups;
  std::vector<char> exact;       // the group is kept in exact arithmetic
  std::vector<double> distance;  // the group's distance to the boundary / tolerance
  bool any_subset = false;
  // Smallest distance to the boundary over the tokens min_keep does not
  // protect, in units of the tolerance: above 1 means no token is ambiguous.
  double margin = kInfinity;
};

namespace detail {

// Token ids sorted by value descending, ids ascending on ties.
inline std::vector<int32_t> SortDescending(std::vector<int32_t> set, const std::vector<float>& v) {
  std::sort(set.begin(), set.end(),
            [&](int32_t a, int32_t b) { return v[a] != v[b] ? v[a] > v[b] : a < b; });
  return set;
}

// The value of the min_keep-th most preferred token (descending values).
inline float MinKeepValue(const std::vector<int32_t>& desc, const std::vector<float>& v,
                          int32_t min_keep) {
  const size_t k = std::min(static_cast<size_t>(std::max(min_keep, 1)), desc.size());
  return v[desc[k - 1]];
}

inline void Append(std::vector<int32_t>& to, const std::vector<int32_t>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

// Groups of equal value in descending order; with `zero_mass_tied`, every
// underflowed token joins one last group, since their probabilities (all 0)
// are tied.
inline std::vector<std::vector<int32_t>> DescendingGroups(const std::vector<int32_t>& desc,
                                                          const std::vector<float>& v,
                                                          const Distribution* zero_mass_tied) {
  std::vector<std::vector<int32_t>> groups;
  for (size_t i = 0; i < desc.size();) {
    size_t j = i + 1;
    if (zero_mass_tied != nullptr && zero_mass_tied->mass[desc[i]] == 0.0) {
      j = desc.size();
    } else {
      while (j < desc.size() && v[desc[j]] == v[desc[i]]) ++j;
    }
    groups.emplace_back(desc.begin() + i, desc.begin() + j);
    i = j;
  }
  return groups;
}

// Adds one group to a decision: min_keep's protected tokens are sure, tokens
// within tolerance are ambiguous, the rest are kept or dropped as decided.
inline void Place(StageDecision& d, const std::vector<int32_t>& group, float min_keep_value,
                  const std::vector<float>& v, bool keep, double distance) {
  std::vector<int32_t> rest;
  for (int32_t t : group) {
    if (v[t] >= min_keep_value) {
      d.sure.push_back(t);
    } else {
      rest.push_back(t);
    }
  }
  if (rest.empty()) return;
  d.margin = std::min(d.margin, distance);
  if (distance <= 1.0) {
    d.groups.push_back(std::move(rest));
    d.exact.push_back(keep ? 1 : 0);
    d.distance.push_back(distance);
  } else if (keep) {
    Append(d.sure, rest);
  }
}

}  // namespace detail

// top-k: keep z_i >= the K-th largest value, K = max(k, min_keep). Exact: the
// engine compares the same float32 values.
inline StageDecision TopK(const std::vector<int32_t>& set, const std::vector<float>& v, int32_t k,
                          int32_t min_keep) {
  StageDecision d;
  d.filter = Filter::kTopK;
  d.input_size = set.size();
  const size_t kk = static_cast<size_t>(std::max(k, min_keep));
  if (kk >= set.size()) {
    d.sure = set;
    return d;
  }
  const std::vector<int32_t> desc = detail::SortDescending(set, v);
  const float threshold = v[desc[kk - 1]];
  for (int32_t t : set) {
    if (v[t] >= threshold) d.sure.push_back(t);
  }
  return d;
}

// top-p: keep i iff the mass strictly more probable than i is < p. The
// cumulative masses are compared with p up to kFloatRelTol * p.
inline StageDecision TopP(const std::vector<int32_t>& set, const std::vector<float>& v, float p,
                          int32_t min_keep) {
  StageDecision d;
  d.filter = Filter::kTopP;
  d.input_size = set.size();
  const Distribution dist = Distribute(set, v);
  const std::vector<int32_t> desc = detail::SortDescending(set, v);
  const float min_keep_value = detail::MinKeepValue(desc, v, min_keep);
  const double pp = p;
  const double tol = kFloatRelTol * pp;
  double above = 0.0;  // the mass strictly more probable than the current group
  for (const std::vector<int32_t>& group : detail::DescendingGroups(desc, v, &dist)) {
    const double gap = std::abs(above - pp);
    detail::Place(d, group, min_keep_value, v,
                  above<pp, tol> 0.0 ? gap / tol : (gap == 0.0 ? 0.0 : kInfinity));
    for (int32_t t : group) above += dist.prob[t];
  }
  return d;
}

// min-p: keep z_i >= z_max + ln m, the threshold in double compared exactly
// with the float values (docs/semantics.md), so nothing is ambiguous.
inline StageDecision MinP(const std::vector<int32_t>& set, const std::vector<float>& v, float m,
                          int32_t min_keep) {
  StageDecision d;
  d.filter = Filter::kMinP;
  d.input_size = set.size();
  const std::vector<int32_t> desc = detail::SortDescending(set, v);
  const float min_keep_value = detail::MinKeepValue(desc, v, min_keep);
  const double threshold = static_cast<double>(v[desc[0]]) + std::log(static_cast<double>(m));
  for (int32_t t : set) {
    if (v[t] >= min_keep_value || static_cast<double>(v[t]) >= threshold) d.sure.push_back(t);
  }
  return d;
}

// top-nσ: keep z_i >= z_max - n·σ with σ the population standard deviation of
// the set's values (double). Only the summation order can differ from the
// engine, hence the much tighter tolerance.
inline StageDecision TopNSigma(const std::vector<int32_t>& set, const std::vector<float>& v,
                               float n, int32_t min_keep) {
  StageDecision d;
  d.filter = Filter::kTopNSigma;
  d.input_size = set.size();
  const std::vector<int32_t> desc = detail::SortDescending(set, v);
  const float min_keep_value = detail::MinKeepValue(desc, v, min_keep);
  double mean = 0.0;
  for (int32_t t : set) mean += v[t];
  mean /= static_cast<double>(set.size());
  double var = 0.0;
  for (int32_t t : set) var += (v[t] - mean) * (v[t] - mean);
  const double sigma = std::sqrt(var / static_cast<double>(set.size()));
  const double vmax = v[desc[0]];
  const double nsigma = static_cast<double>(n) * sigma;
  const double threshold = vmax - nsigma;
  const double tol = kDoubleRelTol * (std::abs(vmax) + nsigma + 1.0);
  for (const std::vector<int32_t>& group : detail::DescendingGroups(desc, v, nullptr)) {
    const double value = v[group[0]];
    detail::Place(d, group, min_keep_value, v, value >= threshold,
                  std::abs(value - threshold) / tol);
  }
  return d;
}

// typical-p, HF TypicalLogitsWarper restricted to the set: H = -Σ π ln π,
// s_i = |-ln π_i - H| (+inf for an underflowed π), sorted ascending;
// last = min(#(cum < τ), n - 1), raised to min_keep - 1; keep s_i <= s[last].
// Three roundings can move the boundary: the cumulative sums against τ, the s
// values against the threshold, and the underflow exponent. Each is given
// kFloatRelTol of its scale.
inline StageDecision TypicalP(const std::vector<int32_t>& set, const std::vector<float>& v,
                              float tau, int32_t min_keep) {
  StageDecision d;
  d.filter = Filter::kTypicalP;
  d.input_size = set.size();
  const Distribution dist = Distribute(set, v);
  const double log_total = std::log(dist.total);
  double entropy = 0.0;
  for (int32_t t : set) {
    if (dist.mass[t] > 0.0) entropy -= dist.prob[t] * dist.logprob[t];
  }
  // s from the log-space value: finite even for an underflowed token, which
  // is what s would be had its underflow gone the other way.
  auto shifted = [&](int32_t t) { return std::abs(-dist.logprob[t] - entropy); };
  std::vector<double> s(v.size(), kInfinity);
  for (int32_t t : set) s[t] = dist.mass[t] > 0.0 ? shifted(t) : kInfinity;

  std::vector<int32_t> order = set;
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (s[a] != s[b]) return s[a] < s[b];
    return v[a] != v[b] ? v[a] > v[b] : a < b;
  });
  const size_t n = order.size();
  const double t = tau;
  const double tol_cum = kFloatRelTol * t;
  size_t count = 0, count_lo = 0, count_hi = 0;
  double cum = 0.0;
  for (int32_t tok : order) {
    cum += dist.prob[tok];
    if (cum < t) ++count;
    if (cum < t - tol_cum) ++count_lo;
    if (cum < t + tol_cum) ++count_hi;
  }
  const size_t keep_index = std::min(static_cast<size_t>(std::max(min_keep, 1)), n) - 1;
  auto last_index = [&](size_t c) { return std::max(std::min(c, n - 1), keep_index); };
  // The threshold in exact arithmetic, and the lowest and highest ones that
  // the cumulative sums allow within tolerance.
  const double threshold = s[order[last_index(count)]];
  const double threshold_lo = s[order[last_index(count_lo)]];
  const double threshold_hi = s[order[last_index(count_hi)]];
  // The min_keep most typical tokens are kept whatever happens above.
  const double protected_s = s[order[keep_index]];

  if (threshold_lo == kInfinity) {  // everything is kept whichever way it rounds
    d.sure = set;
    return d;
  }
  const double tol_s = kFloatRelTol * (1.0 + entropy + std::abs(log_total) + threshold_lo);
  const double tol_underflow = kFloatRelTol * -kUnderflowExponent;
  std::vector<std::pair<double, int32_t>> ambiguous;  // (s, token)
  std::vector<double> distance(v.size(), kInfinity);
  for (int32_t tok : set) {
    const bool keep = s[tok] <= threshold;
    double dist_s = kInfinity;  // distance to the window of possible thresholds / tol_s
    if (s[tok] == kInfinity) {
      if (threshold_hi == kInfinity) dist_s = 0.0;
    } else {
      const double below = threshold_lo - s[tok];
      const double above = threshold_hi == kInfinity ? 0.0 : s[tok] - threshold_hi;
      dist_s = std::max({0.0, below, above}) / tol_s;
    }
    if (std::abs(dist.exponent[tok] - kUnderflowExponent) <= tol_underflow) {
      // Had the underflow gone the other way: s = +inf is kept only with an
      // infinite threshold; a finite s like any other.
      const bool alt_keep =
          dist.mass[tok] > 0.0 ? threshold_hi == kInfinity : shifted(tok) <= threshold_hi + tol_s;
      if (alt_keep != keep) dist_s = 0.0;
    }
    if (s[tok] <= protected_s) {
      d.sure.push_back(tok);
      continue;
    }
    distance[tok] = dist_s;
    if (dist_s <= 1.0) {
      ambiguous.emplace_back(s[tok], tok);
    } else if (keep) {
      d.sure.push_back(tok);
    }
  }
  std::sort(ambiguous.begin(), ambiguous.end());
  // The token that sets the threshold is kept by construction; it is only in
  // doubt when the crossing itself may move or another s lies close to it.
  if (threshold_lo == threshold_hi && !ambiguous.empty() && ambiguous.front().first == threshold &&
      ambiguous.back().first == threshold) {
    for (const auto& [s_value, tok] : ambiguous) {
      d.sure.push_back(tok);
      distance[tok] = kInfinity;
    }
    ambiguous.clear();
  }
  for (int32_t tok : set) d.margin = std::min(d.margin, distance[tok]);
  for (size_t i = 0; i < ambiguous.size();) {
    size_t j = i + 1;
    while (j < ambiguous.size() && ambiguous[j].first == ambiguous[i].first) ++j;
    std::vector<int32_t> group;
    double group_distance = kInfinity;
    for (size_t k = i; k < j; ++k) {
      group.push_back(ambiguous[k].second);
      group_distance = std::min(group_distance, distance[ambiguous[k].second]);
    }
    d.groups.push_back(std::move(group));
    d.exact.push_back(ambiguous[i].first <= threshold ? 1 : 0);
    d.distance.push_back(group_distance);
    i = j;
  }
  // Nearly equal s values may be ordered either way by the engine, and an
  // underflow decision does not follow s order, so any combination is allowed
  // while the groups are few; otherwise the kept set is a prefix in s order.
  d.any_subset = d.groups.size() <= 6;
  return d;
}

// The choices of ambiguous groups a decision allows (1 = kept), the
// exact-arithmetic one first, then by how many groups they decide differently.
inline std::vector<std::vector<char>> OutcomeChoices(const StageDecision& d) {
  const size_t g = d.groups.size();
  std::vector<std::vector<char>> choices;
  if (d.any_subset) {
    for (uint32_t bits = 0; bits < (1u << g); ++bits) {
      std::vector<char> c(g);
      for (size_t i = 0; i < g; ++i) c[i] = (bits >> i) & 1u;
      choices.push_back(std::move(c));
    }
  } else {
    for (size_t j = 0; j <= g; ++j) {
      std::vector<char> c(g, 0);
      std::fill(c.begin(), c.begin() + static_cast<std::ptrdiff_t>(j), 1);
      choices.push_back(std::move(c));
    }
  }
  auto differences = [&](const std::vector<char>& c) {
    size_t n = 0;
    for (size_t i = 0; i < g; ++i) n += (c[i] != 0) != (d.exact[i] != 0);
    return n;
  };
  std::stable_sort(choices.begin(), choices.end(),
                   [&](const auto& a, const auto& b) { return differences(a) < differences(b); });
  return choices;
}

// The kept set of one choice, ascending ids.
inline std::vector<int32_t> Outcome(const StageDecision& d, const std::vector<char>& choice) {
  std::vector<int32_t> set = d.sure;
  for (size_t i = 0; i < d.groups.size(); ++i) {
    if (choice[i]) detail::Append(set, d.groups[i]);
  }
  std::sort(set.begin(), set.end());
  return set;
}

// The reference for one row.
class ReferenceSampler {
 public:
  using SetPredicate = std::function<bool(const std::vector<int32_t>&)>;

  ReferenceSampler(std::span<const float> raw, const RowRequest& req)
      : params_(req.params), vocab_(static_cast<int64_t>(raw.size())) {
    raw_logprobs_ = LogSoftmax(raw);
    processed_ = ProcessLogits(raw, req);
    greedy_token_ = Argmax(processed_);
    if (greedy_token_ < 0) return;  // every token masked: a row error
    const float xmax = processed_[greedy_token_];
    for (int64_t i = 0; i < vocab_; ++i) {
      if (processed_[i] != kNegInf) finite_.push_back(static_cast<int32_t>(i));
    }
    if (greedy()) {
      final_values_ = processed_;
      filter_values_ = processed_;
    } else {
      // docs/semantics.md: z = (x - x_max) * (1/T) in float32, 1/T clamped
      // to the largest finite float.
      float inv_t = 1.0f / params_.temperature;
      if (!(inv_t <= FLT_MAX)) inv_t = FLT_MAX;
      final_values_.assign(vocab_, kNegInf);
      filter_values_.assign(vocab_, kNegInf);
      for (int32_t t : finite_) {
        const float shifted = processed_[t] - xmax;
        final_values_[t] = shifted * inv_t;
        filter_values_[t] = params_.preset == Preset::kLlamaCpp ? shifted : final_values_[t];
      }
      for (Filter f : FilterOrder(params_.preset)) {
        if (FilterOn(f, params_, vocab_)) filters_.push_back(f);
      }
    }
    // The exact-arithmetic path: the first leaf of the search.
    Search(
        finite_, 0, [](const std::vector<int32_t>&) { return true; },
        [this](const std::vector<int32_t>& kept) {
          kept_ = kept;
          return true;
        },
        &stages_);
  }

  bool row_error() const { return greedy_token_ < 0; }
  bool greedy() const { return params_.temperature == 0.0f; }
  int32_t greedy_token() const { return greedy_token_; }
  int64_t vocab() const { return vocab_; }
  const SamplingParams& params() const { return params_; }

  // After masks, bias and penalties.
  const std::vector<float>& processed() const { return processed_; }
  // What the final softmax is taken of: z, or the processed logits for greedy.
  const std::vector<float>& final_values() const { return final_values_; }
  // What the filters compare: z, or x - x_max under llama.cpp.
  const std::vector<float>& filter_values() const { return filter_values_; }
  const std::vector<double>& raw_logprobs() const { return raw_logprobs_; }
  // Tokens with a finite processed logit.
  const std::vector<int32_t>& finite() const { return finite_; }

  // The final kept set in exact arithmetic, ascending ids.
  const std::vector<int32_t>& kept() const { return kept_; }
  // The decisions along the exact-arithmetic path.
  const std::vector<StageDecision>& stages() const { return stages_; }
  bool ambiguous() const {
    for (const StageDecision& d : stages_) {
      if (!d.groups.empty()) return true;
    }
    return false;
  }

  Distribution Final(const std::vector<int32_t>& kept) const {
    return Distribute(kept, final_values_);
  }

  struct SearchResult {
    bool found = false;
    bool principal = false;  // the exact-arithmetic kept set
    bool exhausted = false;  // gave up after max_leaves kept sets
    int leaves = 0;
    std::vector<int32_t> kept;
  };

  // Looks for a final kept set that rounding allows and `accept` takes.
  // `viable` prunes intermediate sets (e.g. those that already lost a token
  // the engine kept).
  SearchResult FindKeptSet(const SetPredicate& viable, const SetPredicate& accept,
                           int max_leaves = 512) const {
    SearchResult r;
    if (row_error()) return r;
    const bool found = Search(
        finite_, 0, viable,
        [&](const std::vector<int32_t>& kept) {
          if (++r.leaves > max_leaves) {
            r.exhausted = true;
            return true;  // stops the search
          }
          if (!accept(kept)) return false;
          r.kept = kept;
          return true;
        },
        nullptr);
    r.found = found && !r.exhausted;
    r.principal = r.found && r.kept == kept_;
    return r;
  }

 private:
  StageDecision Decide(Filter f, const std::vector<int32_t>& set) const {
    const std::vector<float>& v = filter_values_;
    const int32_t mk = params_.min_keep;
    switch (f) {
      case Filter::kTopK:
        return TopK(set, v, params_.top_k, mk);
      case Filter::kTopP:
        return TopP(set, v, params_.top_p, mk);
      case Filter::kMinP:
        return MinP(set, v, params_.min_p, mk);
      case Filter::kTypicalP:
        return TypicalP(set, v, params_.typical_p, mk);
      case Filter::kTopNSigma:
        return TopNSigma(set, v, params_.top_n_sigma, mk);
    }
    return {};
  }

  // Depth-first over the allowed outcomes of each stage, exact first. Returns
  // true once `leaf` returns true. `record` collects the decisions along the
  // first path explored.
  bool Search(const std::vector<int32_t>& set, size_t stage, const SetPredicate& viable,
              const SetPredicate& leaf, std::vector<StageDecision>* record) const {
    if (stage == filters_.size()) {
      std::vector<int32_t> sorted = set;
      std::sort(sorted.begin(), sorted.end());
      return leaf(sorted);
    }
    const StageDecision d = Decide(filters_[stage], set);
    const std::vector<std::vector<char>> choices = OutcomeChoices(d);
    if (record != nullptr) record->push_back(d);
    for (size_t i = 0; i < choices.size(); ++i) {
      const std::vector<int32_t> next = Outcome(d, choices[i]);
      if (!viable(next)) continue;
      if (Search(next, stage + 1, viable, leaf, i == 0 ? record : nullptr)) return true;
    }
    return false;
  }

  SamplingParams params_;
  int64_t vocab_ = 0;
  std::vector<float> processed_;
  std::vector<float> final_values_;
  std::vector<float> filter_values_;
  std::vector<double> raw_logprobs_;
  std::vector<int32_t> finite_;
  std::vector<Filter> filters_;
  int32_t greedy_token_ = -1;
  std::vector<int32_t> kept_;
  std::vector<StageDecision> stages_;
};

}  // namespace nucleus_ref
