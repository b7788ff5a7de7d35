"""Shared fixtures for the Python module's tests.

ctest runs these with PYTHONPATH pointing at the built module and NUCLEUS_CLI
at the `nucleus` program (python/CMakeLists.txt). Run by hand:

    PYTHONPATH=build/python NUCLEUS_CLI=build/tools/nucleus \
        /usr/bin/python3 -m pytest -q tests/python
"""

import json
import os
import subprocess

import numpy as np
import pytest

import nucleus


@pytest.fixture
def engine():
    # Two threads: rows are split across them, which the reproducibility
    # contract says must not change any seeded result.
    return nucleus.Engine(threads=2, seed=1234)


@pytest.fixture
def rng():
    return np.random.default_rng(20240601)


def lm_logits(rng, rows, vocab, scale=3.0):
    """Peaked, LM-like logits: a few large values over a long tail."""
    x = rng.standard_normal((rows, vocab)).astype(np.float32) * scale
    x[:, rng.integers(0, vocab, size=8)] += 6.0
    return x


@pytest.fixture
def cli():
    """Runs the `nucleus` program; returns (exit status, stdout, stderr)."""
    path = os.environ.get("NUCLEUS_CLI")
    if not path or not os.path.exists(path):
        pytest.skip("NUCLEUS_CLI is not set (the nucleus program is built with the tools)")

    def run(*args):
        p = subprocess.run([path, *map(str, args)], capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    return run


@pytest.fixture
def cli_sample(cli):
    """`nucleus sample ... -q`: the JSON line of every row."""

    def run(*args):
        code, out, err = cli("sample", *args, "-q")
        assert code in (0, 1), err
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    return run


def write_params(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def pack_mask(allowed):
    """A boolean [vocab] mask as ceil(vocab/32) int32 words (bit i % 32 of
    word i // 32 allows token i)."""
    words = (len(allowed) + 31) // 32
    padded = np.zeros(words * 32, dtype=bool)
    padded[: len(allowed)] = allowed
    return np.packbits(padded, bitorder="little").view("<u4").astype(np.uint32).view(np.int32)
