"""Helpers shared by the cache test modules."""

from __future__ import annotations


def radix_nodes(cache):
    """Every node of a radix cache's tree but the roots."""
    stack = list(cache.tree.roots.values())
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        if node.parent is not None:
            yield node
