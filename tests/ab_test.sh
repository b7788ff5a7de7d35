#!/usr/bin/env bash
# bench/ab alternates two nucleus programs over `nucleus bench`: run it with
# the same program on both sides over a tiny grid and check that every case is
# reported once, with both programs' times for every round; and that a run
# that fails, or options it cannot take, end it with a one-line reason.
# Usage: ab_test.sh NUCLEUS BENCH_AB
set -euo pipefail
nucleus="$1"
ab="$2"
out="$(/usr/bin/python3 "$ab" -n 3 "$nucleus" "$nucleus" --vocab 1000,2000 --batch 1 \
  --threads 1 --repeat 2 --no-reference --config greedy,topp 2>/dev/null)"
echo "$out"
/usr/bin/python3 - "$out" <<'PY'
import sys
lines = sys.argv[1].splitlines()
assert lines[2].startswith("3 rounds"), lines[:3]
rows = [l.split() for l in lines[4:]]
cases = {(r[0], r[1]) for r in rows}
assert cases == {(c, v) for c in ("greedy", "topp") for v in ("1000", "2000")}, cases
assert len(rows) == 4, rows
for r in rows:
    a_min, a_med, b_min, b_med, ratio = map(float, r[6:11])
    assert 0 < a_min <= a_med and 0 < b_min <= b_med, r
    # (the medians are printed to 0.01 µs, the ratio from the unrounded ones)
    lo, hi = (b_med - 0.005) / (a_med + 0.005), (b_med + 0.005) / (a_med - 0.005)
    assert lo - 5e-4 <= ratio <= hi + 5e-4, r
    assert r[11].endswith("/3"), r  # three rounds compared
    a_floor, b_floor = map(float, r[12:14])  # best ratios to the softmax floor
    assert 0 < a_floor < 1000 and 0 < b_floor < 1000, r
    assert len(r) == 14, r
print("bench/ab: 4 cases, 3 rounds each")
PY

# Failures: a reason on standard error, no traceback, a non-zero status.
expect_refused() {  # STATUS PATTERN ARGS...
  local want="$1" pattern="$2" err status=0
  shift 2
  err="$(/usr/bin/python3 "$ab" "$@" 2>&1 >/dev/null)" || status=$?
  if [[ "$status" != "$want" ]] || ! grep -q -- "$pattern" <<<"$err" || grep -q Traceback <<<"$err"; then
    echo "bench/ab $*: status $status (want $want), said: $err" >&2
    exit 1
  fi
}
expect_refused 2 "leave --json out" -n 1 "$nucleus" "$nucleus" --vocab 1000 --json x.json
expect_refused 2 "leave -q out" -n 1 "$nucleus" "$nucleus" --vocab 1000 -q
expect_refused 2 "-n wants a number of rounds >= 1, not 'x'" -n x "$nucleus" "$nucleus"
expect_refused 2 "not '0'" -n 0 "$nucleus" "$nucleus"
expect_refused 1 "round 1: cannot run /nonexistent/nucleus" -n 1 "$nucleus" /nonexistent/nucleus \
  --vocab 1000 --repeat 2 --no-reference --config greedy
expect_refused 1 "round 1: .* failed (exit status 2)" -n 1 "$nucleus" "$nucleus" --vocab 0
echo "bench/ab: failures refused"
