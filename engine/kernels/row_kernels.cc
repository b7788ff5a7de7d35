// The row passes (engine/kernels/row_kernels.h), compiled once per
// instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/kernels/block_ops.h"
#include "engine/kernels/row_kernels.h"

namespace nucleus::detail::NUCLEUS_KERNEL_ISA {

#include "engine/kernels/kernel_api.h"

using namespace block;  // NOLINT: the block helpers are this file's vocabulary

void to_float(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kFloat16: {
      using ArrH = Eigen::Array<Eigen::half, Eigen::Dynamic, 1>;
      MapF(dst, n) = Eigen::Map<const ArrH>(static_cast<const Eigen::half*>(src), n).cast<float>();
      return;
    }
    case DType::kBFloat16: {
      using ArrB = Eigen::Array<Eigen::bfloat16, Eigen::Dynamic, 1>;
      MapF(dst, n) =
          Eigen::Map<const ArrB>(static_cast<const Eigen::bfloat16*>(src), n).cast<float>();
      return;
    }
  }
}

MaxStats max_stats(const float* x, int64_t n) {
  // One read: lane-wise max (NaN-blind) with the first position of each
  // lane's max, a NaN / +inf flag and the finite count, kept in per-lane
  // registers and reduced once at the end.
  float lane_max[16];
  int32_t lane_at[16];
  int32_t lane_bad[16];
  int32_t lane_finite[16];
  for (int i = 0; i < 16; ++i) {
    lane_max[i] = -kInf;
    lane_at[i] = -1;
    lane_bad[i] = 0;
    lane_finite[i] = 0;
  }
  int64_t finite = 0;
  int64_t j = 0;
  // Segments are at most kChunk long in the engine; positions fit int32.
  while (j + 16 <= n) {
    // Counts stay below 2^31 by reducing every 2^20 elements.
    const int64_t stop = std::min(n - (n - j) % 16, j + (int64_t{1} << 20));
    for (; j < stop; j += 16) {
      for (int i = 0; i < 16; ++i) {
        const float v = x[j + i];
        const bool higher = v > lane_max[i];
        lane_max[i] = higher ? v : lane_max[i];
        lane_at[i] = higher ? static_cast<int32_t>(j + i) : lane_at[i];
        lane_bad[i] |= (v < kInf) ? 0 : 1;  // NaN or +inf
        lane_finite[i] += v > -kInf ? 1 : 0;
      }
    }
    for (int i = 0; i < 16; ++i) {
      finite += lane_finite[i];
      lane_finite[i] = 0;
    }
  }
  MaxStats st;
  int bad = 0;
  for (int i = 0; i < 16; ++i) {
    bad |= lane_bad[i];
    // The lowest position among the lanes holding the max.
    if (lane_max[i] > st.max ||
        (lane_max[i] == st.max && lane_at[i] >= 0 && (st.argmax < 0 || lane_at[i] < st.argmax))) {
      st.max = lane_max[i];
      st.argmax = lane_at[i];
    }
  }
  for (; j < n; ++j) {
    const float v = x[j];
    if (v > st.max) {
      st.max = v;
      st.argmax = j;
    }
    bad |= (v < kInf) ? 0 : 1;
    finite += v > -kInf ? 1 : 0;
  }
  // -0.0 as the max would make xmax - (+0.0) = -0.0, a distance whose sign
  // bit breaks the order of the float keys: use +0.0.
  st.max = st.max + 0.0f;
  st.finite = finite;
  if (bad) {
    for (int64_t t = 0; t < n; ++t) {
      if (!(x[t] < kInf)) {
        st.bad_at = t;
        break;
      }
    }
  }
  return st;
}

Moments moments(const Segment& s, const SetSpec& set, float d0, MomentKind kind) {
  Moments out;
  alignas(64) float d[kBlock];
  alignas(64) float w[kBlock];
  alignas(64) float e[kBlock];
  alignas(64) float t[kBlock];
  const float lo = set.dlo, hi = set.dhi;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    block_distances(s.x + j0, n, set.xmax, set.scale, d);
    int64_t count = 0;
    float dmin = kInf, dmax = -kInf;
    for (int64_t j = 0; j < n; ++j) {
      const bool in = in_range(d[j], lo, hi);
      e[j] = in ? d[j] - d0 : 0.0f;
      count += in ? 1 : 0;
      dmin = std::min(dmin, in ? d[j] : kInf);
      dmax = std::max(dmax, in ? d[j] : -kInf);
    }
    out.count += count;
    out.dmin = std::min(out.dmin, dmin);
    out.dmax = std::max(out.dmax, dmax);
    if (kind == MomentKind::kEntropy) {
      block_masses(d, d, n, set, d0, w);
      for (int64_t j = 0; j < n; ++j) t[j] = w[j] * e[j];
      out.z += sum_as_double(w, n);
      out.zd += sum_as_double(t, n);
    } else {
      // Squares in double: with a tiny temperature the distances reach 1e30,
      // whose float squares would overflow.
      double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = 0; j < n; ++j) {
        const auto ej = static_cast<double>(e[j]);
        acc[j & 7] += ej * ej;
      }
      out.sd += sum_as_double(e, n);
      out.sd2 += ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  }
  return out;
}

double sum_mass(const Segment& s, const SetSpec& set, float k0, int64_t* count,
                double* block_sums) {
  double total = 0.0;
  int64_t members = 0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    int64_t in_block = 0;
    const double block_sum = block_masses_from_values(s.x + j0, n, set, k0, nullptr, &in_block);
    members += in_block;
    if (block_sums) block_sums[j0 / kBlock] = block_sum;
    total += block_sum;
  }
  *count = members;
  return total;
}

float min_key(const Segment& s, const SetSpec& set) {
  float best = kInf;
  BlockKeys b;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    b.compute(s.x + j0, n, set);
    const float lo = set.dlo, hi = set.dhi;
    for (int64_t j = 0; j < n; ++j) best = std::min(best, in_range(b.d[j], lo, hi) ? b.k[j] : kInf);
  }
  return best;
}

int64_t count_key_below(const Segment& s, const SetSpec& set, float key) {
  int64_t count = 0;
  BlockKeys b;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    b.compute(s.x + j0, n, set);
    const float lo = set.dlo, hi = set.dhi;
    for (int64_t j = 0; j < n; ++j) count += (in_range(b.d[j], lo, hi) & (b.k[j] < key)) ? 1 : 0;
  }
  return count;
}

int64_t walk(const Segment& s, const SetSpec& set, float k0, const double* block_sums,
             double cum_before, double target) {
  double cum = cum_before;
  int64_t last_block = -1;
  int64_t b = 0;
  const int64_t blocks = block_count(s.n);
  for (; b < blocks; ++b) {
    if (block_sums[b] <= 0.0) continue;
    last_block = b;
    if (cum + block_sums[b] >= target) break;
    cum += block_sums[b];
  }
  if (last_block < 0) return -1;
  if (b == blocks) b = last_block;  // rounding: settle for the last block of positive mass
  alignas(64) float w[kBlock];
  const int64_t j0 = b * kBlock;
  const int64_t n = std::min(kBlock, s.n - j0);
  int64_t unused = 0;
  block_masses_from_values(s.x + j0, n, set, k0, w, &unused);
  int64_t last_positive = -1;
  for (int64_t j = 0; j < n; ++j) {
    if (w[j] <= 0.0f) continue;
    cum += w[j];
    last_positive = j0 + j;
    if (cum >= target) return j0 + j;
  }
  return last_positive;
}

void write_probs(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out) {
  const auto scale = static_cast<float>(inv_z);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    float* o = out + j0;
    int64_t unused = 0;
    block_masses_from_values(s.x + j0, n, set, k0, o, &unused);
    for (int64_t j = 0; j < n; ++j) o[j] *= scale;
  }
}

int64_t gather_le(const Segment& s, const SetSpec& set, float c, KeyToken* out) {
  int64_t count = 0;
  Collected hits;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    hits.collect(s.x + j0, n, set, -kInf, c);
    for (int64_t i = 0; i < hits.n; ++i)
      out[count++] = KeyToken{hits.k[i], s.token(j0 + hits.idx[i])};
  }
  return count;
}

int64_t compact(const Segment& s, const SetSpec& set, float* cx, int32_t* ci) {
  int64_t count = 0;
  Collected hits;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = s.x + j0;
    hits.collect(x, n, set, -kInf, kInf);
    for (int64_t i = 0; i < hits.n; ++i) {
      cx[count] = x[hits.idx[i]];
      ci[count] = s.token(j0 + hits.idx[i]);
      ++count;
    }
  }
  return count;
}

}  // namespace nucleus::detail::NUCLEUS_KERNEL_ISA

namespace nucleus::detail {

namespace k = NUCLEUS_KERNEL_ISA;
extern const Kernels NUCLEUS_KERNEL_TABLE;
const Kernels NUCLEUS_KERNEL_TABLE = {
    Isa::NUCLEUS_KERNEL_ISA_ENUM,
    &k::to_float,
    &k::max_stats,
    &k::moments,
    &k::sum_mass,
    &k::min_key,
    &k::count_key_below,
    &k::walk,
    &k::write_probs,
    &k::gather_le,
    &k::compact,
    &k::key_histogram,
    &k::sample_keys,
    &k::gather_below,
    &k::gather_bucket,
    &k::entry_masses,
    &k::key_bounds,
};

}  // namespace nucleus::detail
