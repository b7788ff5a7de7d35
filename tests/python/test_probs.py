"""Engine.probs: the final distribution, equal to what `nucleus probs` writes."""

import numpy as np
import pytest

import nucleus
from conftest import lm_logits, write_params


def test_matches_cli(engine, rng, tmp_path, cli):
    x = lm_logits(rng, 5, 1200)
    np.save(tmp_path / "x.npy", x)
    params = [{"top_k": 7}, {"top_p": 0.8, "temperature": 0.6}, {"temperature": 0},
              {"min_p": 0.1, "preset": "vllm", "history": [3, 3, 9], "presence_penalty": 1.0},
              {"typical_p": 0.7, "logit_bias": {"11": 5.0}, "banned": [2]}]
    write_params(tmp_path / "p.jsonl", params)
    code, _, err = cli("probs", tmp_path / "x.npy", "--params", tmp_path / "p.jsonl", "-q",
                       "-o", tmp_path / "p.npy")
    assert code == 0, err
    expected = np.load(tmp_path / "p.npy")
    got = engine.probs(
        x,
        top_k=[p.get("top_k", 0) for p in params],
        top_p=[p.get("top_p", 1.0) for p in params],
        temperature=[p.get("temperature", 1.0) for p in params],
        min_p=[p.get("min_p", 0.0) for p in params],
        typical_p=[p.get("typical_p", 1.0) for p in params],
        preset=[p.get("preset", "hf") for p in params],
        history=[p.get("history") for p in params],
        presence_penalty=[p.get("presence_penalty", 0.0) for p in params],
        logit_bias=[None, None, None, None, {11: 5.0}],
        banned=[None, None, None, None, [2]],
    )
    assert got.dtype == np.float32 and got.shape == x.shape
    np.testing.assert_array_equal(got, expected)
    assert (got[0] > 0).sum() == 7


def test_distribution_properties(engine, rng):
    x = lm_logits(rng, 3, 4000)
    p = engine.probs(x, top_p=0.9)
    np.testing.assert_allclose(p.sum(axis=1, dtype=np.float64), 1.0, rtol=1e-5)
    # Greedy rows give the softmax of the processed logits.
    g = engine.probs(x[0], temperature=0)
    assert g.shape == (4000,)
    soft = np.exp(x[0].astype(np.float64) - x[0].max())
    np.testing.assert_allclose(g, soft / soft.sum(), rtol=1e-4, atol=1e-9)
    assert nucleus.probs(x, top_k=1).max(axis=1).tolist() == [1.0, 1.0, 1.0]
    assert engine.probs(x.reshape(1, 3, 4000)).shape == (1, 3, 4000)


def test_out_argument(engine, rng):
    x = lm_logits(rng, 3, 500)
    wide = np.full((3, 512), 7.0, dtype=np.float32)
    result = engine.probs(x, top_k=4, out=wide[:, :500])
    np.testing.assert_array_equal(result, engine.probs(x, top_k=4))
    np.testing.assert_array_equal(wide[:, :500], result)
    assert (wide[:, 500:] == 7.0).all()  # the padding is not touched
    with pytest.raises(ValueError, match="out: expected the shape"):
        engine.probs(x, out=np.zeros((3, 499), dtype=np.float32))
    with pytest.raises(TypeError, match="float32"):
        engine.probs(x, out=np.zeros((3, 500)))
    with pytest.raises(ValueError, match="out: the array is read-only"):
        engine.probs(x, out=np.broadcast_to(np.zeros(500, np.float32), (3, 500)))
    # A float32 dtype carrying metadata is float32.
    tagged = np.zeros((3, 500), dtype=np.dtype(np.float32, metadata={"unit": "p"}))
    np.testing.assert_array_equal(engine.probs(x, top_k=4, out=tagged), result)


def test_row_errors_are_nan(engine, rng):
    x = lm_logits(rng, 3, 100)
    x[1, 5] = np.nan
    p = engine.probs(x)
    assert np.isnan(p[1]).all() and not np.isnan(p[[0, 2]]).any()
    p2, errors = engine.probs(x, return_errors=True)
    np.testing.assert_array_equal(p, p2)
    assert errors == [None, "row 1: logit of token 5 is NaN", None]
    with pytest.raises(ValueError, match="row 2: top_p = 2 is outside"):
        engine.probs(x, top_p=[1.0, 1.0, 2.0])
