#!/usr/bin/env bash
# Checks that the objects of one instruction set's kernel build define no
# global or weak function that another build could also define: the linker
# would keep one copy, and a path could run code compiled for a wider
# instruction set than the CPU has (engine/kernels/isa_prologue.h). Data
# symbols (the shared constants, a sanitizer's bookkeeping) hold no code and
# are the same in every build.
#
# Usage: tests/isa_symbols.sh NM ISA OBJECT...
# A function is private to the build when its name mentions the build: its
# namespace (::ISA::) or its Eigen (nucleus_eigen_ISA).
set -euo pipefail
nm_tool="$1"
isa="$2"
shift 2
escaped=$("$nm_tool" -C --defined-only "$@" |
  awk '$2 ~ /^[TWi]$/ { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
  grep -v -e "::${isa}::" -e "nucleus_eigen_${isa}" || true)
if [[ -n "$escaped" ]]; then
  echo "symbols of the ${isa} kernels that other builds could also define:" >&2
  echo "$escaped" >&2
  exit 1
fi
count=$("$nm_tool" --defined-only "$@" | wc -l)
if ((count == 0)); then
  echo "no symbols read from: $*" >&2
  exit 1
fi
echo "${isa}: ${count} symbols, none shared with another build"
