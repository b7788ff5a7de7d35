// nucleus — the sampling engine: one call turns a batch of logit rows into
// tokens, exactly as SPEC.md defines, on the threads the host allows.
//
// Example:
//   nucleus::Engine engine({.max_threads = 4});
//   nucleus::LogitsView view{logits, rows, vocab, vocab, nucleus::DType::kFloat32};
//   std::vector<nucleus::RowRequest> requests(rows);   // or one, shared by all rows
//   std::vector<nucleus::RowResult> results(rows);
//   nucleus::Status s = engine.sample(view, requests, results);
//   // s is a call error (nothing written) or OK; each results[i].status says
//   // whether row i was sampled.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {

// The instruction sets the row passes are compiled for. The engine runs the
// best one the CPU supports, at most the one asked for (EngineOptions::isa)
// and at most the one named by the environment variable NUCLEUS_ISA
// (sse2 | avx2 | avx512). Tokens and probabilities are reproducible on one
// instruction set; between sets the last bits of sums may differ (packet
// widths, fused multiply-adds), which can move a draw that lands within
// rounding of a token boundary.
enum class Isa {
  kAuto = 0,    // the best this machine supports
  kSSE2 = 1,    // x86-64 baseline
  kAVX2 = 2,    // x86-64-v3: AVX2, FMA, F16C
  kAVX512 = 3,  // x86-64-v4: AVX-512 F/BW/DQ/VL
};
// "auto", "sse2", "avx2" or "avx512".
const char* isa_name(Isa isa);
// The inverse of isa_name (case-insensitive); nullopt for anything else.
std::optional<Isa> parse_isa(std::string_view name);
// The best instruction set this CPU and OS support.
Isa best_isa();
// The set an engine asking for `requested` runs: min(requested, NUCLEUS_ISA,
// best_isa()), kAuto meaning no limit (and so does a value outside the
// enumeration, which only a cast makes).
Isa resolve_isa(Isa requested);
// The sets an engine here can run (up to resolve_isa(kAuto)), lowest first.
std::vector<Isa> runnable_isas();

// Whether each row's exp passes bring the next row of a batch into cache
// (speed only, never results: README, "Reading the next row ahead"). A row
// of a large batch comes from memory, and its scan waits on it; read ahead,
// it comes from L2. A small batch is mostly cached already, unless it has
// just been copied in from a device.
// As an option, kAuto leaves the last word to NUCLEUS_READ_AHEAD (a
// deployment can switch it without a rebuild); as the mode an engine runs
// (Engine::read_ahead), it is the rule below.
enum class ReadAhead {
  kAuto = 0,    // batches of 32 MiB of logits or more, and from 1 MB those
                // whose rows a probe (32 KiB read twice) finds in memory
  kAlways = 1,  // every batch of two rows or more
  kNever = 2,
};
// "auto", "always" or "never".
const char* read_ahead_name(ReadAhead mode);
// The inverse of read_ahead_name (case-insensitive); nullopt for anything else.
std::optional<ReadAhead> parse_read_ahead(std::string_view name);

struct EngineOptions {
  int max_threads = 0;  // 0 or less (or more than there are): every core the process may use
  std::optional<uint64_t> seed = std::nullopt;  // for unseeded rows; none: from the system
  Isa isa = Isa::kAuto;                         // the highest instruction set to use
  // kAuto: as the environment variable NUCLEUS_READ_AHEAD says (auto, always
  // or never; unset: auto); kAlways or kNever overrides it (a value outside
  // the enumeration, which only a cast makes, is kAuto's).
  ReadAhead read_ahead = ReadAhead::kAuto;
};

class Engine {
 public:
  // Reads NUCLEUS_READ_AHEAD from the environment when options.read_ahead is
  // kAuto (ReadAhead; docs/cli.md). After fork(), a child makes the engines
  // it uses: oneTBB's worker threads are not copied into it, and an engine
  // another thread of the parent was calling at the fork can hang there.
  explicit Engine(const EngineOptions& options = {});
  ~Engine();
  // A moved-from engine may only be destroyed or assigned to.
  Engine(Engine&&) noexcept;
  Engine& operator=(Engine&&) noexcept;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Samples every row. `requests` holds one request per row, or one request
  // shared by every row; `results` holds one result per row. (A shared
  // request's seed is every row's: the rows then draw with the same
  // uniforms, and equal rows draw equal tokens. For independent rows give
  // each its own seed, as the nucleus program and the Python module do with
  // S + r.) A call error (SPEC section 7) writes nothing; a row error sets
  // that row's status only.
  // Safe to call from many host threads at once.
  // (`logits.data` is aligned to its dtype's size, as any pointer to such
  // elements must be: else a call error.)
  Status sample(const LogitsView& logits, std::span<const RowRequest> requests,
                std::span<RowResult> results);

  // The final distribution of each row (after masks, penalties, temperature
  // and filters): probabilities, zero for removed tokens, written to
  // `out + row * out_stride`. Greedy rows give softmax of the processed
  // logits. `row_status` (one per row) receives row errors; such rows are
  // left zero. `out` may be the float32 logits themselves (same address and
  // stride: each row is written in place); any other overlap with the
  // logits is a call error (rows run in parallel: one row's output would
  // overwrite logits another has yet to read).
  Status probs(const LogitsView& logits, std::span<const RowRequest> requests, float* out,
               int64_t out_stride, std::span<Status> row_status);

  // Speculative-decoding verification (Leviathan et al. 2023; Chen et al.
  // 2023). Row r of the batch has K = num_draft draft tokens
  // draft_tokens[r*K .. r*K+K) and K+1 target rows, target_logits rows
  // r*(K+1) .. r*(K+1)+K (so target_logits.rows = rows * (K+1)). Each target
  // row's distribution is the final distribution of requests[r] at that
  // position, with the drafts before it appended to the generated tokens (for
  // the penalties). draft_probs, when not null, holds the drafter's
  // probabilities, float32, rows × K × vocab (row-major, stride vocab), each
  // row finite values >= 0 that sum to 1 within 0.01 (else a call error: a
  // row scaled otherwise would bias the output silently); null means a
  // deterministic drafter (probability 1 on each draft token).
  //
  // Draft i is accepted with probability min(1, p(x)/q(x)) (never when
  // q(x) = 0, as vLLM; a greedy row accepts exactly its argmax, whatever q);
  // at the first rejection a token is drawn from
  // max(p - q, 0) renormalised and the row stops; when all K are accepted a
  // bonus token is drawn from the last target row. The output is distributed
  // exactly as sampling from the target (for drafter rows that sum to 1: one
  // off by less than the tolerance is used as it is). Target rows past the first
  // rejection are not read: a NaN or +inf there is no row error.
  // Uniforms come from Philox keyed by the row's seed with counter
  // (step + i, 0, purpose), so the reproducibility contract holds. Position
  // i uses step + i: the next call's step is this one's plus the tokens it
  // emitted (accepted + 1), the sequence position, so that no uniform is
  // used twice (a step advanced by 1 per call would reuse them). The
  // requests' draw fields (num_samples, logprobs, top_logprobs,
  // logprobs_mode) do not apply and are ignored, so that one request serves
  // sample and verify: a position draws one token and no log-probability
  // is returned.
  Status verify(const LogitsView& target_logits, int64_t num_draft,
                std::span<const int32_t> draft_tokens, const float* draft_probs,
                std::span<const RowRequest> requests, std::span<VerifyResult> results);

  // The number of threads this engine may use.
  int max_threads() const;
  // The instruction set this engine's row passes run (never kAuto).
  Isa isa() const;
  // When this engine reads the next row ahead: EngineOptions::read_ahead, or
  // NUCLEUS_READ_AHEAD's mode where that was kAuto (kAuto: the size rule).
  ReadAhead read_ahead() const;

  // Runs `work` inside the engine's oneTBB arena and returns when it is done:
  // a tbb::parallel_for in it shares the engine's threads. oneTBB moves an
  // idle worker thread from one arena to another only after it has idled a
  // while (~0.2 ms on the development machine), so a host that alternates
  // parallel work of its own, in another arena, with sampling calls would
  // find the engine's threads away at the start of each call; its work run
  // here does not. `work` runs on the calling thread when the arena has a
  // free slot (one per max_threads); when calls from other host threads hold
  // them all, it may run on one of the engine's threads while the caller
  // waits, and it holds a slot while it runs: it must not wait for another
  // host thread's call to this engine. Calls made from `work` (a
  // tbb::parallel_for of calls) are isolated: a thread that waits inside one
  // for its rows runs only that call's tasks, never another iteration of
  // `work`'s loop, so an iteration may hold a lock across its call.
  // Exceptions from `work` propagate.
  // (A callable larger than two pointers is copied to the heap for the
  // std::function; `[&f] { f(); }` passes a larger one without that.)
  void execute(const std::function<void()>& work);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Library version, "MAJOR.MINOR.PATCH".
const char* version();

}  // namespace nucleus
