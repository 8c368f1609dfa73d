"""Static (request-level) batching against vLLM's iteration-level batching on the host simulator.

    python benchmarks/static_gap.py [--requests 1000]

1000 ShareGPT-like requests, all queued at once, served by the ``static`` and ``vllm`` presets
with the Llama-3-8B-on-H100 step-cost model (``LinearStepCost.llama3_8b_h100``) at two KV
capacities; prints output tokens/s, median TTFT and ITL, steps, KV waste and preemptions.
"""

from __future__ import annotations

import argparse

from kvlab.bench import LinearStepCost, markdown_table
from kvlab.bench.sweep import simulate_preset, sweep
from kvlab.workloads import sharegpt_like


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args(argv)
    rows = sweep(simulate_preset, {"kv_tokens": [458752, 65536], "preset": ["static", "vllm"]},
                 base=dict(requests=sharegpt_like(args.requests, seed=0), max_num_seqs=256,
                           step_cost=LinearStepCost.llama3_8b_h100()))
    keys = ("kv_tokens", "preset", "output_tokens_per_s", "ttft_p50_s", "itl_p50_s", "steps", "kv_waste",
            "preemptions")
    print(markdown_table([{k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys}
                          for r in rows]))


if __name__ == "__main__":
    main()
