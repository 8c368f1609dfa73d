"""A chain of KV tiers, fastest first (host memory, then disk): SGLang HiCache's hierarchy below
the GPU, TensorRT-LLM's secondary offload.

The tiers are *exclusive*: a key lives in at most one of them. ``put`` stores into the first
tier; a record a tier evicts to make room is demoted into the next tier if the chain's offload
policy says so (``policy.offload_on_evict(priority)``) and is dropped otherwise, or when the last
tier evicts it. Every dropped record is returned to the caller, so nothing vanishes unreported.
``get`` searches the tiers in order and says which one hit; ``promote`` moves a record from a lower
tier into the first (which may demote others in turn).

The policy's other decision, ``offload_on_insert``, is for the GPU cache that feeds the chain
(write-through copies a page down when it is indexed); the chain itself only demotes.

Examples:
    >>> import tempfile, jax, numpy as np
    >>> from kvlab.kvcache.tiers import DiskTier, HostMemoryTier, TierChain
    >>> spec = jax.ShapeDtypeStruct((4,), "float32")
    >>> chain = TierChain(tiers=[HostMemoryTier(1, spec), DiskTier(tempfile.mkdtemp(), 1, spec)])
    >>> chain.put(b"a", np.zeros(4, np.float32)), chain.put(b"b", np.ones(4, np.float32))
    ([], [])
    >>> chain.locate(b"a"), chain.locate(b"b")         # a was demoted to disk
    (1, 0)
    >>> record, tier = chain.get(b"a")
    >>> tier, [d.key for d in chain.promote(b"a")], chain.locate(b"b")
    (1, [], 1)
    >>> [d.key for d in chain.put(b"c", np.ones(4, np.float32))]    # a -> disk, b dropped
    [b'b']
    >>> chain.close()
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kvlab.kvcache.tiers.moves import Demote
from kvlab.kvcache.tiers.policy import OffloadPolicy, WriteBackOnEviction
from kvlab.kvcache.tiers.protocol import Evicted, KVTier, TierStats
from kvlab.kvcache.tiers.records import record_spec


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChainStats:
    """Per-tier statistics (fastest first) and the chain's movements: ``demotions`` (records moved
    down a tier), ``promotions`` (moved into the first tier by ``promote``), ``drops`` (records
    evicted and not kept anywhere). Every tier eviction is a demotion or a drop."""

    tiers: tuple[TierStats, ...]
    demotions: int
    promotions: int
    drops: int

    @property
    def pages_used(self) -> int:
        return sum(t.pages_used for t in self.tiers)


class TierChain:
    """``tiers`` (KVTier objects of one page record, fastest first) under an offload ``policy``
    (``WriteBackOnEviction()``, the default, ``WriteThrough()``, ``AbovePriority(min_priority=...)``)."""

    def __init__(self, tiers, policy=None):
        tiers = tuple(tiers)
        policy = WriteBackOnEviction() if policy is None else policy
        if not tiers:
            raise ValueError("TierChain needs at least one tier, e.g. tiers=[HostMemoryTier(...)]")
        for i, tier in enumerate(tiers):
            if not isinstance(tier, KVTier):
                raise ValueError(f"TierChain tier {i} is not a KVTier (put/get/contains/discard/pop/"
                                 f"keys/stats, num_pages, page_record): {tier!r}")
        if len({id(t) for t in tiers}) != len(tiers):
            raise ValueError("TierChain got the same tier object twice; each level needs its own tier")
        if not isinstance(policy, OffloadPolicy):
            raise ValueError(f"TierChain's policy must be an offload policy (WriteBackOnEviction(), "
                             f"WriteThrough(), AbovePriority(min_priority=...)), got {policy!r}")
        self.tiers = tiers
        self.policy = policy
        self.page_record = None
        self._spec = None
        self._demotions = self._promotions = self._drops = 0
        bound = [t.page_record for t in tiers if t.page_record is not None]
        if bound:
            self.bind(bound[0])

    def bind(self, page_record) -> tuple:
        """Fix every tier's page record (tiers built without one make their arrays now); the
        tiers' record arrays, fastest first. ValueError if a tier holds another record."""
        spec = record_spec(page_record, "TierChain")
        for i, tier in enumerate(self.tiers):
            if tier.page_record is not None and record_spec(tier.page_record, "TierChain") != spec:
                theirs = record_spec(tier.page_record, "TierChain")
                first = "asked" if self.page_record is not None or i == 0 else "tier 0 holds"
                raise ValueError(f"TierChain tiers must hold one page record: {first} {spec[0]} "
                                 f"{spec[1]}, tier {i} holds {theirs[0]} {theirs[1]}")
        for tier in self.tiers:
            tier.bind(page_record)
        self.page_record, self._spec = page_record, spec
        return self.records

    @property
    def records(self) -> tuple:
        """The tiers' record arrays, fastest first (what the engine's executor copies into)."""
        return tuple(tier.records for tier in self.tiers)

    # ---- slots: the GPU cache plans, the executor copies (kvlab.kvcache.tiers.moves) -----------
    def reserve(self, key, priority: int = 0) -> tuple[int, list[Demote]] | None:
        """A slot of the first tier for ``key``'s record, and the demotions to make before it is
        written (in order; records the policy does not keep are dropped); None - nothing changed -
        when the first tier is full of held records."""
        return self._reserve_at(0, key, priority)

    def _reserve_at(self, level: int, key, priority: int):
        reserved = self.tiers[level].reserve(key, priority)
        if reserved is None:
            return None
        slot, vacated = reserved
        moves = []
        for victim in vacated:
            below = None
            if level + 1 < len(self.tiers) and self.policy.offload_on_evict(victim.priority):
                below = self._reserve_at(level + 1, victim.key, victim.priority)
            if below is None:
                self._drops += 1
                continue
            self._demotions += 1
            moves += below[1] + [Demote(level, victim.slot, below[0])]
        return slot, moves

    def where(self, key) -> tuple[int, int] | None:
        """``(tier index, slot)`` of ``key``'s record, or None (nothing counted)."""
        return self.where_all([key])[0]

    def where_all(self, keys) -> list:
        """``(tier index, slot)`` of each of ``keys``' records, None for a key no tier stores
        (nothing counted)."""
        keys = list(keys)
        if len(self.tiers) == 1:
            return [None if slot is None else (0, slot) for slot in self.tiers[0].slots_of(keys)]
        found = [None] * len(keys)
        for level, tier in enumerate(self.tiers):
            for i, slot in enumerate(tier.slots_of(keys)):
                if slot is not None and found[i] is None:
                    found[i] = (level, slot)
        return found

    def leading(self, keys) -> list[tuple[int, int]]:
        """``(tier index, slot)`` of the leading run of ``keys`` the tiers store (looked up in
        growing parts, so a run that ends early costs little more than its length)."""
        keys, found, size = list(keys), [], 16
        while len(found) < len(keys):
            part = self.where_all(keys[len(found):len(found) + size])
            if None in part:
                return found + part[:part.index(None)]
            found += part
            size *= 2
        return found

    def _by_tier(self, keys, found=None) -> list[tuple[int, list]]:
        """``keys`` (stored) grouped by the tier that stores them; KeyError for one not stored."""
        if len(self.tiers) == 1:
            return [(0, list(keys))]
        groups: dict[int, list] = {}
        for key, where in zip(keys, self.where_all(keys) if found is None else found, strict=True):
            if where is None:
                raise KeyError(f"no tier stores {key!r}")
            groups.setdefault(where[0], []).append(key)
        return sorted(groups.items())

    def hold_all(self, keys) -> None:
        """Keep each of ``keys`` (stored) where it is (no eviction, no demotion) until
        ``unhold_all``."""
        for level, group in self._by_tier(keys):
            self.tiers[level].hold_all(group)

    def unhold_all(self, keys) -> None:
        for level, group in self._by_tier(keys):
            self.tiers[level].unhold_all(group)

    def prefetch(self, keys) -> None:
        """Tell each tier that the records of ``keys`` (stored) will soon be loaded."""
        slots: dict[int, list[int]] = {}
        for where in self.where_all(keys):
            if where is not None:
                slots.setdefault(where[0], []).append(where[1])
        for level, wanted in slots.items():
            self.tiers[level].prefetch(wanted)

    def take(self, keys) -> list[tuple[int, int]]:
        """``(tier index, slot)`` of each of held ``keys``, whose records are being loaded: a hit
        (``touch_all``) and the end of their holds (``unhold_all``) in one lookup."""
        keys = list(keys)
        found = self.where_all(keys)
        for level, group in self._by_tier(keys, found):
            self.tiers[level].touch_all(group)
            self.tiers[level].unhold_all(group)
        return found

    def clear(self) -> None:
        """Forget every record and hold in every tier (counters stay)."""
        for tier in self.tiers:
            tier.clear()

    def _has_room(self, level: int, key) -> bool:
        """Whether tier ``level`` can take ``key``'s record: it holds it already, has a free page,
        or can evict a record that is not held."""
        tier = self.tiers[level]
        return tier.contains(key) or tier.stats().pages_free > 0 or tier.num_evictable() > 0

    def _put_at(self, level: int, key, record, priority: int) -> list[Evicted]:
        """Store into tier ``level`` (which has room), demoting its victims down the chain where
        the next tier has room too; the records dropped."""
        dropped = []
        for victim in self.tiers[level].put(key, record, priority):
            below = level + 1
            if (below < len(self.tiers) and self.policy.offload_on_evict(victim.priority)
                    and self._has_room(below, victim.key)):
                self._demotions += 1
                dropped += self._put_at(below, *victim)
            else:
                self._drops += 1
                dropped.append(victim)
        return dropped

    def _check_room(self, key) -> None:
        if not self._has_room(0, key):
            raise ValueError(f"the first tier is full of held records; nothing can be evicted to "
                             f"store {key!r} (nothing was changed)")

    def put(self, key, record, priority: int = 0) -> list[Evicted]:
        """Store ``record`` under ``key`` in the first tier (a copy in a lower tier is discarded);
        the records dropped from the chain to make room (a victim whose lower tier is full of
        held records is dropped and returned). ValueError, changing nothing, when the first tier
        is full of held records."""
        record = np.asarray(record)
        if self._spec is None:
            raise ValueError("TierChain has no page record yet; build its tiers with page_record=... "
                             "or call bind(page_record)")
        if (record.shape, record.dtype) != self._spec:      # before anything moves
            raise ValueError(f"TierChain stores records of shape {self._spec[0]} and dtype "
                             f"{self._spec[1]}; got shape {record.shape} and dtype {record.dtype}")
        self._check_room(key)                                # before anything moves
        for tier in self.tiers[1:]:
            tier.discard(key)
        return self._put_at(0, key, record, priority)

    def locate(self, key) -> int | None:
        """The index of the tier holding ``key``, or None (nothing counted)."""
        for i, tier in enumerate(self.tiers):
            if tier.contains(key):
                return i
        return None

    def contains(self, key) -> bool:
        return self.locate(key) is not None

    def get(self, key) -> tuple | None:
        """``(record, tier_index)`` from the first tier holding ``key``, or None. Each tier asked
        counts a hit or a miss; the record stays where it is (see ``promote``)."""
        for i, tier in enumerate(self.tiers):
            record = tier.get(key)
            if record is not None:
                return record, i
        return None

    def promote(self, key) -> list[Evicted]:
        """Move ``key``'s record into the first tier (nothing to do if it is there); the records
        dropped from the chain to make room. KeyError if no tier holds ``key``; ValueError,
        changing nothing, when the first tier is full of held records."""
        level = self.locate(key)
        if level is None:
            raise KeyError(f"no tier holds {key!r}")
        if level == 0:
            return []
        self._check_room(key)
        moved = self.tiers[level].pop(key)
        self._promotions += 1
        return self._put_at(0, *moved)

    def discard(self, key) -> bool:
        """Forget ``key`` in whichever tier holds it; whether one did."""
        return any([tier.discard(key) for tier in self.tiers])

    def keys(self) -> list:
        """Every stored key, fastest tier first."""
        return [k for tier in self.tiers for k in tier.keys()]

    def stats(self) -> ChainStats:
        return ChainStats(tiers=tuple(t.stats() for t in self.tiers), demotions=self._demotions,
                          promotions=self._promotions, drops=self._drops)

    def close(self) -> None:
        """Close every tier that can be closed (a disk tier deletes its file)."""
        for tier in self.tiers:
            close = getattr(tier, "close", None)
            if close is not None:
                close()
