"""The page allocator shared by every cache: a free list plus reference counts, host-only."""

from __future__ import annotations

from collections import deque


class OutOfPagesError(RuntimeError):
    """Raised when more pages are requested than are free."""


class PageAllocator:
    """Reference-counted pool of ``num_pages`` page ids.

    Examples:
        >>> pool = PageAllocator(4)
        >>> pages = pool.allocate(3)
        >>> pool.num_free, pool.refcount(pages[0])
        (1, 1)
        >>> pool.decref(pages)
        [0, 1, 2]
        >>> pool.num_free
        4
    """

    def __init__(self, num_pages: int):
        if num_pages < 1:
            raise ValueError(f"a page pool needs at least 1 page, got {num_pages}")
        self.num_pages = num_pages
        self._refcount = [0] * num_pages      # a list: per-page access is several times numpy's
        self._free: deque[int] = deque(range(num_pages))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_pages - len(self._free)

    def refcount(self, page: int) -> int:
        return self._refcount[page]

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` free pages (reference count 1 each)."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of pages ({n})")
        if n > len(self._free):
            raise OutOfPagesError(f"{n} pages requested, {len(self._free)} free of {self.num_pages}")
        pages = [self._free.popleft() for _ in range(n)]
        rc = self._refcount
        for p in pages:
            rc[p] = 1
        return pages

    def incref(self, pages) -> None:
        """Share pages already in use (copy-on-write users take a reference)."""
        rc = self._refcount
        for p in pages:
            if rc[p] <= 0:
                raise ValueError(f"page {p} is free; only pages in use can be shared")
            rc[p] += 1

    def decref(self, pages) -> list[int]:
        """Drop one reference from each page; returns the pages that became free."""
        freed, rc = [], self._refcount
        for p in pages:
            if rc[p] <= 0:
                raise ValueError(f"page {p} is already free (double free)")
            rc[p] -= 1
            if rc[p] == 0:
                self._free.append(p)
                freed.append(p)
        return freed
