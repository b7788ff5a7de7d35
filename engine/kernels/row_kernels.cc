#include "engine/kernels/row_kernels.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>

namespace nucleus::detail {
namespace {

using ArrF = Eigen::Array<float, Eigen::Dynamic, 1>;
using ConstMapF = Eigen::Map<const ArrF>;
using MapF = Eigen::Map<ArrF>;

// Blocks small enough to stay in L1 between the vector pass and the scalar
// walk that sometimes follows it.
constexpr int64_t kBlock = 512;

// Gathers a block's values: contiguous for row segments, through the index
// for candidate segments (whose values are stored contiguously too).
inline const float* block_values(const Segment& s, int64_t j0) { return s.x + j0; }

// d for a block, in filter space and ranking space.
inline void block_distances(const float* x, int64_t n, float xmax, float scale, float* d) {
  MapF(d, n) = (xmax - ConstMapF(x, n)) * scale;
}

// Member flags as 0/1 floats.
inline auto members(const MapF& d, const SetSpec& set) {
  return (d >= set.dlo && d <= set.dhi);
}

}  // namespace

void to_float(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      std::copy_n(static_cast<const float*>(src), n, dst);
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
  MaxStats st;
  if (n <= 0) return st;
  ConstMapF a(x, n);
  const float m = a.maxCoeff<Eigen::PropagateNaN>();
  if (std::isnan(m) || m == kInf) {
    for (int64_t j = 0; j < n; ++j) {
      if (std::isnan(x[j]) || x[j] == kInf) {
        st.bad_at = j;
        break;
      }
    }
  }
  st.max = m;
  st.finite = (a > -kInf).count();
  return st;
}

void Moments::add(const Moments& o) {
  count += o.count;
  z += o.z;
  zd += o.zd;
  sd += o.sd;
  sd2 += o.sd2;
  dmin = std::min(dmin, o.dmin);
  dmax = std::max(dmax, o.dmax);
}

Moments moments(const Segment& s, const SetSpec& set, float d0) {
  Moments out;
  alignas(64) float dbuf[kBlock];
  alignas(64) float mbuf[kBlock];
  alignas(64) float ebuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    block_distances(block_values(s, j0), n, set.xmax, set.scale, dbuf);
    MapF d(dbuf, n), m(mbuf, n), e(ebuf, n);
    const auto in = members(d, set);
    // e = d - d0 for members, 0 otherwise (so sums over e only see members).
    e = in.select(d - d0, 0.0f);
    m = (in && e <= kUnderflow).select((-e).exp(), 0.0f);
    out.count += in.count();
    out.z += m.cast<double>().sum();
    out.zd += (m.cast<double>() * e.cast<double>()).sum();
    out.sd += e.cast<double>().sum();
    out.sd2 += e.cast<double>().square().sum();
    out.dmin = std::min(out.dmin, in.select(d, kInf).minCoeff());
    out.dmax = std::max(out.dmax, in.select(d, -kInf).maxCoeff());
  }
  return out;
}

double sum_mass(const Segment& s, const SetSpec& set, float k0, int64_t* count) {
  double total = 0.0;
  int64_t members_seen = 0;
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    MapF d(dbuf, n), k(kbuf, n);
    const auto e = k - k0;
    const auto in = members(d, set);
    members_seen += in.count();
    total += (in && e <= kUnderflow).select((-e).exp(), 0.0f).cast<double>().sum();
  }
  *count = members_seen;
  return total;
}

float min_key(const Segment& s, const SetSpec& set) {
  float best = kInf;
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    MapF d(dbuf, n), k(kbuf, n);
    best = std::min(best, members(d, set).select(k, kInf).minCoeff());
  }
  return best;
}

int64_t count_key_below(const Segment& s, const SetSpec& set, float key) {
  int64_t count = 0;
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    MapF d(dbuf, n), k(kbuf, n);
    count += (members(d, set) && k < key).count();
  }
  return count;
}

int64_t find_first_equal(const float* x, int64_t n, float v) {
  for (int64_t j0 = 0; j0 < n; j0 += kBlock) {
    const int64_t len = std::min(kBlock, n - j0);
    if ((ConstMapF(x + j0, len) == v).any()) {
      for (int64_t j = j0; j < j0 + len; ++j) {
        if (x[j] == v) return j;
      }
    }
  }
  return -1;
}

int64_t walk(const Segment& s, const SetSpec& set, float k0, double cum_before, double target) {
  double cum = cum_before;
  int64_t last_positive = -1;
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  alignas(64) float wbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    MapF d(dbuf, n), k(kbuf, n), w(wbuf, n);
    w = (members(d, set) && (k - k0) <= kUnderflow).select((k0 - k).exp(), 0.0f);
    const double block_sum = w.cast<double>().sum();
    if (block_sum <= 0.0) continue;
    if (cum + block_sum < target) {
      cum += block_sum;
      for (int64_t j = n - 1; j >= 0; --j) {
        if (wbuf[j] > 0.0f) {
          last_positive = j0 + j;
          break;
        }
      }
      continue;
    }
    // The crossing lies in this block (up to rounding): walk it in order.
    for (int64_t j = 0; j < n; ++j) {
      if (wbuf[j] <= 0.0f) continue;
      cum += wbuf[j];
      last_positive = j0 + j;
      if (cum >= target) return j0 + j;
    }
  }
  return last_positive;
}

void write_probs(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out) {
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  const auto scale = static_cast<float>(inv_z);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    MapF d(dbuf, n), k(kbuf, n);
    MapF(out + j0, n) =
        (members(d, set) && (k - k0) <= kUnderflow).select((k0 - k).exp() * scale, 0.0f);
  }
}

void gather_le(const Segment& s, const SetSpec& set, float c,
               std::vector<std::pair<float, int32_t>>& out) {
  alignas(64) float dbuf[kBlock];
  alignas(64) float kbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    block_distances(x, n, set.xmax, set.key_scale, kbuf);
    for (int64_t j = 0; j < n; ++j) {
      if (dbuf[j] >= set.dlo && dbuf[j] <= set.dhi && kbuf[j] <= c) {
        out.emplace_back(kbuf[j], s.token(j0 + j));
      }
    }
  }
}

int64_t compact(const Segment& s, const SetSpec& set, float* cx, int32_t* ci) {
  int64_t count = 0;
  alignas(64) float dbuf[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    const float* x = block_values(s, j0);
    block_distances(x, n, set.xmax, set.scale, dbuf);
    for (int64_t j = 0; j < n; ++j) {
      if (dbuf[j] >= set.dlo && dbuf[j] <= set.dhi) {
        cx[count] = x[j];
        ci[count] = s.token(j0 + j);
        ++count;
      }
    }
  }
  return count;
}

}  // namespace nucleus::detail
