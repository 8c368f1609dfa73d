"""KV tiers (``kvlab.kvcache.tiers``): a state machine of a host + disk chain against a plain
Python model, the eviction order of a tier, the offload policies' decisions, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kvlab.kvcache.eviction import LFU, LRU, PriorityLRU
from kvlab.kvcache.tiers import (
    AbovePriority,
    DiskTier,
    HostMemoryTier,
    KVTier,
    OffloadPolicy,
    TierChain,
    WriteBackOnEviction,
    WriteThrough,
)

SPEC = jax.ShapeDtypeStruct((2, 3), "float32")
RECORD_BYTES = 2 * 3 * 4
NUM_KEYS = 16
KEYS = st.integers(0, NUM_KEYS - 1).map(lambda i: b"block-%d" % i)
PUT = dict(key=KEYS, data=st.binary(min_size=RECORD_BYTES, max_size=RECORD_BYTES), priority=st.integers(0, 2))


def record(fill) -> np.ndarray:
    return np.full((2, 3), fill, np.float32)


class ChainMachine(RuleBasedStateMachine):
    """Random put/get/discard/promote on TierChain(host 3 pages, disk 5 pages) against a dict of
    the records that must still be stored. Subclasses set ``directory`` and ``policy``."""

    directory = None
    policy = WriteBackOnEviction()

    def __init__(self):
        super().__init__()
        self.chain = TierChain(tiers=[HostMemoryTier(3, SPEC, eviction=LRU()),
                                      DiskTier(self.directory, 5, SPEC, eviction=LFU())], policy=self.policy)
        self.model: dict = {}          # key -> bytes of the record it must hold
        self.dropped: set = set()

    def teardown(self):
        self.chain.close()

    def _dropped(self, victims):
        for victim in victims:
            assert self.model.pop(victim.key) == victim.record.tobytes()   # dropped as it was stored
            self.dropped.add(victim.key)

    @rule(**PUT)
    def put(self, key, data, priority):
        rec = np.frombuffer(data, np.float32).reshape(2, 3)      # any bit pattern, NaNs included
        victims = self.chain.put(key, rec, priority)
        assert key not in {v.key for v in victims}
        self._dropped(victims)
        self.model[key] = data
        self.dropped.discard(key)
        assert self.chain.locate(key) == 0

    @rule(**PUT)
    def put_again(self, key, data, priority):         # a second rule: puts twice as often, tiers fill
        self.put(key, data, priority)

    @rule(key=KEYS)
    def get(self, key):
        found = self.chain.get(key)
        if key not in self.model:
            assert found is None
            return
        rec, tier = found
        assert rec.tobytes() == self.model[key] and tier == self.chain.locate(key)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def promote(self, data):
        key = data.draw(st.sampled_from(sorted(self.model)))
        self._dropped(self.chain.promote(key))
        assert self.chain.locate(key) == 0 and key in self.model

    @rule(key=KEYS)
    def discard(self, key):
        assert self.chain.discard(key) == (key in self.model)
        self.model.pop(key, None)

    @invariant()
    def every_record_in_exactly_one_tier(self):
        tiers = self.chain.tiers
        for key in set(self.model) | self.dropped | {b"block-%d" % i for i in range(NUM_KEYS)}:
            holders = [i for i, t in enumerate(tiers) if t.contains(key)]
            assert len(holders) == (1 if key in self.model else 0), (key, holders)
            if key in self.model:
                assert tiers[holders[0]].peek(key).tobytes() == self.model[key]

    @invariant()
    def stats_add_up(self):
        s = self.chain.stats()
        keys = [set(t.keys()) for t in self.chain.tiers]
        assert not keys[0] & keys[1]
        assert keys[0] | keys[1] == set(self.model) == set(self.chain.keys())
        for tier, ts, k in zip(self.chain.tiers, s.tiers, keys, strict=True):
            assert ts.pages_used + ts.pages_free == ts.num_pages == tier.num_pages
            assert ts.pages_used == len(k) <= tier.num_pages
        assert sum(ts.evictions for ts in s.tiers) == s.demotions + s.drops
        assert s.tiers[1].puts == s.demotions          # the disk is written by demotions only


@pytest.mark.parametrize("policy", [WriteBackOnEviction(), AbovePriority(min_priority=1)],
                         ids=["write-back", "above-priority-1"])
def test_chain_state_machine(policy, tmp_path):
    machine = type("Machine", (ChainMachine,), {"directory": tmp_path, "policy": policy})
    run_state_machine_as_test(machine, settings=settings(max_examples=60, stateful_step_count=40,
                                                        deadline=None))
    assert list(tmp_path.iterdir()) == []          # every disk tier deleted its file


# ---- one tier ---------------------------------------------------------------------------------------

def test_tiers_satisfy_the_protocol(tmp_path):
    with DiskTier(tmp_path, 1, SPEC) as disk:
        assert isinstance(HostMemoryTier(1, SPEC), KVTier) and isinstance(disk, KVTier)


def test_lru_evicts_least_recent_and_get_is_a_use():
    tier = HostMemoryTier(2, SPEC)
    tier.put("a", record(1)), tier.put("b", record(2))
    assert tier.get("a") is not None
    (victim,) = tier.put("c", record(3))
    assert victim.key == "b" and np.array_equal(victim.record, record(2)) and victim.priority == 0
    assert tier.contains("a") and not tier.contains("b")


def test_priority_lru_and_lfu_choose_their_victims():
    tier = HostMemoryTier(2, SPEC, eviction=PriorityLRU())
    tier.put("high", record(1), priority=50), tier.put("low", record(2), priority=10)
    assert [v.key for v in tier.put("new", record(3))] == ["low"]
    tier = HostMemoryTier(2, SPEC, eviction=LFU())
    tier.put("often", record(1)), tier.put("once", record(2))
    tier.get("often"), tier.get("often"), tier.get("once")
    assert [v.key for v in tier.put("new", record(3))] == ["once"]


def test_overwrite_keeps_one_page_and_the_higher_priority():
    tier = HostMemoryTier(2, SPEC)
    assert tier.put("a", record(1), priority=5) == [] and tier.put("a", record(2), priority=1) == []
    assert tier.stats().pages_used == 1 and np.array_equal(tier.get("a"), record(2))
    assert tier.pop("a").priority == 5 and tier.pop("a") is None


def test_returned_records_are_copies():
    tier = HostMemoryTier(1, SPEC)
    tier.put("a", record(1))
    tier.get("a")[:] = 7
    (victim,) = tier.put("b", record(2))
    assert np.array_equal(victim.record, record(1)) and np.array_equal(tier.get("b"), record(2))


def test_stats_count_puts_hits_misses_evictions():
    tier = HostMemoryTier(1, SPEC)
    tier.put("a", record(1)), tier.get("a"), tier.get("z"), tier.put("b", record(2))
    s = tier.stats()
    assert (s.puts, s.hits, s.misses, s.evictions, s.pages_used, s.pages_free) == (2, 1, 1, 1, 1, 0)
    assert s.bytes_per_page == RECORD_BYTES and s.hit_rate == 0.5


def test_disk_tier_keeps_bfloat16_bytes_and_deletes_its_file(tmp_path):
    spec = jax.ShapeDtypeStruct((4, 8), jnp.bfloat16)
    bits = np.arange(32, dtype=np.uint16).reshape(4, 8) * 2049          # arbitrary bit patterns
    rec = bits.view(jnp.bfloat16)
    directory = tmp_path / "new" / "dir"                                # created if missing
    tier = DiskTier(directory, 3, spec)
    assert tier.put(b"k", rec) == [] and tier.get(b"k").view(np.uint16).tolist() == bits.tolist()
    (path,) = directory.iterdir()
    assert path.stat().st_size == 3 * 4 * 8 * 2                         # allocated in full
    tier.close()
    tier.close()                                                        # idempotent
    assert list(directory.iterdir()) == [] and tier.closed and tier.keys() == []
    with pytest.raises(ValueError, match="closed"):
        tier.get(b"k")
    with pytest.raises(ValueError, match="closed"):
        tier.put(b"k", rec)


def test_two_disk_tiers_share_a_directory(tmp_path):
    with DiskTier(tmp_path, 1, SPEC) as a, DiskTier(tmp_path, 1, SPEC) as b:
        a.put("x", record(1)), b.put("x", record(2))
        assert a.get("x")[0, 0] == 1 and b.get("x")[0, 0] == 2


# ---- the chain --------------------------------------------------------------------------------------

def test_chain_demotes_then_drops_from_the_last_tier(tmp_path):
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), DiskTier(tmp_path, 1, SPEC)])
    assert chain.put("a", record(1)) == [] and chain.put("b", record(2)) == []
    assert chain.locate("a") == 1 and chain.get("a")[1] == 1
    assert [d.key for d in chain.put("c", record(3))] == ["a"]
    s = chain.stats()
    assert (s.demotions, s.drops, s.pages_used) == (2, 1, 2)
    with pytest.raises(KeyError):
        chain.promote("a")
    chain.close()


def test_chain_put_replaces_a_lower_copy(tmp_path):
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), DiskTier(tmp_path, 2, SPEC)])
    chain.put("a", record(1)), chain.put("b", record(2))
    chain.put("a", record(9))                                   # a was on disk: now only on host
    assert chain.locate("a") == 0 and not chain.tiers[1].contains("a")
    assert np.array_equal(chain.get("a")[0], record(9)) and chain.locate("b") == 1
    chain.close()


def test_a_chain_full_of_held_records_refuses_without_losing_or_hiding_any():
    """put and promote into a first tier whose records are all held raise before anything
    moves (the record stays where it was); a victim whose next tier is full of held records is
    dropped and returned, as every dropped record is."""
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), HostMemoryTier(2, SPEC)])
    chain.put("a", record(1)), chain.put("b", record(2))        # a -> tier 1
    chain.hold_all(["b"])
    for move in (lambda: chain.put("a", record(3)), lambda: chain.promote("a")):
        with pytest.raises(ValueError, match="full of held records"):
            move()
        assert chain.locate("a") == 1 and np.array_equal(chain.get("a")[0], record(1))
    assert chain.stats().drops == 0
    tight = TierChain(tiers=[HostMemoryTier(1, SPEC), HostMemoryTier(1, SPEC)])
    tight.put("a", record(1)), tight.put("b", record(2))        # a -> tier 1, held there
    tight.hold_all(["a"])
    assert [d.key for d in tight.put("c", record(3))] == ["b"]   # b has nowhere to go: returned
    assert sorted(tight.keys()) == ["a", "c"] and tight.stats().drops == 1


def test_above_priority_drops_low_priority_pages_at_the_first_tier():
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), HostMemoryTier(4, SPEC)],
                      policy=AbovePriority(min_priority=35))
    chain.put("keep", record(1), priority=50)
    chain.put("low", record(2), priority=10)                    # keep -> tier 1
    assert [d.key for d in chain.put("x", record(3))] == ["low"]
    assert chain.locate("keep") == 1 and chain.stats().drops == 1


def test_promote_carries_the_priority():
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), HostMemoryTier(2, SPEC)],
                      policy=AbovePriority(min_priority=35))
    chain.put("a", record(1), priority=40), chain.put("b", record(2), priority=40)
    assert chain.promote("a") == [] and chain.locate("a") == 0 and chain.locate("b") == 1
    assert chain.tiers[0].pop("a").priority == 40


# ---- policies -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy, on_insert, on_evict", [
    (WriteBackOnEviction(), [False, False, False], [True, True, True]),
    (WriteThrough(), [True, True, True], [True, True, True]),
    (AbovePriority(min_priority=35), [False, False, False], [False, True, True]),
    (AbovePriority(min_priority=35, base=WriteThrough()), [False, True, True], [False, True, True]),
])
def test_offload_policy_decisions(policy, on_insert, on_evict):
    assert isinstance(policy, OffloadPolicy)
    priorities = [34, 35, 100]
    assert [policy.offload_on_insert(p) for p in priorities] == on_insert
    assert [policy.offload_on_evict(p) for p in priorities] == on_evict


def test_policies_are_hashable_values():
    assert AbovePriority(min_priority=35) == AbovePriority(min_priority=35)
    assert len({WriteThrough(), WriteThrough(), WriteBackOnEviction()}) == 2


# ---- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_pages", [0, -1, 2.5, True, None])
def test_capacity_must_be_a_positive_int(num_pages, tmp_path):
    with pytest.raises(ValueError, match=r"HostMemoryTier needs num_pages >= 1"):
        HostMemoryTier(num_pages, SPEC)
    with pytest.raises(ValueError, match=r"DiskTier needs num_pages >= 1"):
        DiskTier(tmp_path, num_pages, SPEC)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("page_record, message", [
    ("float32", "jax.ShapeDtypeStruct"),
    (jax.ShapeDtypeStruct((), "float32"), "positive dimensions"),
    (jax.ShapeDtypeStruct((2, 0), "float32"), "positive dimensions"),
    (np.empty((2,), object), "fixed-size numeric type"),
])
def test_page_record_must_be_a_numeric_shape(page_record, message):
    with pytest.raises(ValueError, match=message):
        HostMemoryTier(2, page_record)


@pytest.mark.parametrize("bad", [np.zeros((3, 2), np.float32), np.zeros((2, 3), np.float16),
                                 np.zeros((2, 3), np.float64)])
def test_a_record_of_another_shape_or_dtype_is_refused(bad, tmp_path):
    tier = HostMemoryTier(2, SPEC)
    with pytest.raises(ValueError, match=r"shape \(2, 3\) and dtype float32; got shape"):
        tier.put("a", bad)
    chain = TierChain(tiers=[HostMemoryTier(1, SPEC), DiskTier(tmp_path, 1, SPEC)])
    chain.put("a", record(1)), chain.put("b", record(2))
    with pytest.raises(ValueError, match="TierChain stores records of shape"):
        chain.put("a", bad)
    assert chain.locate("a") == 1                              # nothing moved
    chain.close()


def test_disk_path_must_be_a_writable_directory(tmp_path):
    a_file = tmp_path / "pages.bin"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match=f"needs a directory.*{a_file} is a file"):
        DiskTier(a_file, 2, SPEC)
    with pytest.raises(ValueError, match=f"cannot create its page file in {a_file / 'sub'}"):
        DiskTier(a_file / "sub", 2, SPEC)


def test_bad_eviction_and_chain_arguments(tmp_path):
    with pytest.raises(ValueError, match="eviction policy object with key"):
        HostMemoryTier(2, SPEC, eviction="")
    host = HostMemoryTier(2, SPEC)
    with pytest.raises(ValueError, match="at least one tier"):
        TierChain(tiers=[])
    with pytest.raises(ValueError, match="same tier object twice"):
        TierChain(tiers=[host, host])
    with pytest.raises(ValueError, match="tier 1 is not a KVTier"):
        TierChain(tiers=[host, object()])
    with pytest.raises(ValueError, match=r"tier 0 holds \(2, 3\) float32, tier 1 holds \(2, 3\) float16"):
        TierChain(tiers=[host, HostMemoryTier(2, jax.ShapeDtypeStruct((2, 3), "float16"))])
    with pytest.raises(ValueError, match="policy must be an offload policy"):
        TierChain(tiers=[host], policy="write-back")
    with pytest.raises(ValueError, match="int min_priority"):
        AbovePriority(min_priority=0.5)
    with pytest.raises(ValueError, match="base must be an offload policy"):
        AbovePriority(min_priority=1, base=LRU())


def test_a_take_is_a_hit_that_renews_each_record_and_drops_one_hold():
    """``TierChain.take``: each taken record counts a hit and goes to the back of the LRU order;
    a record held twice stays unevictable after one take, until its last hold goes."""
    chain = TierChain(tiers=[HostMemoryTier(3, SPEC)])
    for key in "abc":
        chain.put(key, record(0))
    chain.hold_all(["a", "b"])
    chain.hold_all(["a"])
    assert [slot for _, slot in chain.take(["a", "b"])] == [chain.where("a")[1], chain.where("b")[1]]
    assert chain.stats().tiers[0].hits == 2 and chain.tiers[0].num_evictable() == 2   # c, then b
    assert [v.key for v in chain.put("d", record(1))] == ["c"]
    assert [v.key for v in chain.put("e", record(2))] == ["b"]
    chain.unhold_all(["a"])                          # a, touched before d and e, is next
    assert [v.key for v in chain.put("f", record(3))] == ["a"]
