"""BlockTable on its own (growth, row reuse, the change record, against a model) and as the caches
keep it: a decode step writes one cell per sequence that needs a page, whatever its length."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvlab.engine.device_table import DeviceBlockTable, apply_changes
from kvlab.kvcache import BlockTable, CircularKVCache, ContiguousKVCache, PagedKVCache, RadixKVCache


def test_grows_by_doubling_in_both_dimensions():
    table = BlockTable(rows=2, width=2)
    rows = [table.add(s) for s in "abc"]
    assert rows == [0, 1, 2] and table.array.shape == (4, 2)
    table.append(rows[2], list(range(5)))
    assert table.array.shape == (4, 8)
    assert table.pages(rows[2]).tolist() == [0, 1, 2, 3, 4] and table.num_pages.tolist() == [0, 0, 5, 0]
    assert table.pages(rows[2]).dtype == np.int32
    assert table.drain_changes().resized and not table.drain_changes().resized


def test_free_rows_are_reused_lowest_first():
    table = BlockTable(rows=4)
    for s in "abcd":
        table.add(s)
    table.remove("c")
    table.remove("a")
    assert (table.add("e"), table.add("f"), table.add("g")) == (0, 2, 4)
    assert table.row_of("f") == 2 and "a" not in table and len(table) == 5
    with pytest.raises(ValueError, match="already has row"):
        table.add("f")


def test_changes_hold_each_written_cell_once_with_its_latest_value():
    table = BlockTable(rows=2, width=4)
    a, b = table.add("a"), table.add("b")
    table.drain_changes()
    table.append(a, [5, 6])
    table.append(b, [7])
    table.write(a, 1, [8])
    ch = table.drain_changes()
    assert sorted(zip(ch.rows.tolist(), ch.cols.tolist(), ch.pages.tolist())) == [
        (0, 0, 5), (0, 1, 8), (1, 0, 7)]
    assert not ch.resized and ch.rows.dtype == ch.cols.dtype == ch.pages.dtype == np.int32
    empty = table.drain_changes()
    assert len(empty.rows) == 0 and not empty.resized
    table.truncate(a, 1)
    assert table.pages(a).tolist() == [5] and len(table.drain_changes().rows) == 0


class BlockTableMachine(RuleBasedStateMachine):
    """Model: a list of pages per sequence and the set of rows in use."""

    def __init__(self):
        super().__init__()
        self.table = BlockTable(rows=2, width=2)
        self.model: dict[int, list[int]] = {}
        self.mirror = self.table.array.copy()

    @rule(seq=st.integers(0, 9))
    def add(self, seq):
        if seq in self.model:
            return
        used = {self.table.row_of(s) for s in self.model}
        lowest = min(set(range(self.table.array.shape[0] + 1)) - used)
        assert self.table.add(seq) == lowest
        self.model[seq] = []

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        seq = data.draw(st.sampled_from(sorted(self.model)))
        self.table.remove(seq)
        del self.model[seq]

    @precondition(lambda self: self.model)
    @rule(data=st.data(), pages=st.lists(st.integers(-1, 99), max_size=9))
    def append(self, data, pages):
        seq = data.draw(st.sampled_from(sorted(self.model)))
        self.table.append(self.table.row_of(seq), pages)
        self.model[seq] += pages

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), page=st.integers(0, 99))
    def write(self, data, page):
        seq = data.draw(st.sampled_from(sorted(s for s, p in self.model.items() if p)))
        col = data.draw(st.integers(0, len(self.model[seq]) - 1))
        self.table.write(self.table.row_of(seq), col, [page])
        self.model[seq][col] = page

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def truncate(self, data):
        seq = data.draw(st.sampled_from(sorted(self.model)))
        n = data.draw(st.integers(0, len(self.model[seq])))
        self.table.truncate(self.table.row_of(seq), n)
        del self.model[seq][n:]

    @invariant()
    def rows_match_the_model(self):
        assert len(self.table) == len(self.model)
        for seq, pages in self.model.items():
            assert self.table.pages(self.table.row_of(seq)).tolist() == pages

    @invariant()
    def changes_replay(self):
        ch = self.table.drain_changes()
        if ch.resized:
            grown = np.zeros_like(self.table.array)
            grown[:self.mirror.shape[0], :self.mirror.shape[1]] = self.mirror
            self.mirror = grown
        self.mirror[ch.rows, ch.cols] = ch.pages
        assert np.array_equal(self.mirror, self.table.array)


TestBlockTable = BlockTableMachine.TestCase
TestBlockTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


STEP = st.lists(st.tuples(st.integers(0, 11), st.lists(st.integers(0, 99), max_size=5)), max_size=6)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(STEP, max_size=8), removals=st.lists(st.integers(0, 11), max_size=8))
def test_the_device_copy_follows_the_host_table(steps, removals):
    """Staged changes applied as the step applies them (few fit: the rest take the overflow
    scatter; new rows or width: a whole re-read) keep every row in use equal to the host's."""
    table = BlockTable(rows=2, width=2)
    device = DeviceBlockTable(num_cols=32, num_rows=2, change_capacity=4)
    for i, step in enumerate(steps):
        for seq, pages in step:
            if seq not in table:
                table.add(seq)
            row = table.row_of(seq)
            table.append(row, pages[:32 - int(table.num_pages[row])])
        if i < len(removals) and removals[i] in table:
            table.remove(removals[i])
        buffers = np.zeros((3, device.change_capacity), np.int32)
        array = device.stage(SimpleNamespace(table=table.array, changes=table.drain_changes()), *buffers)
        device.array = apply_changes(array, buffers)
        copy = np.asarray(device.array)
        for seq in range(12):
            if seq in table:
                row = table.row_of(seq)
                assert copy[row, :table.num_pages[row]].tolist() == table.pages(row).tolist()


DECODING = {
    "radix-1": lambda: RadixKVCache(num_pages=16 * 130, page_size=1),
    "paged": lambda: PagedKVCache(num_pages=16 * 10, page_size=16, prefix_caching=True),
    "circular": lambda: CircularKVCache(num_pages=16 * 32, page_size=4, window=8, max_step_tokens=120),
    "contiguous": lambda: ContiguousKVCache(num_slots=16, max_seq_len=256, page_size=4),
}


@pytest.mark.parametrize("kind", DECODING)
def test_a_decode_step_writes_only_new_entries(kind):
    cache = DECODING[kind]()
    prompts = {s: [s] * 40 + list(range(60)) for s in range(16)}    # distinct, 100 tokens
    for s, tokens in prompts.items():
        cache.admit(s, tokens)
        cache.allocate(s, len(tokens))
        cache.commit(s, tokens, len(tokens))
    bt = cache.block_table
    bt.drain_changes()
    total = 0
    for _ in range(16):
        array_before, needed = bt.array, 0
        for s, tokens in prompts.items():
            needed += len(tokens) % cache.page_size == 0      # the token starts a new entry
            tokens.append(7)
            cache.allocate(s, len(tokens))
            cache.commit(s, tokens, len(tokens))
        ch = bt.drain_changes()
        assert bt.array is array_before and not ch.resized, "the table was rebuilt"
        assert len(ch.rows) == needed, f"{len(ch.rows)} cells written for {needed} new entries"
        total += needed
        for s, tokens in prompts.items():
            assert len(cache.pages(s)) == -(-len(tokens) // cache.page_size)
    assert total >= 16, "no step needed a new entry"
