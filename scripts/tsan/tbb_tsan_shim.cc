// Teaches ThreadSanitizer how oneTBB hands work between threads, so that the
// ThreadSanitizer run of scripts/sanitize.sh reports the engine's races and
// nothing else.
//
// Why it is needed: Debian's libtbb is not built with -fsanitize=thread, so
// every hand-off it makes inside the library is invisible: the caller of
// task_arena::execute writing its arguments and a TBB worker reading them, a
// worker writing a row's result and the caller reading it after parallel_for
// returns, a task object freed by one thread and reused by another. Without
// this file a single run of tests/load_test.cc gives hundreds of reports, all
// of them in the engine's and the tests' frames, none of them real. A
// suppression file cannot tell those from real races, so instead the missing
// happens-before edges are added, each exactly where libtbb synchronizes:
//
//   1. ITT notifications. libtbb is annotated for Intel's threading tools:
//      around its internal hand-offs (task pools, stealing, queues) it calls
//      __itt_sync_releasing(addr) and __itt_sync_acquired(addr), and with
//      TBB_USE_PROFILING_TOOLS=2 (set for this build) the inline header code
//      does too. Those calls go to the collector library that
//      INTEL_LIBITTNOTIFY64 names, for the groups INTEL_ITTNOTIFY_GROUPS
//      lists; scripts/sanitize.sh points both at this library ("sync"), and
//      the two functions below become __tsan_release / __tsan_acquire on the
//      same address.
//   2. Entry points interposed with LD_PRELOAD (each forwards to libtbb):
//      - r1::execute (task_arena::execute): the caller's functor may run on
//        another thread of the arena; release before, acquire when it starts
//        and after it returns.
//      - r1::wait and r1::execute_and_wait: workers finish by decrementing the
//        wait_context's reference count (inline code, so instrumented), but
//        the waiter reads it inside libtbb; acquire it after the wait.
//      - r1::allocate / r1::deallocate: TBB's small-object pool recycles task
//        objects between threads, the edge malloc/free would give.
//
// Races between threads that do not synchronize through TBB stay visible;
// scripts/tsan/race_canary.cc checks that on every run. Tied to the oneTBB
// ABI of Debian 12 (2021.8, interface d1/r1); a TBB with another ABI fails
// loudly (the symbols are looked up by name).
#include <dlfcn.h>
#include <oneapi/tbb/detail/_small_object_pool.h>
#include <oneapi/tbb/detail/_task.h>
#include <oneapi/tbb/task_arena.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);

namespace d1 = tbb::detail::d1;

namespace {

template <typename F>
F Next(const char* mangled) {
  void* f = dlsym(RTLD_NEXT, mangled);
  if (f == nullptr) {
    std::fprintf(stderr, "tbb_tsan_shim: libtbb has no %s (another oneTBB ABI?)\n", mangled);
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

// Runs the caller's delegate wherever TBB decides (this thread, or another
// thread of the arena when every slot is taken), with the edges in and out.
class Forward : public d1::delegate_base {
 public:
  explicit Forward(d1::delegate_base& d) : d_(d) {}
  bool operator()() const override {
    __tsan_acquire(&d_);
    const bool result = d_();
    __tsan_release(&d_);
    return result;
  }

 private:
  d1::delegate_base& d_;
};

// The address of wait_context::m_ref_count (after its 64-bit
// m_version_and_traits), which the inline release() decrements atomically.
void* RefCount(d1::wait_context& w) { return reinterpret_cast<char*>(&w) + sizeof(std::uint64_t); }

}  // namespace

namespace tbb::detail::r1 {

void execute(d1::task_arena_base& arena, d1::delegate_base& d) {
  using Fn = void (*)(d1::task_arena_base&, d1::delegate_base&);
  static const Fn real =
      Next<Fn>("_ZN3tbb6detail2r17executeERNS0_2d115task_arena_baseERNS2_13delegate_baseE");
  Forward forward(d);
  __tsan_release(&d);
  real(arena, forward);
  __tsan_acquire(&d);
}

void wait(d1::wait_context& w, d1::task_group_context& ctx) {
  using Fn = void (*)(d1::wait_context&, d1::task_group_context&);
  static const Fn real =
      Next<Fn>("_ZN3tbb6detail2r14waitERNS0_2d112wait_contextERNS2_18task_group_contextE");
  real(w, ctx);
  __tsan_acquire(RefCount(w));
}

void execute_and_wait(d1::task& t, d1::task_group_context& t_ctx, d1::wait_context& w,
                      d1::task_group_context& w_ctx) {
  using Fn =
      void (*)(d1::task&, d1::task_group_context&, d1::wait_context&, d1::task_group_context&);
  static const Fn real = Next<Fn>(
      "_ZN3tbb6detail2r116execute_and_waitERNS0_2d14taskERNS2_18task_group_contextERNS2_12wait_"
      "contextES6_");
  real(t, t_ctx, w, w_ctx);
  __tsan_acquire(RefCount(w));
}

void* allocate(d1::small_object_pool*& pool, std::size_t size, const d1::execution_data& ed) {
  using Fn = void* (*)(d1::small_object_pool*&, std::size_t, const d1::execution_data&);
  static const Fn real =
      Next<Fn>("_ZN3tbb6detail2r18allocateERPNS0_2d117small_object_poolEmRKNS2_14execution_dataE");
  void* p = real(pool, size, ed);
  __tsan_acquire(p);
  return p;
}

void* allocate(d1::small_object_pool*& pool, std::size_t size) {
  using Fn = void* (*)(d1::small_object_pool*&, std::size_t);
  static const Fn real = Next<Fn>("_ZN3tbb6detail2r18allocateERPNS0_2d117small_object_poolEm");
  void* p = real(pool, size);
  __tsan_acquire(p);
  return p;
}

void deallocate(d1::small_object_pool& pool, void* p, std::size_t size,
                const d1::execution_data& ed) {
  using Fn = void (*)(d1::small_object_pool&, void*, std::size_t, const d1::execution_data&);
  static const Fn real = Next<Fn>(
      "_ZN3tbb6detail2r110deallocateERNS0_2d117small_object_poolEPvmRKNS2_14execution_dataE");
  __tsan_release(p);
  real(pool, p, size, ed);
}

void deallocate(d1::small_object_pool& pool, void* p, std::size_t size) {
  using Fn = void (*)(d1::small_object_pool&, void*, std::size_t);
  static const Fn real = Next<Fn>("_ZN3tbb6detail2r110deallocateERNS0_2d117small_object_poolEPvm");
  __tsan_release(p);
  real(pool, p, size);
}

}  // namespace tbb::detail::r1

// The ITT collector interface (ittnotify.h): its presence marks a current
// collector whose functions the loader looks up by name; the ones not defined
// here become no-ops.
extern "C" {
const char* __itt_api_version(void) { return "3.0 nucleus tbb_tsan_shim"; }
void __itt_sync_releasing(void* addr) { __tsan_release(addr); }
void __itt_sync_acquired(void* addr) { __tsan_acquire(addr); }
}
