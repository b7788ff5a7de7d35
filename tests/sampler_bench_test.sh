#!/usr/bin/env bash
# bench/sampler_bench (the Google Benchmark grid): one small slice runs, the
# nucleus case and its two baselines, over two distinct batches
# (--distinct=2, a flag of its own taken before Google Benchmark's), and
# reports rows/s for each; a bad --distinct is refused with exit status 2, and
# batches too large for memory are not made (the benchmark skipped); with two
# threads or more the arena-switch and fork-join benchmarks run; the
# parameter sets the grid leaves out (params/...) and the wide-nucleus
# rows (wide/...) run without an error.
# Usage: sampler_bench_test.sh SAMPLER_BENCH
set -euo pipefail
bench="$1"
json="$("$bench" --distinct=2 --benchmark_min_time=0.01 --benchmark_format=json \
  --benchmark_filter='^(nucleus/topp|softmax_floor|roofline)/32000/1/f32/1/real_time$' 2>/dev/null)"
/usr/bin/python3 - "$json" <<'PY'
import json, sys
runs = {b["name"]: b for b in json.loads(sys.argv[1])["benchmarks"]}
want = {n + "/32000/1/f32/1/real_time" for n in ("nucleus/topp", "softmax_floor", "roofline")}
assert set(runs) == want, sorted(runs)
for name, b in runs.items():
    assert "error_occurred" not in b, (name, b)
    assert b["iterations"] >= 1 and b["rows/s"] > 0, (name, b)
print("sampler_bench: 3 benchmarks over 2 distinct batches")
PY
for bad in 0 x 1001; do
  status=0
  err="$("$bench" --distinct=$bad 2>&1 >/dev/null)" || status=$?
  [[ $status -eq 2 && $err == *"--distinct wants a count from 1 to 1000"* ]] || {
    echo "--distinct=$bad: status $status, '$err'"
    exit 1
  }
done
echo "sampler_bench: bad --distinct refused"
# Batches that would take more than half of the machine's memory (1000 of
# 256 x 256000 bfloat16 rows with their float32 copies: ~366 GiB) are not
# made: the benchmark is skipped with the reason.
json="$("$bench" --distinct=1000 --benchmark_format=json \
  --benchmark_filter='^nucleus/greedy/256000/256/bf16/1/real_time$' 2>/dev/null)"
/usr/bin/python3 - "$json" <<'PY'
import json, sys
(b,) = json.loads(sys.argv[1])["benchmarks"]
assert b.get("error_occurred") is True, b
msg = b["error_message"]
assert msg.startswith("--distinct=1000 batches need ") and "more than half of this machine's" in msg, msg
print("sampler_bench: batches too large for memory refused:", msg)
PY
# With two threads or more (oneTBB's default concurrency, which registers
# them): the arena-switch and fork-join benchmarks run and report a time
# (arena_switch's rows/s too), none with an error.
listed="$("$bench" --benchmark_list_tests=true 2>/dev/null)"
if [[ $'\n'$listed == *$'\n'fork_join/* ]]; then
  json="$("$bench" --benchmark_min_time=0.01 --benchmark_format=json \
    --benchmark_filter='^(arena_switch|fork_join)/' 2>/dev/null)"
  /usr/bin/python3 - "$json" <<'PY'
import json, sys
runs = {b["name"]: b for b in json.loads(sys.argv[1])["benchmarks"]}
kinds = sorted({n.split("/")[0] + "/" + n.split("/")[1] for n in runs})
assert kinds == ["arena_switch/engine_execute", "arena_switch/none", "arena_switch/own_arena",
                 "fork_join/alone", "fork_join/split"], kinds
for name, b in runs.items():
    assert "error_occurred" not in b, (name, b)
    assert b["iterations"] >= 1 and b["real_time"] > 0, (name, b)
    assert not name.startswith("arena_switch") or b["rows/s"] > 0, (name, b)
print("sampler_bench: arena_switch and fork_join run")
PY
fi
# Cases of one row each (filter, how many): every one runs, none with an
# error (a request the engine refused would say so). The parameter sets the
# grid leaves out, and the wide-nucleus rows (two rows x full, top-p,
# typical-p, top-k 2000 and 5000, typical-p with min_keep 5000).
one_row_cases() {
  json="$("$bench" --benchmark_min_time=0.01 --benchmark_format=json \
    --benchmark_filter="$1" 2>/dev/null)"
  /usr/bin/python3 - "$json" "$1" "$2" <<'PY'
import json, re, sys
runs = {b["name"]: b for b in json.loads(sys.argv[1])["benchmarks"]}
assert len(runs) == int(sys.argv[3]), sorted(runs)
for name, b in runs.items():
    assert re.search(r"/128256/1/(f32|bf16)/1/real_time$", name), name
    assert "error_occurred" not in b, (name, b)
    assert b["iterations"] >= 1 and b["rows/s"] > 0, (name, b)
print(f"sampler_bench: {len(runs)} cases {sys.argv[2]} run")
PY
}
one_row_cases '^params/' 22
one_row_cases '^wide/' 12
