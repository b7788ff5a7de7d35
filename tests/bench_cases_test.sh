#!/usr/bin/env bash
# A Google Benchmark program of bench/ (kernel_bench, design_bench): the
# cases FILTER picks run once each and report a rate, with no error, and they
# are exactly the NAMEs given. A program that has nothing to time on this CPU
# says so on one line starting with its name and a colon, and passes.
# Usage: bench_cases_test.sh PROGRAM FILTER NAME...
set -euo pipefail
program="$1" filter="$2"
shift 2
out="$("$program" --benchmark_min_time=0.01 --benchmark_format=json \
  --benchmark_filter="$filter" 2>/dev/null)"
if [[ "$out" == "$(basename "$program"): "* ]]; then
  echo "$out"
  exit 0
fi
/usr/bin/python3 - "$out" "$@" <<'PY'
import json, sys
runs = {b["name"]: b for b in json.loads(sys.argv[1])["benchmarks"]}
want = set(sys.argv[2:])
assert set(runs) == want, (sorted(runs), sorted(want))
for name, b in runs.items():
    assert "error_occurred" not in b, (name, b)
    rate = b.get("bytes_per_second", b.get("items_per_second", 0))
    assert b["iterations"] >= 1 and rate > 0, (name, b)
print(f"{len(runs)} benchmarks ran")
PY
