// A real data race inside oneTBB tasks and one between host threads sharing
// an arena. scripts/sanitize.sh runs this with the same ThreadSanitizer setup
// as the tests (scripts/tsan/tbb_tsan_shim.cc) and requires a report naming
// both functions below: the happens-before edges the shim adds must not hide
// races that TBB does not order.
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/partitioner.h>
#include <oneapi/tbb/task_arena.h>

#include <cstdio>
#include <thread>
#include <vector>

namespace {

long g_in_tasks = 0;  // written by every iteration, no synchronization
long g_in_arena = 0;  // written by every host thread's functor

// Not inlined, so that the reports name them.
[[gnu::noinline]] void AddInTask(int i) { g_in_tasks += i % 3; }
[[gnu::noinline]] void BumpInArena() { ++g_in_arena; }

}  // namespace

int main() {
  tbb::task_arena arena(4);
  arena.execute([] {
    tbb::parallel_for(
        0, 20000, 1, [](int i) { AddInTask(i); }, tbb::simple_partitioner());
  });
  std::vector<std::thread> hosts;
  for (int t = 0; t < 4; ++t) {
    hosts.emplace_back([&arena] {
      for (int i = 0; i < 200; ++i) arena.execute([] { BumpInArena(); });
    });
  }
  for (std::thread& h : hosts) h.join();
  std::printf("%ld %ld\n", g_in_tasks, g_in_arena);
  return 0;
}
