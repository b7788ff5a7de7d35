// One row, start to finish (SPEC sections 2-6): processors, greedy or
// temperature and filters, the final distribution, draws and logprobs.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "engine/kernels/row_kernels.h"
#include "engine/row/processors.h"
#include "engine/row/runner.h"
#include "engine/row/select.h"
#include "nucleus/sampling.h"

namespace nucleus::detail {

struct RowInput {
  const void* data = nullptr;  // the row's first element
  DType dtype = DType::kFloat32;
  int64_t vocab = 0;
  // The row this thread samples next (same dtype and vocab), or null: the
  // exp passes bring it into this core's L2 as they go (Segment::ahead).
  const void* next = nullptr;
};

// Buffers one row needs, sized on first use and reused afterwards, so the
// steady state allocates nothing.
struct RowScratch {
  AlignedVector<float> raw_buf;       // the widened input row (f16 / bf16 only)
  AlignedVector<float> work_buf;      // the processed row (when processors apply)
  AlignedVector<float> cand_x;        // the compacted kept set: values...
  std::vector<int32_t> cand_idx;      // ...and token ids, in token order
  std::vector<float> left_out_x;      // the tokens a mask leaves out (raw_normaliser)...
  std::vector<int32_t> left_out_idx;  // ...and their ids
  std::vector<float> raw_block_max;   // the scan's largest x per pass block: raw row...
  std::vector<float> row_block_max;   // ...and processed row (when processors apply)
  std::vector<float> row_samples;     // the processed row's sample (Segment::sample)
  std::vector<Segment> row_segs;
  std::vector<Segment> raw_segs;
  std::vector<Segment> cand_segs;
  std::vector<Moments> moments;
  std::vector<MaxStats> max_stats;
  std::vector<MaxStats> processed_stats;  // the scan after the processors, per segment
  std::vector<uint8_t> touched_blocks;    // RowChanges: per pass block...
  std::vector<int64_t> chunk_lost;        // ...and per chunk
  std::vector<int64_t> chunk_bad;
  std::vector<double> seg_mass;
  std::vector<double> block_mass;        // per pass block, segments one after another
  std::vector<int64_t> seg_block_start;  // each segment's first entry in block_mass
  std::vector<double> seg_factor;        // full sampling: each segment's frame in the row's
  std::vector<double> seg_allowed;       // greedy under a mask alone: the allowed tokens' mass
  std::vector<int64_t> seg_count;
  std::vector<float> seg_min;
  std::vector<KeyToken> top;
  SelectScratch select;
  PenaltyScratch penalties;
  std::vector<float> verify_p;             // verification: one target distribution
  std::vector<int32_t> verify_history;     // verification: history plus accepted drafts
  std::vector<RowInput> verify_positions;  // verification: the row's target rows

  // Sizes every vocabulary-sized buffer for rows of `vocab` tokens (grown,
  // never shrunk): after this, no row of that size allocates in this scratch.
  void prepare(int64_t vocab);
  // Room for verification's lists: `positions` row inputs and a history of
  // `history` tokens (grown, never shrunk).
  void prepare_verify(int64_t positions, int64_t history);
};

// Whether a row with these parameters passes over its whole row after the
// scan (full sampling, top-p, typical-p), rather than over a few blocks
// (greedy, top-k and min-p rows: light rows). Only such a row reads the next
// row ahead (RowInput::next).
inline bool is_light_row(const SamplingParams& p, int64_t vocab) {
  return p.temperature == 0.0f || (p.top_k > 0 && p.top_k < vocab) || p.min_p > 0.0f;
}

// Samples one row into `result` (cleared first). `seed` is the row's resolved
// seed. Row errors go to result.status.
void sample_row(const RowInput& input, const RowRequest& request, uint64_t seed, int64_t row,
                RowResult& result, RowScratch& scratch, const Runner& run);

// Writes the row's final distribution to out[0, vocab); on a row error
// returns it and leaves out zero. A greedy row (temperature 0) writes the
// softmax of its processed logits (what Engine::probs reports), or with
// greedy_one_hot the distribution sample_row draws from: all the mass on
// its argmax (verification's target).
Status probs_row(const RowInput& input, const RowRequest& request, int64_t row, float* out,
                 RowScratch& scratch, const Runner& run, bool greedy_one_hot = false);

}  // namespace nucleus::detail
