"""Requests and their live samples: a request id stands for itself (``n`` = 1) or for its
samples ``<id>#<j>``; a sample leaves when it finishes, and the request when its last sample has.
The engine keeps one (which samples an abort reaches, ``Engine.samples``), and so does a router
over several engines (when a replica's request is done).

Examples:
    >>> groups = SampleGroups()
    >>> groups.add("a", ["a#0", "a#1"])
    >>> groups.finish("a#0"), groups.members("a"), groups.finish("a#1"), "a" in groups
    (None, ['a#1'], 'a', False)
"""

from __future__ import annotations


class SampleGroups:
    """Request id -> the ids of its unfinished samples, and each sample's request."""

    def __init__(self):
        self._members: dict[str, list[str]] = {}
        self._group: dict[str, str] = {}

    def __contains__(self, group: str) -> bool:
        return group in self._members

    def add(self, group: str, members) -> None:
        """Request ``group`` runs as ``members`` (its own id alone, or its samples' ids)."""
        self._members[group] = list(members)
        self._group.update((member, group) for member in self._members[group])

    def members(self, group: str) -> list[str]:
        """The unfinished samples of request ``group`` (a copy; [] once it finished)."""
        return list(self._members.get(group, ()))

    def group_of(self, member: str) -> str | None:
        """The request an unfinished sample belongs to, or None."""
        return self._group.get(member)

    def finish(self, member: str) -> str | None:
        """Sample ``member`` finished: its request's id if it was the last one, else None (also
        for an id that is no unfinished sample)."""
        group = self._group.pop(member, None)
        if group is None:
            return None
        live = self._members[group]
        live.remove(member)
        if live:
            return None
        del self._members[group]
        return group

    def drop(self, group: str) -> None:
        """Forget request ``group`` and its unfinished samples."""
        for member in self._members.pop(group, ()):
            self._group.pop(member, None)
