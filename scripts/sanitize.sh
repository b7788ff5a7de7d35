#!/usr/bin/env bash
# The test suite under sanitizers (docs/robustness.md):
#   1. AddressSanitizer + UBSan + LeakSanitizer: the tests that exercise
#      memory, parsing, errors and the command-line program. Any report fails
#      the run (UBSan does not recover; LeakSanitizer checks at every exit).
#   2. ThreadSanitizer: the concurrency tests (many host threads on one
#      engine, verify, the C API's per-thread state). Any report fails the run.
#
# Usage: scripts/sanitize.sh [asan|tsan]...   (default: both)
# Build directories: build-asan, build-tsan (NUCLEUS_ASAN_BUILD_DIR and
# NUCLEUS_TSAN_BUILD_DIR override them).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
jobs="$(nproc)"
what=("$@")
if ((${#what[@]} == 0)); then what=(asan tsan); fi

scripts/setup.sh

# What every sanitizer build leaves out: benchmarks, examples, the Python
# module and the install rules (whose tests link consumers without the
# sanitizer runtime). -O1 and line tables only (-g1), as the sanitizers'
# documentation suggests: reports keep their file:line stacks, and the build
# takes about half the time of -O2 -g (the instrumented test programs are
# what CI spends its time compiling).
common=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG"
        -DNUCLEUS_BUILD_BENCH=OFF -DNUCLEUS_BUILD_EXAMPLES=OFF -DNUCLEUS_BUILD_PYTHON=OFF
        -DNUCLEUS_INSTALL=OFF)

run_asan() {
  local build="${NUCLEUS_ASAN_BUILD_DIR:-build-asan}"
  # Built and run: everything but
  #   engine_statistical_test - 10^6 draws per configuration; minutes under
  #     ASan, and its code paths are the reference test's;
  #   allocation_test - counts operator new, which ASan replaces; a test of
  #     the steady state, not of memory safety;
  #   residency_test - times reads of rows flushed from the page cache,
  #     which a sanitized build slows unevenly.
  local tests=(errors_test processors_test filters_test dump_test verify_test
               reproducibility_test engine_reference_test c_api_test cli_test
               bad_input_test load_test fuzz_regression_test isa_test mass_test scan_test
               select_kernels_test)
  # Only these test programs are configured (NUCLEUS_TESTS), so one parallel
  # build makes them all; naming them as targets would build one at a time.
  local list
  list="$(IFS=';'; echo "${tests[*]}")"
  cmake -S . -B "$build" "${common[@]}" -DNUCLEUS_SANITIZE=address,undefined \
    -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all" -DNUCLEUS_TESTS="$list" >/dev/null
  cmake --build "$build" -j"$jobs"
  echo "sanitize: AddressSanitizer + UBSan + LeakSanitizer" >&2
  # The runs of the kernel tests on the lower instruction sets (label isa) are
  # left to scripts/test.sh.
  ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1" \
  LSAN_OPTIONS="suppressions=$root/scripts/lsan/suppressions.txt:print_suppressions=0" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  NUCLEUS_LOAD_SECONDS=2 \
    ctest --test-dir "$build" --output-on-failure -j"$jobs" --timeout 1200 -LE isa
}

run_tsan() {
  local build="${NUCLEUS_TSAN_BUILD_DIR:-build-tsan}"
  # TBB_USE_PROFILING_TOOLS=2 makes oneTBB's inline code announce its
  # hand-offs to the tools interface; scripts/tsan/tbb_tsan_shim.cc turns
  # those and libtbb's own announcements into happens-before edges.
  cmake -S . -B "$build" "${common[@]}" -DNUCLEUS_SANITIZE=thread -DNUCLEUS_BUILD_TOOLS=OFF \
    -DCMAKE_CXX_FLAGS="-DTBB_USE_PROFILING_TOOLS=2" \
    -DNUCLEUS_TESTS="reproducibility_test;load_test;verify_test;c_api_test;processors_test" >/dev/null
  cmake --build "$build" -j"$jobs"
  local cxx="${CXX:-c++}"
  "$cxx" -std=c++20 -O1 -shared -fPIC -Wall -Wextra -o "$build/libtbb_tsan_shim.so" \
    scripts/tsan/tbb_tsan_shim.cc -ldl
  "$cxx" -std=c++20 -O1 -g -fsanitize=thread -DTBB_USE_PROFILING_TOOLS=2 -Wall -Wextra \
    -o "$build/race_canary" scripts/tsan/race_canary.cc -ltbb

  # (an absolute NUCLEUS_TSAN_BUILD_DIR as it is; a relative one below the root)
  local shim="$build/libtbb_tsan_shim.so"
  [[ "$build" == /* ]] || shim="$root/$shim"
  local options="second_deadlock_stack=1 suppressions=$root/scripts/tsan/suppressions.txt"
  local tsan_env=(env "LD_PRELOAD=$shim" "INTEL_LIBITTNOTIFY64=$shim" INTEL_ITTNOTIFY_GROUPS=sync)

  # The setup must still see real races, inside tasks and between host
  # threads; otherwise a clean run below would prove nothing.
  echo "sanitize: ThreadSanitizer canary (must report two races)" >&2
  local log="$build/race_canary.log"
  if "${tsan_env[@]}" "TSAN_OPTIONS=$options halt_on_error=0" "$build/race_canary" >"$log" 2>&1; then
    echo "sanitize: the race canary ran clean: ThreadSanitizer is blind here" >&2
    exit 1
  fi
  if ! grep -q AddInTask "$log" || ! grep -q BumpInArena "$log"; then
    cat "$log" >&2
    echo "sanitize: the race canary did not report both of its races" >&2
    exit 1
  fi

  echo "sanitize: ThreadSanitizer" >&2
  local t=(
    "reproducibility_test --gtest_filter=ReproducibilityTest.ConcurrentCallsMatchSequentialCalls:ReproducibilityTest.ExecuteAndSampleFromManyHostThreads:ReproducibilityTest.SplitFullSamplingRowsFromManyHostThreads:ReproducibilityTest.ACallInsideTheArenaRunsOnlyItsOwnRows"
    "load_test"
    "verify_test"
    "c_api_test --gtest_filter=CApi.ManyHostThreadsShareOneEngine:CApi.LastErrorIsClearedBySuccessAndPerThread"
    "processors_test --gtest_filter=ProcessorsTest.LongRowsGetEveryChangeOnEveryThreadCount:ProcessorsTest.SparseChangesToALongRowOnEveryThreadCount"
  )
  for test in "${t[@]}"; do
    read -r -a argv <<<"$test"
    echo "sanitize: tsan ${argv[*]}" >&2
    NUCLEUS_LOAD_SECONDS=3 "${tsan_env[@]}" "TSAN_OPTIONS=$options halt_on_error=1" \
      "$build/tests/${argv[0]}" "${argv[@]:1}"
  done
}

for w in "${what[@]}"; do
  case "$w" in
    asan) run_asan ;;
    tsan) run_tsan ;;
    *) echo "usage: scripts/sanitize.sh [asan|tsan]..." >&2; exit 2 ;;
  esac
done
echo "sanitize: ${what[*]}: no report" >&2
