// The parallel driver: validates a call, then spreads its rows over the
// engine's oneTBB arena. Rows run in parallel; when a batch has fewer rows
// than threads, each row's chunk passes run in parallel too (the chunks are
// fixed, so results do not depend on the thread count).
#include <Random123/philox.h>
#include <pthread.h>
#include <sys/random.h>
#include <tbb/global_control.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <limits>
#include <memory>
#include <mutex>
#include <new>
#include <random>
#include <string>
#include <vector>

#include "engine/ascii_lower.h"
#include "engine/parallel/residency.h"
#include "engine/row/params_check.h"
#include "engine/row/row_sampler.h"
#include "engine/row/verify.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

// Scratch is handed out per row task rather than per thread: a thread that
// waits inside a nested parallel loop may pick up another row meanwhile.
class ScratchPool {
 public:
  std::unique_ptr<detail::RowScratch> acquire() {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        std::unique_ptr<detail::RowScratch> s(free_.back());
        free_.pop_back();
        return s;
      }
    }
    return std::make_unique<detail::RowScratch>();
  }
  void release(std::unique_ptr<detail::RowScratch> s) {
    const std::lock_guard<std::mutex> lock(mutex_);
    // (Room is reserved, so this does not allocate; if it ever had to and
    // failed, `s` would still own the scratch and free it.)
    free_.push_back(s.get());
    s.release();
  }
  // One scratch per arena slot up front, handed out last-in first-out: the
  // scratch a row gets is the one the last row used, whose buffers (a
  // processed copy of the row, stored keys) are still in this core's cache.
  // (First-in first-out would rotate through all of them, so that one row at
  // a time on two threads found its buffers cold every other call.) After the
  // first calls of a given shape nothing is allocated.
  void reserve(int n) {
    free_.reserve(static_cast<size_t>(n) + 64);
    for (int i = 0; i < n; ++i) free_.push_back(new detail::RowScratch());
  }
  // Sizes every free scratch for rows of `vocab` tokens the first time a call
  // brings rows that long, so that whichever scratch a later row is handed
  // (which depends on thread timing) is ready and nothing is allocated then.
  void prepare(int64_t vocab) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (vocab <= prepared_vocab_) return;
    for (detail::RowScratch* s : free_) s->prepare(vocab);
    prepared_vocab_ = vocab;
  }
  // The same for verification's per-row lists: `positions` target rows and
  // a history of up to `history` tokens.
  void prepare_verify(int64_t positions, int64_t history) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (positions <= verify_positions_ && history <= verify_history_) return;
    positions = std::max(positions, verify_positions_);
    history = std::max(history, verify_history_);
    for (detail::RowScratch* s : free_) s->prepare_verify(positions, history);
    verify_positions_ = positions;
    verify_history_ = history;
  }
  ~ScratchPool() {
    for (detail::RowScratch* raw : free_) delete raw;
  }

 private:
  std::mutex mutex_;
  std::vector<detail::RowScratch*> free_;
  int64_t prepared_vocab_ = 0;
  int64_t verify_positions_ = 0;
  int64_t verify_history_ = 0;
};

// From this size on (rows x row stride, in bytes; verify: every position)
// each row's exp passes bring the next row into L2 (RowInput::next; not for
// greedy, top-k or min-p rows, nor rows that split their passes over the
// threads). A batch this large
// outgrows the last-level cache of a core complex (32 MB on current AMD
// parts), so its rows come from memory, and a row's scan, which otherwise
// waits on memory there, finds it in L2: full sampling, top-p, typical-p and
// penalty + top-p at batch 256 x 128256 took 13-23 % less time on one
// thread (float32; docs/performance.md, "Batches"). A smaller batch is
// mostly cached already (as one the benchmark has just sampled, or the host
// has just written), and the prefetches then cost more than they save: at
// batch 8 3-12 % more. But a batch that arrives uncached (copied from a
// device) gains at every size (batch 8, one thread: 6-18 %): below this
// size a probe tells the two apart (kProbeFromBytes, below), and the host
// may also say (EngineOptions::read_ahead or NUCLEUS_READ_AHEAD).
constexpr int64_t kAheadFromBytes = int64_t{32} << 20;

// NUCLEUS_READ_AHEAD, read when an engine whose options leave the choice
// (ReadAhead::kAuto) is made. A value that names no mode is reported once on
// standard error and taken as auto.
ReadAhead environment_read_ahead() {
  const char* v = std::getenv("NUCLEUS_READ_AHEAD");
  if (v == nullptr || *v == '\0') return ReadAhead::kAuto;
  if (auto mode = parse_read_ahead(v)) return *mode;
  static std::once_flag reported;
  std::call_once(reported, [v] {
    std::fprintf(stderr,
                 "nucleus: ignoring NUCLEUS_READ_AHEAD=%s (expected auto, always or never)\n", v);
  });
  return ReadAhead::kAuto;
}

// The mode an engine made with `requested` uses: always or never as asked,
// else NUCLEUS_READ_AHEAD's (a value outside the enumeration, made by a
// cast, is kAuto's).
ReadAhead resolve_read_ahead(ReadAhead requested) {
  const bool named = requested == ReadAhead::kAlways || requested == ReadAhead::kNever;
  return named ? requested : environment_read_ahead();
}

// The batch size in bytes from which a mode reads rows ahead: kAheadFromBytes,
// every batch of two rows or more (as far as for_rows's exceptions allow), or
// none.
int64_t read_ahead_from(ReadAhead mode) {
  switch (mode) {
    case ReadAhead::kAlways:
      return 0;
    case ReadAhead::kNever:
      return std::numeric_limits<int64_t>::max();
    case ReadAhead::kAuto:
      break;
  }
  return kAheadFromBytes;
}

// Under kAuto, a batch from this size up to kAheadFromBytes reads ahead when
// a probe finds its rows coming from memory (detail::rows_from_memory); a
// smaller one would gain too little for the probe's ~0.3-2.5 us.
constexpr int64_t kProbeFromBytes = 1000000;

uint64_t system_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

// Mixed into the key of every engine seeded from the system; a forked
// child draws a new one (pthread_atfork: the child handler runs on the
// child's one thread, before anything else there; getrandom, no lock, no
// allocation), so engines copied into it draw apart from the parent's.
std::atomic<uint64_t> fork_salt{0};

void new_fork_salt() {
  uint64_t fresh = 0;
  if (::getrandom(&fresh, sizeof fresh, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof fresh)) {
    // (no entropy yet: the clock and the child's pid, which differ from the
    // parent's)
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    fresh = (static_cast<uint64_t>(now.tv_nsec) << 32) ^ static_cast<uint64_t>(now.tv_sec) ^
            (static_cast<uint64_t>(::getpid()) << 17);
  }
  // (splitmix64's finaliser: every bit of the fresh value moves the salt)
  uint64_t z = fork_salt.load(std::memory_order_relaxed) ^ fresh ^ 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  fork_salt.store(z ^ (z >> 31), std::memory_order_relaxed);
}

void register_fork_salt() {
  static const int registered = ::pthread_atfork(nullptr, nullptr, new_fork_salt);
  (void)registered;
}

}  // namespace

struct Engine::Impl {
  int threads = 1;
  const detail::Kernels* kernels = nullptr;
  // The generator of unseeded rows: a key and a counter of rows.
  uint64_t seed = 0;
  std::atomic<uint64_t> counter{0};
  bool system_seeded = false;  // (no EngineOptions::seed)
  ReadAhead read_ahead = ReadAhead::kAuto;
  int64_t ahead_from = 0;  // read_ahead_from(read_ahead)

  // Whether the rows of a call of `tasks` row tasks over rows of `vocab`
  // tokens split their passes over the threads (Runner::parallel).
  bool splits_rows(int64_t tasks, int64_t vocab) const {
    return tasks < threads && vocab > detail::kChunk;
  }

  // Whether the `rows` rows of a batch (`vocab` elements of `esize` bytes,
  // `stride` elements apart from `data`), sampled by `tasks` row tasks with
  // `requests`, take the next row ahead: never when the rows split their
  // passes; from ahead_from bytes on; and under kAuto from kProbeFromBytes
  // on, when some row would read ahead (not every one is light) and the
  // probe finds the rows coming from memory (a view that spans 2^57 bytes
  // or more never gets here, check_extent: no overflow).
  bool reads_ahead(const void* data, int64_t rows, int64_t vocab, int64_t stride, int64_t esize,
                   std::span<const RowRequest> requests, int64_t tasks) const {
    if (rows < 2 || splits_rows(tasks, vocab)) return false;
    const int64_t row_bytes = stride * esize;
    if (row_bytes >= ahead_from / rows) return true;
    if (read_ahead != ReadAhead::kAuto || row_bytes < kProbeFromBytes / rows) return false;
    bool any = false;
    for (const RowRequest& r : requests) any |= !detail::is_light_row(r.params, vocab);
    return any &&
           detail::rows_from_memory(static_cast<const char*>(data), row_bytes, vocab * esize);
  }
  std::unique_ptr<tbb::task_arena> arena;
  ScratchPool pool;

  // The key and the first counter value of a call's `rows` unseeded rows.
  // An engine seeded from the system takes the process's fork salt into its
  // key (0 until a fork), so that a forked child does not repeat its
  // parent's draws from its copy of the key and counter (Python's random
  // module reseeds at fork for the same reason); one seeded by the host
  // keeps its stream.
  struct Unseeded {
    uint64_t key = 0, base = 0;
  };
  Unseeded unseeded(uint64_t rows) {
    const uint64_t salt = system_seeded ? fork_salt.load(std::memory_order_relaxed) : 0;
    return {seed ^ salt, counter.fetch_add(rows)};
  }

  // Seeds for unseeded rows, fixed before the rows are spread over threads.
  static uint64_t derive_seed(const Unseeded& u, uint64_t row) {
    const uint64_t n = u.base + row;
    r123::Philox4x32 rng;
    const r123::Philox4x32::key_type key = {
        {static_cast<uint32_t>(u.key), static_cast<uint32_t>(u.key >> 32)}};
    const r123::Philox4x32::ctr_type ctr = {
        {static_cast<uint32_t>(n), static_cast<uint32_t>(n >> 32), 0, 0x5eed}};
    const auto out = rng(ctr, key);
    return (static_cast<uint64_t>(out[0]) << 32) | out[1];
  }

  // Runs per_row(row, next, scratch, runner) for rows [0, rows) over the
  // arena, each with a pooled scratch sized for `vocab` tokens. `next` is
  // row + 1 (-1 for the last row, or when a row splits its passes over the
  // threads): the row this thread most likely samples next, whose lines the
  // exp passes may bring into L2 (RowInput::next). Most likely only: oneTBB
  // hands rows out in ranges of one or two once two threads share a batch
  // (its auto partitioner), and a row another thread takes then comes from
  // this core's cache rather than from memory. (Ranges of many rows per
  // thread, with a simple partitioner, measured the same at batch 256 and
  // balance a batch worse.) Errors are values
  // at the API: an allocation that fails inside a row becomes that row's
  // status (on_bad_alloc(row)), one that fails sizing the scratch the call's.
  template <typename F, typename G>
  Status for_rows(int64_t rows, int64_t vocab, F&& per_row, G&& on_bad_alloc) {
    const detail::Runner runner{splits_rows(rows, vocab), kernels};
    try {
      pool.prepare(vocab);
    } catch (const std::bad_alloc&) {
      return Status::internal("out of memory sizing the scratch for rows of " +
                              std::to_string(vocab) + " tokens");
    }
    const auto loop = [&] {
      tbb::parallel_for(int64_t{0}, rows, [&](int64_t row) {
        const int64_t next = row + 1 < rows && !runner.parallel ? row + 1 : -1;
        std::unique_ptr<detail::RowScratch> scratch;
        try {
          scratch = pool.acquire();
          per_row(row, next, *scratch, runner);
        } catch (const std::bad_alloc&) {
          on_bad_alloc(row);
        }
        if (scratch) pool.release(std::move(scratch));
      });
    };
    // Isolated: a thread that waits for this call's rows, or for a row's
    // chunks, takes only this call's tasks. A call made from a host loop run
    // in the arena (execute) would otherwise take up the loop's other
    // iterations while it waits, one inside another: an iteration that holds
    // a lock across its call would then wait on itself. (A single row that
    // is not split never waits, and neither does a call on an engine of one
    // thread, which runs its own tasks first, the last spawned: they run as
    // they are.)
    try {
      arena->execute([&] {
        if ((rows == 1 && !runner.parallel) || threads == 1) {
          loop();
        } else {
          tbb::this_task_arena::isolate(loop);
        }
      });
    } catch (const std::bad_alloc&) {
      // (oneTBB's own bookkeeping, outside any row)
      return Status::internal("out of memory starting the rows");
    }
    return Status();
  }

  template <typename F, typename G>
  Status run_rows(const LogitsView& logits, std::span<const RowRequest> requests,
                  int64_t results_size, F&& per_row, G&& on_bad_alloc) {
    if (Status s = detail::check_call(logits, requests, results_size); !s.ok()) return s;
    const bool shared = requests.size() == 1;
    for (size_t r = 0; r < requests.size(); ++r) {
      const int64_t row = shared && logits.rows > 1 ? -1 : static_cast<int64_t>(r);
      if (Status s = detail::check_request(requests[r], row, logits.vocab); !s.ok()) return s;
    }
    const int64_t stride = detail::row_stride_of(logits);
    const auto row_data = [&](int64_t row) {
      return static_cast<const char*>(logits.data) + row * stride * dtype_size(logits.dtype);
    };
    const bool ahead = reads_ahead(logits.data, logits.rows, logits.vocab, stride,
                                   dtype_size(logits.dtype), requests, logits.rows);
    return for_rows(
        logits.rows, logits.vocab,
        [&](int64_t row, int64_t next, detail::RowScratch& scratch, const detail::Runner& runner) {
          const RowRequest& req = requests[shared ? 0 : static_cast<size_t>(row)];
          const detail::RowInput input{row_data(row), logits.dtype, logits.vocab,
                                       ahead && next >= 0 ? row_data(next) : nullptr};
          per_row(row, req, input, scratch, runner);
        },
        on_bad_alloc);
  }
};

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  // More threads than oneTBB allows the process (its cores, unless the host
  // set tbb::global_control's max_allowed_parallelism) would not be more
  // parallel: an arena is granted no more workers (and oneTBB says so on
  // stderr).
  const int available = static_cast<int>(std::min<size_t>(
      tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism),
      std::numeric_limits<int>::max()));
  impl_->threads = options.max_threads > 0 ? std::min(options.max_threads, available) : available;
  impl_->system_seeded = !options.seed;
  impl_->seed = options.seed ? *options.seed : system_seed();
  if (impl_->system_seeded) register_fork_salt();
  impl_->kernels = &detail::kernels_for(resolve_isa(options.isa));
  impl_->read_ahead = resolve_read_ahead(options.read_ahead);
  impl_->ahead_from = read_ahead_from(impl_->read_ahead);
  impl_->arena = std::make_unique<tbb::task_arena>(impl_->threads);
  impl_->pool.reserve(impl_->threads);
}

Engine::~Engine() = default;
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;

int Engine::max_threads() const { return impl_->threads; }

Isa Engine::isa() const { return impl_->kernels->isa; }

ReadAhead Engine::read_ahead() const { return impl_->read_ahead; }

const char* read_ahead_name(ReadAhead mode) {
  switch (mode) {
    case ReadAhead::kAlways:
      return "always";
    case ReadAhead::kNever:
      return "never";
    case ReadAhead::kAuto:
      break;
  }
  return "auto";
}

std::optional<ReadAhead> parse_read_ahead(std::string_view name) {
  const std::string lower = detail::ascii_lower(name);
  for (ReadAhead mode : {ReadAhead::kAuto, ReadAhead::kAlways, ReadAhead::kNever}) {
    if (lower == read_ahead_name(mode)) return mode;
  }
  return std::nullopt;
}

void Engine::execute(const std::function<void()>& work) { impl_->arena->execute(work); }

Status Engine::sample(const LogitsView& logits, std::span<const RowRequest> requests,
                      std::span<RowResult> results) {
  // Unseeded rows take seeds from one block of the engine's counter.
  Impl::Unseeded unseeded;
  bool any_unseeded = false;
  for (const RowRequest& r : requests) any_unseeded |= !r.seed.has_value();
  if (any_unseeded && logits.rows > 0) {
    unseeded = impl_->unseeded(static_cast<uint64_t>(logits.rows));
  }
  const bool shared = requests.size() == 1;
  return impl_->run_rows(
      logits, requests, static_cast<int64_t>(results.size()),
      [&](int64_t row, const RowRequest& req, const detail::RowInput& input,
          detail::RowScratch& scratch, const detail::Runner& runner) {
        const uint64_t seed =
            req.seed ? *req.seed : Impl::derive_seed(unseeded, static_cast<uint64_t>(row));
        (void)shared;
        detail::sample_row(input, req, seed, row, results[static_cast<size_t>(row)], scratch,
                           runner);
      },
      [&](int64_t row) {
        RowResult& r = results[static_cast<size_t>(row)];
        r.clear();
        r.status = Status::internal("row " + std::to_string(row) + ": out of memory");
      });
}

namespace {

// Whether some output row shares bytes with a logits row other than its own
// row exactly (the one overlap allowed: float32 rows written in place).
// Rows, not spans: an output interleaved with the logits, or in the padding
// between their rows, shares nothing.
bool output_overlaps_logits(const LogitsView& logits, const float* out, int64_t out_stride) {
  // (Called on views check_call and check_extent accepted: both span less
  // than 2^57 bytes, so no offset below overflows.)
  const int64_t stride = detail::row_stride_of(logits);
  const int64_t es = dtype_size(logits.dtype);
  const int64_t row_bytes = logits.vocab * es, out_bytes = logits.vocab * int64_t{4};
  const int64_t step = stride * es, out_step = out_stride * int64_t{4};
  // Byte offsets from the logits (bounded above: no overflow).
  const auto in = reinterpret_cast<intptr_t>(logits.data);
  const auto at = reinterpret_cast<intptr_t>(out);
  const int64_t span = (logits.rows - 1) * step + row_bytes;
  const int64_t out_span = (logits.rows - 1) * out_step + out_bytes;
  if (at >= in + span || in >= at + out_span) return false;
  auto floor_div = [](int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); };
  for (int64_t r = 0; r < logits.rows; ++r) {
    // Output row r is [lo, lo + out_bytes); logits row k is [k step, k step + row_bytes).
    const int64_t lo = at - in + r * out_step;
    const int64_t k_first = std::max<int64_t>(0, floor_div(lo - row_bytes, step) + 1);
    const int64_t k_last = std::min<int64_t>(logits.rows - 1, floor_div(lo + out_bytes - 1, step));
    for (int64_t k = k_first; k <= k_last; ++k) {
      const bool own_row_in_place = k == r && lo == k * step && es == 4;
      if (!own_row_in_place) return true;
    }
  }
  return false;
}

}  // namespace

Status Engine::probs(const LogitsView& logits, std::span<const RowRequest> requests, float* out,
                     int64_t out_stride, std::span<Status> row_status) {
  if (out == nullptr) return Status::invalid_argument("probs: out is null");
  if (Status s = detail::check_aligned("probs: out", out, 4); !s.ok()) return s;
  if (out_stride < logits.vocab) {
    return Status::invalid_argument("probs: out_stride = " + std::to_string(out_stride) +
                                    " is smaller than vocab = " + std::to_string(logits.vocab));
  }
  if (static_cast<int64_t>(row_status.size()) != logits.rows) {
    return Status::invalid_argument(
        "probs: row_status size = " + std::to_string(row_status.size()) +
        " must equal rows = " + std::to_string(logits.rows));
  }
  // (the logits' checks first: the overlap's needs views that can exist)
  if (Status s = detail::check_call(logits, requests, -1); !s.ok()) return s;
  if (Status s = detail::check_extent("probs: out", "out_stride", logits.rows, out_stride,
                                      logits.vocab, 4);
      !s.ok()) {
    return s;
  }
  if (output_overlaps_logits(logits, out, out_stride)) {
    return Status::invalid_argument(
        "probs: out overlaps the logits other than row for row in place (same address, row for "
        "row, float32): rows written in parallel would overwrite logits not yet read");
  }
  return impl_->run_rows(
      logits, requests, -1,
      [&](int64_t row, const RowRequest& req, const detail::RowInput& input,
          detail::RowScratch& scratch, const detail::Runner& runner) {
        row_status[static_cast<size_t>(row)] =
            detail::probs_row(input, req, row, out + row * out_stride, scratch, runner);
      },
      [&](int64_t row) {
        row_status[static_cast<size_t>(row)] =
            Status::internal("row " + std::to_string(row) + ": out of memory");
      });
}

Status Engine::verify(const LogitsView& target_logits, int64_t num_draft,
                      std::span<const int32_t> draft_tokens, const float* draft_probs,
                      std::span<const RowRequest> requests, std::span<VerifyResult> results) {
  int64_t rows = 0;
  if (Status s = detail::check_verify_view(target_logits, num_draft, &rows); !s.ok()) return s;
  const int64_t per_row = num_draft + 1;
  // The per-row view (rows of K + 1 positions) for the shared checks.
  LogitsView by_row = target_logits;
  by_row.rows = rows;
  if (Status s = detail::check_call(by_row, requests, static_cast<int64_t>(results.size()));
      !s.ok()) {
    return s;
  }
  const int64_t vocab = target_logits.vocab;
  const int64_t stride = detail::row_stride_of(target_logits);
  const int esize = dtype_size(target_logits.dtype);
  const bool shared = requests.size() == 1;
  for (size_t r = 0; r < requests.size(); ++r) {
    const int64_t row = shared && rows > 1 ? -1 : static_cast<int64_t>(r);
    if (Status s = detail::check_request(requests[r], row, target_logits.vocab); !s.ok()) return s;
  }
  if (Status s = detail::check_drafts(draft_tokens, draft_probs, rows, num_draft, vocab); !s.ok()) {
    return s;
  }

  Impl::Unseeded unseeded;
  bool any_unseeded = false;
  for (const RowRequest& r : requests) any_unseeded |= !r.seed.has_value();
  if (any_unseeded) unseeded = impl_->unseeded(static_cast<uint64_t>(rows));
  const bool ahead = impl_->reads_ahead(target_logits.data, target_logits.rows, vocab, stride,
                                        esize, requests, rows);
  // Every pooled scratch gets room for the row inputs and the longest
  // history plus the drafts, so the steady state allocates nothing whichever
  // scratch a row is handed.
  size_t history = 0;
  for (const RowRequest& r : requests) history = std::max(history, r.generated_tokens.size());
  try {
    impl_->pool.prepare_verify(per_row, static_cast<int64_t>(history) + num_draft);
  } catch (const std::bad_alloc&) {
    return Status::internal("verify: out of memory sizing the scratch");
  }
  return impl_->for_rows(
      rows, vocab,
      [&](int64_t row, int64_t next, detail::RowScratch& scratch, const detail::Runner& runner) {
        const RowRequest& req = requests[shared ? 0 : static_cast<size_t>(row)];
        const uint64_t seed =
            req.seed ? *req.seed : Impl::derive_seed(unseeded, static_cast<uint64_t>(row));
        std::vector<detail::RowInput>& positions = scratch.verify_positions;
        positions.resize(static_cast<size_t>(per_row));
        // (each position's next is the one after it, the last's the next
        // row's first)
        auto position = [&](int64_t r, int64_t i) {
          return static_cast<const char*>(target_logits.data) + (r * per_row + i) * stride * esize;
        };
        for (int64_t i = 0; i < per_row; ++i) {
          const char* after = i + 1 < per_row ? position(row, i + 1)
                              : next >= 0     ? position(next, 0)
                                              : nullptr;
          positions[static_cast<size_t>(i)] =
              detail::RowInput{position(row, i), target_logits.dtype, vocab,
                               ahead && !runner.parallel ? after : nullptr};
        }
        detail::verify_row(positions,
                           draft_tokens.subspan(static_cast<size_t>(row * num_draft),
                                                static_cast<size_t>(num_draft)),
                           draft_probs ? draft_probs + row * num_draft * vocab : nullptr, req, seed,
                           row, results[static_cast<size_t>(row)], scratch, runner);
      },
      [&](int64_t row) {
        VerifyResult& r = results[static_cast<size_t>(row)];
        r.clear();
        r.status = Status::internal("row " + std::to_string(row) + ": out of memory");
      });
}

}  // namespace nucleus
