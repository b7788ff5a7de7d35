#!/usr/bin/env python3
"""A toy decode loop: a batch of requests with their own sampling parameters,
seeds and steps, sampled by one nucleus.Engine call per step.

The "model" is a fixed random numpy network (embedding -> recurrent state ->
output projection) whose output is padded to a multiple of 64 tokens, as
inference servers pad their vocabulary; the engine reads the padded rows in
place. Requests join and leave the batch at different steps (continuous
batching), so a request's batch slot changes over time. Because each request
carries its own seed and step, its tokens do not depend on the batch: the
script checks this at the end by decoding one request alone.

Run from a build tree:
    PYTHONPATH=build/python /usr/bin/python3 python/examples/decode_loop.py
"""

import argparse
import sys

import numpy as np

import nucleus

VOCAB = 5000
PADDED_VOCAB = 5056  # a multiple of 64, as servers allocate it
HIDDEN = 32
EOS = 0


class ToyModel:
    """Deterministic random weights; logits depend on the tokens so far."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.embed = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
        self.out = (rng.standard_normal((HIDDEN, PADDED_VOCAB)) * 0.9).astype(np.float32)

    def state(self, tokens):
        h = np.zeros(HIDDEN, dtype=np.float32)
        for t in tokens:
            h = np.tanh(0.6 * h + self.embed[t])
        return h

    def logits(self, states):
        """[batch, PADDED_VOCAB] float32; the padding columns are garbage."""
        logits = np.stack(states) @ self.out
        logits[:, EOS] -= 6.0  # end-of-sequence is rare
        return logits


class Request:
    def __init__(self, rid, prompt, seed, max_new, params, join_at):
        self.rid = rid
        self.prompt = list(prompt)
        self.seed = seed
        self.max_new = max_new
        self.params = params
        self.join_at = join_at
        self.generated = []

    @property
    def step(self):
        # The decoding step of this request, not of the batch: it enters the
        # Philox counter, so the request's draws follow it wherever it sits.
        return len(self.generated)

    def done(self):
        return len(self.generated) >= self.max_new or (self.generated and
                                                         self.generated[-1] == EOS)


def grammar_mask():
    """An allowed-token mask (as xgrammar would give): even tokens only."""
    allowed = np.zeros(VOCAB, dtype=bool)
    allowed[::2] = True
    return allowed


def make_requests(steps):
    mixed = [
        dict(temperature=0.0),                                      # greedy
        dict(temperature=0.8, top_p=0.9),                           # nucleus
        dict(temperature=1.0, top_k=40, repetition_penalty=1.3),    # HF-style penalties
        dict(min_p=0.1, preset="vllm", frequency_penalty=0.5, presence_penalty=0.3),
        dict(temperature=0.7, typical_p=0.8, logit_bias={7: 3.0, 11: -100.0}),
        dict(top_n_sigma=1.0, preset="llama.cpp", allowed_mask=grammar_mask()),
    ]
    requests = []
    for i, params in enumerate(mixed):
        prompt = [(17 * i + 3 * j + 1) % VOCAB for j in range(4 + i)]
        requests.append(Request(i, prompt, seed=1000 + i, max_new=steps, params=params,
                                join_at=i % 3))
    return requests


def batch_arguments(batch):
    """The keyword arguments of one engine call: one value per row."""
    defaults = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                    top_n_sigma=0.0, repetition_penalty=1.0, frequency_penalty=0.0,
                    presence_penalty=0.0, preset="hf")
    args = {name: [r.params.get(name, value) for r in batch] for name, value in defaults.items()}
    args["seed"] = [r.seed for r in batch]
    args["step"] = [r.step for r in batch]
    args["history"] = [r.generated for r in batch]
    args["prompt"] = [r.prompt for r in batch]
    args["logit_bias"] = [r.params.get("logit_bias") for r in batch]
    # Masks: one row each; a row without a grammar allows everything.
    args["allowed_mask"] = np.stack(
        [r.params.get("allowed_mask", np.ones(VOCAB, dtype=bool)) for r in batch])
    return args


def decode(engine, model, requests, max_steps, verbose=False):
    active = []
    pending = sorted(requests, key=lambda r: r.join_at)
    for t in range(max_steps + 3):
        while pending and pending[0].join_at <= t:
            active.append(pending.pop(0))
        active = [r for r in active if not r.done()]
        if not active:
            if not pending:
                break
            continue
        logits = model.logits([model.state(r.prompt + r.generated) for r in active])
        # A view of the first VOCAB columns: no copy, the row stride stays padded.
        result = engine.sample(logits[:, :VOCAB], logprobs=2, **batch_arguments(active))
        for row, r in enumerate(active):
            if result.errors[row] is not None:
                raise RuntimeError(result.errors[row])
            r.generated.append(int(result.tokens[row, 0]))
        if verbose:
            logprobs = ", ".join(f"{x:.2f}" for x in result.logprobs[:, 0])
            print(f"step {t}: requests {[r.rid for r in active]} -> tokens "
                  f"{result.tokens[:, 0].tolist()} (logprobs {logprobs})")
    return requests


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="new tokens per request")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    engine = nucleus.Engine(threads=args.threads)
    model = ToyModel()
    requests = decode(engine, model, make_requests(args.steps), args.steps, verbose=True)
    for r in requests:
        print(f"request {r.rid} {r.params}: {r.generated}"
              if "allowed_mask" not in r.params else
              f"request {r.rid} (even tokens only, {r.params['preset']}): {r.generated}")

    # The reproducibility contract: alone, with another engine and one
    # thread, request 3 draws exactly the same tokens.
    alone = make_requests(args.steps)[3]
    alone.join_at = 0
    decode(nucleus.Engine(threads=1), model, [alone], args.steps)
    if alone.generated != requests[3].generated:
        print(f"MISMATCH: alone {alone.generated} vs in the batch {requests[3].generated}")
        return 1
    greedy = requests[0]
    if any(t % 2 for t in requests[5].generated):
        print("MISMATCH: the grammar mask allowed an odd token")
        return 1
    print(f"ok: request 3 decodes the same alone; greedy request 0 made {len(greedy.generated)} "
          "tokens; request 5 kept to its mask")
    return 0


if __name__ == "__main__":
    sys.exit(main())
