"""The engine's host work per decode step, with no device work to wait for: the real loop
(``Engine.step``: schedule, pack and launch, read the tokens, stop checks) at B running sequences,
with the jitted step replaced by one that hands back, at once, the outputs its first call for
the same step shape computed (a tiny model on the CPU). The step's host half, its one input
transfer and the engine's bookkeeping all run as they do on a GPU; what is left out is the
device's step and the jitted call's dispatch.

    python benchmarks/engine_host.py [--batches 1 64 256] [--steps 40] [--rounds 5] [--decode-steps 1 8]

Prints the time per decode step of each phase (best of ``--rounds`` rounds of ``--steps`` steps):
``schedule`` (the scheduler's plan, the cache's bookkeeping, the plan's step table), ``launch``
(the runner's packing and transfer), ``read`` (``update``: tokens appended, stop checks, the
cache's commits; and the engine's events), per launch and per decode step (a launch of a
multi-step plan runs ``--decode-steps`` of them).
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np

import kvlab
import kvlab.engine.runner as runner_module
from kvlab.models import LlamaModel, ModelConfig


def replay_step(real):
    """A stand-in for the jitted step: the first call of each step spec runs ``real``, later
    calls return that call's outputs with the state arguments passed through."""
    first: dict = {}

    def step(statics, spec, weights, storage, table, last, inputs, sampling, counts, offset):
        if spec not in first:
            first[spec] = real(statics, spec, weights, storage, table, last, inputs, sampling, counts, offset)
            return first[spec]
        packed, prompt, _, _, _, counts_out = first[spec]
        return packed, prompt, storage, table, last, counts_out
    return step


def timed(counter: collections.Counter, name: str, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            counter[name] += time.perf_counter() - t
    return wrapper


def measure(batch: int, steps: int, rounds: int, prompt_len: int = 64,
            decode_steps: int = 1) -> dict[str, float]:
    model = LlamaModel(ModelConfig.tiny(), seed=0)
    max_len = model.config.max_position_embeddings
    max_tokens = max_len - prompt_len
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, model.config.vocab_size, prompt_len).tolist() for _ in range(batch)]
    cache = kvlab.PagedKVCache.for_tokens(batch * max_len + 1024, page_size=16)
    engine = kvlab.Engine(model, cache=cache, scheduler=kvlab.ContinuousScheduler(
        max_num_seqs=batch, max_num_batched_tokens=8192, decode_steps=decode_steps))
    params = kvlab.SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    engine.generate(prompts, params)                     # every step shape of the run, compiled
    for p in prompts:
        engine.add_request(p, params)
    while engine.scheduler.waiting:
        engine.step()
    phases: collections.Counter = collections.Counter()
    engine.scheduler.schedule = timed(phases, "schedule", engine.scheduler.schedule)
    engine.executor.launch = timed(phases, "launch", engine.executor.launch)
    engine._read = timed(phases, "read", engine._read)
    best: dict[str, float] = {}
    launches = max(1, steps // decode_steps)        # ``steps`` decode steps a round
    for _ in range(rounds):
        phases.clear()
        t = time.perf_counter()
        for _ in range(launches):
            engine.step()
        phases["step"] = time.perf_counter() - t
        for name, seconds in phases.items():      # per decode step
            best[name] = min(best.get(name, float("inf")), 1e3 * seconds / (launches * decode_steps))
    if len(engine.scheduler.running) != batch:
        raise RuntimeError(f"{len(engine.scheduler.running)} sequences ran, not {batch}: more steps "
                           f"than the requests' outputs")
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, nargs="+", default=[1])
    args = ap.parse_args(argv)
    real = runner_module._jitted_step
    replays: dict = {}                              # one replaying step per set of XLA options

    def replaying(options):
        if options not in replays:
            replays[options] = replay_step(real(options))
        return replays[options]
    runner_module._jitted_step = replaying
    try:
        print("| running sequences | decode steps a plan | schedule (ms) | launch (ms) | read (ms) | "
              "engine step (ms) |")
        print("|---|---|---|---|---|---|")
        for b in args.batches:
            for k in args.decode_steps:
                m = measure(b, args.steps, args.rounds, decode_steps=k)
                cells = " | ".join(f"{m[name]:.3f}" for name in ("schedule", "launch", "read", "step"))
                print(f"| {b} | {k} | {cells} |", flush=True)
    finally:
        runner_module._jitted_step = real

if __name__ == "__main__":
    main()
