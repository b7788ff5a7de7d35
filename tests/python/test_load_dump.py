"""nucleus.load_dump: .npy, .safetensors and raw dumps back as numpy arrays."""

import contextlib
import json
import os
import struct
import threading

import numpy as np
import pytest

import nucleus
from conftest import lm_logits


def bf16_bits(x):
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def test_npy_round_trip(rng, tmp_path):
    x = lm_logits(rng, 6, 333)
    for dtype in (np.float32, np.float16):
        np.save(tmp_path / "x.npy", x.astype(dtype))
        back = nucleus.load_dump(tmp_path / "x.npy")
        assert back.dtype == dtype and back.shape == x.shape
        np.testing.assert_array_equal(back, x.astype(dtype))
    np.save(tmp_path / "x3.npy", x.reshape(2, 3, 333))
    assert nucleus.load_dump(str(tmp_path / "x3.npy")).shape == (2, 3, 333)
    # bytes paths too, as open() takes them
    assert nucleus.load_dump(os.fsencode(tmp_path / "x3.npy")).shape == (2, 3, 333)


def test_raw_bfloat16(engine, rng, tmp_path):
    x = lm_logits(rng, 4, 257)
    bits = bf16_bits(x)
    bits.tofile(tmp_path / "x.bin")
    widened = nucleus.load_dump(tmp_path / "x.bin", dtype="bf16", vocab=257)
    assert widened.dtype == np.float32 and widened.shape == (4, 257)
    np.testing.assert_array_equal(widened, (bits.astype(np.uint32) << 16).view(np.float32))
    # (widened in place a run at a time: runs end mid-row, the last is short)
    big = bf16_bits(lm_logits(rng, 3, 3001))
    big.tofile(tmp_path / "big.bin")
    np.testing.assert_array_equal(nucleus.load_dump(tmp_path / "big.bin", dtype="bf16", vocab=3001),
                                  (big.astype(np.uint32) << 16).view(np.float32))
    raw = nucleus.load_dump(tmp_path / "x.bin", dtype="bf16", vocab=257, bf16="uint16")
    np.testing.assert_array_equal(raw, bits)
    # numpy integers are integers
    np.testing.assert_array_equal(
        nucleus.load_dump(tmp_path / "x.bin", dtype="bf16", vocab=np.int64(257)), widened)
    # a raw float32 or float16 file's dtype as numpy spells it: a type, a dtype
    x.tofile(tmp_path / "x32.bin")
    x.astype(np.float16).tofile(tmp_path / "x16.bin")
    for name, dtype in (("x32.bin", np.float32), ("x32.bin", np.dtype("<f4")),
                        ("x16.bin", np.float16), ("x16.bin", "f16")):
        back = nucleus.load_dump(tmp_path / name, dtype=dtype, vocab=257)
        np.testing.assert_array_equal(back, x.astype(np.dtype(dtype if name == "x32.bin"
                                                              else np.float16)))
    with pytest.raises(TypeError, match="dtype: expected a string or a numpy dtype"):
        nucleus.load_dump(tmp_path / "x32.bin", dtype=object(), vocab=257)
    with pytest.raises(ValueError, match="dtype = 'float64' is not one of"):
        nucleus.load_dump(tmp_path / "x32.bin", dtype=np.float64, vocab=257)
    a = engine.sample(raw, logits_dtype="bf16", seed=1, top_k=20)
    b = engine.sample(widened, seed=1, top_k=20)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)


def test_safetensors(rng, tmp_path):
    x = lm_logits(rng, 2, 100)
    data = bf16_bits(x).tobytes()
    other = np.arange(4, dtype=np.float32).tobytes()
    header = json.dumps({
        "logits": {"dtype": "BF16", "shape": [2, 100], "data_offsets": [0, len(data)]},
        "other": {"dtype": "F32", "shape": [4], "data_offsets": [len(data),
                                                                  len(data) + len(other)]},
    }).encode()
    with open(tmp_path / "x.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + data + other)
    got = nucleus.load_dump(tmp_path / "x.safetensors", tensor="logits")
    np.testing.assert_array_equal(got, (bf16_bits(x).astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_array_equal(nucleus.load_dump(tmp_path / "x.safetensors", "other"),
                                  np.arange(4, dtype=np.float32))


def test_bundled_demo_dump():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "data", "demo.npy")
    if not os.path.exists(path):
        pytest.skip("data/demo.npy is not in this checkout")
    np.testing.assert_array_equal(nucleus.load_dump(path), np.load(path))


@contextlib.contextmanager
def piped(data):
    """A pipe fed `data` from a thread: yields its read end's /dev/fd path;
    closes that end and waits for the writer after."""
    r, w = os.pipe()

    def write():
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(w, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield f"/dev/fd/{r}"
    finally:
        os.close(r)
        writer.join()


@pytest.mark.parametrize("fmt,truncated", [
    ("npy", r"needs 3145728 bytes of data but the file holds 3145628: truncated file"),
    ("safetensors", r"tensor 'logits': field 'data_offsets' = \[0,3145728\] reaches past the "
                    r"end of the data \(3145628 bytes\)"),
])
def test_from_a_pipe(rng, tmp_path, fmt, truncated):
    # 3 MB: more than a pipe is read ahead, so the rows are read straight
    # from the pipe into the array (not held whole first); the format is
    # recognised by its header (a pipe has no extension)
    x = lm_logits(rng, 12, 65536).astype(np.float32)
    if fmt == "npy":
        np.save(tmp_path / "x.npy", x)
        data = (tmp_path / "x.npy").read_bytes()
    else:
        header = json.dumps({
            "logits": {"dtype": "F32", "shape": list(x.shape), "data_offsets": [0, x.nbytes]},
        }).encode()
        data = struct.pack("<Q", len(header)) + header + x.tobytes()
    with piped(data) as path:
        np.testing.assert_array_equal(nucleus.load_dump(path), x)
    with piped(data[:-100]) as path:
        with pytest.raises(OSError, match=truncated):
            nucleus.load_dump(path)


def test_errors(rng, tmp_path):
    with pytest.raises(OSError):
        nucleus.load_dump(tmp_path / "missing.npy")
    np.save(tmp_path / "x.npy", lm_logits(rng, 3, 50))
    with open(tmp_path / "x.npy", "rb") as f:
        truncated = f.read()[:-10]
    with open(tmp_path / "t.npy", "wb") as f:
        f.write(truncated)
    with pytest.raises(OSError, match="truncated"):
        nucleus.load_dump(tmp_path / "t.npy")
    (tmp_path / "x.bin").write_bytes(b"\0" * 12)
    with pytest.raises(OSError, match="needs its dtype and vocab"):
        nucleus.load_dump(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="dtype = 'f64'"):
        nucleus.load_dump(tmp_path / "x.bin", dtype="f64", vocab=3)
    with pytest.raises(ValueError, match="bf16 = "):
        nucleus.load_dump(tmp_path / "x.npy", bf16="float16")
    # arguments of the wrong type are named, with their value
    with pytest.raises(TypeError, match="vocab = 3.0: expected an integer"):
        nucleus.load_dump(tmp_path / "x.bin", dtype="f32", vocab=3.0)
    with pytest.raises(TypeError, match="vocab = True"):
        nucleus.load_dump(tmp_path / "x.bin", dtype="f32", vocab=True)
    # a vocab given is > 0, for a .npy (which has its own) too
    for bad in (0, -3):
        with pytest.raises(ValueError, match=f"vocab = {bad} must be > 0"):
            nucleus.load_dump(tmp_path / "x.bin", dtype="f32", vocab=bad)
        with pytest.raises(ValueError, match=f"vocab = {bad} must be > 0"):
            nucleus.load_dump(tmp_path / "x.npy", vocab=bad)
    with pytest.raises(TypeError, match="vocab = '50': expected an integer"):
        nucleus.load_dump(tmp_path / "x.bin", dtype="f32", vocab="50")
    with pytest.raises(TypeError, match="format = 3: expected a string"):
        nucleus.load_dump(tmp_path / "x.npy", format=3)
    with pytest.raises(TypeError, match="tensor = 1: expected a string"):
        nucleus.load_dump(tmp_path / "x.npy", tensor=1)
    # a NUL in the path would end the name there: another file read
    with pytest.raises(ValueError, match="path: embedded null byte"):
        nucleus.load_dump(str(tmp_path / "x.npy") + "\0.bin", dtype="f32", vocab=3)
