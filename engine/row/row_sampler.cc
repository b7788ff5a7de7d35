#include "engine/row/row_sampler.h"

#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <span>
#include <string>

#include "engine/row/philox.h"

namespace nucleus::detail {
namespace {

enum class Filter { kTopK, kTopP, kMinP, kTypical, kTopNSigma };

// SPEC section 4: the filter order of each preset; filters a preset does not
// list run after the listed ones, in the hf order.
std::span<const Filter> filter_order(Preset preset) {
  static constexpr Filter kHF[] = {Filter::kTopK, Filter::kTopP, Filter::kMinP, Filter::kTypical,
                                   Filter::kTopNSigma};
  static constexpr Filter kVLLM[] = {Filter::kMinP, Filter::kTopK, Filter::kTopP, Filter::kTypical,
                                     Filter::kTopNSigma};
  static constexpr Filter kLlama[] = {Filter::kTopNSigma, Filter::kTopK, Filter::kTypical,
                                      Filter::kTopP, Filter::kMinP};
  switch (preset) {
    case Preset::kVLLM:
      return kVLLM;
    case Preset::kLlamaCpp:
      return kLlama;
    case Preset::kHF:
      break;
  }
  return kHF;
}

// The largest float that is <= v (thresholds are computed in double and
// compared with float distances exactly).
float float_at_most(double v) {
  if (v >= static_cast<double>(kMaxFloat)) return kMaxFloat;
  auto f = static_cast<float>(v);
  if (static_cast<double>(f) > v) f = std::nextafter(f, -kInf);
  return f;
}

std::string row_prefix(int64_t row) { return "row " + std::to_string(row) + ": "; }

// The row's chunks (x null: a row whose values are not kept, for the scan's
// bookkeeping only); `bmax` (one entry per pass block of the row) and, when
// given, `samples` (Segment::sample) are filled by the scan.
void make_segments(const float* x, int64_t vocab, std::vector<float>& bmax,
                   std::vector<Segment>& segs, std::vector<float>* samples = nullptr) {
  const int64_t n = (vocab + kChunk - 1) / kChunk;
  bmax.resize(static_cast<size_t>(block_count(vocab)));
  if (samples) samples->resize(static_cast<size_t>(n * sample_count(kChunk)));
  segs.resize(static_cast<size_t>(n));
  for (int64_t s = 0; s < n; ++s) {
    segs[static_cast<size_t>(s)] =
        Segment{x ? x + s * kChunk : nullptr,
                nullptr,
                std::min(kChunk, vocab - s * kChunk),
                s * kChunk,
                bmax.data() + s * (kChunk / kPassBlock),
                samples ? samples->data() + s * sample_count(kChunk) : nullptr};
  }
}

// Records a segment's sample (Segment::sample, a view of `samples`, the
// buffer make_segments laid it out in) from its values, which the scan has
// just read (on the thread that scanned them, from its cache).
void record_sample(const Segment& seg, std::vector<float>& samples) {
  float* out = samples.data() + (seg.sample - samples.data());
  for (int64_t j = 0, i = 0; j < seg.n; j += kScanSampleStride, ++i) out[i] = seg.x[j];
}

// Tokens in the blocks that may hold members of the set (blocks whose
// maximum rules them out are skipped by every pass); all of them for
// segments without block maxima.
int64_t live_tokens(std::span<const Segment> segs, const SetSpec& set) {
  int64_t tokens = 0;
  for (const Segment& seg : segs) {
    if (!seg.bmax) {
      tokens += seg.n;
      continue;
    }
    for (int64_t b = 0; b < block_count(seg.n); ++b) {
      if (block_may_hold_members(seg.bmax[b], set)) {
        tokens += std::min(kPassBlock, seg.n - b * kPassBlock);
      }
    }
  }
  return tokens;
}

// Σ exp(x - xmax) over the processed row (the whole row at temperature 1,
// xmax its max); z is -1 until a pass forms it.
struct WholeRowZ {
  double z = -1.0;
  float xmax = 0.0f;
};

// What the pipeline leaves behind: the final distribution of a row.
struct Distribution {
  const float* raw = nullptr;  // the input row as float32
  const float* x = nullptr;    // the processed row
  float raw_max = 0.0f;
  std::span<const Segment> segs;  // the kept set's segments (row chunks or candidates)
  SetSpec set;                    // membership (filter space) and ranking (final) keys
  float k0 = 0.0f;                // the smallest final key of the set
  double z = 0.0;                 // Σ exp(-(key - k0)), when z_formed
  bool z_formed = false;          // (greedy forms z only when asked to)
  int64_t support = 0;
  bool greedy = false;
  int32_t greedy_token = -1;
  // The processed row's whole normaliser at temperature 1, when a pass
  // formed it (WholeRowZ). Unprocessed, it is the raw row's normaliser.
  WholeRowZ whole;
  // The raw row's normaliser Σ exp(x - raw_max), when the processed row's
  // pass formed it too (greedy under a mask alone); -1 otherwise.
  double raw_z = -1.0;
  // x is the input row itself, to be read only at the tokens the allowed
  // mask allows (greedy under a mask alone: nothing else is read).
  bool masked_view = false;
  // The per-segment masses were formed in each segment's own frame (full
  // sampling, RowPipeline::framed_): block sums are relative to the
  // segment's max (frame_of), and seg_mass is scaled into the row's frame by
  // the segment's factor (RowScratch::seg_factor).
  bool framed = false;
};

// Full sampling forms each chunk's masses in the same pass as the chunk's
// scan, before the row's max is known: relative to the chunk's own max,
// with the members' distances capped so that, when every finite logit is a
// member, no distance from the row's max can overflow (frame_masses). The
// cap is a quarter of the float range in both the value and the key.
SetSpec frame_of(const SetSpec& set, float seg_max) {
  SetSpec f = set;
  f.xmax = seg_max;
  f.dhi = kMaxFloat / 4 * std::min(1.0f, f.scale);
  return f;
}

class RowPipeline {
 public:
  RowPipeline(const RowInput& in, const RowRequest& req, int64_t row, RowScratch& sc,
              const Runner& run)
      : in_(in), req_(req), p_(req.params), row_(row), sc_(sc), run_(run) {}

  // Runs SPEC section 2 up to the final distribution. `need_z` asks for the
  // normaliser even when greedy.
  Status build(Distribution& dist, bool need_z);
  // Whether the caller reads the processed row only at the drawn tokens
  // (sampling, no top-N): greedy under a mask alone then reads the input
  // row under the mask instead of a masked copy (masked_greedy).
  void set_drawn_only(bool drawn_only) { drawn_only_ = drawn_only; }

  // Σ over segments of a per-segment pass, combined in segment order.
  // With keep_blocks, the per-block sums stay in the scratch for the draws.
  double mass_of(std::span<const Segment> segs, const SetSpec& set, float k0, int64_t* count,
                 bool keep_blocks = false);
  float min_key_of(std::span<const Segment> segs, const SetSpec& set);
  Moments moments_of(std::span<const Segment> segs, const SetSpec& set, float d0, MomentKind kind);
  // Sizes the per-segment mass results for segs (and the per-block sums).
  void lay_out_masses(std::span<const Segment> segs, bool keep_blocks);

 private:
  Status check_and_widen(Distribution& dist, bool need_z);
  MaxStats changed_stats(const Segment& seg, const MaxStats& raw, float* bmax,
                         const uint8_t* touched, int64_t lost, int64_t bad_at);
  void apply_filter(Filter f, std::span<const Segment>& segs, SetSpec& set, float& d0,
                    bool& d0_known, int64_t& count, bool& count_known);
  float min_keep_key(std::span<const Segment> segs, const SetSpec& set, const KeyRule& rule,
                     float c, int64_t* count);
  // Whether a set's mass Σ exp(-(d - d0)) is the processed row's normaliser
  // at temperature 1 (the whole row, from its max).
  bool whole_row(const SetSpec& set, float d0) const {
    return !candidates_ && set.scale == 1.0f && d0 == 0.0f && set.dlo == 0.0f &&
           set.dhi == kMaxFloat;
  }
  void note_whole_z(const SetSpec& set, float d0, double z) {
    if (whole_row(set, d0)) whole_ = WholeRowZ{z, set.xmax};
  }

  // Whether the first filter that acts (SPEC order) is top-k or min-p and
  // nothing needs the whole row's values, for a half-precision row: its
  // members can then be gathered from the few blocks that may hold them.
  bool light_half_row(bool need_z) const;
  // Whether anything reads the row's values after the scan (greedy with
  // nothing else asked for needs only its results).
  bool values_needed(bool need_z) const {
    return !(p_.temperature == 0.0f && !need_z && !p_.logprobs && p_.top_logprobs == 0 &&
             !has_processors(req_));
  }
  bool filter_acts(Filter f) const;    // whether the filter can remove a token
  const Filter* first_filter() const;  // the first that acts, in the preset's order (or null)
  // 1/T (T > 0), at most the largest float, and the scale the filters see
  // (llama.cpp's see untempered logits).
  float inverse_temperature() const {
    return static_cast<float>(
        std::min(1.0 / static_cast<double>(p_.temperature), static_cast<double>(kMaxFloat)));
  }
  float filter_scale() const {
    return p_.preset == Preset::kLlamaCpp ? 1.0f : inverse_temperature();
  }
  // A kept set this small (or smaller) is copied out of the row (compacted).
  int64_t compact_limit() const { return std::max<int64_t>(4096, in_.vocab / 8); }
  // min-p's bound on d: pi_i >= m * max pi  <=>  d_i <= d0 - ln m.
  float min_p_bound(float d0) const {
    return float_at_most(static_cast<double>(d0) - std::log(static_cast<double>(p_.min_p)));
  }
  bool gather_candidates(const MaxStats& raw);
  // Whether the row is full sampling (a temperature, no filter that acts,
  // nothing that changes the row; not llama.cpp's order, whose final scale
  // differs from the filters'): its mass pass then runs with the scan.
  bool full_sampling() const {
    return p_.temperature > 0.0f && p_.preset != Preset::kLlamaCpp && !has_processors(req_) &&
           first_filter() == nullptr;
  }
  // The framed masses of the scan's segments put in the row's frame: each
  // segment's factor exp(-(xmax - segment max) * scale) (0 past kUnderflow,
  // where the segment's own max has no mass) and the total. False (nothing
  // to use) when some finite logit fell outside its segment's frame, or a
  // segment's max lies too far from the row's: the row's frame could then
  // lose members the frames kept.
  bool frame_masses(const SetSpec& set, double* z, int64_t* count);

  // The scan also forms each segment's masses in its own frame (full_sampling).
  bool framed_ = false;
  bool drawn_only_ = false;  // (set_drawn_only)
  // Greedy under an allowed-token mask alone whose processed row is read
  // only at the drawn token: no masked copy; the scan reads the row under
  // the mask, and one mass pass forms both normalisers (greedy_masked_z).
  bool masked_greedy() const {
    if (!(drawn_only_ && p_.temperature == 0.0f && only_allowed_mask(req_))) return false;
    // (AVX2 and SSE2: the pass that sums the allowed tokens apart costs
    // more than the plain one, which a mask leaving out at most vocab / 16
    // tokens, whose raw normaliser needs no pass of its own, does not
    // repay: 3-10 % of such a row; docs/performance.md)
    if (run_.k->isa == Isa::kAVX512 || !p_.logprobs) return true;
    const int64_t vocab = in_.vocab;
    return vocab - run_.k->allowed_count(req_.allowed_mask.data(), vocab, vocab) > vocab / 16;
  }
  void greedy_masked_z(Distribution& dist);
  // The row was never widened whole: sc_.cand_segs holds the tokens that
  // can be members of the first filter's set (gather_candidates).
  bool candidates_ = false;
  WholeRowZ whole_;  // (Distribution::whole)

  const RowInput& in_;
  const RowRequest& req_;
  const SamplingParams& p_;
  int64_t row_;
  RowScratch& sc_;
  const Runner& run_;
};

Moments RowPipeline::moments_of(std::span<const Segment> segs, const SetSpec& set, float d0,
                                MomentKind kind) {
  sc_.moments.resize(segs.size());
  run_.over([&] { return live_tokens(segs, set); }, static_cast<int64_t>(segs.size()),
            [&](int64_t s) {
              sc_.moments[static_cast<size_t>(s)] =
                  run_.k->moments(segs[s], set, d0, kind, nullptr, nullptr);
            });
  Moments total;
  for (size_t s = 0; s < segs.size(); ++s) total.add(sc_.moments[s]);
  return total;
}

void RowPipeline::lay_out_masses(std::span<const Segment> segs, bool keep_blocks) {
  sc_.seg_mass.resize(segs.size());
  sc_.seg_count.resize(segs.size());
  if (keep_blocks) {
    sc_.seg_block_start.resize(segs.size() + 1);
    sc_.seg_block_start[0] = 0;
    for (size_t s = 0; s < segs.size(); ++s) {
      sc_.seg_block_start[s + 1] = sc_.seg_block_start[s] + block_count(segs[s].n);
    }
    sc_.block_mass.resize(static_cast<size_t>(sc_.seg_block_start.back()));
  }
}

double RowPipeline::mass_of(std::span<const Segment> segs, const SetSpec& set, float k0,
                            int64_t* count, bool keep_blocks) {
  lay_out_masses(segs, keep_blocks);
  run_.over([&] { return live_tokens(segs, set); }, static_cast<int64_t>(segs.size()),
            [&](int64_t s) {
              const auto i = static_cast<size_t>(s);
              sc_.seg_mass[i] = run_.k->sum_mass(
                  segs[i], set, k0, count ? &sc_.seg_count[i] : nullptr,
                  keep_blocks ? sc_.block_mass.data() + sc_.seg_block_start[i] : nullptr);
            });
  double z = 0.0;
  int64_t c = 0;
  for (size_t s = 0; s < segs.size(); ++s) {
    z += sc_.seg_mass[s];
    if (count) c += sc_.seg_count[s];
  }
  if (count) *count = c;
  return z;
}

float RowPipeline::min_key_of(std::span<const Segment> segs, const SetSpec& set) {
  sc_.seg_min.resize(segs.size());
  run_.serial(static_cast<int64_t>(segs.size()), [&](int64_t s) {
    sc_.seg_min[static_cast<size_t>(s)] = run_.k->min_key(segs[s], set);
  });
  float m = kInf;
  for (float v : sc_.seg_min) m = std::min(m, v);
  return m;
}

// A processed segment's scan from the scan of the row before the changes
// (`raw`: the input's, or its masked copy's) and the noted changes
// (RowChanges; seg.bmax already holds the block maxima as changes raised
// them): blocks whose max a change touched are scanned again, and the max's
// first position is looked for in the first block that reaches it. The same
// results as scanning the changed segment.
MaxStats RowPipeline::changed_stats(const Segment& seg, const MaxStats& raw, float* bmax,
                                    const uint8_t* touched, int64_t lost, int64_t bad_at) {
  MaxStats st;
  st.finite = raw.finite - lost;
  st.bad_at = bad_at;
  float max = -kInf;
  int64_t max_block = -1;
  MaxStats in_max_block;  // the max block's own scan, when it was scanned again
  bool max_block_scanned = false;
  for (int64_t b = 0; b < block_count(seg.n); ++b) {
    const int64_t j0 = b * kPassBlock;
    MaxStats in_block;
    if (touched[b]) {
      in_block = run_.k->max_stats(seg.x + j0, std::min(kPassBlock, seg.n - j0), bmax + b);
    }
    if (bmax[b] > max) {
      max = bmax[b];
      max_block = b;
      max_block_scanned = touched[b] != 0;
      in_max_block = in_block;
    }
  }
  if (max_block >= 0) {
    const int64_t j0 = max_block * kPassBlock;
    if (!max_block_scanned) {
      float unused = 0.0f;
      in_max_block = run_.k->max_stats(seg.x + j0, std::min(kPassBlock, seg.n - j0), &unused);
    }
    st.max = in_max_block.max;
    st.argmax = j0 + in_max_block.argmax;
  }
  return st;
}

Status RowPipeline::check_and_widen(Distribution& dist, bool need_z) {
  const int64_t vocab = in_.vocab;
  sc_.prepare(vocab);
  // NaN and +inf are row errors wherever they are, masked or not: the scan
  // (per segment, combined in segment order) finds them with the max.
  auto combine = [&](std::span<const Segment> segs, const std::vector<MaxStats>& stats) {
    MaxStats total;
    for (size_t s = 0; s < segs.size(); ++s) {
      const MaxStats& m = stats[s];
      if (total.bad_at < 0 && m.bad_at >= 0) total.bad_at = segs[s].base + m.bad_at;
      if (m.argmax >= 0 && (m.max > total.max || total.argmax < 0)) {
        total.max = m.max;
        total.argmax = segs[s].base + m.argmax;  // segments in order: the first max wins
      }
      total.finite += m.finite;
    }
    return total;
  };
  // The input row's scan, segment by segment (sc_.raw_segs): its max, block
  // maxima and finiteness, a half row widened in the same read (into dst,
  // when the widened row is kept), the sample recorded where the segments
  // ask for one. (With `stats` false the row is only widened into dst, its
  // scan's results being known already; nothing is returned then.)
  // The scan is light: it runs on this thread when what follows is light
  // too (greedy; top-k and min-p leave most blocks unread), and is split
  // like the exp passes that follow otherwise (typical-p's entropy pass
  // too), so that each thread finds its chunks in its own cache. (A half
  // row's lean scan, whose widened row is not kept, stays on this thread
  // too: on one 128256 row it takes ~3 us, about what one fork and join
  // costs on the development machine, and a bfloat16 greedy row on two
  // threads took 5.0 us against 3.0 on one when it was split.)
  const bool light_row = is_light_row(p_, vocab);
  // Full sampling's mass pass, in each segment's own frame, run on the
  // segment just scanned (its values in this core's L1 and L2): one fork
  // and join a row instead of two when the row is split.
  // (the set build() starts the filters from: every token, both scales the
  // filters'; full sampling's stays so)
  SetSpec whole_row;
  whole_row.scale = whole_row.key_scale = filter_scale();
  auto frame_pass = [&](int64_t s) {
    const auto i = static_cast<size_t>(s);
    const MaxStats& st = sc_.max_stats[i];
    Segment seg = sc_.raw_segs[i];
    double* blocks = sc_.block_mass.data() + sc_.seg_block_start[i];
    if (st.finite == 0 || st.bad_at >= 0) {  // (no frame; a bad row is dropped)
      sc_.seg_mass[i] = 0.0;
      sc_.seg_count[i] = 0;
      std::fill_n(blocks, block_count(seg.n), 0.0);
      return;
    }
    if (in_.next) {  // (as the row's exp passes do below)
      const int esize = dtype_size(in_.dtype);
      seg.ahead = static_cast<const char*>(in_.next) + seg.base * esize;
      seg.ahead_esize = esize;
    }
    sc_.seg_mass[i] =
        run_.k->sum_mass(seg, frame_of(whole_row, st.max), 0.0f, &sc_.seg_count[i], blocks);
  };
  // (Split, the frame pass runs with each segment's scan, on its thread. On
  // one thread the row is scanned whole first: one row of 128256 took 4.5 %
  // longer with each segment's mass pass run straight after its scan,
  // bench/ab -n 10 ... --batch 1 --threads 1 --config full.)
  const bool fused = framed_ && !light_row && run_.parallel;
  auto scan_input = [&](float* dst, bool stats = true) {
    const int esize = dtype_size(in_.dtype);
    sc_.max_stats.resize(sc_.raw_segs.size());
    if (stats && framed_) lay_out_masses(sc_.raw_segs, /*keep_blocks=*/true);
    auto one = [&](int64_t s) {
      const Segment& seg = sc_.raw_segs[static_cast<size_t>(s)];
      const char* src = static_cast<const char*>(in_.data) + seg.base * esize;
      if (stats) {
        sc_.max_stats[static_cast<size_t>(s)] =
            run_.k->widen_max_stats(src, in_.dtype, seg.n, dst ? dst + seg.base : nullptr,
                                    sc_.raw_block_max.data() + seg.base / kPassBlock);
        if (fused) frame_pass(s);
      } else {
        run_.k->to_float(src, in_.dtype, seg.n, dst + seg.base);
      }
      if (seg.sample) record_sample(seg, sc_.row_samples);
    };
    if (light_row) {
      run_.serial(static_cast<int64_t>(sc_.raw_segs.size()), one);
    } else {
      run_(static_cast<int64_t>(sc_.raw_segs.size()), one);
    }
    if (stats && framed_ && !fused)
      run_.serial(static_cast<int64_t>(sc_.raw_segs.size()), frame_pass);
    return stats ? combine(sc_.raw_segs, sc_.max_stats) : MaxStats{};
  };
  // A float32 row that processors will change is copied to the working
  // buffer by the same read as its scan (below).
  const bool processors = has_processors(req_);
  MaxStats raw;
  MaxStats processed;
  // top-p's small-nucleus path samples the (processed) row: the scan that
  // reads it last records the sample. Not when top-k acts first with a k
  // that is compacted: top-p then runs on the survivors. (Should ties at the
  // k-th key keep more, the path reads the same sample from the row.)
  const Filter* first = first_filter();
  const bool compacted_first = first && *first == Filter::kTopK &&
                               std::max<int64_t>(p_.top_k, p_.min_keep) <= compact_limit();
  std::vector<float>* samples =
      p_.temperature > 0.0f && p_.top_p < 1.0f && !compacted_first ? &sc_.row_samples : nullptr;
  // An allowed-token mask that allows at most compact_limit() tokens (a
  // grammar's, say): the row is scanned as it is (its max, and its errors,
  // masked or not), and the tokens the mask allows become the candidates, as
  // compaction would leave them: no copy of the row, no second scan, and
  // every later pass reads only them. Other processors (bans, bias,
  // penalties: listed tokens only) change the candidates' values through a
  // row-sized buffer that holds them at their tokens.
  const bool sparse_mask =
      processors && !req_.allowed_mask.empty() &&
      run_.k->allowed_count(req_.allowed_mask.data(), vocab, compact_limit()) <= compact_limit();
  if (sparse_mask) {
    if (in_.dtype == DType::kFloat32) {
      dist.raw = static_cast<const float*>(in_.data);
    } else {
      sc_.raw_buf.resize(static_cast<size_t>(vocab));
      dist.raw = sc_.raw_buf.data();
    }
    make_segments(dist.raw, vocab, sc_.raw_block_max, sc_.raw_segs);
    raw = scan_input(in_.dtype == DType::kFloat32 ? nullptr : sc_.raw_buf.data());
    // (the candidates keep their raw values when the mask is alone: the
    // processed row is the raw one at every token that can be drawn)
    dist.x = dist.raw;
    if (raw.bad_at < 0) {
      float* cx = sc_.cand_x.data();
      int32_t* ci = sc_.cand_idx.data();
      const int64_t n =
          run_.k->gather_allowed(req_.allowed_mask.data(), vocab, dist.raw, cx, ci, false);
      if (!only_allowed_mask(req_)) {
        // The candidates' values at their tokens, the processors applied in
        // SPEC order (the mask's -inf elsewhere is implied: every processor
        // keeps -inf as -inf, and the values past the candidates, which the
        // processors may read and write at listed tokens, are never read
        // after), and read back.
        sc_.work_buf.resize(static_cast<size_t>(vocab));
        float* work = sc_.work_buf.data();
        for (int64_t i = 0; i < n; ++i) work[ci[i]] = cx[i];
        apply_processors(req_, 0, vocab, work, sc_.penalties, nullptr, *run_.k, nullptr);
        for (int64_t i = 0; i < n; ++i) cx[i] = work[ci[i]];
        dist.x = work;
      }
      sc_.cand_segs.assign(1, Segment{cx, ci, n, 0});
      candidates_ = true;
      processed = run_.k->max_stats(cx, n, nullptr);
      if (processed.argmax >= 0) processed.argmax = ci[processed.argmax];
      if (processed.bad_at >= 0) processed.bad_at = ci[processed.bad_at];
      sc_.row_segs = sc_.cand_segs;
    }
  } else if (processors) {
    // The row is widened (or copied) into the working buffer, changed and
    // scanned again a run of segments at a time, each on the thread that
    // reads it: the copy, the changes and the second scan stay in that
    // core's cache, where the passes that follow find them.
    const bool half = in_.dtype != DType::kFloat32;
    if (half) sc_.raw_buf.resize(static_cast<size_t>(vocab));
    // (greedy under a mask alone: no copy, the row read under the mask)
    const bool lean = masked_greedy();
    if (!lean) sc_.work_buf.resize(static_cast<size_t>(vocab));
    dist.raw = half ? sc_.raw_buf.data() : static_cast<const float*>(in_.data);
    dist.x = lean ? dist.raw : sc_.work_buf.data();
    dist.masked_view = lean;
    make_segments(dist.raw, vocab, sc_.raw_block_max, sc_.raw_segs);
    make_segments(dist.x, vocab, sc_.row_block_max, sc_.row_segs, samples);
    const int esize = dtype_size(in_.dtype);
    const auto nseg = static_cast<int64_t>(sc_.row_segs.size());
    sc_.max_stats.resize(static_cast<size_t>(nseg));
    sc_.processed_stats.resize(static_cast<size_t>(nseg));
    // One part per thread, each a run of whole segments (as the passes
    // that follow split them): its segments are copied and scanned, and the
    // processors' changes that fall in them applied. An allowed-token mask
    // is applied as the row is copied (SPEC order: the mask first), in the
    // read that scans the row, masked and not (Kernels::masked_copy_stats);
    // the other processors' changes (bias, bans, penalties: listed tokens)
    // are noted as they are made (RowChanges), and only the blocks whose
    // max they touched are scanned again.
    const int64_t parts =
        light_row || !run_.parallel || vocab < 4 * kChunk
            ? 1
            : std::clamp<int64_t>(tbb::this_task_arena::max_concurrency(), 1, nseg);
    const bool masked = !req_.allowed_mask.empty();
    const bool mask_only = only_allowed_mask(req_);
    auto row_bmax = [&](const Segment& seg) {
      return sc_.row_block_max.data() + seg.base / kPassBlock;
    };
    RowChanges changes;
    if (!mask_only) {
      sc_.touched_blocks.assign(sc_.row_block_max.size(), 0);
      sc_.chunk_lost.assign(static_cast<size_t>(nseg), 0);
      sc_.chunk_bad.assign(static_cast<size_t>(nseg), -1);
      changes = RowChanges{sc_.row_block_max.data(), sc_.touched_blocks.data(),
                           sc_.chunk_lost.data(), sc_.chunk_bad.data()};
    }
    auto part = [&](int64_t p) {
      const int64_t first = p * nseg / parts, last = (p + 1) * nseg / parts;
      // (the copy's scan is the processed row's until the changes)
      for (int64_t s = first; s < last; ++s) {
        const Segment& seg = sc_.row_segs[static_cast<size_t>(s)];
        const auto i = static_cast<size_t>(s);
        const char* src = static_cast<const char*>(in_.data) + seg.base * esize;
        float* work = lean ? nullptr : sc_.work_buf.data() + seg.base;
        float* raw_bmax = sc_.raw_block_max.data() + seg.base / kPassBlock;
        if (masked) {
          sc_.processed_stats[i] = run_.k->masked_copy_stats(
              src, in_.dtype, req_.allowed_mask.data(), seg.base, seg.n, work, row_bmax(seg),
              &sc_.max_stats[i], raw_bmax, half ? sc_.raw_buf.data() + seg.base : nullptr);
        } else {
          float* widened = half ? sc_.raw_buf.data() + seg.base : work;
          sc_.max_stats[i] = run_.k->widen_max_stats(src, in_.dtype, seg.n, widened, raw_bmax);
          if (half) std::copy_n(widened, seg.n, work);
          std::copy_n(raw_bmax, block_count(seg.n), row_bmax(seg));
          sc_.processed_stats[i] = sc_.max_stats[i];
        }
      }
      if (!mask_only) {
        const Segment& end = sc_.row_segs[static_cast<size_t>(last - 1)];
        apply_processors(req_, sc_.row_segs[static_cast<size_t>(first)].base, end.base + end.n,
                         sc_.work_buf.data(), sc_.penalties, &changes, *run_.k, dist.raw);
      }
      for (int64_t s = first; s < last; ++s) {
        const Segment& seg = sc_.row_segs[static_cast<size_t>(s)];
        const auto i = static_cast<size_t>(s);
        if (!mask_only) {
          sc_.processed_stats[i] = changed_stats(seg, sc_.processed_stats[i], row_bmax(seg),
                                                 sc_.touched_blocks.data() + seg.base / kPassBlock,
                                                 sc_.chunk_lost[i], sc_.chunk_bad[i]);
        }
        if (seg.sample) record_sample(seg, sc_.row_samples);
      }
    };
    run_(parts, part);
    raw = combine(sc_.raw_segs, sc_.max_stats);
    processed = combine(sc_.row_segs, sc_.processed_stats);
  } else if (in_.dtype == DType::kFloat32) {
    dist.raw = static_cast<const float*>(in_.data);
    make_segments(dist.raw, vocab, sc_.raw_block_max, sc_.raw_segs, samples);
    raw = scan_input(nullptr);
  } else if (!values_needed(need_z)) {
    // Greedy with nothing else asked for: the scan's results are the answer,
    // and the widened row is never kept (half the memory traffic).
    dist.raw = nullptr;
    make_segments(nullptr, vocab, sc_.raw_block_max, sc_.raw_segs);
    raw = scan_input(nullptr);
  } else {
    // A half row under a first filter that keeps few tokens (top-k, min-p)
    // with nothing else reading its values: scanned without keeping the
    // widened row (the greedy scan), then only the blocks that may hold the
    // filter's members are widened and their members listed
    // (gather_candidates); when those are too many, the row is widened
    // whole as any other.
    bool done = false;
    const bool scanned = light_half_row(need_z);
    if (scanned) {
      make_segments(nullptr, vocab, sc_.raw_block_max, sc_.raw_segs);
      raw = scan_input(nullptr);
      done = raw.bad_at >= 0 || raw.finite == 0 || gather_candidates(raw);
    }
    if (!done) {
      sc_.raw_buf.resize(static_cast<size_t>(vocab));
      dist.raw = sc_.raw_buf.data();
      make_segments(dist.raw, vocab, sc_.raw_block_max, sc_.raw_segs, samples);
      if (scanned) {
        // (too many candidates: the lean scan's results and block maxima
        // stand, and the row is only widened)
        scan_input(sc_.raw_buf.data(), false);
      } else {
        raw = scan_input(sc_.raw_buf.data());
      }
    }
  }
  if (raw.bad_at >= 0) {
    float v = 0.0f;
    run_.k->to_float(static_cast<const char*>(in_.data) + raw.bad_at * dtype_size(in_.dtype),
                     in_.dtype, 1, &v);
    return Status::row_error(row_prefix(row_) + "logit of token " + std::to_string(raw.bad_at) +
                             " is " + (std::isnan(v) ? "NaN" : "+inf"));
  }
  dist.raw_max = raw.max;

  if (processors) {
    if (processed.bad_at >= 0) {
      return Status::row_error(row_prefix(row_) + "logit of token " +
                               std::to_string(processed.bad_at) +
                               " is not finite after bias and penalties");
    }
  } else {
    processed = raw;
    dist.x = dist.raw;
    sc_.row_segs = candidates_ ? sc_.cand_segs : sc_.raw_segs;
  }
  // The next row is asked for by the exp passes over the whole row (full
  // sampling, top-p, typical-p); not under greedy, top-k or min-p, whose
  // passes visit a few blocks, or all of a flat row's in a short burst: there
  // the next row's scan, bound by memory, was 0-16 % slower with it (the
  // lines asked for leave holes in the stream the hardware prefetcher
  // follows, as far as was measured).
  if (in_.next && !candidates_ && !light_row) {
    const int esize = dtype_size(in_.dtype);
    for (Segment& seg : sc_.row_segs) {
      seg.ahead = static_cast<const char*>(in_.next) + seg.base * esize;
      seg.ahead_esize = esize;
    }
  }
  if (processed.finite == 0) {
    return Status::row_error(row_prefix(row_) + "no token left: every token is masked");
  }
  dist.set.xmax = processed.max;
  dist.support = processed.finite;
  dist.greedy_token = static_cast<int32_t>(processed.argmax);
  return Status();
}

}  // namespace

void RowScratch::prepare(int64_t vocab) {
  // Buffers whose need depends on the row's values (how many tokens land in a
  // boundary bucket, how many survive) are sized for the worst case once, so
  // that which scratch serves which row never decides whether a call
  // allocates.
  const auto v = static_cast<size_t>(vocab);
  const size_t segments = static_cast<size_t>((vocab + kChunk - 1) / kChunk);
  select.list.reserve(v);
  select.sorted.reserve(static_cast<size_t>(kShortSort));  // (refine's last, short list)
  select.samples.reserve(v);
  select.block_maxima.reserve(static_cast<size_t>(block_count(vocab)));
  select.block_keys.reserve(static_cast<size_t>(block_count(vocab)));
  select.typical_maxima.reserve(static_cast<size_t>(block_count(vocab)));
  if (top.size() < v) top.resize(v);  // grown, never shrunk
  if (select.gathered_tokens.size() < v) select.gathered_tokens.resize(v);
  // (a packet of room past the end, and past each segment's for the band
  // passes)
  const size_t stored = v + 64 * (segments + 1);
  for (auto* a : {&select.keys, &select.weights, &select.interval_keys, &select.interval_weights}) {
    if (a->size() < stored) a->resize(stored);
  }
  // (also the wide-nucleus check's ranking of a sample of every 128th token)
  // (and the ranked part of a sample, with its order keys: every 64th
  // token's at most)
  const size_t sampled = std::max<size_t>(1024, v / 32 + segments + 1);
  select.pivot_sample.reserve(sampled);
  select.sample_order.reserve(sampled);
  select.seg_moments.reserve(segments);
  select.gathered_at.reserve(segments);
  select.gathered_count.reserve(segments);
  select.counts.reserve(segments * static_cast<size_t>(kLevel1Buckets));
  select.masses.reserve(segments * static_cast<size_t>(kLevel1Buckets));
  select.seg_chosen.reserve(segments * static_cast<size_t>(kPivots));
  select.offsets.reserve(segments + 1);
  select.seg_total.reserve(segments);
  select.sub_counts.reserve(static_cast<size_t>(kLevel1Buckets));
  select.sub_masses.reserve(static_cast<size_t>(kLevel1Buckets));
  // Per-segment results (row chunks, or one candidate segment) and per-block
  // sums (as many blocks as the row's chunks have, or fewer).
  moments.reserve(segments);
  max_stats.reserve(segments);
  processed_stats.reserve(segments);
  touched_blocks.reserve(static_cast<size_t>(block_count(vocab)));
  chunk_lost.reserve(segments);
  chunk_bad.reserve(segments);
  seg_mass.reserve(segments);
  seg_count.reserve(segments);
  seg_min.reserve(segments);
  seg_block_start.reserve(segments + 1);
  seg_factor.reserve(segments);
  raw_block_max.reserve(static_cast<size_t>(block_count(vocab)));
  row_block_max.reserve(static_cast<size_t>(block_count(vocab)));
  row_samples.reserve(segments * static_cast<size_t>(sample_count(kChunk)));
  block_mass.reserve(segments * static_cast<size_t>(block_count(kChunk)));
  raw_segs.reserve(segments);
  row_segs.reserve(segments);
  cand_segs.reserve(1);
  // Whether a row is compacted depends on its values.
  // (and a packet past the kept set: compact stores whole packets)
  cand_x.resize(std::max(cand_x.size(), v + 64));
  cand_idx.resize(std::max(cand_idx.size(), v + 64));
  // (the tokens a mask leaves out, when the raw normaliser lists them: at
  // most vocab / 16, and a packet past them)
  left_out_x.resize(std::max(left_out_x.size(), v / 16 + 64));
  left_out_idx.resize(std::max(left_out_idx.size(), v / 16 + 64));
  // Buffers some requests need (half-precision input, processors,
  // verification), sized with the rest so that a scratch first used by such
  // a row does not allocate then.
  if (raw_buf.size() < v) raw_buf.resize(v);
  if (work_buf.size() < v) work_buf.resize(v);
  if (verify_p.size() < v) verify_p.resize(v);
  if (penalties.count.size() < v) penalties.count.resize(v, 0);
  const auto words = static_cast<size_t>((vocab + 63) / 64);
  if (penalties.seen.size() < words) penalties.seen.resize(words, 0);
}

void RowScratch::prepare_verify(int64_t positions, int64_t history) {
  verify_positions.reserve(static_cast<size_t>(positions));
  verify_history.reserve(static_cast<size_t>(history));
}

namespace {

// The key of the min_keep-th most preferred token (with ties) when it lies
// beyond c; otherwise c. min_keep = 1 never widens a filter.
float RowPipeline::min_keep_key(std::span<const Segment> segs, const SetSpec& set,
                                const KeyRule& rule, float c, int64_t* count) {
  if (p_.min_keep <= 1) return c;
  KeyRule counting = rule;
  counting.mass_weight = false;
  counting.target_is_fraction = false;
  const SelectResult r = weighted_select(segs, set, counting, p_.min_keep, sc_.select, run_);
  if (!r.found) return kInf;  // fewer members than min_keep: keep them all
  if (r.key > c) {
    if (count) *count = r.count_le;
    return r.key;
  }
  return c;
}

bool RowPipeline::filter_acts(Filter f) const {
  switch (f) {
    case Filter::kTopK:
      return p_.top_k > 0 && p_.top_k < in_.vocab;
    case Filter::kTopP:
      return p_.top_p < 1.0f;
    case Filter::kMinP:
      return p_.min_p > 0.0f;
    case Filter::kTypical:
      return p_.typical_p < 1.0f;
    case Filter::kTopNSigma:
      return p_.top_n_sigma > 0.0f;
  }
  return false;
}

void RowPipeline::apply_filter(Filter f, std::span<const Segment>& segs, SetSpec& set, float& d0,
                               bool& d0_known, int64_t& count, bool& count_known) {
  if (!filter_acts(f)) return;
  auto ensure_d0 = [&] {
    if (!d0_known) {
      SetSpec s = set;
      s.key_scale = s.scale;
      d0 = min_key_of(segs, s);
      d0_known = true;
    }
  };
  const KeyRule distance_count{KeyKind::kDistance, false, 0.0f, 0.0};
  switch (f) {
    case Filter::kTopK: {
      const int64_t k = std::max<int64_t>(p_.top_k, p_.min_keep);
      const SelectResult r =
          weighted_select(segs, set, distance_count, static_cast<double>(k), sc_.select, run_);
      if (r.found) {
        set.dhi = std::min(set.dhi, r.key);
        count = r.count_le;
        count_known = true;
      }
      return;
    }
    case Filter::kTopP: {
      ensure_d0();
      const KeyRule rule{KeyKind::kDistance, true, d0, 0.0, /*target_is_fraction=*/true};
      const SelectResult r =
          weighted_select(segs, set, rule, static_cast<double>(p_.top_p), sc_.select, run_);
      note_whole_z(set, d0, r.total);
      if (!r.found) return;
      int64_t kept = r.count_le;
      const float c = min_keep_key(segs, set, rule, r.key, &kept);
      set.dhi = std::min(set.dhi, c);
      count = kept;
      count_known = c < kInf;
      return;
    }
    case Filter::kMinP: {
      ensure_d0();
      float c = min_p_bound(d0);
      c = min_keep_key(segs, set, distance_count, c, nullptr);
      set.dhi = std::min(set.dhi, c);
      count_known = false;
      return;
    }
    case Filter::kTypical: {
      ensure_d0();
      // (a peaked row's kept set is found from a few blocks: no need for
      // typical_moments to store every token's e and mass for the select;
      // when the prediction says no, the fast path could not decide: its 16
      // maxima would hold less than typical_p of the maxima's mass, less
      // still of the total)
      const bool looks_small =
          p_.min_keep <= 1 &&
          typical_set_looks_small(segs, set, d0, p_.typical_p, sc_.select, run_);
      KeyBounds b;
      double z = -1.0;  // the set's mass, once a pass formed it
      // (a flat row's: the moments and the kept set in one pass, when the
      // estimate places its gather bound well)
      const bool banded = p_.min_keep <= 1 && !looks_small &&
                          flat_typical_select(segs, set, d0, p_.typical_p, sc_.select, run_, b, &z);
      if (!banded) {
        Moments m;
        if (looks_small || !typical_moments(segs, set, d0, sc_.select, run_, &m)) {
          m = moments_of(segs, set, d0, MomentKind::kEntropy);
        }
        z = m.z;
        // s_i = |-ln pi_i - H| = |(d_i - d0) - E[d - d0]|.
        const KeyRule rule{KeyKind::kTypical, true, d0, m.zd / m.z};
        const double target = static_cast<double>(p_.typical_p) * m.z;
        if (!looks_small || !small_typical_select(segs, set, rule, target, sc_.select, run_, b)) {
          const SelectResult r = weighted_select(segs, set, rule, target, sc_.select, run_);
          if (!r.found) return;
          const float c = min_keep_key(segs, set, rule, r.key, nullptr);
          if (c == kInf) return;
          b = key_bounds(segs, set, rule, c, sc_.select, run_);
        }
      }
      note_whole_z(set, d0, z);  // (as top-p's)
      set.dlo = b.dmin;
      set.dhi = b.dmax;
      d0 = b.dmin;
      count = b.count;
      count_known = true;
      return;
    }
    case Filter::kTopNSigma: {
      ensure_d0();
      const Moments m = moments_of(segs, set, d0, MomentKind::kSpread);
      const double n = static_cast<double>(m.count);
      const double mean = m.sd / n;
      const double sigma = std::sqrt(std::max(0.0, m.sd2 / n - mean * mean));
      float c =
          float_at_most(static_cast<double>(d0) + static_cast<double>(p_.top_n_sigma) * sigma);
      c = min_keep_key(segs, set, distance_count, c, nullptr);
      set.dhi = std::min(set.dhi, c);
      count_known = false;
      return;
    }
  }
}

const Filter* RowPipeline::first_filter() const {
  for (const Filter& f : filter_order(p_.preset)) {
    if (filter_acts(f)) return &f;
  }
  return nullptr;
}

bool RowPipeline::light_half_row(bool need_z) const {
  if (in_.dtype == DType::kFloat32 || p_.temperature <= 0.0f || need_z || p_.logprobs ||
      p_.top_logprobs > 0 || p_.min_keep > 1 || has_processors(req_)) {
    return false;
  }
  const Filter* first = first_filter();
  return first && (*first == Filter::kTopK || *first == Filter::kMinP);
}

// The members of the first filter's set lie within a distance bound known
// from the scan: top-k's, the k-th largest block max (those k blocks hold k
// tokens at least that large); min-p's, its own (the max's distance is 0).
// The blocks whose max reaches it are widened one at a time and their tokens
// within it listed, in token order, as the compaction after a filter lists
// them (a superset of the filter's set: the filters then run on the list).
// False when they would be more than a compacted set may hold.
bool RowPipeline::gather_candidates(const MaxStats& raw) {
  const int64_t vocab = in_.vocab;
  const int64_t blocks = block_count(vocab);
  SetSpec set;
  set.xmax = raw.max;
  set.scale = filter_scale();
  set.key_scale = set.scale;
  float bound = 0.0f;
  if (*first_filter() == Filter::kTopK) {
    if (!block_max_bound(sc_.raw_segs, set, static_cast<double>(p_.top_k), sc_.select, *run_.k,
                         &bound)) {
      return false;
    }
  } else {
    bound = min_p_bound(0.0f);  // (the max's distance is 0)
  }
  set.dhi = bound;
  const int64_t cap = compact_limit();
  const int esize = dtype_size(in_.dtype);
  const auto* src = static_cast<const char*>(in_.data);
  alignas(64) float block[kPassBlock];
  int64_t n = 0;
  for (int64_t b = 0; b < blocks; ++b) {
    if (!block_may_hold_members(sc_.raw_block_max[static_cast<size_t>(b)], set)) continue;
    const int64_t j0 = b * kPassBlock;
    const int64_t m = std::min(kPassBlock, vocab - j0);
    run_.k->to_float(src + j0 * esize, in_.dtype, m, block);
    const Segment one{block, nullptr, m, j0, sc_.raw_block_max.data() + b, nullptr};
    n += run_.k->compact(one, set, sc_.cand_x.data() + n, sc_.cand_idx.data() + n);
    if (n > cap) return false;
  }
  sc_.cand_segs.assign(1, Segment{sc_.cand_x.data(), sc_.cand_idx.data(), n, 0});
  candidates_ = true;
  return true;
}

bool RowPipeline::frame_masses(const SetSpec& set, double* z, int64_t* count) {
  const size_t nseg = sc_.raw_segs.size();
  sc_.seg_factor.resize(nseg);
  double total = 0.0;
  int64_t members = 0;
  for (size_t s = 0; s < nseg; ++s) {
    const MaxStats& st = sc_.max_stats[s];
    sc_.seg_factor[s] = 0.0;
    if (st.finite == 0) continue;
    if (sc_.seg_count[s] != st.finite) return false;
    // Every member of the frame lies within a quarter of the float range
    // of the segment's max (frame_of); with the segment's max within
    // another quarter of the row's, every distance and key in the row's
    // frame is finite too: the members are the same.
    const double gap = static_cast<double>(set.xmax) - static_cast<double>(st.max);
    const double delta = gap * static_cast<double>(set.key_scale);
    constexpr double kQuarter = static_cast<double>(kMaxFloat) / 4;
    if (!(gap <= kQuarter && delta <= kQuarter)) return false;
    const double f = delta > static_cast<double>(kUnderflow) ? 0.0 : std::exp(-delta);
    sc_.seg_factor[s] = f;
    sc_.seg_mass[s] *= f;
    total += sc_.seg_mass[s];
    members += sc_.seg_count[s];
  }
  *z = total;
  *count = members;
  return true;
}

// Greedy's normaliser under a mask alone (masked_greedy), from one pass over
// the input row, segment by segment (combined in segment order): Σ exp(x -
// raw_max) over every token, the raw row's normaliser (the bits of the raw
// row's own pass), and over the tokens the mask allows, the processed
// row's in the raw max's frame, put in the processed max's by exp(raw_max -
// xmax). That holds while the gap is at most kGap: a token the mask allows
// then loses its mass in the raw max's frame only when it lies more than
// kUnderflow - kGap (~71) below the processed max, where its share of the
// processed normaliser is below e^-71 even when there are billions of them.
// Past the gap (the mask leaves out every token near the raw max), the
// allowed masses are formed in the processed max's frame (the others'
// lanes are formed, not added) and the raw row's pass forms its own.
void RowPipeline::greedy_masked_z(Distribution& dist) {
  constexpr double kGap = 16.0;
  const double gap = static_cast<double>(dist.raw_max) - static_cast<double>(dist.set.xmax);
  const bool both = gap <= kGap;
  SetSpec frame = dist.set;  // (scale 1, the whole row)
  frame.xmax = both ? dist.raw_max : dist.set.xmax;
  const std::span<const Segment> segs(sc_.raw_segs);
  lay_out_masses(segs, /*keep_blocks=*/false);
  sc_.seg_allowed.resize(segs.size());
  const int32_t* words = req_.allowed_mask.data();
  run_.over([&] { return live_tokens(segs, frame); }, static_cast<int64_t>(segs.size()),
            [&](int64_t s) {
              const auto i = static_cast<size_t>(s);
              sc_.seg_mass[i] = run_.k->masked_sum_mass(segs[i], words, frame, &sc_.seg_allowed[i]);
            });
  double all = 0.0, allowed = 0.0;
  for (size_t s = 0; s < segs.size(); ++s) {
    all += sc_.seg_mass[s];
    allowed += sc_.seg_allowed[s];
  }
  dist.z = both ? allowed * std::exp(gap) : allowed;
  dist.z_formed = true;
  dist.raw_z = both && all > 0.0 && all < kInf ? all : -1.0;
}

Status RowPipeline::build(Distribution& dist, bool need_z) {
  candidates_ = false;
  framed_ = full_sampling();
  if (Status s = check_and_widen(dist, need_z); !s.ok()) return s;
  const int64_t vocab = in_.vocab;
  std::span<const Segment> segs(sc_.row_segs);

  if (p_.temperature == 0.0f) {
    // Greedy: argmax of the processed logits, lowest id on ties (found by
    // the scan above).
    dist.greedy = true;
    dist.segs = segs;
    dist.set.scale = 1.0f;
    dist.set.key_scale = 1.0f;
    dist.k0 = 0.0f;
    // (support stays the finite count, even for a token whose distance from
    // the max overflows float32 and so has no mass.)
    if (need_z && dist.masked_view) {
      greedy_masked_z(dist);
    } else if (need_z) {
      dist.z = mass_of(segs, dist.set, 0.0f, nullptr, /*keep_blocks=*/true);
      dist.z_formed = true;
      note_whole_z(dist.set, 0.0f, dist.z);  // (the whole row at temperature 1)
      dist.whole = whole_;
    }
    return Status();
  }

  const float final_scale = inverse_temperature();
  const bool llama = p_.preset == Preset::kLlamaCpp;
  SetSpec set = dist.set;
  set.scale = filter_scale();
  set.key_scale = set.scale;
  set.dlo = 0.0f;
  set.dhi = kMaxFloat;
  float d0 = 0.0f;  // the top token's distance
  bool d0_known = true;
  int64_t count = dist.support;
  bool count_known = true;
  bool compacted = candidates_;  // (the candidates are the row's compacted form)
  const int64_t compact_below = compact_limit();

  for (Filter f : filter_order(p_.preset)) {
    sc_.select.gathered = false;
    apply_filter(f, segs, set, d0, d0_known, count, count_known);
    // The filter's last select may have gathered, in token order, every
    // member up to a bound at or past the new upper bound, i.e. every
    // survivor (and others outside the new bounds): compact from that
    // instead of reading the row again.
    if (!compacted && sc_.select.gathered && set.dhi <= sc_.select.gathered_bound && count_known &&
        count <= compact_below) {
      int64_t n = 0;
      for (int64_t p = 0; p < sc_.select.gathered_segments; ++p) {
        const std::span<const GatheredToken> got = sc_.select.gathered_list(p);
        n += run_.k->compact_gathered(got.data(), static_cast<int64_t>(got.size()), set.dlo,
                                      set.dhi, sc_.cand_x.data() + n, sc_.cand_idx.data() + n);
      }
      sc_.cand_segs.assign(1, Segment{sc_.cand_x.data(), sc_.cand_idx.data(), n, 0});
      segs = std::span<const Segment>(sc_.cand_segs);
      compacted = true;
    }
    if (!compacted && count_known && count <= compact_below && segs.size() > 0 && count < vocab) {
      // Later passes only visit the kept set: copy it out once, in token order.
      int64_t n = 0;
      for (const Segment& s : segs)
        n += run_.k->compact(s, set, sc_.cand_x.data() + n, sc_.cand_idx.data() + n);
      sc_.cand_segs.assign(1, Segment{sc_.cand_x.data(), sc_.cand_idx.data(), n, 0});
      segs = std::span<const Segment>(sc_.cand_segs);
      compacted = true;
    }
  }

  // Temperature (already applied for hf / vllm): rank and weigh the kept set
  // by (xmax - x) / T.
  set.key_scale = final_scale;
  // (llama.cpp's filters ran untempered: the smallest tempered key is 0,
  // the max's, while the set holds the max, i.e. its lower bound is 0;
  // only when typical-p dropped it is the smallest key looked for)
  dist.k0 = (!llama && d0_known) ? d0 : set.dlo == 0.0f ? 0.0f : min_key_of(segs, set);
  if (llama && dist.k0 == kInf) {
    // Every survivor's tempered distance from the row's max overflowed (a
    // tiny T, and typical-p dropped the max): weigh them from their own top
    // instead. The scale is lowered until the nearest survivor's key is
    // finite; every farther one is then at least one float step of its
    // distance, times that scale (> 1e31), away: zero mass, exactly as under
    // T. (Docs: semantics.md, "Tempered logits".)
    SetSpec unscaled = set;
    unscaled.key_scale = set.scale;
    const float dmin = min_key_of(segs, unscaled);
    if (dmin > 0.0f && dmin < kInf) {
      float ks = kMaxFloat / dmin;
      while (!(dmin * ks <= kMaxFloat)) ks = std::nextafter(ks, 0.0f);
      set.key_scale = ks;
      dist.k0 = min_key_of(segs, set);
    }
  }
  dist.set = set;
  dist.segs = segs;
  // (full sampling: the scan formed the masses, unless the row was compacted
  // or its frames could not serve)
  dist.framed =
      framed_ && !compacted && dist.k0 == 0.0f && frame_masses(set, &dist.z, &dist.support);
  if (!dist.framed) dist.z = mass_of(segs, set, dist.k0, &dist.support, /*keep_blocks=*/true);
  dist.z_formed = true;
  // (the final set may be the whole row at temperature 1 itself)
  if (!compacted && set.key_scale == 1.0f) note_whole_z(set, dist.k0, dist.z);
  dist.whole = whole_;
  if (dist.support == 0 || !(dist.z > 0.0)) {
    return Status::row_error(row_prefix(row_) + "no token left after the filters");
  }
  return Status();
}

// The raw row's normaliser Σ exp(x - raw_max) from the processed row's
// (dist.whole: the whole row at temperature 1, formed by full sampling,
// top-p, typical-p or greedy's Z): the same when nothing processed the row;
// else, when the processors changed only listed tokens (history, prompt,
// bias, bans) and the tokens an allowed-token mask leaves out, and raised
// none, the processed normaliser put in the raw max's frame, plus each
// changed token's raw mass less its processed one (a masked token's raw
// mass). Every such term is >= 0 (no cancellation), and the masses are
// mass_exp's, in a fixed order (the listed tokens the mask allows
// deduplicated in list order; the masked ones, in token order, their own
// sum). -1 when neither applies, or the lists and the masked tokens are more
// than vocab / 16 tokens (a mask that leaves out much of the row): the raw
// row's own exp pass forms it then.
double raw_normaliser(const Distribution& dist, const RowRequest& req, int64_t vocab,
                      RowScratch& sc, const Runner& run) {
  if (dist.raw_z > 0.0) return dist.raw_z;
  if (dist.masked_view) return -1.0;  // (x is the raw row, read under the mask)
  if (!(dist.whole.z > 0.0)) return -1.0;
  if (dist.x == dist.raw) return dist.whole.z;
  if (dist.raw == nullptr) return -1.0;
  const auto listed = static_cast<int64_t>(req.generated_tokens.size() + req.prompt_tokens.size() +
                                           req.banned_tokens.size() + req.logit_bias.size());
  if (listed > vocab / 16) return -1.0;
  const int32_t* words = req.allowed_mask.empty() ? nullptr : req.allowed_mask.data();
  if (words && vocab - run.k->allowed_count(words, vocab, vocab) > vocab / 16 - listed) {
    return -1.0;
  }
  const double delta = static_cast<double>(dist.whole.xmax) - static_cast<double>(dist.raw_max);
  if (!(delta <= 0.0)) return -1.0;  // (a token raised past the raw max)
  // Each listed token once (a bit per token, cleared after), its raw and
  // processed distances from the raw max as mass arguments, turned into
  // masses 32 tokens at a time; the differences summed in four chains.
  uint64_t* seen = sc.penalties.seen.data();
  alignas(64) SelectEntry pairs[64];
  int64_t n = 0;
  double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
  auto flush = [&] {
    run.k->entry_masses(pairs, n);
    auto diff = [&](int64_t i) {
      return static_cast<double>(pairs[i].weight) - static_cast<double>(pairs[i + 1].weight);
    };
    // (named chains: an array indexed by the pair went through memory)
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      s0 += diff(i);
      s1 += diff(i + 2);
      s2 += diff(i + 4);
      s3 += diff(i + 6);
    }
    for (; i < n; i += 2) s0 += diff(i);
    n = 0;
  };
  bool raised = false;
  auto add = [&](int32_t t) {
    // (a token the mask leaves out is summed with the others it leaves out, below)
    if (words && !mask_allows(words, t)) return;
    uint64_t& word = seen[static_cast<uint32_t>(t) >> 6];
    const uint64_t bit = uint64_t{1} << (static_cast<uint32_t>(t) & 63u);
    if (word & bit) return;
    word |= bit;
    const float raw = dist.raw[t], x = dist.x[t];
    raised |= x > raw;
    pairs[n++] = SelectEntry{0.0f, dist.raw_max - raw};
    pairs[n++] = SelectEntry{0.0f, dist.raw_max - x};
    if (n == 64) flush();
  };
  auto each_listed = [&](auto&& fn) {
    for (int32_t t : req.generated_tokens) fn(t);
    for (int32_t t : req.prompt_tokens) fn(t);
    for (int32_t t : req.banned_tokens) fn(t);
    for (const TokenBias& b : req.logit_bias) fn(b.token);
  };
  each_listed(add);
  if (n > 0) flush();
  each_listed([&](int32_t t) { seen[static_cast<uint32_t>(t) >> 6] = 0; });
  if (raised) return -1.0;
  // The tokens the mask leaves out (-inf in the processed row: no mass
  // there), listed as they come (Kernels::gather_allowed) and their raw
  // masses summed as the raw pass would (a segment of the list).
  double left_out = 0.0;
  if (words) {
    const int64_t m = run.k->gather_allowed(words, vocab, dist.raw, sc.left_out_x.data(),
                                            sc.left_out_idx.data(), /*left_out=*/true);
    SetSpec raw_set;
    raw_set.xmax = dist.raw_max;
    left_out = run.k->sum_mass(Segment{sc.left_out_x.data(), sc.left_out_idx.data(), m, 0}, raw_set,
                               0.0f, nullptr, nullptr);
  }
  const double z = dist.whole.z * std::exp(delta) + ((s0 + s1) + (s2 + s3)) + left_out;
  return z > 0.0 && z < kInf ? z : -1.0;
}

// A token's log-probability from its distance below the row's largest key
// and the log of the row's mass: -distance - log_z, an unsigned zero for the
// token that holds all the mass (as log(1) is; the negation alone gave -0).
float logprob_of(float distance, double log_z) {
  return static_cast<float>(0.0 - static_cast<double>(distance) - log_z);
}

}  // namespace

void sample_row(const RowInput& input, const RowRequest& request, uint64_t seed, int64_t row,
                RowResult& result, RowScratch& sc, const Runner& run) {
  result.clear();
  const SamplingParams& p = request.params;
  RowPipeline pipe(input, request, row, sc, run);
  pipe.set_drawn_only(p.top_logprobs == 0);
  Distribution dist;
  const bool need_processed_z =
      p.logprobs || (p.top_logprobs > 0 && p.logprobs_mode == LogprobsMode::kProcessed);
  if (Status s = pipe.build(dist, need_processed_z); !s.ok()) {
    result.status = std::move(s);
    return;
  }
  result.support = dist.support;

  // Draws. A segment's walk runs in the frame its masses were formed in:
  // the row's, or (dist.framed) its own, the mass still to go scaled into it.
  auto walk_segment = [&](size_t s, double cum, double target) {
    const double* blocks = sc.block_mass.data() + sc.seg_block_start[s];
    if (!dist.framed) return run.k->walk(dist.segs[s], dist.set, dist.k0, blocks, cum, target);
    return run.k->walk(dist.segs[s], frame_of(dist.set, sc.max_stats[s].max), 0.0f, blocks, 0.0,
                       (target - cum) / sc.seg_factor[s]);
  };
  const auto n = static_cast<size_t>(p.num_samples);
  result.tokens.resize(n);
  if (dist.greedy) {
    std::fill(result.tokens.begin(), result.tokens.end(), dist.greedy_token);
  } else {
    for (size_t j = 0; j < n; ++j) {
      const double target =
          philox_uniform(seed, request.step, static_cast<uint32_t>(j), kDrawPurpose) * dist.z;
      double cum = 0.0;
      int32_t token = -1;
      size_t last_positive = dist.segs.size();
      for (size_t s = 0; s < dist.segs.size(); ++s) {
        const double m = sc.seg_mass[s];
        if (m <= 0.0) continue;
        last_positive = s;
        if (cum + m >= target) {
          const int64_t at = walk_segment(s, cum, target);
          if (at >= 0) token = dist.segs[s].token(at);
          break;
        }
        cum += m;
      }
      if (token < 0 && last_positive < dist.segs.size()) {
        // Rounding left u * Z beyond the summed mass: the last token of positive mass.
        const int64_t at = walk_segment(last_positive, 0.0, kInf);
        token = dist.segs[last_positive].token(at);
      }
      result.tokens[j] = token;
    }
  }

  // Log-probabilities of the sampled tokens.
  double raw_log_z = 0.0;
  const bool need_raw_z =
      p.logprobs || (p.top_logprobs > 0 && p.logprobs_mode == LogprobsMode::kRaw);
  SetSpec raw_set;
  raw_set.xmax = dist.raw_max;
  if (need_raw_z) {
    double raw_z = raw_normaliser(dist, request, input.vocab, sc, run);
    if (!(raw_z > 0.0)) raw_z = pipe.mass_of(sc.raw_segs, raw_set, 0.0f, nullptr);
    raw_log_z = std::log(raw_z);
  }
  // mass_of overwrote the per-segment masses; the draws are done with them.
  const double log_z = std::log(dist.z);
  result.logprobs.resize(n);
  result.raw_logprobs.resize(n);
  for (size_t j = 0; j < n; ++j) {
    const int32_t t = result.tokens[j];
    if (!p.logprobs) {
      result.logprobs[j] = std::nanf("");
      result.raw_logprobs[j] = std::nanf("");
      continue;
    }
    const float key = (dist.set.xmax - dist.x[t]) * dist.set.key_scale;
    result.logprobs[j] = logprob_of(key - dist.k0, log_z);
    const float raw_key = dist.raw_max - dist.raw[t];
    result.raw_logprobs[j] = logprob_of(raw_key, raw_log_z);
  }

  // Top-N and ranks, in the requested distribution.
  if (p.top_logprobs > 0) {
    const bool raw = p.logprobs_mode == LogprobsMode::kRaw;
    const std::span<const Segment> segs = raw ? std::span<const Segment>(sc.raw_segs) : dist.segs;
    const SetSpec& set = raw ? raw_set : dist.set;
    const float k0 = raw ? 0.0f : dist.k0;
    const double lz = raw ? raw_log_z : log_z;
    const KeyRule counting{KeyKind::kDistance, false, 0.0f, 0.0};
    const SelectResult r = weighted_select(segs, set, counting, p.top_logprobs, sc.select, run);
    const float c = r.found ? r.key : kInf;
    size_t room = 0;
    for (const Segment& s : segs) room += static_cast<size_t>(s.n);
    if (sc.top.size() < room) sc.top.resize(room);
    size_t found = 0;
    for (const Segment& s : segs) {
      found += static_cast<size_t>(run.k->gather_le(s, set, c, sc.top.data() + found));
    }
    // Key ascending, then token id. Ties at the N-th key are all gathered (a
    // flat row can bring the whole vocabulary), so only the first N are
    // sorted: the order is total, so they are those a full sort would give.
    const size_t keep = std::min(found, static_cast<size_t>(p.top_logprobs));
    const auto end = sc.top.begin() + static_cast<std::ptrdiff_t>(found);
    std::partial_sort(sc.top.begin(), sc.top.begin() + static_cast<std::ptrdiff_t>(keep), end,
                      [](const KeyToken& a, const KeyToken& b) {
                        return a.key < b.key || (a.key == b.key && a.token < b.token);
                      });
    result.top_logprobs.resize(keep);
    for (size_t i = 0; i < keep; ++i) {
      result.top_logprobs[i] = TokenLogprob{sc.top[i].token, logprob_of(sc.top[i].key - k0, lz)};
    }
    // A rank costs a pass over the row; many draws of a row repeat a few
    // tokens, whose ranks the first 64 distinct ones keep.
    result.ranks.resize(n);
    std::array<std::pair<int32_t, int32_t>, 64> known;  // (token, rank)
    size_t num_known = 0;
    for (size_t j = 0; j < n; ++j) {
      const int32_t t = result.tokens[j];
      const auto seen = std::find_if(known.begin(), known.begin() + num_known,
                                     [t](const auto& e) { return e.first == t; });
      if (seen != known.begin() + num_known) {
        result.ranks[j] = seen->second;
        continue;
      }
      const float key = raw ? (dist.raw_max - dist.raw[t]) : (set.xmax - dist.x[t]) * set.key_scale;
      int64_t below = 0;
      for (const Segment& s : segs) below += run.k->count_key_below(s, set, key);
      result.ranks[j] = static_cast<int32_t>(below + 1);
      if (num_known < known.size()) known[num_known++] = {t, result.ranks[j]};
    }
  }
}

Status probs_row(const RowInput& input, const RowRequest& request, int64_t row, float* out,
                 RowScratch& sc, const Runner& run, bool greedy_one_hot) {
  RowPipeline pipe(input, request, row, sc, run);
  Distribution dist;
  // (a greedy row forms its normaliser only for the softmax; every other
  // row always does)
  const bool one_hot = greedy_one_hot && request.params.temperature == 0.0f;
  if (Status s = pipe.build(dist, !one_hot); !s.ok()) {
    std::fill_n(out, input.vocab, 0.0f);
    return s;
  }
  if (one_hot) {
    std::fill_n(out, input.vocab, 0.0f);
    out[dist.greedy_token] = 1.0f;
    return Status();
  }
  // The kept set is described by its bounds, so the row's own chunks
  // enumerate it whether or not it was compacted; when the row's tokens
  // came as candidates from the start (a sparse allowed-token mask), those
  // do, their probabilities written in a list and then to their tokens.
  const double inv_z = 1.0 / dist.z;
  if (sc.row_segs.size() == 1 && sc.row_segs[0].idx) {
    const Segment& seg = sc.row_segs[0];
    std::fill_n(out, input.vocab, 0.0f);
    float* listed = sc.select.keys.data();  // (free after the build)
    run.k->write_probs(seg, dist.set, dist.k0, inv_z, listed);
    for (int64_t j = 0; j < seg.n; ++j) out[seg.idx[j]] = listed[j];
    return Status();
  }
  run(static_cast<int64_t>(sc.row_segs.size()), [&](int64_t s) {
    const Segment& seg = sc.row_segs[static_cast<size_t>(s)];
    run.k->write_probs(seg, dist.set, dist.k0, inv_z, out + seg.base);
  });
  return Status();
}

}  // namespace nucleus::detail
