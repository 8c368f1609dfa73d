"""The radix tree of SGLang's RadixAttention, over pages of a pool (host-only).

Each edge holds a run of token ids (a whole number of pages) and the pages that hold their KV.
Children are keyed by their first page of tokens, so a lookup descends one dict access per node
and compares whole runs at C speed. A partial match splits a node at a page boundary. A node's
``lock_ref`` counts the live sequences whose path runs through it; unlocked leaves are evictable,
in the order of the given policy, and evicting a leaf may make its parent an evictable leaf.
Separate roots per salt keep namespaces apart.

Examples:
    >>> from kvlab.kvcache.eviction import LRU
    >>> tree = RadixTree(page_size=2, policy=LRU())
    >>> root = tree.root(None)
    >>> node, pages, taken = tree.insert(root, [1, 2, 3, 4], [10, 11], clock=0, priority=0)
    >>> pages, taken, tree.match(None, [1, 2, 3, 9])
    ([10, 11], 2, (2, [10]))
    >>> tree.unlock(node); tree.num_cached_pages, tree.evict()
    (2, [10, 11])
"""

from __future__ import annotations

from kvlab.kvcache.eviction import EvictableSet


class RadixNode:
    __slots__ = ("key", "pages", "children", "parent", "lock_ref", "last_access", "hits",
                 "priority", "depth")

    def __init__(self, key: tuple, pages: list[int], parent, depth: int, lock_ref: int = 0,
                 last_access: int = 0, hits: int = 0, priority: int = 0):
        self.key, self.pages, self.parent, self.depth = key, pages, parent, depth
        self.children: dict[tuple, RadixNode] = {}
        self.lock_ref, self.last_access, self.hits, self.priority = lock_ref, last_access, hits, priority


class RadixTree:
    """Token-keyed radix tree whose edges own pages; see the module docstring."""

    def __init__(self, page_size: int, policy):
        self.page_size = page_size
        self.roots: dict[object, RadixNode] = {}
        self.evictable = EvictableSet(policy)
        self.num_cached_pages = 0       # pages of unlocked nodes: held by the tree alone

    def root(self, salt) -> RadixNode:
        node = self.roots.get(salt)
        if node is None:
            node = self.roots[salt] = RadixNode((), [], None, 0, lock_ref=1)   # never evicted
        return node

    def _common(self, key: tuple, token_ids, i: int) -> int:
        """Page-aligned length of the common prefix of ``key`` and ``token_ids[i:]`` (the first
        page is known to match)."""
        p = self.page_size
        n = min(len(key), len(token_ids) - i) // p * p
        if key[:n] == tuple(token_ids[i:i + n]):
            return n
        m = p
        while m < n and key[m:m + p] == tuple(token_ids[i + m:i + m + p]):
            m += p
        return m

    def _split(self, child: RadixNode, m: int) -> RadixNode:
        """Cut ``child``'s edge after ``m`` tokens; returns the new upper node."""
        p = self.page_size
        upper = RadixNode(child.key[:m], child.pages[:m // p], child.parent,
                          child.depth - len(child.key) + m, child.lock_ref, child.last_access,
                          child.hits, child.priority)
        child.parent.children[child.key[:p]] = upper
        child.key, child.pages, child.parent = child.key[m:], child.pages[m // p:], upper
        upper.children[child.key[:p]] = child
        return upper

    def match(self, salt, token_ids) -> tuple[int, list[int]]:
        """Longest cached page-aligned prefix of ``token_ids``: (tokens, pages). No side effects."""
        node, i, pages, p = self.roots.get(salt), 0, [], self.page_size
        while node is not None and len(token_ids) - i >= p:
            child = node.children.get(tuple(token_ids[i:i + p]))
            if child is None:
                break
            m = self._common(child.key, token_ids, i)
            pages += child.pages[:m // p]
            i += m
            node = child if m == len(child.key) else None
        return i, pages

    def match_and_lock(self, salt, token_ids, clock: int, priority: int):
        """Like ``match`` but splits a partly matched node and locks the matched path for a new
        sequence. Returns (deepest node, tokens, pages)."""
        node, i, pages, p = self.root(salt), 0, [], self.page_size
        while len(token_ids) - i >= p:
            child = node.children.get(tuple(token_ids[i:i + p]))
            if child is None:
                break
            m = self._common(child.key, token_ids, i)
            if m < len(child.key):
                child = self._split(child, m)
            pages += child.pages
            i += m
            node = child
        self._lock_path(node, clock, priority, hit=True)
        return node, i, pages

    def insert(self, node: RadixNode, token_ids, pages: list[int], clock: int, priority: int):
        """Extend a locked path below ``node`` with ``token_ids`` (whole pages) held in ``pages``.
        Runs already in the tree are reused (their pages win: the caller should switch to them
        and drop its duplicates); the rest becomes a new leaf owning its pages. The new part of
        the path is locked for the caller. Returns (deepest node, the tree's pages for
        ``token_ids``, how many of them the tree took from ``pages``)."""
        i, p, tree_pages = 0, self.page_size, []
        while i < len(token_ids):
            first = tuple(token_ids[i:i + p])
            child = node.children.get(first)
            if child is None:
                child = RadixNode(tuple(token_ids[i:]), list(pages[i // p:]), node,
                                  node.depth + len(token_ids) - i, lock_ref=1, last_access=clock,
                                  priority=priority)
                node.children[first] = child
                return child, tree_pages + child.pages, len(child.pages)
            m = self._common(child.key, token_ids, i)
            if m < len(child.key):
                child = self._split(child, m)
            self._inc(child)
            child.last_access, child.priority = clock, max(child.priority, priority)
            tree_pages += child.pages
            node, i = child, i + m
        return node, tree_pages, 0

    def _inc(self, node: RadixNode) -> None:
        node.lock_ref += 1
        if node.lock_ref == 1:
            self.num_cached_pages -= len(node.pages)
            self.evictable.discard(node)

    def _lock_path(self, node: RadixNode, clock: int, priority: int, hit: bool) -> None:
        while node.parent is not None:
            self._inc(node)
            node.last_access, node.priority = clock, max(node.priority, priority)
            node.hits += hit
            node = node.parent

    def unlock(self, node: RadixNode, clock: int | None = None) -> None:
        """A sequence whose path ends at ``node`` let go of it."""
        while node.parent is not None:
            node.lock_ref -= 1
            if clock is not None:
                node.last_access = clock
            if node.lock_ref == 0:
                self.num_cached_pages += len(node.pages)
                if not node.children:
                    self.evictable.add(node, node)
            node = node.parent

    def evict(self) -> list[int]:
        """Remove the policy's victim leaf; returns its pages (the caller drops their reference)."""
        node = self.evictable.pop()
        parent = node.parent
        del parent.children[node.key[:self.page_size]]
        self.num_cached_pages -= len(node.pages)
        if parent.parent is not None and not parent.children and parent.lock_ref == 0:
            self.evictable.add(parent, parent)
        return node.pages
