"""How a page comes to hold its final bytes: the host half of a KV format's writes.

A cache asks its format for a ``PageWrites`` strategy (``kv_format.page_writes(...)``):

* ``InPlaceWrites`` (every per-token format: plain, fp8, int8, int4): a token's K/V are stored in
  its page when it is written, so a page table entry never changes.
* ``StagedWrites`` (KIVI): a page fills in full precision in a *staging* page and is *sealed*
  (quantized as a whole) once full. Each logical page reserves its sealed page from the cache's
  pool when it is allocated, so sealing never fails; the page table holds the staging id until
  the page is sealed and the sealed id after. Sealing happens when the sequence is allocated
  again (the step that filled the page has been planned before, so the device runs it first)
  or when it is freed; the (staging, sealed) pairs wait in ``drain()`` for the next step plan,
  whose executor seals them before the step runs. Swapping a sequence out seals its full pages
  and moves only those; its unfilled last page is computed again when it comes back.

Staging ids follow the sealed ids: staging page ``r`` is page id ``num_sealed + r``.
"""

from __future__ import annotations

from kvlab.kvcache.pool import OutOfPagesError, PageAllocator


class InPlaceWrites:
    """Pages are written as stored: the table holds the cache's own pages and nothing is sealed."""

    def check_cache(self, cache_name: str) -> None:
        """Every cache writes pages in place."""

    def swap_keeps(self, num_computed: int) -> int:
        """Of a sequence's ``num_computed`` tokens, those a swap-out keeps: all of them."""
        return num_computed

    def before_swap_out(self, seq_id, keep_pages: int, table, row: int) -> None:
        """Nothing to settle: every page holds its final bytes."""

    def check_tiers(self) -> None:
        """Cached pages go down the tiers below the GPU as stored."""

    def check_step(self, step_tokens: int) -> None:
        """Any number of tokens a step."""

    def storage(self, kv_format, **dims):
        """The device half: ``paged_storage``'s (``dims``: ``PagedKVStorage.zeros``'s)."""
        from kvlab.kvcache.quantized_storage import paged_storage  # storage imports the formats
        return paged_storage(kv_format, **dims)

    def num_free(self, seq_id, full_pages: int) -> int:
        """Fresh pages ``seq_id`` could place now, its first ``full_pages`` sealed (no limit here)."""
        return 1 << 62

    def check_room(self, seq_id, need: int, full_pages: int = 0) -> None:
        """Raise OutOfPagesError unless ``need`` fresh pages can be placed once ``seq_id``'s first
        ``full_pages`` pages are sealed (always here)."""

    def sealed_prefix(self, seq_id, n: int) -> int:
        """How many of the sequence's first ``n`` pages hold their final bytes (all here)."""
        return n

    def place(self, seq_id, first_col: int, pages: list[int]) -> list[int]:
        """The table entries for fresh ``pages`` at columns ``first_col...``: the pages themselves."""
        return pages

    def seal(self, seq_id, full_pages: int, table, row: int) -> list[int]:
        """Seal the sequence's full pages; returns the columns sealed (none here)."""
        return []

    def release(self, seq_id, table, row: int) -> None:
        """The sequence is going: its table row is left holding the cache's own pages."""

    def drain(self) -> list[tuple[int, int]]:
        """(staging, sealed) pairs to seal before the next step (none)."""
        return []


class StagedWrites:
    """KIVI's staging: ``num_staging`` full-precision pages, ids ``num_sealed ...`` (see above)."""

    def __init__(self, *, num_sealed: int, num_staging: int, page_size: int, format_name: str):
        self.num_sealed, self.page_size = num_sealed, page_size
        self.allocator = PageAllocator(num_staging)
        self.format_name = format_name
        self._staged: dict[object, dict[int, tuple[int, int]]] = {}    # seq -> col -> (staging id, sealed)
        self._pending: list[tuple[int, int]] = []

    def check_cache(self, cache_name: str) -> None:
        """Raise unless the cache seals staged pages (only ``PagedKVCache`` does)."""
        raise ValueError(f"{self.format_name} KV fills each page in full precision and seals it when full, "
                         f"which PagedKVCache does; {cache_name} writes its pages in place: use "
                         f"PagedKVCache(page_size=group_size, kv_format=...) or a per-token format")

    def swap_keeps(self, num_computed: int) -> int:
        """Of a sequence's ``num_computed`` tokens, those a swap-out keeps: its full pages', which
        it seals first; the tokens of its unfilled last page are computed again when it returns
        (a partial page has no sealed form, and a staging page's full precision is what KIVI
        saves memory against)."""
        return num_computed // self.page_size * self.page_size

    def before_swap_out(self, seq_id, keep_pages: int, table, row: int) -> None:
        """Seal the sequence's first ``keep_pages`` pages and give back the staging pages of the
        rest (their row entries become their reserved sealed pages, which the cache frees)."""
        self.seal(seq_id, keep_pages, table, row)
        self.release(seq_id, table, row)

    def check_tiers(self) -> None:
        """Sealed pages (the only ones reused) go down the tiers as stored, and a tier's blocks
        come back into sealed pages, no staging."""

    def check_step(self, step_tokens: int) -> None:
        """Raise ValueError if one step of ``step_tokens`` tokens could need more staging pages
        than there are (a step's pages all fill in staging first)."""
        need = -(-step_tokens // self.page_size) + 1
        if need > self.allocator.num_pages:
            raise ValueError(f"a step of {step_tokens} tokens may fill {need} pages, all staged in full "
                             f"precision first, but the {self.format_name} format has "
                             f"{self.allocator.num_pages} staging pages: raise staging_pages to at least "
                             f"{need} or compute prompts in smaller chunks")

    def storage(self, kv_format, **dims):
        """A ``KiviPagedKVStorage``: the sealed pages and the staging pool (``dims``:
        ``PagedKVStorage.zeros``'s)."""
        from kvlab.kvcache.kivi_storage import KiviPagedKVStorage  # storage imports the formats
        return KiviPagedKVStorage.zeros(kv_format, **dims)

    def num_free(self, seq_id, full_pages: int) -> int:
        """Staging pages free once ``seq_id``'s first ``full_pages`` pages are sealed."""
        staged = self._staged.get(seq_id, {})
        return self.allocator.num_free + sum(1 for c in staged if c < full_pages)

    def check_room(self, seq_id, need: int, full_pages: int = 0) -> None:
        free = self.num_free(seq_id, full_pages)
        if need > free:
            raise OutOfPagesError(f"sequence {seq_id!r} needs {need} staging pages; "
                                  f"{free} free of {self.allocator.num_pages}")

    def sealed_prefix(self, seq_id, n: int) -> int:
        return min([n, *self._staged.get(seq_id, {})])

    def place(self, seq_id, first_col: int, pages: list[int]) -> list[int]:
        """Staging ids for fresh sealed ``pages`` (reserved until sealing) at ``first_col...``."""
        ids = [self.num_sealed + r for r in self.allocator.allocate(len(pages))]
        staged = self._staged.setdefault(seq_id, {})
        for col, (sid, page) in enumerate(zip(ids, pages), start=first_col):
            staged[col] = (sid, page)
        return ids

    def seal(self, seq_id, full_pages: int, table, row: int) -> list[int]:
        """Seal the staged pages among the first ``full_pages`` columns: queue (staging, sealed),
        point the table at the sealed page, free the staging page. Returns the columns sealed."""
        staged = self._staged.get(seq_id)
        if not staged:
            return []
        cols = sorted(c for c in staged if c < full_pages)
        for col in cols:
            sid, page = staged.pop(col)
            self._pending.append((sid, page))
            table.write(row, col, [page])
            self.allocator.decref([sid - self.num_sealed])
        return cols

    def release(self, seq_id, table, row: int) -> None:
        """Unsealed pages of a departing sequence: its row gets their reserved sealed pages back
        (the cache frees those with the row) and the staging pages are freed unsealed."""
        for col, (sid, page) in self._staged.pop(seq_id, {}).items():
            table.write(row, col, [page])
            self.allocator.decref([sid - self.num_sealed])

    def drain(self) -> list[tuple[int, int]]:
        pending, self._pending = self._pending, []
        return pending
