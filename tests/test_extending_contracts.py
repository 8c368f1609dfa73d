"""The contracts a new part implements, as the docs state them: docs/concepts.md lists exactly the
abstract members of ``KVCache`` and ``Scheduler``, and the whole scheduler written in
docs/extending.md serves requests with the tokens of a no-cache reference decode."""

from __future__ import annotations

import pathlib
import re
import sys
import types

import pytest

import kvlab
from kvlab.engine import DenseReferenceDecoder
from kvlab.kvcache.base import KVCache
from kvlab.schedulers.base import Scheduler

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
SECTION = "## What a new cache or scheduler must implement"


def documented_abstract_members() -> dict[str, set[str]]:
    """{"KVCache": names, "Scheduler": names} from the bullet lists of the concepts section."""
    text = (DOCS / "concepts.md").read_text()
    assert SECTION in text, f"docs/concepts.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    cache_part, scheduler_part = section.split("**`Scheduler`**", 1)
    assert "**`KVCache`**" in cache_part
    bullets = re.compile(r"^- `(\w+)", re.M)
    return {"KVCache": set(bullets.findall(cache_part)), "Scheduler": set(bullets.findall(scheduler_part))}


def test_concepts_lists_exactly_the_abstract_members():
    documented = documented_abstract_members()
    assert documented["KVCache"] == set(KVCache.__abstractmethods__)
    assert documented["Scheduler"] == set(Scheduler.__abstractmethods__)


@pytest.fixture(scope="module")
def example():
    """The namespace of docs/extending.md's scheduler snippet, run as written (it checks itself)."""
    text = (DOCS / "extending.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
              if "class ShortestJobFirst(Scheduler)" in b]
    assert len(blocks) == 1, "docs/extending.md should have one ShortestJobFirst snippet"
    module = types.ModuleType("kvlab_extending_scheduler")      # a real module: dataclasses need one
    sys.modules[module.__name__] = module
    try:
        exec(compile(blocks[0], str(DOCS / "extending.md"), "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


def test_the_example_scheduler_is_a_complete_scheduler(example):
    assert issubclass(example.ShortestJobFirst, Scheduler)
    assert not getattr(example.ShortestJobFirst, "__abstractmethods__", None)


def test_the_example_scheduler_gives_the_reference_tokens(example, tiny_model):
    """Shared prefixes through a prefix cache, a tight cache (requests wait for room), an abort:
    greedy tokens equal a one-request-at-a-time no-cache decode, and every page comes back."""
    cache = kvlab.PagedKVCache(num_pages=10, page_size=4, prefix_caching=True)
    engine = kvlab.Engine(tiny_model, cache=cache, max_model_len=64,
                          scheduler=example.ShortestJobFirst(max_num_seqs=3, max_num_batched_tokens=32))
    system = list(range(3, 15))
    prompts = [system + [20, 21], system + [22], [7, 8, 9], system + [23, 24, 25], [30] * 5]
    params = kvlab.SamplingParams(max_tokens=6, ignore_eos=True)
    doomed = engine.add_request([40, 41, 42], params)
    engine.abort(doomed)
    outputs = engine.generate(prompts, params)
    reference = DenseReferenceDecoder(tiny_model)
    assert [o.token_ids for o in outputs] == [reference.greedy(p, 6) for p in prompts]
    stats = cache.stats()
    assert stats.pages_used == 0 and stats.prefix_hit_tokens > 0 and not engine.has_unfinished()


def test_the_example_scheduler_refuses_what_it_can_never_serve(example, tiny_model):
    engine = kvlab.Engine(tiny_model, cache=kvlab.PagedKVCache(num_pages=4, page_size=4), max_model_len=64,
                          scheduler=example.ShortestJobFirst(max_num_seqs=2, max_num_batched_tokens=8))
    with pytest.raises(ValueError, match="exceeds max_num_batched_tokens=8"):
        engine.add_request(list(range(3, 13)), kvlab.SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="the cache holds 16"):           # the cache's own check
        engine.add_request([3, 4], kvlab.SamplingParams(max_tokens=20))
