"""Data parallelism: N engines (replicas, each on its own device or device group) behind one
``Router`` that sends each request to one of them by a routing policy, as SGLang's router and
vLLM's data-parallel front end do.

Policies (small strategy objects; a new one is a new class with ``choose`` and ``routed``):

* ``RoundRobin`` - replicas in turn;
* ``LeastLoaded`` - the replica with the fewest unfinished requests (SGLang's shortest queue);
* ``PrefixAware`` - SGLang's cache-aware routing: the router keeps, per replica, the block
  hashes of the prompts it sent there (an approximate copy of the replica's prefix cache, LRU,
  bounded) and sends a request to the replica holding its longest prefix when that prefix is at
  least ``min_match`` of the prompt, else to the least loaded.

The router reads replicas through the engine's public API only (``add_request``, ``step``,
``pop_completion``, ``abort``, ``has_unfinished``); it counts their load itself.

Examples:
    >>> import kvlab
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0)
    >>> engines = [kvlab.Engine(model, cache=kvlab.PagedKVCache(num_pages=16, page_size=8), max_model_len=64)
    ...            for _ in range(2)]
    >>> router = Router(engines, PrefixAware(block_tokens=4))
    >>> outs = router.generate([[5, 6, 7, 8, 9], [5, 6, 7, 8, 10]], kvlab.SamplingParams(max_tokens=2))
    >>> router.routed_counts                      # the shared 4-token block went to one replica
    [2, 0]
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
from collections.abc import Sequence
from typing import Protocol

from kvlab.engine.sample_groups import SampleGroups


class RoutingPolicy(Protocol):
    """Chooses a replica for a prompt."""

    def choose(self, prompt, loads: Sequence[int]) -> int:
        """The index of the replica for ``prompt``; ``loads[i]``: unfinished requests of replica i."""
        ...

    def routed(self, prompt, replica: int) -> None:
        """``prompt`` was sent to ``replica``."""
        ...


class RoundRobin:
    """Replicas in turn."""

    def __init__(self):
        self._next = itertools.count()

    def choose(self, prompt, loads: Sequence[int]) -> int:
        return next(self._next) % len(loads)

    def routed(self, prompt, replica: int) -> None:
        pass


class LeastLoaded:
    """The replica with the fewest unfinished requests (the lowest index on a tie)."""

    def choose(self, prompt, loads: Sequence[int]) -> int:
        return min(range(len(loads)), key=lambda i: (loads[i], i))

    def routed(self, prompt, replica: int) -> None:
        pass


def block_hashes(prompt, block_tokens: int) -> list[bytes]:
    """Hashes of the prompt's whole blocks, each chained over the ones before it."""
    out, parent = [], b""
    for start in range(0, len(prompt) - block_tokens + 1, block_tokens):
        parent = hashlib.blake2b(parent + repr(list(prompt[start:start + block_tokens])).encode(),
                                 digest_size=16).digest()
        out.append(parent)
    return out


@dataclasses.dataclass(kw_only=True)
class PrefixAware:
    """SGLang's cache-aware routing over an approximate per-replica prefix index: the longest
    prefix match if it covers ``min_match`` of the prompt's blocks, else the least loaded replica;
    and, as SGLang's router does, the least loaded whatever the match while the loads are out of
    balance (the busiest replica has more than ``balance_abs`` requests more than the idlest and
    more than ``balance_rel`` times its count; SGLang's router defaults: 64 and 1.5). Each
    replica's index keeps the ``max_blocks`` blocks most recently routed to it."""

    block_tokens: int = 16
    min_match: float = 0.5
    balance_abs: int = 64
    balance_rel: float = 1.5
    max_blocks: int = 1 << 16
    _indexes: list = dataclasses.field(default_factory=list, repr=False)

    def _index(self, replica: int) -> collections.OrderedDict:
        while len(self._indexes) <= replica:
            self._indexes.append(collections.OrderedDict())
        return self._indexes[replica]

    def matched_blocks(self, prompt, replica: int) -> int:
        """Leading blocks of ``prompt`` in ``replica``'s index."""
        index = self._index(replica)
        return next((i for i, h in enumerate(block_hashes(prompt, self.block_tokens)) if h not in index),
                    len(prompt) // self.block_tokens)

    def choose(self, prompt, loads: Sequence[int]) -> int:
        blocks = len(prompt) // self.block_tokens
        busiest, idlest = max(loads), min(loads)
        if busiest - idlest > self.balance_abs and busiest > self.balance_rel * idlest:
            return LeastLoaded().choose(prompt, loads)
        best = max(range(len(loads)), key=lambda i: (self.matched_blocks(prompt, i), -loads[i], -i))
        if blocks and self.matched_blocks(prompt, best) >= self.min_match * blocks:
            return best
        return LeastLoaded().choose(prompt, loads)

    def routed(self, prompt, replica: int) -> None:
        index = self._index(replica)
        for h in block_hashes(prompt, self.block_tokens):
            index[h] = None
            index.move_to_end(h)
        while len(index) > self.max_blocks:
            index.popitem(last=False)


class Router:
    """Requests over ``engines`` (replicas of one model) by ``policy`` (default ``PrefixAware()``).
    Request ids are the router's own; ``step`` steps every replica."""

    def __init__(self, engines: Sequence, policy: RoutingPolicy | None = None):
        if not engines:
            raise ValueError("a router needs at least one engine")
        self.engines = list(engines)
        self.policy = policy or PrefixAware()
        self.routed_counts = [0] * len(self.engines)
        self._loads = [0] * len(self.engines)
        self._live = SampleGroups()                  # request id -> its unfinished samples
        self._replica: dict[str, int] = {}           # request id -> its replica, while it runs
        self._ids = itertools.count()

    @property
    def loads(self) -> list[int]:
        """Unfinished requests per replica (what ``LeastLoaded`` and ``PrefixAware`` read)."""
        return list(self._loads)

    def add_request(self, prompt, params=None, request_id: str | None = None, **kwargs) -> str:
        """Route and queue ``prompt`` (what ``Engine.add_request`` takes); returns its id."""
        replica = self.policy.choose(prompt, self._loads)
        rid = request_id if request_id is not None else f"r{next(self._ids)}"
        if rid in self._live:
            raise ValueError(f"request id {rid!r} is already in use")
        engine = self.engines[replica]
        rid = engine.add_request(prompt, params, request_id=rid, **kwargs)
        self.policy.routed(prompt, replica)
        self._live.add(rid, engine.samples(rid))
        self._replica[rid] = replica
        self._loads[replica] += 1
        self.routed_counts[replica] += 1
        return rid

    def step(self) -> list:
        """One step of every replica with work; the progress events of all of them."""
        events = []
        for engine in self.engines:
            if engine.has_unfinished() or engine.has_pending_events():
                events.extend(engine.step())
        for ev in events:
            done = self._live.finish(ev.request_id) if ev.finished else None
            if done is not None:                      # its last sample: the request is done
                self._finished(done)
        return events

    def _finished(self, rid: str) -> None:
        self._live.drop(rid)
        self._loads[self._replica.pop(rid)] -= 1

    def abort(self, request_id: str) -> None:
        """Abort a request (all its samples); an id that finished or is unknown is left alone."""
        if request_id in self._live:
            self.engines[self._replica[request_id]].abort(request_id)
            self._finished(request_id)

    def has_unfinished(self) -> bool:
        """Whether a replica has work, or events (aborts) that its next step reports."""
        return any(engine.has_unfinished() or engine.has_pending_events() for engine in self.engines)

    def generate(self, prompts, params=None) -> list:
        """Completions of ``prompts`` (token-id lists or texts), in order; ``params``: one
        ``SamplingParams`` for all or one per prompt."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        ids = [self.add_request(p, sp, keep_completion=True) for p, sp in zip(prompts, params)]
        replicas = [self._replica[rid] for rid in ids]
        while self.has_unfinished():
            self.step()
        return [self.engines[r].pop_completion(rid) for rid, r in zip(ids, replicas)]
