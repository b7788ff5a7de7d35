// Language-model-like logits (see lm_logits.h).
#include "tools/lm_logits.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

namespace nucleus::tools {
namespace {

enum class RowKind { kPeaked, kMedium, kFlat };

class Random {
 public:
  explicit Random(uint64_t seed) : engine_(seed) {}
  // Uniform in (0, 1) from the top 53 bits.
  double uniform() { return (static_cast<double>(engine_() >> 11) + 0.5) * 0x1.0p-53; }
  double normal() {  // Box-Muller
    return std::sqrt(-2.0 * std::log(uniform())) * std::cos(2.0 * std::numbers::pi * uniform());
  }
  double between(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  int64_t below(int64_t n) { return static_cast<int64_t>(uniform() * static_cast<double>(n)); }

 private:
  std::mt19937_64 engine_;
};

RowKind kind_of_row(LmRowKind kind, int64_t row) {
  if (kind == LmRowKind::kPeaked) return RowKind::kPeaked;
  if (kind == LmRowKind::kMedium) return RowKind::kMedium;
  if (kind == LmRowKind::kFlat) return RowKind::kFlat;
  static constexpr RowKind kCycle[] = {RowKind::kPeaked, RowKind::kMedium, RowKind::kFlat,
                                       RowKind::kMedium};
  return kCycle[row % 4];
}

void make_row(Random& rng, const std::vector<float>& prior, RowKind kind, float* out) {
  const auto vocab = static_cast<int64_t>(prior.size());
  const double noise = rng.between(1.2, 2.0);
  double bulk_max = -1e30;
  for (int64_t t = 0; t < vocab; ++t) {
    out[t] = static_cast<float>(prior[t] + noise * rng.normal());
    bulk_max = std::max(bulk_max, static_cast<double>(out[t]));
  }
  // The plausible continuations sit above the bulk: the first by `margin`,
  // the j-th lower by `slope` * ln(1 + j), a Zipf law within the candidates.
  // Their number and the margin set how peaked the row is.
  int64_t candidates = 1;
  double margin = 0.0;
  double slope = 1.0;
  switch (kind) {
    case RowKind::kPeaked:
      candidates = 1 + rng.below(2);
      margin = rng.between(9.0, 13.0);
      slope = 4.0;
      break;
    case RowKind::kMedium:
      candidates = 3 + rng.below(6);
      margin = rng.between(5.0, 8.0);
      slope = rng.between(1.5, 2.5);
      break;
    case RowKind::kFlat:
      candidates = 100 + rng.below(300);
      margin = rng.between(3.0, 5.0);
      slope = rng.between(0.8, 1.1);
      break;
  }
  candidates = std::min(candidates, vocab);
  for (int64_t j = 0; j < candidates; ++j) {
    const int64_t token = rng.below(vocab);
    const double logit =
        bulk_max + margin - slope * std::log1p(static_cast<double>(j)) + 0.3 * rng.normal();
    out[token] = static_cast<float>(std::max(logit, static_cast<double>(out[token])));
  }
  // Real logits are not centred: shift so that the top logit lands in the
  // range models typically produce.
  const double shift = rng.between(14.0, 24.0) - (bulk_max + margin);
  for (int64_t t = 0; t < vocab; ++t) out[t] = static_cast<float>(out[t] + shift);
}

}  // namespace

std::optional<LmRowKind> parse_lm_row_kind(std::string_view name) {
  if (name == "mixed") return LmRowKind::kMixed;
  if (name == "peaked") return LmRowKind::kPeaked;
  if (name == "medium") return LmRowKind::kMedium;
  if (name == "flat") return LmRowKind::kFlat;
  return std::nullopt;
}

std::vector<float> make_lm_logits(int64_t rows, int64_t vocab, LmRowKind kind, uint64_t seed) {
  Random rng(seed);
  // The shared prior: token t has frequency rank rank[t] in a fixed random
  // order, and logit -1.1 * ln(rank + 10), a Zipf-like fall-off.
  std::vector<int64_t> rank(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) rank[t] = t;
  for (int64_t t = vocab - 1; t > 0; --t) std::swap(rank[t], rank[rng.below(t + 1)]);
  std::vector<float> prior(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) {
    prior[t] = static_cast<float>(-1.1 * std::log(static_cast<double>(rank[t]) + 10.0));
  }

  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    make_row(rng, prior, kind_of_row(kind, r), logits.data() + r * vocab);
  }
  return logits;
}

}  // namespace nucleus::tools
