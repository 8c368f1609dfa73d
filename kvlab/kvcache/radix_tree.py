"""The radix tree of SGLang's RadixAttention, over pages of a pool (host-only).

Each edge holds a run of token ids (a whole number of pages) and the pages that hold their KV.
Children are keyed by their first page of tokens, so a lookup descends one dict access per node
and compares whole runs at C speed. A partial match splits a node at a page boundary. A node's
``lock_ref`` counts the live sequences whose path runs through it; unlocked leaves are evictable,
in the order of the given policy, and evicting a leaf may make its parent an evictable leaf.
Separate roots per salt keep namespaces apart.

A sequence admitted but not started yet *holds* its matched path (``hold_path``): the nodes are
protected (``lock_ref`` counts holds too) but nothing else changes - no split, no recency, no
reuse count; ``unhold_path`` restores them exactly. When the sequence starts, the hold becomes a
real lock (``match_and_lock``: split at the match's end, recency, reuse counts, priority). A node
is *really* unlocked when its ``lock_ref`` equals its holds: then it is evictable once unheld.

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
        self.evictable.copy_holds(child, upper)
        return upper

    def match_path(self, salt, token_ids) -> tuple[RadixNode | None, int, list[int]]:
        """Longest cached page-aligned prefix of ``token_ids``: (the deepest node it reaches,
        possibly matched only in part; tokens; pages). No side effects."""
        node, i, pages, p = self.roots.get(salt), 0, [], self.page_size
        while node is not None and len(token_ids) - i >= p:
            child = node.children.get(tuple(token_ids[i:i + p]))
            if child is None:
                break
            m = self._common(child.key, token_ids, i)
            pages += child.pages[:m // p]
            i += m
            node = child
            if m < len(child.key):
                break
        return node, i, pages

    def match(self, salt, token_ids) -> tuple[int, list[int]]:
        """Longest cached page-aligned prefix of ``token_ids``: (tokens, pages). No side effects."""
        return self.match_path(salt, token_ids)[1:]

    def hold_path(self, node: RadixNode | None) -> None:
        """A tentative user (admitted, not started) protects the path ending at ``node``."""
        while node is not None and node.parent is not None:
            node.lock_ref += 1
            if node.lock_ref == 1:
                self.num_cached_pages -= len(node.pages)
            self.evictable.hold(node)
            node = node.parent

    def unhold_path(self, node: RadixNode | None) -> None:
        """Undo ``hold_path``: the nodes are as they were (evictable ones in their old place)."""
        while node is not None and node.parent is not None:
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.num_cached_pages += len(node.pages)
            self.evictable.unhold(node)
            node = node.parent

    def match_and_lock(self, salt, token_ids, clock: int, priority: int):
        """Like ``match`` but splits a partly matched node and locks the matched path for a
        sequence that starts (a use: recency, reuse count, priority). Returns (deepest node,
        tokens, pages)."""
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
        if node.lock_ref - self.evictable.holds(node) == 1:     # first real lock
            self.evictable.discard(node)

    def _lock_path(self, node: RadixNode, clock: int, priority: int, hit: bool) -> None:
        while node.parent is not None:
            self._inc(node)
            node.last_access, node.priority = clock, max(node.priority, priority)
            node.hits += hit
            node = node.parent

    def unlock(self, node: RadixNode, clock: int | None = None) -> None:
        """A sequence whose path ends at ``node`` let go of it."""
        holds = self.evictable.holds
        while node.parent is not None:
            node.lock_ref -= 1
            if clock is not None:
                node.last_access = clock
            if node.lock_ref == 0:
                self.num_cached_pages += len(node.pages)
            if node.lock_ref == holds(node) and not node.children:
                self.evictable.add(node, node)          # parked while tentatively held
            node = node.parent

    def evict(self) -> list[int]:
        """Remove the policy's victim leaf; returns its pages (the caller drops their reference)."""
        return self.evict_node().pages

    def path(self, node: RadixNode) -> tuple[object, list]:
        """``(salt, tokens)`` of the path from the root to the end of ``node``."""
        keys = []
        while node.parent is not None:
            keys.append(node.key)
            node = node.parent
        salt = next(s for s, root in self.roots.items() if root is node)
        return salt, [t for key in reversed(keys) for t in key]

    def evict_node(self) -> RadixNode:
        """Remove the policy's victim leaf and return it (its pages: the caller drops their
        reference; its path: ``path`` works on it until the tree is cleared)."""
        node = self.evictable.pop()
        parent = node.parent
        del parent.children[node.key[:self.page_size]]
        self.num_cached_pages -= len(node.pages)
        if (parent.parent is not None and not parent.children
                and parent.lock_ref == self.evictable.holds(parent)):
            self.evictable.add(parent, parent)
        return node

    def clear(self) -> list[int]:
        """Forget every node (none may be locked or held); returns their pages (the caller
        drops their references)."""
        pages, stack = [], list(self.roots.values())
        while stack:
            node = stack.pop()
            pages += node.pages
            stack.extend(node.children.values())
        self.roots = {}
        self.evictable = EvictableSet(self.evictable.policy)
        self.num_cached_pages = 0
        return pages
