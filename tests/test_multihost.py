"""Several hosts, simulated on one machine: two processes joined by ``jax.distributed`` (one CPU
device each, collectives over gloo) run one tensor-parallel engine and both give the greedy tokens
of a one-device engine."""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys

import kvlab

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
PROMPTS = [[5, 6, 7, 8, 9], list(range(30, 47))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_serve_the_tokens_of_one_device(tiny_model):
    address = f"localhost:{free_port()}"
    procs = [subprocess.Popen([sys.executable, str(WORKER), address, str(i), json.dumps(PROMPTS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8), max_model_len=64)
    params = kvlab.SamplingParams(max_tokens=5, ignore_eos=True)
    want = [c.token_ids for c in engine.generate(PROMPTS, params)]
    assert sorted(r["process"] for r in results) == [0, 1]
    assert all(r["devices"] == 2 and r["local"] == 1 for r in results)
    assert all(r["tokens"] == want for r in results)
