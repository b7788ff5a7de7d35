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

struct SelectResult {
  bool found = false;    // false: the whole set's weight stays below the target
  float key = 0.0f;      // the threshold c
  int64_t count_le = 0;  // members with key <= c
  double total = -1.0;   // the set's total weight, when the histogram pass formed it
};

struct SelectScratch {
  std::vector<uint32_t> counts;      // per segment × level-1 buckets
  std::vector<double> masses;        // per segment × level-1 buckets
  std::vector<int64_t> offsets;      // per segment
  std::vector<int64_t> seg_chosen;   // per segment: members in the chosen bucket
  std::vector<SelectEntry> list;     // the boundary bucket's members
  std::vector<SelectEntry> sorted;   // ... in key order, at the end
  std::vector<float> samples;        // small-target path
  std::vector<float> block_maxima;   // small-target and small-nucleus paths
  std::vector<uint32_t> block_keys;  // block_max_bound's order keys of those
  // typical-p's block maxima as (d - d0, mass) (typical_set_looks_small,
  // small_typical_select).
  std::vector<SelectEntry> typical_maxima;
  // Small-target path: segment s gathers into gathered_tokens[gathered_at[s],
  // + gathered_count[s]), room for all its tokens. Grown, never shrunk.
  std::vector<GatheredToken> gathered_tokens;
  std::vector<int64_t> gathered_at;
  std::vector<int64_t> gathered_count;
  // After a small-target select: every member with key <= the returned key is
  // in the gathered lists (in token order, segment by segment).
  bool gathered = false;
  float gathered_bound = 0.0f;    // ... and every member with key <= this is there
  int64_t gathered_segments = 0;  // segments [0, this) belong to the last select
  std::vector<uint32_t> sub_counts;
  std::vector<double> sub_masses;
  std::vector<double> seg_total;  // small-nucleus and pivot paths: each segment's weight
  // Pivot path: every token's key and weight (kept for key_bounds: valid
  // while keys_stored, for the segments at keys_of), and the shrinking
  // interval's entries.
  AlignedVector<float> keys;
  AlignedVector<float> weights;
  AlignedVector<float> interval_keys;
  AlignedVector<float> interval_weights;
  bool keys_stored = false;
  const Segment* keys_of = nullptr;
  // typical_moments stored each token's d - d0 in keys and its mass in
  // weights, for the segments at prepared_of (total mass prepared_total).
  bool prepared = false;
  const Segment* prepared_of = nullptr;
  double prepared_total = 0.0;
  std::vector<Moments> seg_moments;
  std::vector<float> pivot_sample;
  std::vector<uint32_t> sample_order;  // kth_smallest's order keys

  std::span<const GatheredToken> gathered_list(int64_t s) const {
    return {gathered_tokens.data() + gathered_at[static_cast<size_t>(s)],
            static_cast<size_t>(gathered_count[static_cast<size_t>(s)])};
  }
};

SelectResult weighted_select(std::span<const Segment> segments, const SetSpec& set,
                             const KeyRule& rule, double target, SelectScratch& scratch,
                             const Runner& run);

// A key bound (key_scale) holding at least `target` members, from the scan's
// block maxima: the target-th largest maximum among the blocks that may hold
// members (*kth, when given; those maxima are left in scratch.block_maxima,
// in block order). False when a segment carries no maxima or too few blocks
// may hold members; with `fewer`, then the smallest of those maxima instead
// (*used: how many maxima the bound holds).
bool block_max_bound(std::span<const Segment> segments, const SetSpec& set, double target,
                     SelectScratch& scratch, const Kernels& k, float* bound, bool fewer = false,
                     size_t* used = nullptr, float* kth = nullptr);

// typical-p's entropy moments over a large set (as the moments pass), in a
// pass that also stores every token's d - d0 and mass for the select that
// follows, which then only turns them into keys. False (nothing done) for
// sets too small for the pivot select.
bool typical_moments(std::span<const Segment> segments, const SetSpec& set, float d0,
                     SelectScratch& scratch, const Runner& run, Moments* moments);

// Whether small_typical_select will likely decide for these segments (from
// the block maxima alone); typical-p then forms its moments without storing.
bool typical_set_looks_small(std::span<const Segment> segments, const SetSpec& set, float d0,
                             double fraction, SelectScratch& scratch, const Runner& run);

// typical-p whose kept set lies among a few tokens near the top (peaked
// rows): the kept set's bounds for `target`, from the scan's block maxima
// and a few blocks of the row. Only after typical_set_looks_small returned
// true for these segments, set and d0: it uses the maxima that call listed.
// False (nothing decided) otherwise.
bool small_typical_select(std::span<const Segment> segments, const SetSpec& set,
                          const KeyRule& rule, double target, SelectScratch& scratch,
                          const Runner& run, KeyBounds& bounds);

// typical-p over a large set whose kept set is not among a few blocks
// (flat rows): one pass forms the entropy moments and gathers the members
// up to a d bound that an estimate (the block maxima, as
// typical_set_looks_small listed them: only after that call for these
// segments, set and d0, and a sample of the row) places past the kept set;
// the kept set's bounds are found among them and checked exactly (false,
// nothing decided, when the bound fell short or gathered too many). *total
// receives the set's mass Σ exp(-(d - d0)) when the pass ran. On success
// the gathered lists hold every kept token (SelectScratch::gathered).
bool flat_typical_select(std::span<const Segment> segments, const SetSpec& set, float d0,
                         double fraction, SelectScratch& scratch, const Runner& run,
                         KeyBounds& bounds, double* total);

// The smallest and largest filter-space d among members whose key is <= c,
// from the keys the last select stored when it ran on these segments with
// this set and rule (the caller's word), else from the values.
KeyBounds key_bounds(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                     float c, const SelectScratch& scratch, const Runner& run);

}  // namespace nucleus::detail
