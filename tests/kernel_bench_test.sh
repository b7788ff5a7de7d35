#!/usr/bin/env bash
# bench/kernel_bench (row passes timed alone): every benchmark runs on a
# 32000-token row (the penalty on the 128256 row it is registered for) and
# reports a rate, with no error.
# Usage: kernel_bench_test.sh KERNEL_BENCH
set -euo pipefail
json="$("$1" --benchmark_min_time=0.01 --benchmark_format=json \
  --benchmark_filter='/32000$|^repetition_penalty/' 2>/dev/null)"
/usr/bin/python3 - "$json" <<'PY'
import json, sys
runs = {b["name"]: b for b in json.loads(sys.argv[1])["benchmarks"]}
want = {f"{n}/32000" for n in ("scan", "copying_scan", "streaming_read", "copy")}
want |= {"repetition_penalty/128256/0", "repetition_penalty/128256/2048"}
assert set(runs) == want, sorted(runs)
for name, b in runs.items():
    assert "error_occurred" not in b, (name, b)
    rate = b.get("bytes_per_second", b.get("items_per_second", 0))
    assert b["iterations"] >= 1 and rate > 0, (name, b)
print(f"kernel_bench: {len(runs)} benchmarks ran")
PY
