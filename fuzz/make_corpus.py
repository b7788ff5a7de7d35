#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/.

The files are checked in; this script documents how they were made and
rewrites them identically (it depends only on the Python standard library).
Seeds are small, valid or nearly valid inputs: the fuzzer mutates them, so
each one opens a different path of a parser (versions, dtypes, shapes,
alignment, metadata) or of the engine.
"""
import json
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    directory = os.path.join(ROOT, target)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, name), "wb") as f:
        f.write(data)


def values(count, dtype, rng, special=None):
    xs = [rng.gauss(0.0, 2.0) for _ in range(count)]
    for index, value in (special or {}).items():
        xs[index] = value
    code = {"f4": "f", "f2": "e"}[dtype] if dtype != "bf16" else None
    if code:
        return b"".join(struct.pack("<" + code, x) for x in xs)
    return b"".join(struct.pack("<f", x)[2:] for x in xs)  # bfloat16: the top half


def npy(descr, shape, body, version=1, fortran=False, pad_to=64, extra="", shape_text=None):
    if shape_text is None:
        shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    text = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, %s}" % (
        descr, "True" if fortran else "False", shape_text, extra)
    prefix = 10 if version == 1 else 12
    total = (prefix + len(text) + 1 + pad_to - 1) // pad_to * pad_to
    text = text + " " * (total - prefix - len(text) - 1) + "\n"
    length = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes([version, 0]) + length + text.encode("latin-1") + body


def safetensors(header, body, pad=True):
    text = json.dumps(header, separators=(",", ":"))
    if pad:
        text += " " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text.encode() + body


def main():
    rng = random.Random(20240611)
    nan, inf = float("nan"), float("inf")

    # NumPy: versions, dtypes, ranks, special values, and near misses.
    write("dump_npy", "f4_2x8", npy("<f4", (2, 8), values(16, "f4", rng)))
    write("dump_npy", "f2_3x5", npy("<f2", (3, 5), values(15, "f2", rng)))
    write("dump_npy", "f4_1d", npy("<f4", (7,), values(7, "f4", rng)))
    write("dump_npy", "f4_2x2x4", npy("<f4", (2, 2, 4), values(16, "f4", rng)))
    write("dump_npy", "v2_f4", npy("<f4", (1, 4), values(4, "f4", rng), version=2))
    write("dump_npy", "v3_f2", npy("<f2", (2, 3), values(6, "f2", rng), version=3))
    write("dump_npy", "native_order", npy("=f4", (1, 3), values(3, "f4", rng)))
    write("dump_npy", "nan_inf", npy("<f4", (3, 4), values(12, "f4", rng, {1: nan, 6: inf, 9: -inf})))
    write("dump_npy", "all_minus_inf", npy("<f4", (1, 4), values(4, "f4", rng, {0: -inf, 1: -inf, 2: -inf, 3: -inf})))
    write("dump_npy", "fortran", npy("<f4", (2, 2), values(4, "f4", rng), fortran=True))
    write("dump_npy", "big_endian", npy(">f4", (1, 2), values(2, "f4", rng)))
    write("dump_npy", "f8", npy("<f8", (1, 2), values(4, "f4", rng)))
    write("dump_npy", "zero_dim", npy("<f4", (0, 4), b""))
    write("dump_npy", "scalar", npy("<f4", (), values(1, "f4", rng)))
    write("dump_npy", "truncated", npy("<f4", (2, 8), values(15, "f4", rng)))
    write("dump_npy", "long_data", npy("<f4", (1, 4), values(5, "f4", rng)))
    write("dump_npy", "python2_long", npy("<f4", None, values(2, "f4", rng), shape_text="(1L, 2L)"))
    write("dump_npy", "huge_shape", npy("<f4", (2**40, 2**30), values(4, "f4", rng)))
    write("dump_npy", "unpadded", npy("<f2", (1, 3), values(3, "f2", rng), pad_to=1))

    # safetensors: dtypes, metadata, several tensors, unaligned data, near misses.
    body = values(12, "f4", rng)
    write("dump_safetensors", "f32_3x4", safetensors(
        {"logits": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]}}, body))
    write("dump_safetensors", "f16_2x3", safetensors(
        {"logits": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]}}, values(6, "f2", rng)))
    write("dump_safetensors", "bf16_1x5", safetensors(
        {"__metadata__": {"format": "pt"},
         "logits": {"dtype": "BF16", "shape": [1, 5], "data_offsets": [0, 10]}}, values(5, "bf16", rng)))
    write("dump_safetensors", "two_tensors", safetensors(
        {"a": {"dtype": "F32", "shape": [1, 2], "data_offsets": [0, 8]},
         "logits": {"dtype": "F32", "shape": [1, 2], "data_offsets": [8, 16]}}, values(4, "f4", rng)))
    write("dump_safetensors", "unaligned", safetensors(
        {"i8": {"dtype": "I8", "shape": [2], "data_offsets": [0, 2]},
         "logits": {"dtype": "F32", "shape": [1, 3], "data_offsets": [2, 14]}},
        b"\x01\x02" + values(3, "f4", rng)))
    write("dump_safetensors", "three_d", safetensors(
        {"logits": {"dtype": "F16", "shape": [2, 1, 2], "data_offsets": [0, 8]}}, values(4, "f2", rng)))
    write("dump_safetensors", "offsets_past_end", safetensors(
        {"logits": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 64]}}, values(8, "f4", rng)))
    write("dump_safetensors", "shape_mismatch", safetensors(
        {"logits": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 32]}}, values(8, "f4", rng)))
    write("dump_safetensors", "unpadded_header", safetensors(
        {"logits": {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4]}}, values(1, "f4", rng), pad=False))
    write("dump_safetensors", "not_json", struct.pack("<Q", 9) + b"{\"logits\"" + values(2, "f4", rng))
    write("dump_safetensors", "nan_values", safetensors(
        {"logits": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
        values(4, "f4", rng, {2: nan})))

    # Raw: byte 0 = mode (dtype in bits 0-1, 3 = none; 0x10 auto; 0x20 vocab << 16;
    # 0x40 small blocks; 0x80 standard input), bytes 1-4 = vocab (int32).
    def raw(mode, vocab, body):
        return bytes([mode]) + struct.pack("<i", vocab) + body
    write("dump_raw", "f32_v4", raw(0x00, 4, values(12, "f4", rng)))
    write("dump_raw", "f16_v3_blocks", raw(0x41, 3, values(9, "f2", rng)))
    write("dump_raw", "bf16_v2", raw(0x02, 2, values(6, "bf16", rng)))
    write("dump_raw", "auto_stdin", raw(0x90, 5, values(10, "f4", rng)))
    write("dump_raw", "auto_npy_magic", raw(0x10, 4, npy("<f4", (1, 4), values(4, "f4", rng))))
    write("dump_raw", "no_dtype", raw(0x03, 4, values(4, "f4", rng)))
    write("dump_raw", "not_a_multiple", raw(0x00, 3, values(4, "f4", rng)))
    write("dump_raw", "huge_vocab", raw(0x20, 0x7FFF, values(4, "f4", rng)))
    write("dump_raw", "negative_vocab", raw(0x00, -4, values(4, "f4", rng)))
    write("dump_raw", "empty", raw(0x00, 4, b""))

    # Engine targets: the bytes are choices, so random bytes of a few lengths
    # (and some runs of one value) reach every branch of the input builders.
    for target in ("engine_sample", "engine_verify"):
        for length in (0, 16, 64, 128, 256, 512, 1024):
            write(target, "random_%d" % length, bytes(rng.getrandbits(8) for _ in range(length)))
        for fill in (0x00, 0x01, 0x7F, 0xFF):
            write(target, "fill_%02x" % fill, bytes([fill]) * 200)


if __name__ == "__main__":
    main()
