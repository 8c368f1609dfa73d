"""Hash-chained block identity and the block index of vLLM-style prefix caching.

A full block of ``page_size`` tokens is named by a hash of its parent block's hash, its tokens and
nothing else, so equal hashes mean equal prefixes. The chain starts from a root derived from the
cache salt, so two namespaces (tenants, LoRA adapters) never share a block.

Hashers are strategy objects: ``Sha256BlockHasher`` (the default) is cryptographically strong,
so a collision - two different prefixes sharing KV - is not a practical risk; ``BuiltinBlockHasher``
uses Python's 64-bit ``hash`` and is several times faster, for simulations where speed matters more.

Examples:
    >>> h = Sha256BlockHasher()
    >>> a = h.chain(h.root(None), [1, 2, 3, 4])
    >>> a == h.chain(h.root(None), [1, 2, 3, 4]), a == h.chain(h.root("tenant-b"), [1, 2, 3, 4])
    (True, False)
"""

from __future__ import annotations

import dataclasses
import hashlib
from array import array

from kvlab.kvcache.eviction import EvictableSet


@dataclasses.dataclass(frozen=True)
class Sha256BlockHasher:
    """sha256(parent digest || tokens as native-endian int64)."""

    def root(self, salt) -> bytes:
        return hashlib.sha256(b"kvlab-root:" + repr(salt).encode()).digest()

    def chain(self, parent: bytes, tokens) -> bytes:
        return hashlib.sha256(parent + array("q", tokens).tobytes()).digest()


@dataclasses.dataclass(frozen=True)
class BuiltinBlockHasher:
    """Python's ``hash`` of (parent, tokens): fast, 64 bits, collisions possible in principle."""

    def root(self, salt) -> int:
        return hash(("kvlab-root", salt))

    def chain(self, parent: int, tokens) -> int:
        return hash((parent, tuple(tokens)))


def chain_hashes(hasher, parent, token_ids, page_size: int, start: int, stop: int) -> list:
    """Hashes of full blocks ``start..stop-1`` of ``token_ids``, ``parent`` being block start-1's."""
    out = []
    for i in range(start, stop):
        parent = hasher.chain(parent, token_ids[i * page_size:(i + 1) * page_size])
        out.append(parent)
    return out


@dataclasses.dataclass(eq=False)
class CachedBlock:
    """Bookkeeping of one indexed page (what eviction policies read)."""

    block_hash: object
    depth: int
    last_access: int = 0
    hits: int = 0
    priority: int = 0


class BlockIndex:
    """hash -> page for full blocks whose KV is in the cache, with the evictable ones (indexed,
    used by no sequence) ordered by an eviction policy."""

    def __init__(self, policy):
        self.by_hash: dict = {}
        self.blocks: dict[int, CachedBlock] = {}     # page -> block
        self.evictable = EvictableSet(policy)

    def lookup(self, block_hashes) -> list[int]:
        """Pages of the longest run of leading hashes that are indexed."""
        pages = []
        for h in block_hashes:
            page = self.by_hash.get(h)
            if page is None:
                break
            pages.append(page)
        return pages

    def insert(self, block_hash, page: int, depth: int, clock: int, priority: int) -> bool:
        """Index ``page`` under ``block_hash``; False if that hash already has a page."""
        if block_hash in self.by_hash:
            return False
        self.by_hash[block_hash] = page
        self.blocks[page] = CachedBlock(block_hash, depth, clock, 0, priority)
        return True

    def touch(self, page: int, clock: int, priority: int) -> None:
        """A sequence starts using ``page``: it counts as a use (recency, reuse count, priority)
        and the page is no longer evictable."""
        b = self.blocks[page]
        b.last_access, b.hits, b.priority = clock, b.hits + 1, max(b.priority, priority)
        self.evictable.discard(page)

    def release(self, page: int, clock: int) -> None:
        """No sequence uses indexed ``page`` any more: it becomes evictable."""
        b = self.blocks[page]
        b.last_access = clock
        self.evictable.add(page, b)

    def clear(self) -> list[int]:
        """Forget every block (none may be in use); returns their pages (the caller drops the
        page references)."""
        pages = list(self.blocks)
        self.by_hash, self.blocks = {}, {}
        self.evictable = EvictableSet(self.evictable.policy)
        return pages

    def evict(self) -> int:
        """Forget the policy's victim and return its page (the caller drops the page reference)."""
        return self.evict_block()[0]

    def evict_block(self) -> tuple[int, CachedBlock]:
        """Forget the policy's victim; its page and its bookkeeping (hash, priority, ...)."""
        page = self.evictable.pop()
        block = self.blocks.pop(page)
        del self.by_hash[block.block_hash]
        return page, block
