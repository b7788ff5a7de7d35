#!/usr/bin/env bash
# bench/plot turns a `nucleus bench --json` file into a PNG chart: one panel per
# (batch, dtype, threads, instruction set). Runs a tiny grid and checks that the
# chart is written and is a PNG of the expected shape (4 panels side by side).
# Usage: plot_test.sh NUCLEUS BENCH_PLOT
set -euo pipefail
nucleus="$1"
plot="$2"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$nucleus" bench --vocab 1000,2000 --batch 1,2 --threads 1 --dtype f32,bf16 --config greedy,topp \
  --repeat 2 --no-reference -q --json "$dir/b.json" >/dev/null
/usr/bin/python3 "$plot" "$dir/b.json" "$dir/b.png"
/usr/bin/python3 - "$dir/b.png" <<'PY'
import struct, sys
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
width, height = struct.unpack(">II", data[16:24])
# 2 batches x 2 dtypes = 4 panels, one row of 4 (figsize 4.2 x 3.4 inches each).
assert width > 2.5 * height, (width, height)
print(f"bench/plot: {width}x{height} PNG")
PY
# A bad file is one line on standard error and status 2, no traceback.
echo hello > "$dir/bad.json"
echo '{}' > "$dir/empty.json"
echo '{"results": [{"batch": 1}]}' > "$dir/short.json"
for args in "$dir/bad.json" "$dir/empty.json" "$dir/short.json" "$dir/missing.json" \
            "$dir/b.json $dir/no/such/dir/b.png"; do
  status=0
  # shellcheck disable=SC2086
  /usr/bin/python3 "$plot" $args 2> "$dir/err" >/dev/null || status=$?
  [[ "$status" == 2 ]] || { echo "bench/plot $args: status $status, not 2" >&2; exit 1; }
  [[ "$(wc -l < "$dir/err")" == 1 ]] || { echo "bench/plot $args: not one line:" >&2; cat "$dir/err" >&2; exit 1; }
  grep -q "^bench/plot: " "$dir/err" || { cat "$dir/err" >&2; exit 1; }
done
echo "bench/plot: bad files refused in one line"
