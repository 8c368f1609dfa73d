"""One process of a two-process run (``tests/test_multihost.py``): joins the job through
``jax.distributed.initialize``, splits the tiny model over one device of each process with
``TensorParallel`` and prints its greedy tokens as JSON. Every process runs the same engine calls
(one program, several controllers)."""

import json
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")      # CPU collectives across processes
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))

import kvlab  # noqa: E402
from kvlab.models import LlamaModel, ModelConfig  # noqa: E402
from kvlab.parallel import TensorParallel  # noqa: E402

mesh = jax.make_mesh((2,), ("tp",), devices=jax.devices())
engine = kvlab.Engine(TensorParallel(LlamaModel(ModelConfig.tiny(), seed=0), mesh),
                      cache=kvlab.PagedKVCache(num_pages=16, page_size=8), max_model_len=64)
outs = engine.generate(json.loads(sys.argv[3]), kvlab.SamplingParams(max_tokens=5, ignore_eos=True))
print(json.dumps({"process": jax.process_index(), "devices": len(jax.devices()),
                  "local": len(jax.local_devices()), "tokens": [c.token_ids for c in outs]}))
