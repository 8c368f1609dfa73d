"""Prefix caches with tiers below the GPU (``PagedKVCache(tiers=...)``, ``kvlab.kvcache.tiered``):
the slot API of tiers and chains; a state machine of the cache's bookkeeping against a shadow
executor that makes the planned moves over page "contents" (block hashes), so every reused or
loaded page is checked to hold its block; the engine on random traces of re-asked documents gives
the greedy tokens of a one-request-at-a-time decode (plain and int8 pages, host and disk tiers);
bad input."""

from __future__ import annotations

import pathlib
import tempfile

import jax
import numpy as np
import pytest
from conftest import examples
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_engine_property import reference, run_trace

import kvlab
from kvlab.kvcache import BuiltinBlockHasher, HostTier, SwapInTiers
from kvlab.kvcache.eviction import LRU, PriorityLRU
from kvlab.kvcache.formats import Int8
from kvlab.kvcache.tiers import (
    AbovePriority,
    DiskTier,
    HostMemoryTier,
    PinnedHostTier,
    TierChain,
    WriteBackOnEviction,
    WriteThrough,
)
from kvlab.kvcache.tiers.moves import Demote, Load, Offload, make_moves, phases
from kvlab.schedulers.preemption import RecomputePreemption, SwapPreemption

RECORD = np.zeros((1,), np.int64)          # a page's "content": the hash of the block it holds


# ---- the slot API ---------------------------------------------------------------------------------
def test_a_batch_of_evictions_sees_its_own_offloads_and_an_index_evicts_all_or_none():
    """``TierReuse.evicted`` takes a batch as it would take its blocks one by one: a block named
    twice is offloaded once. ``BlockIndex.evict_blocks`` asked for more than are evictable
    forgets none."""
    from kvlab.kvcache.block_hash import BlockIndex
    from kvlab.kvcache.eviction import LRU
    from kvlab.kvcache.tiered import TierReuse
    reuse = TierReuse(TierChain(tiers=[HostMemoryTier(4, RECORD)]))
    reuse.evicted([(b"k", 5, 0), (b"k", 6, 0), (b"j", 7, 0)])
    assert [m.page for m in reuse.drain()] == [5, 7]
    index = BlockIndex(LRU())
    index.insert_run([b"a", b"b"], [3, 4], 0, clock=1, priority=0)
    index.release(3, 2)
    with pytest.raises(KeyError):
        index.evict_blocks(2)
    assert index.evict_blocks(1)[0][0] == 3 and b"b" in index.by_hash


def test_reserve_names_the_slot_and_the_key_it_takes_over():
    tier = HostMemoryTier(2, RECORD)
    assert tier.reserve("a") == (0, []) and tier.reserve("b") == (1, [])
    tier.hold_all(["a"])
    slot, vacated = tier.reserve("c")                      # "a" is held: "b" goes
    assert slot == 1 and [(v.key, v.slot) for v in vacated] == [("b", 1)]
    tier.hold_all(["c"])
    assert tier.reserve("d") is None and not tier.contains("d")     # full of held records
    tier.unhold_all(["a"])
    assert tier.reserve("d") == (0, [tier_vacated("a", 0)])


def tier_vacated(key, slot):
    from kvlab.kvcache.tiers.array_tier import Vacated
    return Vacated(key, slot, 0)


def test_chain_reserve_plans_demotions_before_the_write():
    chain = TierChain(tiers=[HostMemoryTier(1), HostMemoryTier(1), HostMemoryTier(2)])
    records = chain.bind(RECORD)
    assert chain.reserve("a") == (0, [])
    slot, moves = chain.reserve("b")                       # a: host -> tier 1
    assert (slot, moves) == (0, [Demote(0, 0, 0)])
    slot, moves = chain.reserve("c")                       # b -> tier 1, whose a -> tier 2 first
    assert moves == [Demote(1, 0, 0), Demote(0, 0, 0)]
    assert [chain.where(k) for k in "abc"] == [(2, 0), (1, 0), (0, 0)]
    records[0][0], records[1][0] = 2, 1                    # b's and a's records before the moves
    make_moves(moves, chain.tiers, read_device=None, write_device=None)
    assert (records[2][0], records[1][0]) == (1, 2)


def host_and_pinned(page_record):
    return [HostMemoryTier(4, page_record), PinnedHostTier(4, page_record)]


@pytest.mark.parametrize("first", [0, 1], ids=["host", "pinned"])
def test_moves_read_device_pages_first_and_write_loads_in_their_phase(first):
    tier = host_and_pinned(RECORD)[first]
    device = np.array([[10], [11], [12], [13]], np.int64)
    moves = [Offload(page=3, slot=0), Load(0, 0, 1), Offload(page=1, slot=1), Load(0, 1, 3)]
    # each load reads the slot just written; device pages do not cut a phase (all read first)
    assert phases(moves) == [moves[:1], moves[1:3], moves[3:]]
    loads = [Load(0, 1, 5), Load(0, 1, 6), Load(1, 2, 7)]       # loads write no tier slot: one run
    assert phases(loads) == [loads] and phases([]) == []

    def write(pages, data, rows=None):
        write_rows(device, pages, data, rows)
    make_moves(moves, [tier], read_device=lambda pages: device[pages], write_device=write)
    assert device[:, 0].tolist() == [10, 13, 12, 11]         # pages 1 and 3 swapped through the tier
    assert tier.read_rows([0, 1])[:, 0].tolist() == [13, 11]


def test_a_pinned_tier_keeps_its_records_across_moves():
    tier = PinnedHostTier(8, np.zeros((2, 3), np.float32))
    assert [bank.sharding.memory_kind for bank in tier.records] == ["pinned_host"]
    rows = np.arange(18, dtype=np.float32).reshape(3, 2, 3)
    tier.write_rows([5, 0, 2], rows)
    np.testing.assert_array_equal(tier.read_rows([0, 2, 5]), rows[[1, 2, 0]])
    loaded = tier.load_records([2, 5, 0])
    assert loaded.shape == (4, 2, 3) and loaded.sharding.memory_kind == "device"
    np.testing.assert_array_equal(np.asarray(loaded)[:3], rows[[2, 0, 1]])
    unbound = PinnedHostTier(4)
    for copy in (lambda: unbound.load_records([0]), lambda: unbound.store_records([0], rows, [0])):
        with pytest.raises(ValueError, match="no page record yet"):
            copy()


@st.composite
def slot_stretches(draw):
    """Unique slots of 16 made of ascending and descending stretches (as evictions make them)."""
    slots = []
    for start, length, step in draw(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 6),
                                                       st.sampled_from([1, -1])), min_size=1, max_size=4)):
        slots += [s for s in range(start, start + step * length, step) if 0 <= s < 16 and s not in slots]
    return slots or [0]


@settings(max_examples=15, deadline=None)
@given(slot_stretches(), st.integers(1, 4), st.sampled_from([2, 5, 16]), st.integers(1, 6), st.booleans(),
       slot_stretches())
@example([2, 4, 0, 6], 1, 2, 2, False, [2, 6])      # a guessed copy read by two part arrays
def test_pinned_copies_in_slices_match_numpy(slots, records_per_slice, records_per_bank, records_per_part,
                                             prefetched, guessed):
    """Slots that step by one (up or down) move as slices, the rest one by one, bank by bank, a
    bank a load wants whole in one copy, the rows of the others in part arrays, prefetched or
    not (and after a prefetch of other slots, as a wrong guess makes): loads and offloads still
    equal NumPy's indexing."""
    record = np.zeros((2, 3), np.float32)
    tier = PinnedHostTier(16, record, slice_bytes=records_per_slice * record.nbytes,
                          bank_bytes=records_per_bank * record.nbytes,
                          part_bytes=records_per_part * record.nbytes)
    assert len(tier.records) == -(-16 // records_per_bank)
    shadow = np.arange(16 * 6, dtype=np.float32).reshape(16, 2, 3)
    tier.write_rows(list(range(16)), shadow)
    tier.prefetch(guessed)
    if prefetched:
        tier.prefetch(slots)
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:len(slots)], shadow[slots])
    data = -np.arange(len(slots) * 6, dtype=np.float32).reshape(-1, 2, 3)
    tier.store_records(slots, jax.device_put(data), np.arange(len(slots)))
    shadow[slots] = data
    np.testing.assert_array_equal(tier.read_rows(list(range(16))), shadow)


def write_rows(device, pages, data, rows=None) -> None:
    """A shadow device write (``make_moves``' ``write_device``): row ``i`` of ``data`` into page
    ``pages[i]``, or with ``rows`` row ``rows[i]``."""
    data = np.asarray(data)
    device[pages] = data[:len(pages)] if rows is None else data[np.asarray(rows)]


def _banked_tier(**kwargs):
    """A pinned tier of 12 records in banks of 4, each record filled with its own numbers; the
    tier and what it holds."""
    record = np.zeros((2, 3), np.float32)
    tier = PinnedHostTier(12, record, bank_bytes=4 * record.nbytes, **kwargs)
    shadow = np.arange(12 * 6, dtype=np.float32).reshape(12, 2, 3)
    tier.write_rows(list(range(12)), shadow)
    return tier, shadow


def test_a_load_moves_the_banks_it_wants_whole_in_one_copy_each(monkeypatch):
    """Of banks of 4 rows, a load wants banks 0 and 2 whole (in a scrambled order) and one row
    of bank 1: one device_put of each of banks 0 and 2, bank 1 sliced; rows in the order asked."""
    tier, shadow = _banked_tier()
    banks, whole = tier.records, []
    real = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: whole.extend(
        i for i, bank in enumerate(banks) if x is bank) or real(x, *a, **k))
    slots = [3, 1, 9, 0, 2, 11, 5, 10, 8]
    loaded = tier.load_records(slots)
    assert loaded.shape == (16, 2, 3)
    np.testing.assert_array_equal(np.asarray(loaded)[:len(slots)], shadow[slots])
    assert whole == [0, 2]
    sliced, _ = _banked_tier(whole_bank_share=2.0)
    banks, whole = sliced.records, []
    np.testing.assert_array_equal(np.asarray(sliced.load_records(slots))[:len(slots)], shadow[slots])
    assert whole == []
    for share in (0, -1.0, True, "7/8"):
        with pytest.raises(ValueError, match="whole_bank_share > 0"):
            PinnedHostTier(4, whole_bank_share=share)


def test_a_prefetched_bank_serves_the_load_unless_written_since(monkeypatch):
    """``prefetch`` copies the banks a load will want whole but the last (the load sends that
    one); the load takes those copies (no second copy), except where a row it wants was written
    since: that bank is copied again, so the load returns the records as they are at the load,
    never the prefetched ones."""
    tier, shadow = _banked_tier()
    copies = []
    real = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: copies.extend(
        i for i, bank in enumerate(tier.records) if x is bank) or real(x, *a, **k))
    slots = [4, 5, 6, 7, 8, 9, 10, 11]                 # banks 1 and 2 whole
    tier.prefetch(slots)
    assert copies == [1], "the last bank wanted whole waits for the load"
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:8], shadow[slots])
    assert copies == [1, 2], "the load copied a prefetched bank again"
    tier.prefetch(slots)
    tier.write_rows([5], np.full((1, 2, 3), -1.0, np.float32))          # bank 1 changes
    shadow[5] = -1.0
    copies.clear()
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:8], shadow[slots])
    assert copies == [1, 2], "a bank with a wanted row written after its prefetch must be copied again"
    tier.prefetch(slots[:4])                            # one bank wanted whole: prefetched
    copies.clear()
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots[:4]))[:4], shadow[slots[:4]])
    assert copies == []
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:8], shadow[slots])
    assert copies == [1, 2], "a load drops the prefetched copies it did not take"


def test_load_pieces_come_in_the_order_the_link_carries_them(monkeypatch):
    """The records of the banks wanted in part come first (sliced), then the banks wanted
    whole, each bank not prefetched sent only when its piece is asked for: after the caller
    wrote the pieces before it, so their writes do not wait behind it on the link."""
    tier, shadow = _banked_tier()
    copies = []
    real = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: copies.extend(
        i for i, bank in enumerate(tier.records) if x is bank) or real(x, *a, **k))
    slots = [4, 5, 6, 7, 2, 8, 9, 10, 11]               # banks 1 and 2 whole, bank 0 in part
    for prefetched in (False, True):
        copies.clear()
        if prefetched:
            tier.prefetch(slots)
        pieces = tier.load_pieces(slots)
        first = next(pieces)
        assert copies == ([1] if prefetched else []) and first.positions.tolist() == [4]
        np.testing.assert_array_equal(np.asarray(first.data)[first.rows], shadow[[2]])
        for b in (1, 2):
            piece = next(pieces)
            assert copies == [1, 2][:b], f"bank {b} sent before its piece was asked for"
            np.testing.assert_array_equal(np.asarray(piece.data)[piece.rows],
                                          shadow[np.asarray(slots)[piece.positions]])
        assert next(pieces, None) is None


def test_a_bank_wanted_in_part_is_prefetched_on_a_worker_and_never_served_stale():
    """Of banks of 4 rows, slots 1, 2 (bank 0) and 9 (bank 2) are wanted in part: ``prefetch``
    runs their slice loops on the worker thread, and the load places those copies without a
    slice loop of its own; a wanted row written since is copied again by the load, and a row
    written that no load wants spoils nothing."""
    import threading
    tier, shadow = _banked_tier()
    threads = []
    real_load = tier._load

    def counted(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_load(*args, **kwargs)
    tier._load = counted
    slots = [9, 2, 4, 5, 6, 7, 1]                       # bank 1 whole, banks 0 and 2 in part
    tier.prefetch(slots)
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:7], shadow[slots])
    assert threads == [False, False], "the slice loops ran on the worker, once per bank, not in the load"
    threads.clear()
    tier.prefetch(slots)
    tier.write_rows([2], np.full((1, 2, 3), -1.0, np.float32))       # bank 0 changes
    shadow[2] = -1.0
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:7], shadow[slots])
    assert threads.count(True) == 1, "the written bank is copied again by the load, the other taken"
    threads.clear()
    tier.prefetch([1, 2])
    np.testing.assert_array_equal(np.asarray(tier.load_records([1, 2, 3]))[:3], shadow[[1, 2, 3]])
    assert threads[-1] is True, "a prefetch lacking a row the load wants is not used"
    threads.clear()
    tier.prefetch([1])                                  # two sequences, one bank, in one plan
    tier.prefetch([3])
    tier.write_rows([0], np.full((1, 2, 3), -2.0, np.float32))      # a row neither wants
    shadow[0] = -2.0
    np.testing.assert_array_equal(np.asarray(tier.load_records([3, 1]))[:2], shadow[[3, 1]])
    assert threads == [False, False], "both prefetches serve the load; another row's write spoils neither"


def test_a_prefetch_runs_the_loads_own_slice_loops_and_its_copy_becomes_the_load(monkeypatch):
    """The worker's slice loops are the ones the load would run (same shapes, so nothing new to
    compile for a bank wanted in a few rows), and a copy laid out as the load is the load's
    output: no placement of its rows."""
    import kvlab.kvcache.tiers.pinned as pinned
    tier, shadow = _banked_tier()
    shapes = []
    real_load = tier._load

    def recorded(out, bank, *plan, run):
        shapes.append((out.shape, tuple(p.shape for p in plan if hasattr(p, "shape")), run))
        return real_load(out, bank, *plan, run=run)
    tier._load = recorded
    placed = []
    real_place = pinned._place_rows
    monkeypatch.setattr(pinned, "_place_rows", lambda *a: placed.append(a[1].shape) or real_place(*a))
    slots = [9, 2, 1, 10]                               # banks 0 and 2, each in part
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:4], shadow[slots])
    unprefetched, shapes[:] = list(shapes), []
    tier.prefetch(slots)
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:4], shadow[slots])
    assert shapes == unprefetched and placed == []
    tier.prefetch([1, 2, 4, 5, 6, 7])                   # bank 1 whole, bank 0's two rows apart
    np.testing.assert_array_equal(np.asarray(tier.load_records([1, 2, 4, 5, 6, 7]))[:6],
                                  shadow[[1, 2, 4, 5, 6, 7]])
    assert placed == [(4, 2, 3), (4, 2, 3)], "the parts' two rows from a part array, then the bank"


def test_the_rows_wanted_in_part_come_in_part_arrays_of_one_shape(monkeypatch):
    """Whatever number of rows a load wants of banks it wants in part, they come in part arrays
    of ``part_bytes`` (here two records each), in the load's order, the last padded: one shape
    for the slice loops and for the device write however the document lies across the banks
    (a new shape per load would compile the copies and the write again). A prefetch makes the
    same arrays and each becomes its piece as it is, a bank's rows in two arrays too."""
    import kvlab.kvcache.tiers.pinned as pinned
    record = np.zeros((2, 3), np.float32)
    tier = PinnedHostTier(16, record, bank_bytes=8 * record.nbytes, part_bytes=2 * record.nbytes)
    shadow = np.arange(16 * 6, dtype=np.float32).reshape(16, 2, 3)
    tier.write_rows(list(range(16)), shadow)
    shapes, placed = [], []
    real_load, real_place = tier._load, pinned._place_rows
    tier._load = lambda out, bank, *plan, run: (shapes.append((out.shape, run))
                                                or real_load(out, bank, *plan, run=run))
    monkeypatch.setattr(pinned, "_place_rows", lambda *a: placed.append(a[1].shape) or real_place(*a))
    for slots in ([3], [7, 8], [6, 7, 8, 9, 10], [12, 1, 2, 13, 3]):
        for prefetched in (False, True):
            if prefetched:
                tier.prefetch(slots)
            pieces = list(tier.load_pieces(slots))
            assert placed == [], f"a prefetched part array of {slots} was copied again"
            assert len(pieces) == -(-len(slots) // 2)
            assert all(p.data.shape == (2, 2, 3) for p in pieces)
            assert [sorted(piece.positions.tolist()) for piece in pieces] == \
                [list(range(len(slots)))[c:c + 2] for c in range(0, len(slots), 2)]
            for piece in pieces:
                np.testing.assert_array_equal(np.asarray(piece.data)[piece.rows],
                                              shadow[np.asarray(slots)[piece.positions]])
    assert {shape for shape, _ in shapes} == {(2, 2, 3)} and len({run for _, run in shapes}) == 1
    with pytest.raises(ValueError, match="part_bytes >= 1"):
        PinnedHostTier(4, part_bytes=0)


def test_a_device_write_of_page_records_sets_those_pages_and_refuses_repeats():
    """``page_copies.write_pages``: records into distinct pages (the unique-indices scatter),
    padding dropped, other pages untouched; a page named twice is an error, not a race."""
    import jax.numpy as jnp

    from kvlab.engine import page_copies
    from kvlab.kvcache.storage import PagedKVStorage

    storage = PagedKVStorage.zeros(num_layers=2, num_pages=5, page_size=2, num_kv_heads=1, head_dim=4,
                                   dtype=jnp.float32)
    records = np.arange(3 * 2 * 2 * 2 * 4, dtype=np.float32).reshape(3, 2, 2, 2, 1, 4)
    written = page_copies.write_pages(storage, [4, 0, 2], records)        # padded to 4 rows
    np.testing.assert_array_equal(np.asarray(page_copies.gather_pages(written, [4, 0, 2]))[:3], records)
    np.testing.assert_array_equal(np.asarray(written.k[:, [1, 3]]), 0)
    with pytest.raises(ValueError, match="distinct pages"):
        page_copies.write_pages(written, [1, 1], records[:2])
    bank = jax.device_put(records)                    # a bank moved whole: the write takes rows of it
    written = page_copies.write_pages(written, [1, 3], bank, rows=[2, 0])      # row 1 not wanted
    np.testing.assert_array_equal(np.asarray(page_copies.gather_pages(written, [1, 3, 4, 0, 2]))[:5],
                                  records[[2, 0, 0, 1, 2]])
    with pytest.raises(ValueError, match="one row of data per page"):
        page_copies.write_pages(written, [1, 3], bank, rows=[2])
    for rows in ([0, 3], [-1, 0], [2, 2]):
        with pytest.raises(ValueError, match=r"distinct rows in \[0, 3\)"):
            page_copies.write_pages(written, [1, 3], bank, rows=rows)


@pytest.mark.parametrize("wanted", [1, 32, 33, 60])
def test_a_device_write_of_rows_sets_exactly_those_pages(wanted):
    """``write_pages(..., rows=)``: up to ``FEW_ROWS`` rows gathered and scattered, above that
    one scatter of all of ``data``; either way each page gets its row and no other page changes."""
    import jax.numpy as jnp

    from kvlab.engine import page_copies
    from kvlab.kvcache.storage import PagedKVStorage

    assert page_copies.FEW_ROWS == 32
    rng = np.random.default_rng(wanted)
    storage = PagedKVStorage.zeros(num_layers=2, num_pages=80, page_size=2, num_kv_heads=1, head_dim=2,
                                   dtype=jnp.float32)
    data = jax.device_put(rng.normal(size=(64, 2, 2, 2, 1, 2)).astype(np.float32))
    pages, rows = rng.permutation(80)[:wanted], rng.permutation(64)[:wanted]
    written = np.asarray(page_copies.gather_pages(page_copies.write_pages(storage, pages.tolist(), data,
                                                                          rows=rows), list(range(80))))
    np.testing.assert_array_equal(written[pages], np.asarray(data)[rows])
    np.testing.assert_array_equal(np.delete(written[:80], pages, axis=0), 0)


def test_a_load_hands_whole_banks_to_the_device_write_with_the_rows_it_wants():
    """``make_moves`` over a pinned tier: each bank a load wants whole reaches the device write
    as it is, with the rows wanted of it (no assembled copy of the load), the banks wanted in
    part in a part array; every page gets its own record."""
    tier, shadow = _banked_tier()
    slots = [9, 4, 5, 6, 7, 1]                          # bank 1 whole, banks 0 and 2 in part
    moves = [Load(0, slot, page) for page, slot in enumerate(slots)]
    device = np.zeros((len(slots), 2, 3), np.float32)
    writes = []

    def write(pages, data, rows=None):
        writes.append((data.shape[0], list(pages), None if rows is None else np.asarray(rows).tolist()))
        write_rows(device, pages, data, rows)
    make_moves(moves, [tier], read_device=None, write_device=write)
    np.testing.assert_array_equal(device, shadow[slots])
    assert writes == [(4, [5, 0], [1, 0]), (4, [1, 2, 3, 4], [0, 1, 2, 3])], \
        "the part array first (on the link ahead of the banks; part_rows, not the load's eight), " \
        "then bank 1 itself, each with its own pages"


@pytest.mark.gpu
def test_pinned_copies_in_slices_match_numpy_on_the_gpu():
    """The same property in real pinned host memory (the copies are DMA there)."""
    test_pinned_copies_in_slices_match_numpy()


# ---- the cache's bookkeeping against a shadow executor ---------------------------------------------
DOCS = [[(31 * d + 7 * i) % 97 + 3 for i in range(24)] for d in range(4)]


class TieredCacheMachine(RuleBasedStateMachine):
    """Sequences are admitted (sharing document prefixes), grow, are freed or rolled back; a
    ``launch`` commits what the plan computes, drains the tier moves, makes them over a shadow
    device (one int per page: the hash of the block it holds) and checks that every page a
    sequence reuses or loaded holds its block, then writes the blocks the plan computed."""

    policy = WriteBackOnEviction()
    levels = 2
    radix = False
    swap = False                      # sequences swapped out into the first tier (SwapInTiers)

    def __init__(self):
        super().__init__()
        tiers = [HostMemoryTier(8 if self.swap else 3, eviction=PriorityLRU())]
        tiers += [HostMemoryTier(4) for _ in range(self.levels - 1)]
        self.chain = TierChain(tiers=tiers, policy=self.policy)
        self.records = self.chain.bind(RECORD)
        space = SwapInTiers() if self.swap else None
        if self.radix:
            self.cache = kvlab.RadixKVCache(num_pages=12, page_size=4, block_hasher=BuiltinBlockHasher(),
                                            tiers=self.chain, host_tier=space)
        else:
            self.cache = kvlab.PagedKVCache(num_pages=12, page_size=4, prefix_caching=True,
                                            block_hasher=BuiltinBlockHasher(), tiers=self.chain,
                                            host_tier=space)
        self.device = np.full(12, -1, np.int64)
        self.seqs: dict = {}          # id -> [tokens, hit, pending (computed by the next launch)]
        self.away: dict = {}          # swapped out: id -> (its seqs entry, its pages' contents)
        self.returning: dict = {}     # swapped in, loaded by the next launch: the same
        self.swapped = [0, 0, 0]      # pages swapped out, swapped in, released while away
        self.next_id = 0
        self.launched = False

    def _admit(self, tokens, priority) -> str | None:
        sid, self.next_id = f"s{self.next_id}", self.next_id + 1
        hit = self.cache.admit(sid, tokens, priority=priority)
        assert hit == min(sum(self.cache.match_prefix_by_tier(tokens)), (len(tokens) - 1) // 4 * 4)
        return sid, hit

    @rule(doc=st.integers(0, 3), length=st.integers(2, 24), tail=st.lists(st.integers(100, 120), max_size=6),
          priority=st.integers(0, 2))
    def start(self, doc, length, tail, priority):
        tokens = DOCS[doc][:length] + tail
        sid, hit = self._admit(tokens, priority)
        if not self.cache.can_allocate(sid, len(tokens)):
            self.cache.free(sid)
            return
        self.cache.allocate(sid, len(tokens))
        self.seqs[sid] = [tokens, hit, True]
        self.launched = False

    @rule(doc=st.integers(0, 3), length=st.integers(2, 24))
    def admit_and_roll_back(self, doc, length):
        sid, _ = self._admit(DOCS[doc][:length], 0)
        self.cache.free(sid)

    @precondition(lambda self: any(not s[2] for s in self.seqs.values()))
    @rule(data=st.data(), extra=st.lists(st.integers(100, 120), min_size=1, max_size=5))
    def grow(self, data, extra):
        sid = data.draw(st.sampled_from(sorted(k for k, s in self.seqs.items() if not s[2])))
        seq = self.seqs[sid]
        if self.cache.can_allocate(sid, len(seq[0]) + len(extra)):
            self.cache.allocate(sid, len(seq[0]) + len(extra))
            seq[0], seq[1], seq[2] = seq[0] + extra, len(seq[0]), True

    @precondition(lambda self: any(not s[2] for s in self.seqs.values()))
    @rule(data=st.data())
    def free(self, data):
        sid = data.draw(st.sampled_from(sorted(k for k, s in self.seqs.items() if not s[2])))
        self.cache.free(sid)
        del self.seqs[sid]

    @precondition(lambda self: self.swap and any(not s[2] for s in self.seqs.values()))
    @rule(data=st.data())
    def swap_out(self, data):
        sid = data.draw(st.sampled_from(sorted(k for k, s in self.seqs.items() if not s[2])))
        if self.cache.can_swap_out(sid):
            contents = self.device[self.cache.pages(sid)].copy()
            assert self.cache.swap_out(sid) == []              # its copies are tier moves
            self.away[sid] = (self.seqs.pop(sid), contents)
            self.swapped[0] += len(contents)

    @precondition(lambda self: self.away)
    @rule(data=st.data())
    def swap_in(self, data):
        sid = data.draw(st.sampled_from(sorted(self.away)))
        if self.cache.can_swap_in(sid):
            assert self.cache.swap_in(sid) == []
            self.returning[sid] = self.away.pop(sid)
            self.swapped[1] += len(self.returning[sid][1])

    @precondition(lambda self: len(self.away) > 1)       # (leaves swap_in the last one)
    @rule(data=st.data())
    def abort_away(self, data):
        sid = data.draw(st.sampled_from(sorted(self.away)))
        self.cache.free(sid)
        self.swapped[2] += len(self.away.pop(sid)[1])

    @rule()
    def launch(self):
        pending = {sid: s for sid, s in self.seqs.items() if s[2]}
        for sid, (tokens, _, _) in pending.items():          # the plan commits what it computes
            self.cache.commit(sid, tokens, len(tokens))
        moves = self.cache.drain_tier_moves()

        def write(pages, data, rows=None):
            write_rows(self.device, pages, np.asarray(data)[:, 0], rows)
        make_moves(moves, self.chain.tiers, read_device=lambda pages: self.device[pages][:, None],
                   write_device=write)
        for sid, (seq, contents) in self.returning.items():  # swapped in: every page as it left
            assert (self.device[self.cache.pages(sid)] == contents).all(), sid
            self.seqs[sid] = seq
        self.returning = {}
        hashes = self._hashes
        for sid, seq in pending.items():
            tokens, start, _ = seq
            row = self.cache.pages(sid)
            for i in range(start // 4):                      # reused or loaded: must hold its block
                assert self.device[row[i]] == hashes(tokens)[i], (sid, i)
            for i in range(start // 4, len(tokens) // 4):    # the step writes what it computes
                self.device[row[i]] = hashes(tokens)[i]
            seq[2] = False
        self.launched = True

    def _hashes(self, tokens) -> list[int]:
        h, parent, out = self.cache.hasher, self.cache.hasher.root(None), []
        for i in range(len(tokens) // 4):
            parent = h.chain(parent, tokens[i * 4:(i + 1) * 4])
            out.append(parent)
        return out

    @invariant()
    def pages_are_accounted_for(self):
        s = self.cache.stats(detailed=False)
        assert s.pages_used + s.pages_free + s.pages_cached == s.pages_total
        for tier in self.chain.tiers:
            ts = tier.stats()
            assert ts.pages_used + ts.pages_free == ts.num_pages == tier.num_pages
        assert s.host_pages_used == sum(len(contents) for _, contents in self.away.values())
        t = self.cache.stats().tiers
        assert [t.swapped_out, t.swapped_in, t.released] == self.swapped

    @precondition(lambda self: self.launched)
    @invariant()
    def indexed_pages_and_tier_records_hold_their_blocks(self):
        for page, block_hash in self._indexed_pages():
            assert self.device[page] == block_hash
        written_later = {(0, m.slot) if isinstance(m, Offload) else (m.level + 1, m.to_slot)
                         for m in self.cache._tiered._moves if not isinstance(m, Load)}
        swapped = {key: content for sid, (_, contents) in self.away.items()
                   for key, content in zip(self.cache._seqs[sid].host_pages, contents)}
        for level, tier in enumerate(self.chain.tiers):
            for key in tier.keys():
                if (level, tier.slots_of([key])[0]) not in written_later:
                    assert self.records[level][tier.slots_of([key])[0], 0] == swapped.get(key, key)

    def _indexed_pages(self):
        """(page, hash of the block it must hold) of every page the prefix index names."""
        if not self.radix:
            yield from ((page, block.block_hash) for page, block in self.cache.index.blocks.items())
            return
        tree, stack = self.cache.tree, list(self.cache.tree.roots.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            if node.parent is not None:
                hashes = self._hashes(tree.path(node)[1])
                yield from zip(node.pages, hashes[len(hashes) - len(node.pages):])

    def teardown(self):
        for sid in [*self.seqs, *self.away, *self.returning]:
            self.cache.free(sid)
        for tier in self.chain.tiers:
            assert tier.num_evictable() == len(tier), "a tier record is still held"


@pytest.mark.parametrize("policy, levels, radix, swap", [
    (WriteBackOnEviction(), 2, False, False), (WriteThrough(), 2, False, False),
    (AbovePriority(min_priority=1), 1, False, False), (WriteThrough(), 1, False, False),
    (WriteBackOnEviction(), 2, True, False), (WriteThrough(), 1, True, False),
    (WriteBackOnEviction(), 2, False, True), (WriteThrough(), 1, True, True)])
def test_tiered_cache_state_machine(policy, levels, radix, swap):
    machine = type("Machine", (TieredCacheMachine,),
                   {"policy": policy, "levels": levels, "radix": radix, "swap": swap})
    run_state_machine_as_test(machine, settings=settings(max_examples=examples(60), stateful_step_count=40,
                                                         deadline=None))


class _Draw:
    """Stands for hypothesis's ``data`` in a replayed rule: draws the given value."""

    def __init__(self, value):
        self.value = value

    def draw(self, strategy):
        return self.value


def test_a_write_through_page_reused_before_its_copy_keeps_its_block():
    """The state machine's shrunk case (2026-12-02), replayed step by step: a page indexed under
    write-through (its copy waits for the next plan) was evicted and reused for another block
    before that copy was made, which then wrote the new block under the old one's key. An evicted
    page's waiting copy is now made in the plan that evicts it."""
    machine = type("Machine", (TieredCacheMachine,), {"policy": WriteThrough(), "levels": 1, "radix": True})()
    machine.start(doc=0, length=24, priority=1, tail=[])
    machine.launch()
    machine.grow(data=_Draw("s0"), extra=[100] * 4)
    machine.launch()
    machine.free(data=_Draw("s0"))
    machine.start(doc=0, length=2, priority=0, tail=[])
    machine.start(doc=1, length=21, priority=0, tail=[])
    machine.launch()
    machine.launch()
    machine.indexed_pages_and_tier_records_hold_their_blocks()


@pytest.mark.parametrize("radix", [False, True])
def test_a_page_loaded_for_a_sequence_freed_in_the_same_plan_is_loaded_once(radix):
    """x's tier hits are planned into pages, x is freed before the plan runs, and y's loads take
    the same pages: one load per page survives, y's (two writes of one page in one scatter would
    land in no defined order)."""
    chain = TierChain(tiers=[HostMemoryTier(16, RECORD)])
    cache = (kvlab.RadixKVCache(num_pages=3, page_size=4, tiers=chain) if radix else
             kvlab.PagedKVCache(num_pages=3, page_size=4, prefix_caching=True, tiers=chain))
    a, b, other = list(range(10, 18)) + [1], list(range(50, 58)) + [1], list(range(90, 99))
    for sid, doc in (("a", a), ("b", b), ("f", other)):      # computed, then pushed down to the tier
        cache.admit(sid, doc), cache.allocate(sid, len(doc)), cache.commit(sid, doc, len(doc))
        cache.free(sid), cache.drain_tier_moves()
    assert cache.match_prefix_by_tier(a) == cache.match_prefix_by_tier(b) == (0, 8)
    cache.admit("x", a), cache.allocate("x", len(a))
    cache.free("x")
    cache.admit("y", b), cache.allocate("y", len(b))
    loads = [m for m in cache.drain_tier_moves() if isinstance(m, Load)]
    pages = [m.page for m in loads]
    assert len(pages) == len(set(pages)), loads
    assert set(cache.pages("y")[:2]) <= set(pages)
    cache.free("y")


def test_a_guessed_run_follows_the_last_sequence_with_that_first_block_past_the_gpu_ones():
    """``chained`` keeps a sequence's block list (which may grow) under its first key;
    ``guess_run`` reads the list of the last sequence with that first key, passes over the keys
    ``skip`` names (the GPU's), and gives the first tier's slots of the leading run it stores,
    at most ``limit`` blocks."""
    from kvlab.kvcache.tiered import TierReuse
    reuse = TierReuse(TierChain(tiers=[HostMemoryTier(4, RECORD)]))
    reuse.evicted([(b"b", 0, 0), (b"c", 1, 0), (b"e", 2, 0), (b"x", 3, 0)])
    reuse.chained([b"a", b"x"])
    blocks = [b"a", b"b", b"c"]
    reuse.chained(blocks)                                            # the last one with first key a
    blocks += [b"d", b"e"]                                           # the sequence went on
    on_gpu = {b"a"}.__contains__
    slot = dict(zip([b"b", b"c"], reuse.chain.tiers[0].slots_of([b"b", b"c"])))
    assert reuse.guess_run(b"a", 10, skip=on_gpu) == [slot[b"b"], slot[b"c"]]   # d: stored nowhere
    assert reuse.guess_run(b"a", 2, skip=on_gpu) == [slot[b"b"]]
    assert reuse.guess_run(b"b", 10, skip=on_gpu) == []             # not a first block
    for i in range(300):                                             # bounded, the oldest first
        reuse.chained([i.to_bytes(2, "big")])
    assert len(reuse._runs) == 256 and reuse.guess_run(b"a", 10, skip=on_gpu) == []


class _PrefetchLog(HostMemoryTier):
    """A NumPy tier that records its prefetch hints, in order with the cache's hashing."""

    def __init__(self, num_pages, record, log):
        super().__init__(num_pages, record)
        self.log = log

    def prefetch(self, slots) -> None:
        self.log.append(("prefetch", sorted(slots)))


@pytest.mark.parametrize("radix", [False, True])
def test_a_re_asked_document_s_tier_copies_start_before_it_is_hashed_whole(monkeypatch, radix):
    """A document pushed down to the tier and asked again: the tier is told which records to copy
    after the first block is hashed (the blocks of the last sequence with that first block),
    before the prompt is hashed whole; the admission's own hint, when the sequence starts, names
    the same records. A cache without room for them gets no guess."""
    from kvlab.kvcache.block_hash import chain_hashes

    def make(num_pages, log):
        chain = TierChain(tiers=[_PrefetchLog(32, RECORD, log)], policy=WriteThrough())
        if radix:
            return kvlab.RadixKVCache(num_pages=num_pages, page_size=4, tiers=chain)
        return kvlab.PagedKVCache(num_pages=num_pages, page_size=4, prefix_caching=True, tiers=chain)

    def run(cache, sid, tokens):
        cache.admit(sid, tokens), cache.allocate(sid, len(tokens)), cache.commit(sid, tokens, len(tokens))
        cache.free(sid), cache.drain_tier_moves()
    log = []
    cache = make(12, log)
    real_hashes = cache._hashes
    monkeypatch.setattr(cache, "_hashes", lambda *a: log.append(("hashed whole",)) or real_hashes(*a))
    doc, other = (DOCS[d][:20] + [1] for d in (0, 1))
    for sid, tokens in (("a", doc), ("b", other), ("c", DOCS[2][:20] + [1]), ("d", DOCS[3][:20] + [1])):
        run(cache, sid, tokens)
    assert cache.match_prefix_by_tier(doc) == (0, 20)            # on the tier only
    keys = chain_hashes(cache.hasher, cache.hasher.root(None), doc, 4, 0, 5)
    slots = sorted(cache.tiers.tiers[0].slots_of(keys))
    log.clear()
    cache.admit("again", doc)
    assert log[:2] == [("prefetch", slots), ("hashed whole",)]
    mark = len(log)
    cache.allocate("again", len(doc))
    assert [e for e in log[mark:] if e[0] == "prefetch"] == [("prefetch", slots)]
    cache.free("again"), cache.drain_tier_moves()
    full = make(6, log)
    for sid, tokens in (("a", doc), ("b", other)):
        run(full, sid, tokens)
    full.admit("held", other[:8] + [7, 7, 7, 7, 7])              # its pages stay held: 3 of 6
    full.allocate("held", 13)
    assert full.match_prefix_by_tier(doc) == (0, 20) and full.num_available_pages() < 5
    log.clear()
    full.admit("again", doc)                                     # 5 blocks on the tier, no room
    assert [e for e in log if e[0] == "prefetch"] == [], "a guess for a prompt that cannot fit"


def test_a_second_prefetch_of_the_same_records_copies_nothing_again(monkeypatch):
    """The guess and the admission's hint name the same records: the pinned tier starts each bank
    and each worker copy once."""
    tier, shadow = _banked_tier()
    copies, loops = [], []
    real = jax.device_put
    monkeypatch.setattr(jax, "device_put", lambda x, *a, **k: copies.extend(
        i for i, bank in enumerate(tier.records) if x is bank) or real(x, *a, **k))
    real_load = tier._load
    tier._load = lambda *a, **k: loops.append(1) or real_load(*a, **k)
    slots = [4, 5, 6, 7, 8, 9, 10, 11, 1]               # banks 1 and 2 whole, bank 0 in part
    tier.prefetch(slots)
    tier.prefetch(slots)
    np.testing.assert_array_equal(np.asarray(tier.load_records(slots))[:9], shadow[slots])
    assert copies == [1, 2] and len(loops) == 1


# ---- the engine ------------------------------------------------------------------------------------
@st.composite
def document_traces(draw):
    reqs = []
    for _ in range(draw(st.integers(2, 8))):
        doc = DOCS[draw(st.integers(0, 3))][:draw(st.sampled_from([9, 17, 24]))]
        tail = draw(st.lists(st.integers(100, 120), min_size=1, max_size=4))
        reqs.append((doc + tail, draw(st.integers(1, 6)), draw(st.integers(0, 8))))
    cache = draw(st.sampled_from([kvlab.PagedKVCache, kvlab.BlockedKVCache, kvlab.RadixKVCache]))
    return (reqs, cache, draw(st.sampled_from([4, 8])), draw(st.sampled_from([0, 1])),
            draw(st.sampled_from([WriteBackOnEviction(), WriteThrough()])),
            draw(st.sampled_from([None, Int8()])),
            draw(st.sampled_from([RecomputePreemption(), SwapPreemption()])),
            draw(st.sampled_from([HostMemoryTier, PinnedHostTier])), draw(st.sampled_from([1, 3])),
            draw(st.sampled_from([HostTier, SwapInTiers])))


@settings(max_examples=examples(15), deadline=None)
@given(document_traces())
def test_engine_with_tiers_equals_one_request_at_a_time(tiny_model, trace):
    """Paged, blocked or radix caches, plain or int8 pages, write-back or write-through,
    preemption by recompute or by swap (to a host tier of its own, or into the first KV tier:
    ``SwapInTiers``), planning ahead or not, a first tier in NumPy or pinned memory, one decode
    step a launch or three."""
    (reqs, cache_type, page_size, steps_ahead, policy, kv_format, preemption, first_tier, decode_steps,
     swap_space) = trace
    shared = swap_space is SwapInTiers                 # swapped sequences need room in the first tier
    first_pages = (64 if shared else 16) // page_size
    chain = TierChain(tiers=[first_tier(first_pages), HostMemoryTier(64 // page_size)], policy=policy)
    more = {"host_tier": SwapInTiers() if shared else HostTier(num_pages=32)}
    more.update({} if kv_format is None else {"kv_format": kv_format})
    if cache_type is kvlab.BlockedKVCache:
        cache = cache_type(num_blocks=64 // page_size, block_tokens=page_size, tiers=chain, **more)
    elif cache_type is kvlab.RadixKVCache:
        cache = cache_type(num_pages=64 // page_size, page_size=page_size, tiers=chain, **more)
    else:
        cache = cache_type(num_pages=64 // page_size, page_size=page_size, prefix_caching=True, tiers=chain,
                           **more)
    engine = kvlab.Engine(tiny_model, cache=cache, steps_ahead=steps_ahead,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=3, max_num_batched_tokens=64,
                                                              preemption=preemption,
                                                              decode_steps=decode_steps))
    outputs = run_trace(engine, reqs)
    for (prompt, max_tokens, _), got in zip(reqs, outputs):
        assert got == reference(tiny_model, prompt, max_tokens, cache.kv_format)
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total and s.host_pages_used == 0
    assert all(t.num_evictable() == len(t) for t in chain.tiers), "a tier record is still held"


def replay(model, tiers, radix=False):
    """Four 40-token documents asked three times through a 96-token GPU cache; the cache."""
    if radix:
        cache = kvlab.RadixKVCache(num_pages=24, page_size=4, tiers=tiers)
    else:
        cache = kvlab.PagedKVCache(num_pages=24, page_size=4, prefix_caching=True, tiers=tiers)
    engine = kvlab.Engine(model, cache=cache,
                          scheduler=kvlab.ContinuousScheduler(max_num_seqs=2, max_num_batched_tokens=64))
    docs = [[(7 * d + i) % 250 + 3 for i in range(40)] for d in range(4)]
    for rnd in range(3):
        prompts = [d + [200 + rnd] for d in docs]
        for prompt, out in zip(prompts, engine.generate(prompts, kvlab.SamplingParams(max_tokens=4))):
            assert out.token_ids == reference(model, prompt, 4)
    return cache


@pytest.mark.parametrize("radix", [False, True], ids=["paged", "radix"])
def test_re_asked_documents_load_from_host_and_disk_instead_of_recomputing(tiny_model, tmp_path, radix):
    cold = replay(tiny_model, None, radix).stats()
    with DiskTier(tmp_path, num_pages=40) as disk:
        warm = replay(tiny_model, TierChain(tiers=[PinnedHostTier(8), disk]), radix).stats()
        assert warm.tiers.loads_per_tier[0] > 0 and warm.tiers.loads_per_tier[1] > 0
    # every block of a re-asked document is a hit (40 tokens = 10 blocks; the question is computed)
    assert warm.prefix_hit_tokens == 40 * 4 * 2 > cold.prefix_hit_tokens
    assert 0 < warm.tiers.offloads < warm.evictions       # a block a tier holds is not copied again


def test_an_abort_while_loading_frees_everything(tiny_model):
    chain = TierChain(tiers=[HostMemoryTier(32)])
    cache = kvlab.PagedKVCache(num_pages=16, page_size=4, prefix_caching=True, tiers=chain)
    engine = kvlab.Engine(tiny_model, cache=cache, scheduler=kvlab.ContinuousScheduler(max_num_seqs=2))
    docs = [list(range(3 + 40 * d, 43 + 40 * d)) for d in range(2)]
    engine.generate([docs[0] + [1]], kvlab.SamplingParams(max_tokens=2))
    engine.generate([docs[1] + [1]], kvlab.SamplingParams(max_tokens=2))     # evicts docs[0] to host
    assert cache.match_prefix_by_tier(docs[0])[1] > 0
    rid = engine.add_request(docs[0] + [2], kvlab.SamplingParams(max_tokens=8))
    other = engine.add_request([5, 6, 7], kvlab.SamplingParams(max_tokens=3))
    engine.step()                                          # its load is planned and launched
    engine.abort(rid)
    out = []
    while engine.has_unfinished():
        out += [t for ev in engine.step() if ev.request_id == other for t in ev.new_token_ids]
    assert out == reference(tiny_model, [5, 6, 7], 3)
    s = cache.stats()
    assert s.pages_used == 0 and s.pages_free + s.pages_cached == s.pages_total
    assert chain.tiers[0].num_evictable() == len(chain.tiers[0])


# ---- bad input ---------------------------------------------------------------------------------------
def test_tiers_need_prefix_caching_and_a_tier_chain():
    with pytest.raises(ValueError, match="needs prefix_caching=True"):
        kvlab.PagedKVCache(num_pages=4, tiers=TierChain(tiers=[HostMemoryTier(2)]))
    with pytest.raises(ValueError, match="takes a TierChain, a KVTier"):
        kvlab.PagedKVCache(num_pages=4, prefix_caching=True, tiers="host")
    cache = kvlab.PagedKVCache(num_pages=4, prefix_caching=True, tiers=[HostMemoryTier(2), HostMemoryTier(2)])
    assert len(cache.tiers.tiers) == 2 and cache.match_prefix_by_tier([1] * 40) == (0, 0, 0)


def test_a_tier_serves_one_page_record():
    tier = HostMemoryTier(2, eviction=LRU())
    tier.bind(RECORD)
    with pytest.raises(ValueError, match="cannot take"):
        tier.bind(np.zeros((2,), np.float32))
    with pytest.raises(ValueError, match="no page record yet"):
        HostMemoryTier(2).put("a", RECORD)
    with tempfile.TemporaryDirectory() as d:
        disk = DiskTier(d, 2)
        assert disk.file is None                             # the file comes with the page record
        disk.bind(RECORD)
        assert disk.file is not None
        disk.close()


def test_chat_sessions_under_pressure_hit_the_host_tier(monkeypatch):
    """Host side on a simulated clock (``benchmarks/sessions_tiers.py`` in small): histories
    evicted between turns are loaded back instead of recomputed."""
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).parents[1] / "benchmarks"))
    from sessions_tiers import run

    from kvlab.workloads import chat_sessions

    sessions = [s.fit(3000) for s in chat_sessions(12, turns=4, system_tokens=256, seed=1)]
    starts = [i / 5 for i in range(len(sessions))]
    cold, warm = (run(sessions, starts, gpu_tokens=8192, host_tokens=h) for h in (0, 1 << 17))
    assert warm["loads"] > 0 and cold["loads"] == 0
    assert warm["hit rate"] > cold["hit rate"] + 0.3
    assert warm["ttft_mean_s"] < cold["ttft_mean_s"]
