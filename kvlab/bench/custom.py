"""A composition named part by part, for the command line and for sweeps over the parts themselves
(``kvlab sweep --preset custom --vary cache=paged,radix``).

In code, build the parts directly (``Preset(name=..., cache=PagedKVCache(...), scheduler=...)``);
this module only maps the names a command line can carry to those constructors, in the tables
below, so ``custom`` can sit in ``PRESETS`` next to the seed systems.

Examples:
    >>> p = custom(kv_tokens=4096, cache="radix", scheduler="chunked", policy="lpm")
    >>> type(p.cache).__name__, type(p.scheduler).__name__, type(p.scheduler.policy).__name__
    ('RadixKVCache', 'ChunkedScheduler', 'LongestPrefixMatch')
    >>> custom(kv_tokens=4096, scheduler="persistent", decode_steps=8).scheduler.decode_steps
    8
"""

from __future__ import annotations

from kvlab.bench.preset import Preset
from kvlab.kvcache import BlockedKVCache, ContiguousKVCache, HostTier, PagedKVCache, RadixKVCache
from kvlab.schedulers import (
    FCFS,
    ChunkedScheduler,
    ContinuousScheduler,
    LongestPrefixMatch,
    OptimisticAdmission,
    PersistentScheduler,
    RecomputePreemption,
    ReserveAdmission,
    ShortestPromptFirst,
    SwapPreemption,
)


def _paged(kv_tokens, page_size, prefix_caching, max_model_len, host):
    return PagedKVCache(num_pages=kv_tokens // page_size, page_size=page_size, prefix_caching=prefix_caching,
                        host_tier=host)


def _blocked(kv_tokens, page_size, prefix_caching, max_model_len, host):
    return BlockedKVCache(num_blocks=kv_tokens // page_size, block_tokens=page_size,
                          prefix_caching=prefix_caching, host_tier=host)


def _radix(kv_tokens, page_size, prefix_caching, max_model_len, host):
    if not prefix_caching:
        raise ValueError("the radix cache is a prefix cache: prefix_caching must stay on")
    return RadixKVCache(num_pages=kv_tokens // page_size, page_size=page_size, host_tier=host)


def _contiguous(kv_tokens, page_size, prefix_caching, max_model_len, host):
    if prefix_caching:
        raise ValueError("the contiguous cache shares nothing: set prefix_caching=false with it")
    if host is not None:
        raise ValueError("the contiguous cache has no host tier: use recompute preemption with it")
    return ContiguousKVCache(num_slots=max(1, kv_tokens // max_model_len), max_seq_len=max_model_len,
                             page_size=page_size)


def _continuous(max_num_seqs, token_budget, **parts):
    return ContinuousScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget, **parts)


def _chunked(max_num_seqs, token_budget, **parts):
    return ChunkedScheduler(max_num_seqs=max_num_seqs, max_num_batched_tokens=token_budget, **parts)


def _persistent(max_num_seqs, token_budget, **parts):
    return PersistentScheduler(num_slots=max_num_seqs, tokens_per_step=token_budget, **parts)


def _host_tier(tokens: int, page_size: int) -> HostTier:
    return HostTier(max(1, tokens // page_size))


def _no_host_tier(tokens: int, page_size: int) -> None:
    return None


CACHES = {"paged": _paged, "blocked": _blocked, "radix": _radix, "contiguous": _contiguous}
SCHEDULERS = {"continuous": _continuous, "chunked": _chunked, "persistent": _persistent}
POLICIES = {"fcfs": FCFS, "lpm": LongestPrefixMatch, "shortest": ShortestPromptFirst}
ADMISSIONS = {"optimistic": OptimisticAdmission, "reserve": ReserveAdmission}
# preemption name -> (strategy, the host tier it needs: built from (tokens, page_size))
PREEMPTIONS = {"recompute": (RecomputePreemption, _no_host_tier), "swap": (SwapPreemption, _host_tier)}


def _pick(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(table)}")
    return table[name]


def custom(kv_tokens: int, *, cache: str = "paged", scheduler: str = "chunked", policy: str = "fcfs",
           admission: str = "optimistic", preemption: str = "recompute", page_size: int = 16,
           prefix_caching: bool | None = None, host_tokens: int | None = None, max_num_seqs: int = 256,
           token_budget: int = 2048, max_model_len: int = 2048, decode_steps: int = 1):
    """A ``Preset``: any cache (``CACHES``) under any scheduler (``SCHEDULERS``) with a policy,
    admission and preemption. ``prefix_caching`` defaults to on, except for the contiguous cache;
    swap preemption gets a host tier of ``host_tokens`` (default: as large as the device cache);
    ``max_model_len`` sizes the contiguous cache's slots; ``decode_steps``: decode steps a plan of
    only decodes may run (``kvlab.schedulers.multi_step``)."""
    if prefix_caching is None:
        prefix_caching = cache != "contiguous"
    strategy, tier = _pick(PREEMPTIONS, "preemption", preemption)
    host = tier(kv_tokens if host_tokens is None else host_tokens, page_size)
    kv = _pick(CACHES, "cache", cache)(kv_tokens, page_size, prefix_caching, max_model_len, host)
    sched = _pick(SCHEDULERS, "scheduler", scheduler)(
        max_num_seqs, token_budget, policy=_pick(POLICIES, "policy", policy)(),
        admission=_pick(ADMISSIONS, "admission", admission)(), preemption=strategy(),
        decode_steps=decode_steps)
    return Preset(name="custom", cache=kv, scheduler=sched)
