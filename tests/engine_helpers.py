"""Helpers shared by the engine test modules."""

from __future__ import annotations


def finish_after_abort(engine, aborted: str) -> dict:
    """Step ``engine`` until nothing is left, checking that request ``aborted`` reports nothing
    more; the completions of the requests that finished (kept with ``keep_completion=True``), by id."""
    done = {}
    while engine.has_unfinished():
        for ev in engine.step():
            assert ev.request_id != aborted, "an aborted request reports nothing more"
            if ev.finished:
                done[ev.request_id] = engine.pop_completion(ev.request_id)
    return done
