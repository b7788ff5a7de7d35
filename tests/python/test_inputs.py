"""Logits inputs: zero-copy numpy arrays (padded row strides too), float16,
the buffer protocol, DLPack (bfloat16 included) and PyTorch tensors."""

import array
import ctypes

import numpy as np
import pytest

import nucleus
from conftest import lm_logits

PARAMS = dict(seed=[5, 6, 7, 8], top_p=0.9, top_k=50, temperature=0.8, logprobs=3)


def same_result(a, b):
    for name in ("tokens", "logprobs", "raw_logprobs", "support", "ranks", "top_tokens",
                 "top_logprobs"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.errors == b.errors


def to_bf16_bits(x):
    """float32 -> bfloat16 bit patterns (truncation: any pattern will do)."""
    return (np.ascontiguousarray(x, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16_bits(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def test_contiguous_float32_is_not_copied():
    x = np.zeros((3, 10), dtype=np.float32)
    info = nucleus._inspect_logits(x)
    assert info == dict(dtype="f32", rows=3, vocab=10, row_stride=10, data=x.ctypes.data,
                        copied=False, source="buffer")


def test_padded_rows_are_not_copied(engine, rng):
    wide = lm_logits(rng, 4, 1024)
    x = wide[:, :1000]  # a server's padded vocabulary
    info = nucleus._inspect_logits(x)
    assert (info["row_stride"], info["vocab"], info["copied"]) == (1024, 1000, False)
    assert info["data"] == wide.ctypes.data
    same_result(engine.sample(x, **PARAMS), engine.sample(np.ascontiguousarray(x), **PARAMS))
    np.testing.assert_array_equal(engine.probs(x, top_k=9),
                                  engine.probs(np.ascontiguousarray(x), top_k=9))


def test_leading_axes_flatten_into_rows():
    x = np.zeros((2, 3, 10), dtype=np.float16)
    info = nucleus._inspect_logits(x)
    assert (info["rows"], info["dtype"], info["copied"]) == (6, "f16", False)
    # Axes that do not collapse into one row stride are copied.
    assert nucleus._inspect_logits(x.transpose(1, 0, 2))["copied"]


def test_float16_equals_float32_of_the_same_values(engine, rng):
    x16 = lm_logits(rng, 4, 2000).astype(np.float16)
    assert not nucleus._inspect_logits(x16)["copied"]
    same_result(engine.sample(x16, **PARAMS), engine.sample(x16.astype(np.float32), **PARAMS))
    np.testing.assert_array_equal(engine.probs(x16, min_p=0.1),
                                  engine.probs(x16.astype(np.float32), min_p=0.1))


def test_other_layouts_and_dtypes_are_converted(engine, rng):
    x = lm_logits(rng, 4, 500)
    expected = engine.sample(x, **PARAMS)
    fortran = np.asfortranarray(x)
    assert nucleus._inspect_logits(fortran)["copied"]
    same_result(engine.sample(fortran, **PARAMS), expected)
    every_other = np.repeat(x, 2, axis=1)[:, ::2]  # inner stride of two elements
    same_result(engine.sample(every_other, **PARAMS), expected)
    float64 = x.astype(np.float64)  # exactly the float32 values
    assert nucleus._inspect_logits(float64)["source"] == "numpy"
    same_result(engine.sample(float64, **PARAMS), expected)
    same_result(engine.sample(x.tolist(), **PARAMS), expected)
    big_endian = x.astype(">f4")
    same_result(engine.sample(big_endian, **PARAMS), expected)


def test_buffer_protocol_objects(engine, rng):
    x = lm_logits(rng, 1, 300)[0]
    buf = array.array("f", x.tolist())
    info = nucleus._inspect_logits(buf)
    assert (info["rows"], info["vocab"], info["copied"]) == (1, 300, False)
    same_result(engine.sample(memoryview(buf), seed=3), engine.sample(x, seed=3))


def test_buffers_without_strides_are_c_contiguous(engine, rng):
    # ctypes arrays export no strides (NULL: C-contiguous); reading them
    # once dereferenced a null pointer.
    x = lm_logits(rng, 2, 300)
    c = ((ctypes.c_float * 300) * 2)()
    ctypes.memmove(c, x.tobytes(), x.nbytes)
    info = nucleus._inspect_logits(c)
    assert (info["rows"], info["vocab"], info["row_stride"]) == (2, 300, 300)
    same_result(engine.sample(c, seed=[3, 4]), engine.sample(x, seed=[3, 4]))


def test_bfloat16_bit_patterns(engine, rng):
    x = lm_logits(rng, 4, 1500)
    bits = to_bf16_bits(x)
    info = nucleus._inspect_logits(bits, logits_dtype="bf16")
    assert (info["dtype"], info["copied"]) == ("bf16", False)
    same_result(engine.sample(bits, logits_dtype="bf16", **PARAMS),
                engine.sample(from_bf16_bits(bits), **PARAMS))
    np.testing.assert_array_equal(engine.probs(bits, logits_dtype="bfloat16", top_p=0.5),
                                  engine.probs(from_bf16_bits(bits), top_p=0.5))
    # Big-endian patterns are the same patterns (numpy converts them).
    np.testing.assert_array_equal(engine.probs(bits.astype(">u2"), logits_dtype="bf16"),
                                  engine.probs(bits, logits_dtype="bf16"))
    with pytest.raises(TypeError, match="2-byte integers"):
        engine.sample(x, logits_dtype="bf16")
    # float16 values are not bfloat16 bits (read as such, they were silently
    # another row): refused in every form, a DLPack one too
    half = x.astype(np.float16)
    for form in (half, memoryview(half), NumpyDLPack(half),
                 HandMadeTensor(half.view(np.uint16), half.shape, code=2)):
        with pytest.raises(TypeError, match="float16 values: leave logits_dtype out"):
            engine.sample(form, logits_dtype="bf16")
    with pytest.raises(ValueError, match="only 'bf16'"):
        engine.sample(x, logits_dtype="f32")


def test_no_rows_and_one_element_arrays(engine):
    # no rows is said as such, not as a per-row list of the wrong length
    for call in (engine.sample, engine.probs):
        with pytest.raises(ValueError, match="logits: rows = 0 must be > 0"):
            call(np.zeros((0, 10), np.float32), temperature=[0.5])
    # an array of one element is not a number (it would pass through __float__)
    x = np.zeros((3, 10), np.float32)
    with pytest.raises(TypeError, match=r"temperature\[0\]: expected a number, got an array"):
        engine.sample(x, temperature=[np.array([0.0]), 1.0, 1.0])


def test_a_bare_number_is_not_a_row(engine):
    # A 0-d input is refused whatever its type (numpy would make a float64
    # one a row of one token on its way to float32).
    for scalar in (3.5, 3, np.array(1.0), np.float32(3.5), np.array(2, np.int64)):
        with pytest.raises(ValueError, match="logits: expected at least 1 axis, got 0"):
            engine.sample(scalar)


class NumpyDLPack:
    """Only the DLPack protocol of a numpy array (numpy >= 1.22 exports it)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, stream=None):
        return self.a.__dlpack__()


@pytest.mark.skipif(not hasattr(np.ndarray, "__dlpack__"), reason="numpy < 1.22 has no DLPack")
def test_dlpack_from_numpy(engine, rng):
    x = lm_logits(rng, 4, 700)
    info = nucleus._inspect_logits(NumpyDLPack(x))
    assert (info["source"], info["copied"], info["data"]) == ("dlpack", False, x.ctypes.data)
    same_result(engine.sample(NumpyDLPack(x), **PARAMS), engine.sample(x, **PARAMS))
    padded = lm_logits(rng, 4, 768)
    info = nucleus._inspect_logits(NumpyDLPack(padded[:, :700]))
    assert (info["row_stride"], info["copied"]) == (768, False)


@pytest.mark.skipif(not hasattr(np.ndarray, "__dlpack__"), reason="numpy < 1.22 has no DLPack")
def test_dlpack_of_other_real_dtypes_is_converted(engine, rng):
    # float64 and integers through DLPack alone: converted as numpy's would
    # be (numpy.asarray made such an object a 0-d array of one object)
    x = lm_logits(rng, 4, 500)
    for a in (x.astype(np.float64), np.round(x).astype(np.int32)):
        same_result(engine.sample(NumpyDLPack(a), **PARAMS), engine.sample(a, **PARAMS))
        assert nucleus._inspect_logits(NumpyDLPack(a))["copied"]


def test_strings_and_objects_are_a_type_error(engine):
    for bad in (b"abc", "abc", np.array(["a", "b"]), object(), np.array([None, 1.0])):
        with pytest.raises(TypeError, match=r"logits: dtype .* \(of a .*\) is not supported"):
            engine.sample(bad)


# A hand-made DLPack producer, so that bfloat16 and foreign devices are tested
# without PyTorch. The layout is DLPack's DLManagedTensor (dlpack.h).
class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int),
                ("dtype", DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


class HandMadeTensor:
    """Exports `base` (kept alive by this object) through DLPack as `shape`
    with `strides` (in elements), dtype code 4 = bfloat16 by default."""

    def __init__(self, base, shape, strides=None, code=4, bits=16, device=1, offset=0):
        self.base = base
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.strides = (ctypes.c_int64 * len(shape))(*strides) if strides else None
        self.managed = DLManagedTensor()
        t = self.managed.dl_tensor
        t.data = base.ctypes.data
        t.device = DLDevice(device, 0)
        t.ndim = len(shape)
        t.dtype = DLDataType(code, bits, 1)
        t.shape = self.shape
        t.strides = self.strides
        t.byte_offset = offset

    def __dlpack__(self, stream=None):
        new = ctypes.pythonapi.PyCapsule_New
        new.restype = ctypes.py_object
        new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        return new(ctypes.addressof(self.managed), b"dltensor", None)


def test_dlpack_bfloat16(engine, rng):
    x = lm_logits(rng, 4, 640)
    bits = to_bf16_bits(x)
    expected = engine.sample(from_bf16_bits(bits), **PARAMS)
    t = HandMadeTensor(bits, bits.shape)
    info = nucleus._inspect_logits(t)
    assert (info["dtype"], info["copied"], info["data"]) == ("bf16", False, bits.ctypes.data)
    same_result(engine.sample(t, **PARAMS), expected)

    # Padded rows, a byte offset, then a transposed (copied) layout.
    wide = np.zeros((4, 700), dtype=np.uint16)
    wide[:, 2:642] = bits
    t = HandMadeTensor(wide, (4, 640), strides=(700, 1), offset=4)
    info = nucleus._inspect_logits(t)
    assert (info["row_stride"], info["copied"]) == (700, False)
    same_result(engine.sample(t, **PARAMS), expected)
    columns = np.ascontiguousarray(bits.T)
    t = HandMadeTensor(columns, (4, 640), strides=(1, 4))
    assert nucleus._inspect_logits(t)["copied"]
    same_result(engine.sample(t, **PARAMS), expected)


def test_dlpack_errors(engine):
    base = np.zeros((2, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="CUDA device"):
        engine.sample(HandMadeTensor(base, (2, 8), code=2, bits=32, device=2))


def test_torch_tensors(engine, rng):
    torch = pytest.importorskip("torch")
    x = lm_logits(rng, 4, 900)
    expected = engine.sample(x, **PARAMS)
    t = torch.from_numpy(x)
    info = nucleus._inspect_logits(t)
    assert (info["source"], info["copied"], info["data"]) == ("dlpack", False, t.data_ptr())
    same_result(engine.sample(t, **PARAMS), expected)
    same_result(engine.sample(t.half(), **PARAMS), engine.sample(x.astype(np.float16), **PARAMS))

    b = t.to(torch.bfloat16)
    info = nucleus._inspect_logits(b)
    assert (info["dtype"], info["copied"]) == ("bf16", False)
    same_result(engine.sample(b, **PARAMS), engine.sample(b.float().numpy(), **PARAMS))

    padded = torch.zeros(4, 1024, dtype=torch.bfloat16)
    padded[:, :900] = b
    info = nucleus._inspect_logits(padded[:, :900])
    assert (info["row_stride"], info["copied"]) == (1024, False)
    same_result(engine.sample(padded[:, :900], **PARAMS), engine.sample(b, **PARAMS))
    same_result(engine.sample(b.t().contiguous().t(), **PARAMS), engine.sample(b, **PARAMS))
    same_result(engine.sample(t.double(), **PARAMS), expected)

    # Per-row parameters and masks may be tensors too.
    result = engine.sample(t, seed=torch.tensor([5, 6, 7, 8]), top_p=0.9, top_k=50,
                           temperature=torch.full((4,), 0.8), logprobs=3)
    same_result(result, expected)


def test_a_ragged_list_is_a_value_error(engine):
    # (a bad shape, as python.md says, not a type numpy cannot read)
    with pytest.raises(ValueError, match="logits: cannot read a list as logits"):
        engine.sample([[1.0, 2.0], [3.0]])
