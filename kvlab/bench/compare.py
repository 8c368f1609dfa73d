"""Serve one workload with a composition on a real model, the same way for every composition, so
the rows of ``kvlab bench``, ``kvlab sweep`` and ``kvlab demo`` compare like with like.

A ``Workload`` is either open-loop requests in one or more passes, served one after another on
one engine with its cache kept (TGI's cold and warm long-document passes), or closed-loop chat
sessions. ``serve(model, make_preset, workload)`` first runs the whole workload on throwaway
engines (``warmup`` passes at most, stopping after one that compiled nothing: on the real clock,
arrivals at a rate batch the steps differently every pass), then builds a fresh engine and
measures, returning one ``EngineRun`` per pass; ``rows`` turns them into table rows. A shape first
met in the measured run is compiled off the run's clock (``kvlab.bench.harness``) and counted in
its ``compilations``.

Example (a tiny random model on the CPU):
    >>> from kvlab.bench.presets import vllm
    >>> from kvlab.models import LlamaModel, ModelConfig
    >>> from kvlab.workloads import long_document_replay
    >>> model = LlamaModel(ModelConfig.tiny(), seed=0)
    >>> replay = Workload.passes_by_tag("replay", long_document_replay(
    ...     n_docs=2, doc_tokens=64, output_tokens=2, vocab_size=model.config.vocab_size))
    >>> preset, runs = serve(model, lambda: vllm(kv_tokens=1024, max_num_seqs=4, token_budget=64), replay,
    ...                      max_model_len=256, warmup=0)
    >>> [(r["pass"], r["requests"], r["hit_rate"] > 0.5) for r in rows("vllm", runs)]
    [('cold', 2.0, False), ('warm', 2.0, True)]
"""

from __future__ import annotations

import dataclasses
import gc

from kvlab.bench.harness import EngineRun, run_sessions, run_workload
from kvlab.bench.metrics import SLO
from kvlab.workloads.sessions import ChatSession
from kvlab.workloads.synthetic import SyntheticRequest


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    """passes: (label, requests) served in order on one engine; or sessions (closed loop) with
    their start times (seconds)."""

    name: str
    passes: tuple[tuple[str, tuple[SyntheticRequest, ...]], ...] = ()
    sessions: tuple[ChatSession, ...] = ()
    starts: tuple[float, ...] = ()

    def __post_init__(self):
        if bool(self.passes) == bool(self.sessions):
            raise ValueError("a workload is either open-loop passes or closed-loop sessions (one of them)")
        if self.sessions and len(self.starts) != len(self.sessions):
            raise ValueError(f"{len(self.sessions)} sessions but {len(self.starts)} start times")

    @classmethod
    def open_loop(cls, name: str, requests: list[SyntheticRequest]) -> Workload:
        return cls(name=name, passes=(("", tuple(requests)),))

    @classmethod
    def passes_by_tag(cls, name: str, requests: list[SyntheticRequest]) -> Workload:
        """One pass per tag, in the order the tags first appear (a replay's "cold", then "warm")."""
        tags = list(dict.fromkeys(r.tag for r in requests))
        return cls(name=name, passes=tuple((t, tuple(r for r in requests if r.tag == t)) for t in tags))

    @classmethod
    def closed_loop(cls, name: str, sessions: list[ChatSession], starts: list[float] | None = None
                    ) -> Workload:
        return cls(name=name, sessions=tuple(sessions),
                   starts=tuple(starts) if starts is not None else (0.0,) * len(sessions))

    def longest_request(self) -> int:
        """The most tokens any request may hold (prompt + output), the replies of sessions at
        their ``max_tokens``."""
        if self.passes:
            return max(len(r.prompt_token_ids) + r.max_tokens for _, reqs in self.passes for r in reqs)
        return max(len(s.system) + sum(len(u) for u in s.user_turns) + sum(s.reply_tokens)
                   for s in self.sessions)


def _run(engine, workload: Workload, stage: str, progress) -> list[tuple[str, EngineRun]]:
    """Every pass of ``workload`` on ``engine``; ``progress(stage, done, total)`` as requests end."""
    def ticker(label: str, total: int):
        if progress is None:
            return None
        name = " ".join(filter(None, [stage, label]))
        progress(name, 0, total)
        return lambda done: progress(name, done, total)

    if workload.sessions:
        turns = sum(s.num_turns for s in workload.sessions)         # one request per turn
        return [("", run_sessions(engine, list(workload.sessions), starts=list(workload.starts),
                                  progress=ticker("", turns)))]
    return [(label, run_workload(engine, list(reqs), progress=ticker(label, len(reqs))))
            for label, reqs in workload.passes]


def serve(model, make_preset, workload: Workload, *, max_model_len: int = 2048, warmup: int = 1,
          progress=None, **engine_kwargs) -> tuple[object, list[tuple[str, EngineRun]]]:
    """``make_preset()`` returns a fresh ``Preset``; ``engine_kwargs`` go to every ``Engine`` (e.g.
    ``attention``); ``warmup``: the most warm-up passes (0: none), each on a fresh engine, stopping
    after one that compiled nothing; ``progress``: optional ``progress(stage, done, total)`` called
    as requests end (stage: ``"warm-up 1"``, ..., ``"measured"``, with the pass label after it).
    Returns the measured run's preset and its (pass label, ``EngineRun``) list."""
    if workload.longest_request() > max_model_len:
        raise ValueError(f"the {workload.name} workload has a request of {workload.longest_request()} "
                         f"tokens (prompt + output) but max_model_len is {max_model_len}: raise it or "
                         "shorten the workload")
    for i in range(warmup):
        runs = _run(make_preset().engine(model, max_model_len=max_model_len, **engine_kwargs), workload,
                    f"warm-up {i + 1}", progress)
        gc.collect()                         # the throwaway engine's KV storage goes before the next
        if not any(run.compilations for _, run in runs):
            break
    preset = make_preset()
    return preset, _run(preset.engine(model, max_model_len=max_model_len, **engine_kwargs), workload,
                        "measured", progress)


def rows(preset_name: str, runs: list[tuple[str, EngineRun]], *, point: dict | None = None,
         slo: SLO | None = None) -> list[dict]:
    """One flat row per pass: preset, the grid point's fields, the pass label (when the workload
    has passes), then ``EngineRun.summary``."""
    out = []
    for label, run in runs:
        row = {"preset": preset_name, **(point or {})}
        if label:
            row["pass"] = label
        out.append({**row, **run.summary(slo)})
    return out
