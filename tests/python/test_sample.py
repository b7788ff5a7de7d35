"""Engine.sample: the same answers as the C++ engine behind the `nucleus`
program, per-row parameters, and errors."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import nucleus
from conftest import lm_logits, pack_mask, write_params


def f32(values):
    return np.asarray(values, dtype=np.float32)


def assert_same_as_cli(result, lines):
    """Every field of `result` equals the program's JSON lines exactly (the
    program prints float32 values as the shortest decimal that reads back)."""
    assert len(lines) == len(result.errors)
    for r, line in enumerate(lines):
        if "error" in line:
            assert result.errors[r] is not None and line["error"] in result.errors[r]
            continue
        assert result.errors[r] is None
        n = len(line["tokens"])
        np.testing.assert_array_equal(result.tokens[r, :n], line["tokens"])
        np.testing.assert_array_equal(result.logprobs[r, :n], f32(line["logprobs"]))
        np.testing.assert_array_equal(result.raw_logprobs[r, :n], f32(line["raw_logprobs"]))
        assert result.support[r] == line["support"]
        if "ranks" in line:
            np.testing.assert_array_equal(result.ranks[r, :n], line["ranks"])
            top = line["top_logprobs"][0]
            np.testing.assert_array_equal(result.top_tokens[r, : len(top)],
                                          [t["token"] for t in top])
            np.testing.assert_array_equal(result.top_logprobs[r, : len(top)],
                                          f32([t["logprob"] for t in top]))


def test_matches_cli_with_shared_parameters(engine, rng, tmp_path, cli_sample):
    x = lm_logits(rng, 6, 3000)
    np.save(tmp_path / "x.npy", x)
    lines = cli_sample(tmp_path / "x.npy", "--seed", 11, "--top-p", 0.875, "--temperature",
                       0.75, "--logprobs", 3, "-n", 2)
    # A single seed S gives row r the seed S + r, as the program does.
    result = engine.sample(x, seed=11, top_p=0.875, temperature=0.75, logprobs=3, n=2)
    assert result.tokens.shape == (6, 2)
    assert result.top_tokens.shape == (6, 3)
    assert_same_as_cli(result, lines)


def test_matches_cli_with_per_row_parameters(engine, rng, tmp_path, cli_sample):
    rows, vocab = 8, 2000
    x = lm_logits(rng, rows, vocab)
    allowed = np.zeros(vocab, dtype=bool)
    allowed[[3, 5, 8, 13, 21, 34, 55, 89]] = True
    params = [
        {"temperature": 0, "seed": 1},
        {"top_k": 5, "seed": 2, "step": 7, "logprobs": 2},
        {"min_p": 0.25, "preset": "vllm", "seed": 3, "num_samples": 3},
        {"history": [1, 1, 2, 7], "prompt_tokens": [4], "repetition_penalty": 1.5,
         "frequency_penalty": 0.5, "presence_penalty": 0.25, "seed": 4},
        {"logit_bias": {"17": 40.0}, "banned": [0, 1, 2], "seed": 5},
        {"allowed_tokens": np.flatnonzero(allowed).tolist(), "seed": 6, "logprobs": 4,
         "logprobs_mode": "raw"},
        {"typical_p": 0.5, "top_n_sigma": 1.5, "min_keep": 2, "preset": "llama.cpp",
         "seed": 7, "temperature": 1.25},
        {"top_p": 0.5, "top_k": 40, "seed": 2**64 - 1, "step": 2**40},
    ]
    write_params(tmp_path / "p.jsonl", params)
    np.save(tmp_path / "x.npy", x)
    lines = cli_sample(tmp_path / "x.npy", "--params", tmp_path / "p.jsonl")

    def per_row(key, default):
        return [p.get(key, default) for p in params]

    mask_words = pack_mask(allowed)
    result = engine.sample(
        x,
        temperature=per_row("temperature", 1.0),
        top_k=per_row("top_k", 0),
        top_p=per_row("top_p", 1.0),
        min_p=np.array(per_row("min_p", 0.0)),
        typical_p=per_row("typical_p", 1.0),
        top_n_sigma=per_row("top_n_sigma", 0.0),
        min_keep=per_row("min_keep", 1),
        repetition_penalty=per_row("repetition_penalty", 1.0),
        frequency_penalty=per_row("frequency_penalty", 0.0),
        presence_penalty=per_row("presence_penalty", 0.0),
        preset=per_row("preset", "hf"),
        seed=per_row("seed", None),
        step=per_row("step", 0),
        n=per_row("num_samples", 1),
        logprobs=per_row("logprobs", 0),
        logprobs_mode=per_row("logprobs_mode", "processed"),
        history=per_row("history", None),
        prompt=per_row("prompt_tokens", None),
        logit_bias=[{int(k): v for k, v in p["logit_bias"].items()} if "logit_bias" in p
                    else None for p in params],
        banned=per_row("banned", None),
        allowed_mask=[mask_words if "allowed_tokens" in p else None for p in params],
    )
    assert result.tokens.shape == (rows, 3)
    assert_same_as_cli(result, lines)
    assert result.tokens[0, 0] == np.argmax(x[0])
    assert allowed[result.tokens[5, 0]]
    assert result.tokens[4, 0] == 17
    # Rows with n < 3 are padded.
    assert (result.tokens[0, 1:] == -1).all() and np.isnan(result.logprobs[0, 1:]).all()


def test_allowed_mask_list_with_none_rows(engine, rng):
    # None in a list of masks: that row has no mask, the others theirs.
    x = lm_logits(rng, 3, 100)
    allowed = np.zeros(100, bool)
    allowed[[3, 50, 99]] = True
    masked = engine.sample(x, seed=[1, 2, 3], allowed_mask=[None, allowed, None])
    plain = engine.sample(x, seed=[1, 2, 3])
    assert masked.tokens[0, 0] == plain.tokens[0, 0]
    assert masked.tokens[2, 0] == plain.tokens[2, 0]
    assert masked.tokens[1, 0] in (3, 50, 99)
    # Packed words in any integer byte order allow the same tokens.
    words = np.zeros(4, np.int32)
    words[0], words[1] = 1 << 3, 1 << (50 - 32)
    for w in (words, words.astype(">i4"), words.astype("<u4"), words.astype(">u4")):
        only = engine.sample(x, seed=[1, 2, 3], allowed_mask=w, n=8)
        assert set(only.tokens.ravel()) <= {3, 50}, w.dtype
    with pytest.raises(ValueError, match="one entry per row"):
        engine.sample(x, seed=1, allowed_mask=[None, allowed])
    with pytest.raises(ValueError, match=r"allowed_mask\[1\]: a boolean mask needs vocab"):
        engine.sample(x, seed=1, allowed_mask=[None, allowed[:50], None])
    # An object that offers DLPack alone is read as its array.
    class DLPackOnly:
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, stream=None):
            return self.a.__dlpack__()

    if hasattr(np.ndarray, "__dlpack__"):
        only = engine.sample(x, seed=[1, 2, 3], allowed_mask=DLPackOnly(words), n=8)
        assert set(only.tokens.ravel()) <= {3, 50}
    # Another type is a TypeError (python.md), not a mask of no axes.
    import array
    for bad in ("abc", 5, {}, range(4), array.array("i", words), memoryview(words)):
        with pytest.raises(TypeError, match="allowed_mask: expected packed words"):
            engine.sample(x, seed=1, allowed_mask=bad)
    with pytest.raises(TypeError, match=r"allowed_mask\[1\]: expected packed words"):
        engine.sample(x, seed=1, allowed_mask=[None, range(4), None])


def test_matches_cli_float16(engine, rng, tmp_path, cli_sample):
    x = lm_logits(rng, 4, 1500).astype(np.float16)
    np.save(tmp_path / "x.npy", x)
    lines = cli_sample(tmp_path / "x.npy", "--seed", 5, "--min-p", 0.05, "--logprobs", 2)
    assert_same_as_cli(engine.sample(x, seed=5, min_p=0.05, logprobs=2), lines)


def test_scalars_equal_per_row_values(engine, rng):
    x = lm_logits(rng, 5, 800)
    scalar = engine.sample(x, seed=[9, 8, 7, 6, 5], top_k=20, temperature=0.7, history=[1, 2],
                           repetition_penalty=1.3, logit_bias={3: 1.0}, logprobs=2)
    lists = engine.sample(x, seed=np.array([9, 8, 7, 6, 5], dtype=np.uint64),
                          top_k=np.full(5, 20), temperature=[0.7] * 5,
                          history=np.array([[1, 2]] * 5), repetition_penalty=(1.3,) * 5,
                          logit_bias=[{3: 1.0}] * 5, logprobs=[2] * 5)
    for name in ("tokens", "logprobs", "raw_logprobs", "support", "ranks", "top_tokens",
                 "top_logprobs"):
        np.testing.assert_array_equal(getattr(scalar, name), getattr(lists, name), err_msg=name)


def test_a_row_does_not_depend_on_its_batch(engine, rng):
    x = lm_logits(rng, 6, 1000)
    seeds = [101, 202, 303, 404, 505, 606]
    temps = [0.5, 1.0, 1.5, 0.8, 1.2, 0.9]
    batch = engine.sample(x, seed=seeds, step=3, temperature=temps, top_p=0.95)
    single = nucleus.Engine(threads=1)
    for r in (5, 0, 3):
        one = single.sample(x[r], seed=seeds[r], step=3, temperature=temps[r], top_p=0.95)
        assert one.tokens.shape == (1, 1)
        assert one.tokens[0, 0] == batch.tokens[r, 0]
        assert one.logprobs[0, 0] == batch.logprobs[r, 0]


def test_greedy_and_module_level_function(rng):
    x = lm_logits(rng, 3, 500)
    result = nucleus.sample(x, temperature=0)
    np.testing.assert_array_equal(result.tokens[:, 0], np.argmax(x, axis=1))
    assert result.ok.all()


def test_different_steps_give_different_draws(engine, rng):
    x = np.zeros((1, 1000), dtype=np.float32)  # uniform: every step should differ
    tokens = {int(engine.sample(x, seed=1, step=s).tokens[0, 0]) for s in range(20)}
    assert len(tokens) > 10


def test_allowed_mask_forms_agree(engine, rng):
    vocab = 100
    x = lm_logits(rng, 2, vocab)
    allowed = np.zeros(vocab, dtype=bool)
    allowed[[7, 40, 99]] = True
    words = pack_mask(allowed).view(np.uint32)
    by_bool = engine.probs(x, allowed_mask=allowed)
    by_words = engine.probs(x, allowed_mask=words)
    by_rows = engine.probs(x, allowed_mask=np.stack([words.astype(np.int64)] * 2))
    np.testing.assert_array_equal(by_bool, by_words)
    np.testing.assert_array_equal(by_bool, by_rows)
    assert (by_bool[:, ~allowed] == 0).all()
    with pytest.raises(ValueError, match="allowed_mask: "):
        engine.probs(x, allowed_mask=[[1, 2, 3, 4], [1]])
    # uint64 words past 32 bits are refused by their value (not wrapped
    # through int64 to -1, which would allow every token)
    for big in (2**64 - 1, 2**63, 2**32):
        wide = words.astype(np.uint64)
        wide[0] = big
        with pytest.raises(ValueError, match=f"allowed_mask: word {big} does not fit in 32 bits"):
            engine.probs(x, allowed_mask=wide)


def test_logit_bias_accepts_string_keys(engine, rng):
    x = lm_logits(rng, 1, 300)
    result = engine.sample(x, seed=0, logit_bias={"42": 100.0})
    assert result.tokens[0, 0] == 42
    # decimal digits only (Python's int() takes more)
    for key in (" 42", "4_2", "\u0664\u0662", "", "-", "42.0"):
        with pytest.raises(TypeError, match="the key is not a token id"):
            engine.sample(x, seed=0, logit_bias={key: 100.0})
    with pytest.raises(ValueError, match="logit_bias"):
        engine.sample(x, seed=0, logit_bias={"-3": 100.0})


def test_row_errors_do_not_raise(engine, rng):
    x = lm_logits(rng, 4, 256)
    x[1, 17] = np.nan
    x[2, 3] = np.inf
    result = engine.sample(x, seed=3, banned=[None, None, None, list(range(256))], logprobs=2)
    assert result.errors[0] is None
    assert result.errors[1] == "row 1: logit of token 17 is NaN"
    assert "row 2" in result.errors[2] and "token 3" in result.errors[2]
    assert "row 3: no token left" in result.errors[3]
    np.testing.assert_array_equal(result.ok, [True, False, False, False])
    assert (result.tokens[1:] == -1).all()
    assert np.isnan(result.logprobs[1:]).all()
    assert (result.top_tokens[1:] == -1).all() and np.isneginf(result.top_logprobs[1:]).all()
    assert result.tokens[0, 0] >= 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_p": 1.5}, "row 0: top_p = 1.5 is outside [0, 1]"),
        ({"temperature": [1.0, -1.0]}, "row 1: temperature = -1"),
        ({"history": [[1], [300]]}, "row 1: history[0] = 300 is outside [0, 256)"),
        ({"prompt": [7, 256]}, "row 0: prompt[1] = 256 is outside [0, 256)"),
        ({"n": 0}, "row 0: n = 0 is outside"),
        ({"logprobs": 300}, "row 0: logprobs = 300 is outside"),
        ({"min_keep": 0}, "min_keep"),
        ({"top_p": [0.5, 0.5, 0.5]}, "top_p: expected one value or 2 per-row values, got 3"),
        ({"preset": "foo"}, "preset = 'foo' is not one of"),
        ({"seed": -1}, "seed = -1 is outside [0, 2**64)"),
        ({"allowed_mask": np.zeros(3, dtype=np.int32)}, "allowed_mask"),
        ({"allowed_mask": np.zeros(10, dtype=bool)}, "needs vocab = 256"),
        ({"top_k": 2**40}, "top_k = 1099511627776 does not fit in int32"),
        ({"top_k": np.uint64(2**63 + 5)}, "top_k = 9223372036854775813 does not fit in int32"),
        ({"temperature": 10**400}, "temperature: 100000000000...00000000 is too large"),
        ({"top_p": [0.5, -(10**400)]}, "top_p[1]: -10000000000...00000000 is too large"),
        ({"temperature": 1e40}, "temperature = 1e+40 does not fit a 32-bit float"),
        ({"logit_bias": {3: -1e39}}, "logit_bias[3] = -1e+39 does not fit a 32-bit float"),
        ({"temperature": 1e-46}, "temperature = 1e-46 is too small for a 32-bit float"),
    ],
)
def test_call_errors_raise_value_error(engine, rng, kwargs, message):
    x = lm_logits(rng, 2, 256)
    with pytest.raises(ValueError, match=None) as info:
        engine.sample(x, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_pp": 0.5}, "unexpected keyword argument 'top_pp'"),
        ({"top_k": 2.5}, "top_k: expected an integer"),
        ({"temperature": "hot"}, "temperature: expected a number"),
        ({"logit_bias": 3}, "logit_bias: expected a dict"),
        ({"history": [1, [2]]}, "mixes token ids and lists"),
        # booleans are not numbers here (logprobs takes them as the OpenAI
        # flag: test_logprobs_flag)
        ({"logprobs": 2.0}, "logprobs: expected an integer, got float"),
        ({"top_k": [3, np.True_]}, "top_k[1]: expected an integer, got bool"),
        ({"temperature": False}, "temperature: expected a number, got bool"),
        ({"seed": True}, "seed: expected an integer, got bool"),
        ({"top_p": np.array([True, False])}, "top_p[0]: expected a number, got bool"),
        # (a 0-d boolean array is a bool too, alone or in a list)
        ({"temperature": [np.array(True), 1.0]}, "temperature[0]: expected a number, got bool"),
        ({"logit_bias": {1: np.array(True)}}, "logit_bias[1]: expected a number, got bool"),
        ({"top_k": np.array(False)}, "top_k: expected an integer, got bool"),
    ],
)
def test_bad_types_raise_type_error(engine, rng, kwargs, message):
    with pytest.raises(TypeError) as info:
        engine.sample(lm_logits(rng, 2, 64), **kwargs)
    assert message in str(info.value)


def test_logprobs_flag(engine, rng):
    # logprobs=False: no log-probabilities (the tokens are the same draws);
    # True: the sampled tokens' own, the default; a number: also that many
    # top ones. Per row too, booleans and numbers mixed.
    x = lm_logits(rng, 3, 3000)
    kw = dict(seed=11, temperature=0.8, top_k=40, n=2)
    default = engine.sample(x, **kw)
    assert np.isfinite(default.logprobs).all() and np.isfinite(default.raw_logprobs).all()
    off = engine.sample(x, logprobs=False, **kw)
    np.testing.assert_array_equal(off.tokens, default.tokens)
    assert np.isnan(off.logprobs).all() and np.isnan(off.raw_logprobs).all()
    assert (off.ranks == -1).all() and off.top_tokens.shape[1] == 0
    on = engine.sample(x, logprobs=np.True_, **kw)
    np.testing.assert_array_equal(on.logprobs, default.logprobs)
    np.testing.assert_array_equal(on.raw_logprobs, default.raw_logprobs)
    mixed = engine.sample(x, logprobs=[False, True, 3], **kw)
    np.testing.assert_array_equal(mixed.tokens, default.tokens)
    assert np.isnan(mixed.logprobs[0]).all() and np.isnan(mixed.raw_logprobs[0]).all()
    np.testing.assert_array_equal(mixed.logprobs[1:], default.logprobs[1:])
    np.testing.assert_array_equal(mixed.raw_logprobs[1:], default.raw_logprobs[1:])
    assert (mixed.top_tokens[:2] == -1).all() and (mixed.top_tokens[2] >= 0).all()


def test_a_logprob_of_zero_has_no_sign(engine):
    # One token holds all the mass: log(1) is +0.0, which prints as 0.0.
    r = engine.sample(np.array([5, -200, -200], np.float32), seed=1, top_k=1, logprobs=1)
    assert r.tokens[0] == 0
    for value in (r.logprobs[0], r.raw_logprobs[0], r.top_logprobs[0]):
        assert value == 0.0 and not np.signbit(value), value


def test_logit_bias_keys_naming_one_token_add(engine):
    # 3 and "3" are one token: both biases apply (the C++ list's semantics).
    x = np.zeros(4, np.float32)
    both = engine.probs(x, logit_bias={3: 1.0, "3": 2.0})
    summed = engine.probs(x, logit_bias={3: 3.0})
    np.testing.assert_array_equal(both, summed)


def test_bad_logits_raise(engine):
    with pytest.raises(ValueError, match="rows = 0 must be > 0"):
        engine.sample(np.zeros((0, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 1 axis"):
        engine.sample(np.float32(1.0))
    with pytest.raises(TypeError, match="not supported"):
        engine.sample(np.zeros((2, 4), dtype=np.complex64))
    with pytest.raises(TypeError, match="draw keywords|applies to sample"):
        engine.probs(np.zeros((2, 4), dtype=np.float32), n=2)


def test_threads_share_an_engine(engine, rng):
    x = lm_logits(rng, 8, 4000)
    expected = engine.sample(x, seed=77, top_p=0.9).tokens
    outputs = []

    def work():
        for _ in range(5):
            outputs.append(engine.sample(x, seed=77, top_p=0.9).tokens)

    workers = [threading.Thread(target=work) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(outputs) == 15
    for tokens in outputs:
        np.testing.assert_array_equal(tokens, expected)


def test_runnable_isas():
    isas = nucleus.runnable_isas()
    assert isas[0] == "sse2" and len(set(isas)) == len(isas)
    assert set(isas) <= {"sse2", "avx2", "avx512"}
    for isa in isas:
        assert nucleus.Engine(threads=1, isa=isa).isa == isa
    assert nucleus.Engine(threads=1).isa == isas[-1]


def test_engine_options():
    assert nucleus.Engine(threads=1).max_threads == 1
    assert nucleus.Engine().max_threads >= 1
    # more threads than the process may run: capped there (no oneTBB warning)
    assert nucleus.Engine(threads=100000).max_threads == nucleus.Engine().max_threads
    for name in ("threads", "seed"):
        for flag in (True, np.False_):
            with pytest.raises(TypeError, match=f"{name}: expected an integer, got bool"):
                nucleus.Engine(**{name: flag})
    with pytest.raises(ValueError, match=r"threads = -1 is outside \[0, 2\*\*31\)"):
        nucleus.Engine(threads=-1)
    with pytest.raises(ValueError, match=r"threads = 1099511627776 is outside"):
        nucleus.Engine(threads=2**40)
    with pytest.raises(ValueError, match=r"threads = 1180591620717411303424 is outside"):
        nucleus.Engine(threads=2**70)
    with pytest.raises(ValueError, match=r"seed = -5 is outside \[0, 2\*\*64\)"):
        nucleus.Engine(seed=-5)
    for name in ("threads", "seed"):
        with pytest.raises(TypeError, match=f"{name}: expected an integer, got float"):
            nucleus.Engine(**{name: 2.0})
    assert nucleus.Engine(threads=np.int8(1), seed=np.uint64(2**64 - 1)).max_threads == 1
    assert isinstance(nucleus.__version__, str) and nucleus.__version__.count(".") == 2


def test_engine_read_ahead(monkeypatch):
    monkeypatch.delenv("NUCLEUS_READ_AHEAD", raising=False)
    assert nucleus.Engine().read_ahead == "auto"
    assert nucleus.Engine(read_ahead="Always").read_ahead == "always"
    assert "read_ahead='never'" in repr(nucleus.Engine(read_ahead="never"))
    with pytest.raises(ValueError, match="read_ahead = 'sometimes' is not auto, always or never"):
        nucleus.Engine(read_ahead="sometimes")
    # the environment decides where the option says auto, and only there
    monkeypatch.setenv("NUCLEUS_READ_AHEAD", "never")
    assert nucleus.Engine().read_ahead == "never"
    assert nucleus.Engine(read_ahead="always").read_ahead == "always"
    # speed only: a batch read ahead gives what it gives without
    x = np.random.default_rng(3).standard_normal((6, 5000)).astype(np.float32)
    got = [nucleus.Engine(threads=1, read_ahead=m).sample(x, seed=7, top_p=0.9).tokens
           for m in ("always", "never")]
    np.testing.assert_array_equal(got[0], got[1])


def test_engine_isa():
    assert nucleus.Engine(isa="sse2").isa == "sse2"
    assert nucleus.Engine(isa="SSE2").isa == "sse2"
    assert nucleus.Engine().isa in ("sse2", "avx2", "avx512")
    assert "isa='sse2'" in repr(nucleus.Engine(isa="sse2"))
    with pytest.raises(ValueError, match="isa = 'neon'"):
        nucleus.Engine(isa="neon")
    # (a str only: bytes or a number is a TypeError naming the keyword)
    with pytest.raises(TypeError, match=r"isa = b'avx2': expected a string"):
        nucleus.Engine(isa=b"avx2")
    with pytest.raises(TypeError, match="read_ahead = 1: expected a string"):
        nucleus.Engine(read_ahead=1)
    # Every path gives the same greedy token.
    x = np.arange(1000, dtype=np.float32)[None, :]
    tokens = {nucleus.Engine(isa=i).sample(x, temperature=0).tokens[0, 0] for i in ("sse2", "auto")}
    assert tokens == {999}


def test_engine_seed_drives_unseeded_rows(rng):
    x = np.zeros((4, 1000), dtype=np.float32)
    a, b = nucleus.Engine(threads=1, seed=42), nucleus.Engine(threads=2, seed=42)
    first = [a.sample(x).tokens for _ in range(3)]
    np.testing.assert_array_equal(first, [b.sample(x).tokens for _ in range(3)])
    assert not np.array_equal(first[0], first[1])  # a new seed for every call


@pytest.mark.parametrize("call", ["sample", "verify"])
def test_a_nested_call_while_results_are_built_does_not_corrupt_them(call):
    """Building the Python results can run Python code (a garbage collection
    and its callbacks) that calls the module again on the same thread; the
    outer call's results must not be the nested call's. The collection is
    steered to fall at each of the allocations after the engine call in turn:
    a logit_bias value's __float__ sets the threshold a few allocations
    ahead."""
    import gc

    engine = nucleus.Engine(threads=2)
    rows, vocab = 6, 1000
    if call == "sample":
        outer = np.zeros((rows, vocab), np.float32)
        for r in range(rows):
            outer[r, 500 + r] = 100.0  # row r always draws 500 + r
        run = lambda **kw: engine.sample(outer, **kw).tokens
        nested = lambda: engine.sample(np.eye(1, 50, 3, dtype=np.float32) * 100)
    else:
        outer = np.zeros((rows, 3, vocab), np.float32)
        for r in range(rows):
            outer[r, :, 500 + r] = 100.0
        drafts = np.array([[500 + r] * 2 for r in range(rows)])
        run = lambda **kw: engine.verify(outer, drafts, **kw).tokens
        small = np.zeros((1, 2, 50), np.float32)
        small[0, :, 3] = 100.0
        nested = lambda: engine.verify(small, np.array([[3]]))
    expected = run()
    armed, fired, keep = [False], [], []

    def on_gc(phase, info):
        if phase == "start" and armed[0]:
            armed[0] = False
            fired.append(True)
            nested()

    class Bias:
        def __init__(self, ahead):
            self.ahead = ahead

        def __float__(self):
            keep.append([[] for _ in range(100)])  # empty CPython's list free list
            gc.set_threshold(max(1, gc.get_count()[0] + self.ahead))
            armed[0] = True
            return 0.0

    threshold = gc.get_threshold()
    gc.callbacks.append(on_gc)
    try:
        for ahead in range(-4, 4):
            got = run(logit_bias={0: Bias(ahead)})
            armed[0] = False
            gc.set_threshold(*threshold)
            np.testing.assert_array_equal(got, expected, err_msg=f"ahead={ahead}")
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*threshold)
    assert fired, "no nested call happened: the test did not test anything"


def test_a_call_error_comes_before_a_parameter_error():
    """Logits the engine refuses are reported as such, not as a parameter
    that is out of range for them; so is a bad `out`."""
    engine = nucleus.Engine(threads=1)
    with pytest.raises(ValueError, match="vocab = 0"):
        engine.sample(np.zeros((2, 0), np.float32), history=[1])
    x = np.zeros((2, 8), np.float32)
    with pytest.raises(ValueError, match="out: expected"):
        engine.probs(x, top_p=2.0, out=x[:, :4])


@pytest.mark.parametrize("call", ["sample", "probs", "verify", "load_dump"])
def test_the_program_exits_cleanly_while_a_daemon_thread_is_in_a_call(call, tmp_path):
    # A daemon thread whose call ends while the interpreter finalizes must
    # not abort the process (the GIL's return ended it by pthread_exit,
    # which unwound out of a noexcept destructor: std::terminate, status 134).
    dump = tmp_path / "rows.npy"
    np.save(dump, np.zeros((4, 20000), np.float32))
    calls = {
        "sample": "e.sample(x, seed=1)",
        "probs": "e.probs(x, top_p=0.9)",
        "verify": "e.verify(x, np.zeros((1, 3), np.int32), seed=1)",
        "load_dump": f"nucleus.load_dump({str(dump)!r})",
    }
    script = f"""
import threading, time
import numpy as np
import nucleus
e = nucleus.Engine(threads=1)
x = np.zeros((4, 20000), np.float32)
calls = [0]
def loop():
    while True:
        {calls[call]}
        calls[0] += 1
threading.Thread(target=loop, daemon=True).start()
while calls[0] < 3:
    time.sleep(0.01)
print("exiting")
"""
    for _ in range(3):
        p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           timeout=60, env=os.environ)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "exiting"
