#include "engine/row/verify.h"

#include <algorithm>
#include <cmath>

#include "engine/row/philox.h"

namespace nucleus::detail {
namespace {

// Inverse-CDF draw over dense weights in token order (double sums); weights
// need not be normalised. Returns -1 when they are all zero.
int32_t draw_dense(const float* w, int64_t vocab, double u) {
  double total = 0.0;
  for (int64_t t = 0; t < vocab; ++t) total += w[t];
  if (!(total > 0.0)) return -1;
  const double target = u * total;
  double cum = 0.0;
  int32_t last = -1;
  for (int64_t t = 0; t < vocab; ++t) {
    if (w[t] <= 0.0f) continue;
    cum += w[t];
    last = static_cast<int32_t>(t);
    if (cum >= target) return last;
  }
  return last;  // rounding: the last token of positive weight
}

}  // namespace

void verify_row(std::span<const RowInput> positions, std::span<const int32_t> drafts,
                const float* draft_probs, const RowRequest& request, uint64_t seed, int64_t row,
                VerifyResult& result, RowScratch& sc, const Runner& run) {
  result.clear();
  const auto k = static_cast<int64_t>(drafts.size());
  const int64_t vocab = positions[0].vocab;
  sc.verify_p.resize(static_cast<size_t>(vocab));
  float* p = sc.verify_p.data();

  // The history grows by the accepted drafts, position by position.
  sc.verify_history.assign(request.generated_tokens.begin(), request.generated_tokens.end());
  RowRequest at = request;

  // The target distribution at position i, the one sampling draws from.
  // Sampling a greedy row (temperature 0) returns its argmax, so its target
  // is that one token (as vLLM's rejection sampler does): a draft is
  // accepted only if it is the argmax, and the recovered or bonus token is
  // the argmax.
  auto target = [&](int64_t i) {
    return probs_row(positions[static_cast<size_t>(i)], at, row, p, sc, run,
                     /*greedy_one_hot=*/true);
  };

  for (int64_t i = 0; i <= k; ++i) {
    at.generated_tokens = sc.verify_history;
    if (Status s = target(i); !s.ok()) {
      result.status =
          Status::row_error(s.message() + " (target position " + std::to_string(i) + ")");
      result.tokens.clear();
      result.accepted = 0;
      return;
    }
    const uint64_t step = request.step + static_cast<uint64_t>(i);
    if (i == k) {
      // Every draft accepted: the bonus token from the last target row.
      result.tokens.push_back(draw_dense(p, vocab, philox_uniform(seed, step, 0, kDrawPurpose)));
      return;
    }
    const int32_t x = drafts[static_cast<size_t>(i)];
    const float* q = draft_probs ? draft_probs + i * vocab : nullptr;
    const double qx = q ? q[x] : 1.0;
    const double px = p[x];
    // Accept with probability min(1, p(x) / q(x)); a token the target rules
    // out is never accepted, nor one the drafter gave no probability (it
    // cannot have drawn it; vLLM's rejection sampler rejects it too). A
    // greedy row accepts the argmax whatever q says, as vLLM's greedy path
    // does (its target is one-hot: px > 0 only there).
    const double u = philox_uniform(seed, step, 0, kAcceptPurpose);
    const bool greedy = request.params.temperature == 0.0f;
    if (px > 0.0 && (greedy || (qx > 0.0 && u * qx <= px))) {
      result.tokens.push_back(x);
      ++result.accepted;
      sc.verify_history.push_back(x);
      continue;
    }
    // Rejected: draw from max(p - q, 0), renormalised.
    if (q) {
      for (int64_t t = 0; t < vocab; ++t) p[t] = std::max(p[t] - q[t], 0.0f);
    } else {
      p[x] = 0.0f;
    }
    const double u2 = philox_uniform(seed, step, 0, kRecoverPurpose);
    int32_t token = draw_dense(p, vocab, u2);
    if (token < 0) {
      // p <= q everywhere (equal up to rounding): the residual is empty, so
      // draw from the target itself.
      target(i);
      token = draw_dense(p, vocab, u2);
    }
    result.tokens.push_back(token);
    return;
  }
}

}  // namespace nucleus::detail
