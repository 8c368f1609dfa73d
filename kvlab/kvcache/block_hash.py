"""Hash-chained block identity and the block index of vLLM-style prefix caching.

A full block of ``page_size`` tokens is named by a hash of its parent block's hash, its tokens and
nothing else, so equal hashes mean equal prefixes. The chain starts from a root derived from the
cache salt, so two namespaces (tenants, LoRA adapters) never share a block.

Hashers are strategy objects with ``root(salt)``, ``chain(parent, tokens)`` (one block) and
``chain_run(parent, tokens, block_size)`` (a run of full blocks, what ``chain`` gives one by one).
``Sha256BlockHasher`` (the default) is cryptographically strong, so a collision - two different
prefixes sharing KV - is not a practical risk; ``BuiltinBlockHasher`` uses Python's 64-bit
``hash`` and is several times faster, for simulations where speed matters more.

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

    def chain_run(self, parent: bytes, tokens, block_size: int) -> list[bytes]:
        """The chained hashes of ``tokens``' consecutive full blocks of ``block_size`` (what
        ``chain`` gives block by block, from one conversion of the tokens)."""
        data, step, sha, out = array("q", tokens).tobytes(), 8 * block_size, hashlib.sha256, []
        for offset in range(0, len(data) - step + 1, step):
            parent = sha(parent + data[offset:offset + step]).digest()
            out.append(parent)
        return out


@dataclasses.dataclass(frozen=True)
class BuiltinBlockHasher:
    """Python's ``hash`` of (parent, tokens): fast, 64 bits, collisions possible in principle."""

    def root(self, salt) -> int:
        return hash(("kvlab-root", salt))

    def chain(self, parent: int, tokens) -> int:
        return hash((parent, tuple(tokens)))

    def chain_run(self, parent: int, tokens, block_size: int) -> list[int]:
        """The chained hashes of ``tokens``' consecutive full blocks of ``block_size``."""
        out = []
        for start in range(0, len(tokens) - block_size + 1, block_size):
            parent = hash((parent, tuple(tokens[start:start + block_size])))
            out.append(parent)
        return out


def chain_hashes(hasher, parent, token_ids, page_size: int, start: int, stop: int) -> list:
    """Hashes of full blocks ``start..stop-1`` of ``token_ids``, ``parent`` being block start-1's."""
    if stop <= start:
        return []
    if len(token_ids) < stop * page_size:
        raise ValueError(f"hashing blocks {start}..{stop - 1} of {page_size} tokens needs "
                         f"{stop * page_size} tokens, got {len(token_ids)}")
    return hasher.chain_run(parent, token_ids[start * page_size:stop * page_size], page_size)


@dataclasses.dataclass(eq=False, slots=True)
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

    def insert_run(self, block_hashes, pages, depth: int, clock: int, priority: int) -> list:
        """Index ``pages[i]`` under ``block_hashes[i]`` at depth ``depth + i``, skipping hashes
        that already have a page; the ``(block_hash, page)`` pairs indexed."""
        by_hash, blocks, new = self.by_hash, self.blocks, []
        for i, (block_hash, page) in enumerate(zip(block_hashes, pages, strict=True), start=depth):
            if block_hash not in by_hash:
                by_hash[block_hash] = page
                blocks[page] = CachedBlock(block_hash, i, clock, 0, priority)
                new.append((block_hash, page))
        return new

    def touch_all(self, pages, clock: int, priority: int) -> None:
        """``touch`` each of ``pages``."""
        blocks, discard = self.blocks, self.evictable.discard
        for page in pages:
            b = blocks[page]
            b.last_access, b.hits, b.priority = clock, b.hits + 1, max(b.priority, priority)
            discard(page)

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
        return self.evict_blocks(1)[0][0]

    def evict_blocks(self, n: int) -> list[tuple[int, CachedBlock]]:
        """Forget the policy's next ``n`` victims; each one's page and bookkeeping (hash,
        priority, ...), in eviction order. KeyError, forgetting none, if fewer are evictable."""
        if n > len(self.evictable):
            raise KeyError(f"{n} blocks to evict, {len(self.evictable)} evictable")
        out, pop, blocks, by_hash = [], self.evictable.pop, self.blocks, self.by_hash
        for _ in range(n):
            page = pop()
            block = blocks.pop(page)
            del by_hash[block.block_hash]
            out.append((page, block))
        return out
