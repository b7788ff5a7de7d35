// Threshold selection without sorting the vocabulary (SPEC section 8).
//
// Every filter of SPEC section 3 keeps the tokens whose key (how little the
// filter prefers them) is at most some value c: c is the smallest key at which
// the cumulative weight of {key <= c} reaches a target. top-k and min_keep
// count tokens (weight 1); top-p and typical-p add probability mass. The
// selection is a radix select on the float bits of the key (non-negative
// floats order like their bit patterns): a weighted histogram of the top bits
// over the whole set finds the bucket that holds the boundary, and only that
// bucket's members are refined, never the vocabulary.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "engine/row/runner.h"

namespace nucleus::detail {

enum class KeyKind {
  kDistance,  // key = (xmax - x) * key_scale
  kTypical,   // key = |(d - d0) - mu| (how atypical), +inf when the mass is 0
};

struct KeyRule {
  KeyKind kind = KeyKind::kDistance;
  bool mass_weight = false;  // weight exp(-(d - d0)) (0 past kUnderflow), else 1
  float d0 = 0.0f;           // mass shift, in filter space
  double mu = 0.0;           // typical: the entropy point, in (d - d0) units
  // The target is a fraction of the set's total weight (top-p: p of the mass),
  // which the histogram pass totals itself.
  bool target_is_fraction = false;
};

struct SelectResult {
  bool found = false;    // false: the whole set's weight stays below the target
  float key = 0.0f;      // the threshold c
  int64_t count_le = 0;  // members with key <= c
  double total = -1.0;   // the set's total weight, when the histogram pass formed it
};

struct SelectEntry {
  float key;
  float weight;
};

// A member gathered by the small-target path, kept so that a filter which
// leaves only these can compact the set without another pass over the row.
struct GatheredToken {
  float key;
  float x;
  int32_t token;
};

struct SelectScratch {
  std::vector<uint32_t> counts;                       // per segment × level-1 buckets
  std::vector<double> masses;                         // per segment × level-1 buckets
  std::vector<int64_t> offsets;                       // per segment
  std::vector<int64_t> seg_chosen;                    // per segment: members in the chosen bucket
  std::vector<SelectEntry> list;                      // the boundary bucket's members
  std::vector<float> samples;                         // small-target path
  std::vector<std::vector<GatheredToken>> seg_lists;  // small-target path, per segment
  // After a small-target select: every member with key <= the returned key is
  // in seg_lists (in token order, segment by segment).
  bool gathered = false;
  int64_t seg_lists_used = 0;  // seg_lists[0, used) belong to the last select
  std::vector<uint32_t> sub_counts;
  std::vector<double> sub_masses;
};

SelectResult weighted_select(std::span<const Segment> segments, const SetSpec& set,
                             const KeyRule& rule, double target, SelectScratch& scratch,
                             const Runner& run);

// The smallest and largest filter-space d among members whose key is <= c.
struct KeyBounds {
  float dmin = kInf;
  float dmax = -kInf;
  int64_t count = 0;
};
KeyBounds key_bounds(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                     float c);

}  // namespace nucleus::detail
