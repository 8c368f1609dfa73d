"""The ``kvlab`` command: ``kvlab generate "prompt"`` streams text; ``kvlab demo`` runs a batch of
chat prompts through the bundled SmolLM2 and prints the generations with a metrics table;
``kvlab bench`` / ``kvlab sweep`` compare seed-system presets on a workload (``kvlab.cli_bench``)."""

from __future__ import annotations

import argparse
import sys

from kvlab import cli_bench
from kvlab.attention.select import BACKEND_NAMES
from kvlab.cli_run import DEMO_PRESETS, DEMO_PROMPTS, cmd_demo, cmd_generate
from kvlab.cli_types import int_in

__all__ = ["DEMO_PROMPTS", "build_parser", "main"]

DESCRIPTION = """kvlab: composable LLM inference components in JAX (KV caches, schedulers,
attention kernels). Run a model, or compare compositions of them that reproduce
vLLM, SGLang, TGI, LMDeploy, TensorRT-LLM and DeepSpeed."""
EPILOG = """examples:
  kvlab demo --compare none                 chat prompts through the bundled SmolLM2, with metrics
  kvlab demo                                the same, then the presets compared on one workload
  kvlab generate "Why is the sky blue?"     stream one answer
  kvlab bench --preset vllm,sglang --workload shared-prefix
  kvlab COMMAND --help                      every flag of a command, with its default"""

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default shown after its help (not for on/off flags); descriptions and
    epilogs printed as written."""

    def _get_help_string(self, action):
        return action.help if action.nargs == 0 else super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser with ``_HelpFormatter`` (its subcommands' parsers are of this class too)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _add_engine_args(p: argparse.ArgumentParser, *, max_tokens: int) -> None:
    positive = int_in(1)
    p.add_argument("--model", default="smollm2-135m",
                   help="a bundled model name, a local transformers directory or a GGUF file")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight and activation dtype (the bundled GGUF is dequantized to it)")
    p.add_argument("--max-tokens", type=positive, default=max_tokens,
                   help="most tokens to generate per prompt (clamped to what the context leaves)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (0: greedy)")
    p.add_argument("--top-k", type=int_in(0), default=0, help="sample among the k likeliest tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="sample from the smallest set of tokens whose probability reaches p (1.0: off)")
    p.add_argument("--seed", type=int_in(0, 2 ** 32 - 1), default=0,
                   help="random seed of every request (the same seed gives the same text)")
    p.add_argument("--page-size", type=positive, default=16, help="tokens per KV cache page (a power of two)")
    p.add_argument("--num-pages", type=positive, default=512, help="KV cache pages")
    p.add_argument("--prefix-caching", action="store_true",
                   help="hash-chained prefix caching (vLLM's): repeated prompt prefixes are reused")
    p.add_argument("--max-num-seqs", type=positive, default=16, help="most sequences in one engine step")
    p.add_argument("--max-num-batched-tokens", type=positive, default=1024,
                   help="most tokens computed in one engine step (longer prompts are prefilled in chunks)")
    p.add_argument("--max-model-len", type=positive, default=2048, help="most tokens of prompt + output")
    p.add_argument("--attention", default="auto", choices=list(BACKEND_NAMES),
                   help="attention backend: auto = the Pallas kernels on an NVIDIA GPU, the jnp reference "
                        "elsewhere; pallas needs an NVIDIA GPU")
    p.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")


def build_parser() -> argparse.ArgumentParser:
    """The ``kvlab`` argument parser with all its subcommands."""
    parser = _Parser(prog="kvlab", description=DESCRIPTION, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    gen = sub.add_parser("generate", help="stream a completion of one prompt",
                         description="Stream a completion of one prompt (greedy unless --temperature > 0).")
    gen.add_argument("prompt", help="the prompt text (sent through the model's chat template unless --raw)")
    _add_engine_args(gen, max_tokens=128)
    demo = sub.add_parser("demo", help="run a batch of chat prompts through the bundled SmolLM2",
                          description="Chat prompts through the bundled SmolLM2-135M-Instruct and their\n"
                                      "metrics, then the seed-system presets compared on one workload.")
    demo.add_argument("--num-prompts", type=int_in(1, len(DEMO_PROMPTS)), default=len(DEMO_PROMPTS),
                      help="how many of the demo's chat prompts to run")
    demo.add_argument("--compare", type=lambda s: [] if s == "none" else s.split(","),
                      default=",".join(DEMO_PRESETS),
                      help="comma-separated presets to compare on a shared-prefix workload after the chat "
                           "(none: skip)")
    positive = int_in(1)
    demo.add_argument("--compare-groups", type=positive, default=2,
                      help="shared-prefix groups (4 prompts each)")
    demo.add_argument("--compare-system-tokens", type=positive, default=128,
                      help="tokens of each group's shared system prompt")
    demo.add_argument("--compare-output-tokens", type=positive, default=16, help="output tokens per request")
    demo.add_argument("--compare-kv-tokens", type=positive, default=4096, help="KV capacity of every preset")
    demo.add_argument("--compare-token-budget", type=positive, default=256,
                      help="tokens per engine step for every preset")
    _add_engine_args(demo, max_tokens=96)
    cli_bench.add_parsers(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("bench", "sweep"):
            return cli_bench.run(args)
        return cmd_generate(args) if args.command == "generate" else cmd_demo(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"kvlab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
