// bench/design_bench: the pieces of the penalty designs that were set aside
// (design_bench.cc), timed on a CPU with AVX-512; elsewhere it says so and
// runs nothing.
//   design_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>

#include "nucleus/engine.h"

namespace nucleus::bench {
void register_design_benchmarks();  // (compiled for x86-64-v4)
}

int main(int argc, char** argv) {
  const auto isas = nucleus::runnable_isas();
  if (std::find(isas.begin(), isas.end(), nucleus::Isa::kAVX512) == isas.end()) {
    std::printf(
        "design_bench: AVX-512 does not run here (or NUCLEUS_ISA forbids it); nothing to time\n");
    return 0;
  }
  nucleus::bench::register_design_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
