"""Engine.verify: speculative-decoding verification."""

import numpy as np
import pytest

import nucleus
from conftest import lm_logits

ROWS, K, VOCAB = 3, 4, 300


def peaked_targets(rng, drafts, bonus):
    """Target rows that put (almost) all their mass on the drafts, then on
    the bonus token."""
    x = lm_logits(rng, ROWS * (K + 1), VOCAB, scale=1.0).reshape(ROWS, K + 1, VOCAB)
    for r in range(ROWS):
        for i in range(K):
            x[r, i, drafts[r, i]] += 60.0
        x[r, K, bonus[r]] += 60.0
    return x


def test_all_drafts_accepted_then_bonus(engine, rng):
    drafts = rng.integers(0, VOCAB, size=(ROWS, K))
    bonus = np.array([1, 2, 3])
    x = peaked_targets(rng, drafts, bonus)
    accepted, tokens = engine.verify(x, drafts, seed=[1, 2, 3])
    np.testing.assert_array_equal(accepted, [K] * ROWS)
    np.testing.assert_array_equal(tokens[:, :K], drafts)
    np.testing.assert_array_equal(tokens[:, K], bonus)
    # One row, 1-D drafts and 2-D targets.
    one = engine.verify(x[1], drafts[1], seed=2)
    np.testing.assert_array_equal(one.tokens[0], tokens[1])


def test_rejection_stops_the_row(engine, rng):
    drafts = rng.integers(0, VOCAB, size=(ROWS, K))
    x = peaked_targets(rng, drafts, np.zeros(ROWS, dtype=int))
    x[0, 1, drafts[0, 1]] = -np.inf  # the target can never emit draft 1 of row 0
    result = engine.verify(x, drafts, seed=9, step=4)
    assert result.accepted[0] == 1
    assert result.tokens[0, 0] == drafts[0, 0]
    assert result.tokens[0, 1] not in (-1, drafts[0, 1])
    assert (result.tokens[0, 2:] == -1).all()
    assert result.errors == [None, None, None]
    again = nucleus.Engine(threads=1).verify(x.reshape(ROWS * (K + 1), VOCAB), drafts, seed=9,
                                             step=4)
    np.testing.assert_array_equal(again.accepted, result.accepted)
    np.testing.assert_array_equal(again.tokens, result.tokens)


def test_draft_probs_equal_to_the_target_accept_everything(engine, rng):
    x = lm_logits(rng, ROWS * (K + 1), VOCAB).reshape(ROWS, K + 1, VOCAB)
    params = dict(top_p=0.9, temperature=0.8)
    q = engine.probs(x[:, :K], **params)  # the drafter's distribution = the target's
    drafts = np.stack([[rng.choice(VOCAB, p=q[r, i] / q[r, i].sum(dtype=np.float64))
                        for i in range(K)] for r in range(ROWS)])
    accepted, tokens = engine.verify(x, drafts, draft_probs=q, seed=[4, 5, 6], **params)
    np.testing.assert_array_equal(accepted, [K] * ROWS)
    np.testing.assert_array_equal(tokens[:, :K], drafts)
    assert (tokens[:, K] >= 0).all()


def test_errors(engine, rng):
    drafts = rng.integers(0, VOCAB, size=(ROWS, K))
    x = lm_logits(rng, ROWS * (K + 1), VOCAB).reshape(ROWS, K + 1, VOCAB)
    x[2, 0, 0] = np.nan
    result = engine.verify(x, drafts, seed=1)
    assert result.errors[2] is not None and "NaN" in result.errors[2]
    assert result.accepted[2] == -1 and (result.tokens[2] == -1).all()
    assert result.errors[0] is None
    with pytest.raises(ValueError, match="target_logits: expected"):
        engine.verify(x[:, :K], drafts)
    with pytest.raises(ValueError, match="draft_probs: expected"):
        engine.verify(x, drafts, draft_probs=np.zeros((ROWS, K, VOCAB - 1), np.float32))
    with pytest.raises(TypeError, match="draft_probs: expected float32 probabilities, got dtype <U3"):
        engine.verify(x, drafts, draft_probs="abc")
    # the right size laid out the wrong way round is refused, not misread
    with pytest.raises(ValueError, match=rf"draft_probs: expected .* got \[{K}, {ROWS}, {VOCAB}\]"):
        engine.verify(x, drafts, draft_probs=np.zeros((K, ROWS, VOCAB), np.float32))
    # a drafter row that is not a distribution would bias the output silently
    y = lm_logits(rng, ROWS * (K + 1), VOCAB)
    q = engine.probs(y).reshape(ROWS, K + 1, VOCAB)[:, :K].copy()
    assert engine.verify(y, drafts, draft_probs=q).errors == [None] * ROWS
    # float32 at an address that is not a multiple of 4 (numpy keeps such
    # an array as it is) is copied, not refused
    raw = np.zeros(q.nbytes + 1, np.uint8)
    unaligned = np.ndarray(q.shape, np.float32, buffer=raw, offset=1)
    unaligned[...] = q
    assert not unaligned.flags.aligned
    a = engine.verify(y, drafts, draft_probs=q, seed=3)
    b = engine.verify(y, drafts, draft_probs=unaligned, seed=3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    q[1, 2] *= 0.5
    with pytest.raises(ValueError, match=r"row 1: draft_probs\[2\] sums to 0.5: a draft distribution"):
        engine.verify(y, drafts, draft_probs=q)
    with pytest.raises(TypeError, match="draft_tokens"):
        engine.verify(x, drafts.astype(np.float32))
    with pytest.raises(ValueError, match="draft_tokens: setting an array element|draft_tokens: .*inhomogeneous"):
        engine.verify(x, [[1, 2, 3, 4], [1, 2], [1, 2, 3, 4]])
    wide = drafts.astype(np.uint64)
    wide[1, 0] = 2**64 - 1
    with pytest.raises(ValueError, match="draft_tokens: token 18446744073709551615 does not fit"):
        engine.verify(x, wide)
    with pytest.raises(ValueError, match="top_p"):
        engine.verify(x, drafts, top_p=3.0)
    with pytest.raises(TypeError, match="applies to sample"):
        engine.verify(x, drafts, n=2)
