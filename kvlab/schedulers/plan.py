"""What a scheduler hands the executor each step: a self-contained ``StepPlan``.

A plan carries everything the step needs, so the executor never asks the cache anything:
which requests run, how many tokens each computes, the batch row each sits in (persistent slots
are real rows), and a ``StepTable``: the positions and KV write slots of the step's tokens and
the block-table rows of its sequences, read from the cache's persistent ``BlockTable`` together
with the table entries written since the previous plan (what a device copy of the table must
apply; only those travel).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from kvlab.schedulers.request import Request


@dataclasses.dataclass(frozen=True)
class ScheduledSeq:
    """One sequence in a step: ``num_new_tokens`` tokens from position ``start``, in batch ``row``.

    sample_index: the index, among the request's output tokens, of the token this step samples
    (None: a prefill chunk that samples nothing).
    """

    request: Request
    start: int
    num_new_tokens: int
    row: int = 0
    sample_index: int | None = None

    @classmethod
    def of(cls, request: Request, start: int, num_new_tokens: int, row: int = 0) -> ScheduledSeq:
        """``num_new_tokens`` of ``request``'s tokens from ``start`` in batch ``row``; it samples
        when it reaches the request's last planned token (``num_planned_tokens``)."""
        # Built for every row of every step: a frozen dataclass's __init__ would set each field
        # through object.__setattr__, several times the cost of filling its __dict__.
        prompt = len(request.prompt_token_ids)
        planned = prompt + len(request.output_token_ids) + request.num_pending
        seq = object.__new__(cls)
        fields = seq.__dict__
        fields["request"], fields["start"], fields["num_new_tokens"] = request, start, num_new_tokens
        fields["row"] = row
        fields["sample_index"] = planned - prompt if start + num_new_tokens == planned else None
        return seq

    def at_row(self, row: int) -> ScheduledSeq:
        """This sequence in batch ``row`` (``dataclasses.replace(self, row=row)``, cheaper)."""
        seq = object.__new__(type(self))              # as in ``of``
        seq.__dict__.update(self.__dict__)
        seq.__dict__["row"] = row
        return seq

    @property
    def samples(self) -> bool:
        return self.sample_index is not None

    @property
    def token_ids(self) -> list[int]:
        """The tokens computed this step (a slice: a decode copies one token, not the sequence);
        ``FUTURE_TOKEN`` (-1) where a token is still pending (sampled by a step the host has not
        read yet: the device fills it in)."""
        start, end, known = self.start, self.start + self.num_new_tokens, self.request.num_tokens
        if end > known:
            return self._known(start, known) + [FUTURE_TOKEN] * (end - max(start, known))
        return self._known(start, end)

    def _known(self, start: int, end: int) -> list[int]:
        prompt, output = self.request.prompt_token_ids, self.request.output_token_ids
        n = len(prompt)
        if start >= end:
            return []
        if start >= n:
            return output[start - n:end - n]
        if end <= n:
            return prompt[start:end]
        return prompt[start:] + output[:end - n]


FUTURE_TOKEN = -1     # a token a step in flight samples; resolved on the device


@dataclasses.dataclass(frozen=True)
class StepTable:
    """The cache's side of a step, all NumPy.

    page_size: tokens per page; rows: [n] int32 block-table row of each planned sequence (plan
    order); num_pages: [n] int32 pages each holds; starts, num_new_tokens: [n] int64 position of
    each sequence's first new token and how many it computes; positions, slots: [T] int32 absolute position
    and KV write slot (``page * page_size + offset``) of every token of the step, sequences in plan
    order; table: the block table ``[R, W]`` itself (the cache's array: read, never written);
    changes: the ``TableChanges`` since the previous plan.
    """

    page_size: int
    rows: np.ndarray
    num_pages: np.ndarray
    starts: np.ndarray
    num_new_tokens: np.ndarray
    positions: np.ndarray
    slots: np.ndarray
    table: np.ndarray
    changes: object

    @classmethod
    def build(cls, cache, seqs: list[ScheduledSeq]) -> StepTable:
        """Read the step's rows, positions and slots from ``cache.block_table`` (vectorized)."""
        bt = cache.block_table
        row_of = bt.row_of
        rows = np.array([row_of(s.request.request_id) for s in seqs], np.int32)
        lens = np.array([s.num_new_tokens for s in seqs], np.int64)
        starts = np.array([s.start for s in seqs], np.int64)
        if (lens == 1).all():                       # one token each (decodes)
            positions, token_rows = starts, rows
        else:
            first = np.cumsum(lens) - lens
            token_seq = np.repeat(np.arange(len(seqs)), lens)
            positions = (starts[token_seq] + np.arange(int(lens.sum())) - first[token_seq])
            token_rows = rows[token_seq]
        p = cache.page_size
        table = bt.array
        slots = table[token_rows, positions // p] * p + positions % p
        return cls(page_size=p, rows=rows, num_pages=bt.num_pages[rows].astype(np.int32),
                   starts=starts, num_new_tokens=lens, positions=positions.astype(np.int32),
                   slots=slots.astype(np.int32),
                   table=table, changes=bt.drain_changes())


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What runs this step (preemptions already applied to the cache). ``swap_out`` copies must be
    made before the step runs, and so must ``swap_in`` ones, ``seals`` (full staging pages
    quantized into their sealed pages: ``kvlab.kvcache.staging``) and ``tier_moves`` (offloads to
    and loads from the tiers below the GPU, in order: ``kvlab.kvcache.tiers.moves``). Sequences
    are in ascending ``row`` order; ``table`` is None only for an empty plan. ``num_steps`` > 1:
    every sequence is a decode, and the launch runs that many decode steps, each sampling one
    token per sequence (``kvlab.schedulers.multi_step``); the table is the first step's."""

    seqs: list[ScheduledSeq]
    preempted: list[Request] = dataclasses.field(default_factory=list)
    swap_out: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (device, host) page
    swap_in: list[tuple[int, int]] = dataclasses.field(default_factory=list)   # (host, device) page
    seals: list[tuple[int, int]] = dataclasses.field(default_factory=list)     # (staging, sealed) page
    tier_moves: list = dataclasses.field(default_factory=list)    # tiers.moves, in order
    table: StepTable | None = None
    tokens: np.ndarray | None = None     # token_ids() as ``of`` read them (None: read when asked)
    num_steps: int = 1

    @classmethod
    def of(cls, cache, seqs: list[ScheduledSeq], num_steps: int = 1, **copies) -> StepPlan:
        """The plan of ``seqs`` (in row order; their ``StepTable`` read from ``cache``; ``copies``:
        ``preempted``, ``swap_out``, ``swap_in``), running ``num_steps`` decode steps (> 1: every
        sequence decodes one token a step). Marks its tokens computed and its samples
        pending on the requests (``num_computed_tokens``, ``num_pending``), so the next plan may
        be made before this one's ``update`` (an engine that plans ahead), and commits the known
        ones to the cache now, as vLLM caches a block when it schedules it: a later plan may
        reuse them because the device runs steps in order."""
        commit, tokens, extra = cache.commit, [], num_steps - 1
        for seq in seqs:
            req = seq.request
            _add_new_tokens(tokens, seq)
            computed = req.num_computed_tokens = seq.start + seq.num_new_tokens + extra
            if seq.sample_index is not None:
                req.num_pending += 1 + extra
            known = len(req.prompt_token_ids) + len(req.output_token_ids)
            commit(req.request_id, req.tokens, computed if computed < known else known)
        return cls(seqs=seqs, table=StepTable.build(cache, seqs) if seqs else None, seals=cache.drain_seals(),
                   tier_moves=cache.drain_tier_moves(), tokens=np.array(tokens, np.int32),
                   num_steps=num_steps, **copies)

    @functools.cached_property
    def num_tokens(self) -> int:
        if self.table is not None:
            return int(self.table.num_new_tokens.sum())
        return sum(s.num_new_tokens for s in self.seqs)

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """[n] int64: the batch row of each sequence, in plan order."""
        return np.array([s.row for s in self.seqs], np.int64)

    @property
    def num_rows(self) -> int:
        """Batch rows the step needs (one past the highest row in use)."""
        return self.seqs[-1].row + 1 if self.seqs else 0

    @property
    def is_empty(self) -> bool:
        return not self.seqs

    @property
    def has_page_copies(self) -> bool:
        """Whether pages move before this step (swaps, seals, tier moves), empty or not."""
        return bool(self.swap_out or self.swap_in or self.seals or self.tier_moves)

    def token_ids(self) -> np.ndarray:
        """[T] int32: the new tokens of every sequence, in plan order (``FUTURE_TOKEN`` where
        pending)."""
        if self.tokens is not None:
            return self.tokens
        out: list[int] = []
        for seq in self.seqs:
            _add_new_tokens(out, seq)
        return np.array(out, np.int32)


def _add_new_tokens(out: list[int], seq: ScheduledSeq) -> None:
    """Append the tokens ``seq`` computes to ``out`` (``FUTURE_TOKEN`` where pending); a decode's
    one token is read without building a list."""
    if seq.num_new_tokens != 1:
        out += seq.token_ids
        return
    prompt, output = seq.request.prompt_token_ids, seq.request.output_token_ids
    i = seq.start - len(prompt)
    out.append(prompt[seq.start] if i < 0 else output[i] if i < len(output) else FUTURE_TOKEN)


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """A request's progress after one step."""

    request: Request
    new_token_ids: list[int]
    finished: bool

    @classmethod
    def of(cls, request: Request, new_token_ids: list[int], finished: bool) -> StepOutput:
        """``StepOutput(request, new_token_ids, finished)`` without the frozen dataclass
        ``__init__`` (built for every row of every step)."""
        out = object.__new__(cls)
        fields = out.__dict__
        fields["request"], fields["new_token_ids"], fields["finished"] = request, new_token_ids, finished
        return out
