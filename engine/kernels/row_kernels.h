// Vectorised passes over one segment of a row (Eigen). A segment is either a
// fixed-size chunk of the row or the compacted candidate set; every pass
// visits only the segment's members of the current kept set.
//
// Filter-space distance: d = (x_max - x) * scale >= 0, so the most probable
// token has d = 0. A token belongs to the set iff dlo <= d <= dhi (a token
// whose d is +inf, e.g. a masked one, never does). Masses are exp(-(d - d0))
// for a shift d0 (the set's smallest d), exactly 0 past kUnderflow.
#pragma once

#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "nucleus/sampling.h"

namespace nucleus::detail {

// Rows longer than this are split into chunks of exactly this many tokens;
// partial results combine in chunk order, so no result depends on threads.
inline constexpr int64_t kChunk = 16384;
// exp(-kUnderflow) is float32's smallest normal number: masses past it are 0.
inline constexpr float kUnderflow = 87.33654f;
inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr float kMaxFloat = std::numeric_limits<float>::max();

struct Segment {
  const float* x = nullptr;
  const int32_t* idx = nullptr;  // null: token = base + j
  int64_t n = 0;
  int64_t base = 0;
  int32_t token(int64_t j) const { return idx ? idx[j] : static_cast<int32_t>(base + j); }
};

// Which tokens belong to the set, and the key that orders them.
struct SetSpec {
  float xmax = 0.0f;
  float scale = 1.0f;  // filter space: d = (xmax - x) * scale
  float dlo = 0.0f;    // inclusive bounds on d
  float dhi = kMaxFloat;
  float key_scale = 1.0f;  // ranking space: key = (xmax - x) * key_scale
};

// Widens f16 / bf16 (or copies f32) into dst.
void to_float(const void* src, DType dtype, int64_t n, float* dst);

struct MaxStats {
  float max = -kInf;
  int64_t bad_at = -1;  // first NaN or +inf, relative to the segment
  int64_t finite = 0;   // entries > -inf
  int64_t argmax = -1;  // the first position of the max (-1 when every entry is -inf)
};
MaxStats max_stats(const float* x, int64_t n);

struct Moments {
  int64_t count = 0;
  double z = 0;    // Σ m
  double zd = 0;   // Σ m (d - d0)
  double sd = 0;   // Σ (d - d0)
  double sd2 = 0;  // Σ (d - d0)^2
  float dmin = kInf;
  float dmax = -kInf;
  void add(const Moments& o);
};
enum class MomentKind {
  kEntropy,  // count, z and zd (typical-p)
  kSpread,   // count, sd and sd2 (top-nσ); no exp
};
Moments moments(const Segment& s, const SetSpec& set, float d0, MomentKind kind);

// Blocks of this many tokens are the unit of every pass: partial sums are
// formed per block and added in block order.
inline constexpr int64_t kPassBlock = 512;
inline int64_t block_count(int64_t n) { return (n + kPassBlock - 1) / kPassBlock; }

// Σ exp(-(key - k0)) over members in the ranking space, in block order; the
// number of members goes to *count and, when block_sums is not null, each
// block's sum to block_sums[b].
double sum_mass(const Segment& s, const SetSpec& set, float k0, int64_t* count, double* block_sums);
// Smallest key over members (kInf when none).
float min_key(const Segment& s, const SetSpec& set);
// Members whose key is strictly below `key`.
int64_t count_key_below(const Segment& s, const SetSpec& set, float key);
// Inverse-CDF walk: the first member (segment-relative index) at which the
// running mass cum_before + Σ exp(-(key - k0)) reaches target, skipping whole
// blocks by their sums from sum_mass; when rounding keeps it short, the last
// member of positive mass; -1 if there is none.
int64_t walk(const Segment& s, const SetSpec& set, float k0, const double* block_sums,
             double cum_before, double target);
// out[j] = member ? exp(-(key - k0)) * inv_z : 0 for the segment's tokens
// (row segments only: out points at the segment's first token).
void write_probs(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out);
// Appends (key, token) of every member whose key is <= c.
void gather_le(const Segment& s, const SetSpec& set, float c,
               std::vector<std::pair<float, int32_t>>& out);
// Copies the members (value and token id) to cx / ci; returns how many.
int64_t compact(const Segment& s, const SetSpec& set, float* cx, int32_t* ci);

}  // namespace nucleus::detail
