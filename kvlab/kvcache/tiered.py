"""TierReuse: a GPU prefix cache's link to the tiers below it (a ``TierChain``: host memory, then
disk) - TensorRT-LLM's secondary offload, SGLang HiCache's host and storage levels.

The GPU cache tells it three things, and it plans the page moves (``kvlab.kvcache.tiers.moves``)
the executor makes before the next step:

- ``evicted(blocks)``: cached pages leave the GPU (``(key, page, priority)`` each). Unless a
  tier already holds a page's block, or the offload policy says no, its record is offloaded into
  the first tier (write-back);
- ``indexed(blocks, priority)``: pages were just indexed (``(key, page)`` each). Under a
  write-through policy they are copied down too - at the head of the *next* plan's moves, because
  the step that computes them runs after this plan's copies. Their slots are reserved then, at
  ``drain``, not now: the moves of a plan are made in the order their slots were reserved, so no
  slot is read before it is written;
- ``load(keys, pages)``: a sequence reuses blocks a tier holds (``match`` found them at admission
  and ``hold`` kept them): their records are loaded into fresh GPU pages. ``prefetch(keys)``,
  when the sequence starts and before its pages are found, lets the tiers start those copies.

Before a prompt is hashed whole, a cache may guess where its blocks are (``guess_run``): the
first tier's copies of a long document then start once its first block is hashed, where hashing
and matching 2048 blocks take milliseconds of host time. The guess reads the blocks of the last
sequence the cache indexed with the same first block (``chained``); no token is compared, so the
guess is only a prefetch (``prefetch_guess``), and the match that follows decides what is loaded.

Blocks are keyed by their chained block hash, the GPU index's key, so a tier hit is exactly a
prefix hit. A page loaded in a plan is never offloaded in the same plan (its device read would
come before its load): if the GPU evicts it that soon, it is dropped.

Examples:
    >>> import jax
    >>> from kvlab.kvcache.tiers import HostMemoryTier, TierChain
    >>> chain = TierChain(tiers=[HostMemoryTier(num_pages=2)])
    >>> _ = chain.bind(jax.ShapeDtypeStruct((4,), "float32"))
    >>> reuse = TierReuse(chain)
    >>> reuse.evicted([(b"h0", 5, 0)]); reuse.match([b"h0", b"h1"])
    [0]
    >>> reuse.hold([b"h0"]); reuse.load([b"h0"], [9]); reuse.drain()
    [Offload(page=5, slot=0), Load(level=0, slot=0, page=9)]
"""

from __future__ import annotations

import dataclasses

from kvlab.kvcache.tiers.hierarchy import ChainStats, TierChain
from kvlab.kvcache.tiers.moves import Load, Offload
from kvlab.kvcache.tiers.protocol import KVTier


def tier_reuse(tiers, *, owner: str, prefix_caching: bool, writes) -> TierReuse:
    """The ``TierReuse`` of cache ``owner`` built with ``tiers`` (a ``TierChain``, a ``KVTier`` or
    a list of them, fastest first); ValueError for what cannot have tiers."""
    if not prefix_caching:
        raise ValueError(f"{owner}(tiers=...) keeps evicted prefix blocks below the GPU, so it "
                         f"needs prefix_caching=True")
    writes.check_tiers()
    if isinstance(tiers, KVTier):
        tiers = TierChain(tiers=[tiers])
    elif isinstance(tiers, (list, tuple)):
        tiers = TierChain(tiers=tiers)
    elif not isinstance(tiers, TierChain):
        raise ValueError(f"{owner}(tiers=...) takes a TierChain, a KVTier (HostMemoryTier(...)) or a "
                         f"list of them fastest first; got {tiers!r}")
    return TierReuse(tiers)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TierReuseStats:
    """The tiers' pages and counters (``chain``), and the moves planned since the cache was built:
    ``offloads`` (GPU pages copied into the first tier), ``loads_per_tier`` (blocks loaded back,
    per tier, fastest first), ``dropped`` (evicted GPU pages the policy or a full tier of
    held records did not keep; a swap-in that evicts GPU prefix pages while the first tier is
    full of held records drops them: the slots it frees are read by its own loads in the same
    plan), and the swap space's pages in the first tier (``kvlab.kvcache.tier_swap``):
    ``swapped_out`` copied in, ``swapped_in`` loaded back, ``released`` let go unread (their
    sequence ended while swapped out)."""

    chain: ChainStats
    offloads: int
    loads_per_tier: tuple[int, ...]
    dropped: int
    swapped_out: int = 0
    swapped_in: int = 0
    released: int = 0


class TierReuse:
    """Plans the moves between a GPU prefix cache and ``chain`` (see the module docstring)."""

    def __init__(self, chain):
        self.chain = chain
        self._moves: list = []            # this plan's, in order
        self._write_through: dict = {}    # page -> (key, priority) indexed this plan: next plan's
        self._loaded: set[int] = set()    # device pages this plan loads
        self.offloads = self.dropped = 0
        self.swapped_out = self.swapped_in = self.released = 0
        self.loads_per_tier = [0] * len(chain.tiers)
        self._runs: dict = {}             # first block's key -> the block keys of a sequence
        self._max_runs = 256

    def chained(self, blocks: list) -> None:
        """``blocks`` (a sequence's block keys from its first, in order; the list is kept and may
        grow) were indexed or copied down: a later prompt with the same first block is guessed to
        go on as they do (``guess_run``; the last such sequence counts, unless it is a prefix of
        the one kept; at most 256 are kept, the oldest going first)."""
        if not blocks:
            return
        kept = self._runs.get(blocks[0])
        if kept is not None and len(kept) >= len(blocks) and kept[len(blocks) - 1] == blocks[-1]:
            return                        # a prefix of the run kept (chained keys: same last, same all)
        self._runs.pop(blocks[0], None)
        self._runs[blocks[0]] = blocks
        if len(self._runs) > self._max_runs:
            del self._runs[next(iter(self._runs))]

    def prefetch_guess(self, key, limit: int, room: int, *, skip=None, start: int = 0) -> None:
        """Let the first tier start copying ``guess_run(key, limit, skip, start)``'s records if
        the cache has ``room`` for more pages than that: a guess, before the prompt's match."""
        slots = self.guess_run(key, limit, skip, start)
        if slots and len(slots) < room:
            self.chain.tiers[0].prefetch(slots)

    def guess_run(self, key, limit: int, skip=None, start: int = 0) -> list[int]:
        """A guess of the first tier's slots of a prompt's blocks from its first block's ``key``:
        the blocks of the last sequence indexed with that first block, past the first ``start``
        and then those ``skip(key)`` says to pass over (the GPU's own), the leading run the
        first tier stores (the tier whose copies a prefetch can start early), at most ``limit``
        blocks. No token is compared."""
        blocks = self._runs.get(key)
        if blocks is None:
            return []
        at, end = start, min(limit, len(blocks))
        while skip is not None and at < end and skip(blocks[at]):
            at += 1
        slots = self.chain.tiers[0].slots_of(blocks[at:end])    # one lookup: a guess expects hits
        return slots[:slots.index(None)] if None in slots else slots

    def match(self, keys) -> list[int]:
        """The tier of each block in the leading run of ``keys`` the tiers hold (nothing counted)."""
        return [level for level, _ in self.chain.leading(keys)]

    def hold(self, keys) -> None:
        """Keep ``keys`` (stored) in their tiers until ``load`` or ``unhold``."""
        self.chain.hold_all(keys)

    def prefetch(self, keys) -> None:
        """Held ``keys`` will be loaded in this plan (their sequence starts): the tiers may start
        copying their records now, beside the rest of the plan's bookkeeping."""
        self.chain.prefetch(keys)

    def unhold(self, keys) -> None:
        self.chain.unhold_all(keys)

    def load(self, keys, pages) -> None:
        """Load held ``keys``' records into device ``pages`` (one each) and let the keys go."""
        if len(keys) != len(pages):
            raise ValueError(f"load got {len(keys)} keys for {len(pages)} pages")
        found = self.chain.take(keys)
        self._load_all(found, pages)
        for level, _ in found:
            self.loads_per_tier[level] += 1

    def _load_all(self, found, pages) -> None:
        """Plan a load of each ``(tier index, slot)`` of ``found`` into the device page at the
        same place of ``pages``. A page loaded already in this plan belonged to a sequence freed
        before the plan ran (its page went back and was taken again): that load is dropped, so
        one write lands in the page, the last."""
        pages = list(pages)
        if not self._loaded.isdisjoint(pages):
            again = self._loaded.intersection(pages)
            self._moves = [m for m in self._moves if not (isinstance(m, Load) and m.page in again)]
        self._moves += [Load(level, slot, page) for (level, slot), page in zip(found, pages, strict=True)]
        self._loaded.update(pages)

    def evicted(self, blocks) -> None:
        """The GPU evicts cached pages, each ``(key, page, priority)`` of ``blocks`` in order:
        offload one now (its step may reuse the page) if no tier holds its block and the policy
        keeps it (write-back), or if its write-through copy was still waiting for the next plan."""
        offload_on_evict, reserved = self.chain.policy.offload_on_evict, False
        for (key, page, priority), where in zip(blocks, self.chain.where_all(b[0] for b in blocks)):
            # a write-through copy still waiting: the page may hold another block by the next plan
            waiting = self._write_through.pop(page, None) is not None
            if self._stored(key, where, reserved):
                continue
            if page in self._loaded or not (waiting or offload_on_evict(priority)):
                self.dropped += 1
                continue
            reserved = self._offload(key, page, priority, self._moves) or reserved

    def _stored(self, key, where, reserved: bool) -> bool:
        """Whether a tier stores ``key``, found at ``where`` before this batch's reservations
        (``reserved``: one was made since, which may have stored or evicted ``key``: asked
        again)."""
        return self.chain.where(key) is not None if reserved else where is not None

    @property
    def loaded_pages(self) -> set[int]:
        """Device pages this plan's loads write (a copy)."""
        return set(self._loaded)

    # ---- swapped-out pages held in the first tier (kvlab.kvcache.tier_swap) ------------------
    def can_hold(self, num_pages: int) -> bool:
        """Whether the first tier can take ``num_pages`` more held records (free or evictable)."""
        first = self.chain.tiers[0]
        return num_pages <= first.stats().pages_free + first.num_evictable()

    def offload_held(self, key, page: int) -> None:
        """Copy device ``page`` into the first tier under ``key`` in this plan and hold it there
        until ``swap_in`` or ``release_held``; ``can_hold`` said there is room."""
        reserved = self.chain.reserve(key)
        if reserved is None:
            raise RuntimeError("the first tier is full of held records; ask can_hold first")
        slot, demotions = reserved
        self._moves += demotions
        self._moves.append(Offload(page, slot))
        self.chain.hold_all([key])
        self.swapped_out += 1

    def swap_in(self, keys, pages) -> None:
        """Load held ``keys``' records into device ``pages`` in this plan and forget them (their
        slots are free for later moves, which the move order keeps after the loads)."""
        found = self.chain.where_all(keys)
        self.chain.unhold_all(keys)
        for key in keys:
            self.chain.discard(key)
        self._load_all(found, pages)
        self.swapped_in += len(found)

    def release_held(self, keys) -> None:
        """Forget held ``keys`` (their sequence ended while swapped out)."""
        for key in keys:
            self.chain.unhold_all([key])
            self.chain.discard(key)
            self.released += 1

    def indexed(self, blocks, priority: int) -> None:
        """The GPU indexed each ``(key, page)`` of ``blocks`` with ``priority``: copy them down
        next plan if write-through."""
        if self.chain.policy.offload_on_insert(priority):
            for key, page in blocks:
                self._write_through[page] = (key, priority)

    def _offload(self, key, page: int, priority: int, out: list) -> bool:
        reserved = self.chain.reserve(key, priority)
        if reserved is None:                  # the first tier is full of held records
            self.dropped += 1
            return False
        slot, demotions = reserved
        out += demotions
        out.append(Offload(page, slot))
        self.offloads += 1
        return True

    def drain(self) -> list:
        """This plan's moves, in order; the next plan's start with the write-through copies of
        the pages indexed so far."""
        moves, self._moves, self._loaded = self._moves, [], set()
        waiting, self._write_through, reserved = self._write_through, {}, False
        for (page, (key, priority)), where in zip(waiting.items(), self.chain.where_all(
                key for key, _ in waiting.values())):
            if not self._stored(key, where, reserved):
                reserved = self._offload(key, page, priority, self._moves) or reserved
        return moves

    def clear(self) -> None:
        """Forget every tier record and planned move (the cache dropped its prefixes)."""
        self.chain.clear()
        self._moves, self._write_through, self._loaded = [], {}, set()

    def stats(self) -> TierReuseStats:
        return TierReuseStats(chain=self.chain.stats(), offloads=self.offloads,
                              loads_per_tier=tuple(self.loads_per_tier), dropped=self.dropped,
                              swapped_out=self.swapped_out, swapped_in=self.swapped_in,
                              released=self.released)
