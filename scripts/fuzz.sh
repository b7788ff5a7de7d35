#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ with clang, AddressSanitizer and
# UBSan, and runs each one for SECONDS on its seed corpus (fuzz/corpus/<t>/).
# Fails on the first crash, sanitizer report, broken invariant, timeout or
# out-of-memory; the input that caused it is left in build-fuzz/artifacts/<t>/.
# New interesting inputs go to build-fuzz/work/<t>/, never into the checked-in
# corpus.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default 60 s, every target)
# A crash found here becomes a file in fuzz/regressions/<target>/, which
# tests/fuzz_regression_test.cc replays in every build (docs/robustness.md).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
build="${NUCLEUS_FUZZ_BUILD_DIR:-build-fuzz}"
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(dump_npy dump_safetensors dump_raw engine_sample engine_verify)
fi

scripts/setup.sh
cxx="$(command -v clang++-14 || command -v clang++)"

# Only the library and the fuzzers: no tests, tools, benchmarks or install.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER="$cxx" \
  -DNUCLEUS_SANITIZE=address,undefined \
  -DCMAKE_CXX_FLAGS="-fno-sanitize-recover=all" \
  -DNUCLEUS_BUILD_FUZZ=ON -DNUCLEUS_BUILD_TESTS=OFF -DNUCLEUS_BUILD_TOOLS=OFF \
  -DNUCLEUS_BUILD_BENCH=OFF -DNUCLEUS_BUILD_EXAMPLES=OFF -DNUCLEUS_BUILD_PYTHON=OFF \
  -DNUCLEUS_INSTALL=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target nucleus_fuzzers

# Inputs larger than this add little: a dump parser sees every header shape
# well below it, and an engine case is a list of choices.
declare -A max_len=(
  [dump_npy]=4096 [dump_safetensors]=4096 [dump_raw]=4096
  [engine_sample]=2048 [engine_verify]=2048
)
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# Each target on a core of its own, as many at once as there are cores
# (each runs its SECONDS either way); the reports follow in target order.
fuzz_one() {
  local t="$1"
  local work="$build/work/$t" artifacts="$build/artifacts/$t"
  mkdir -p "$work" "$artifacts"
  # The first directory receives new inputs; the seed corpus and the saved
  # regressions are only read (a regression that fails again fails here at
  # once, before any fuzzing).
  local inputs=("$work" "fuzz/corpus/$t")
  if [[ -d "fuzz/regressions/$t" ]]; then inputs+=("fuzz/regressions/$t"); fi
  local rc=0
  "$build/fuzz/${t}_fuzzer" "${inputs[@]}" \
    -max_total_time="$seconds" -max_len="${max_len[$t]:-4096}" \
    -timeout=20 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" 2> "$build/$t.log" || rc=$?
  echo "$rc" > "$build/$t.status"
}
slots="$(nproc)"
for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= slots)); do wait -n || true; done
  echo "fuzz: $t for ${seconds}s" >&2
  rm -f "$build/$t.status"
  fuzz_one "$t" &
done
wait

failed=()
for t in "${targets[@]}"; do
  if [[ "$(cat "$build/$t.status" 2> /dev/null)" != 0 ]]; then
    tail -n 60 "$build/$t.log" >&2
    echo "fuzz: $t FAILED; reproducer in $build/artifacts/$t/" >&2
    failed+=("$t")
  else
    grep -E "^stat::number_of_executed_units|^stat::new_units_added" "$build/$t.log" \
      | sed "s/^/fuzz: $t: /" >&2 || true
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: failures in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no failure" >&2
