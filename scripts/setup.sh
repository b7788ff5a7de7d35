#!/usr/bin/env bash
# Installs whatever build and test dependencies are missing (Debian packages).
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libeigen3-dev libtbb-dev librandom123-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev nlohmann-json3-dev
  pybind11-dev python3-dev python3-numpy python3-pytest
  # bench/plot (its test is part of the suite)
  python3-matplotlib
  # scripts/fuzz.sh (part of CI): clang and its libFuzzer / sanitizer runtimes
  clang-14 libclang-rt-14-dev
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update
  # (through env: sudo's env_reset would drop a variable set before it)
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
