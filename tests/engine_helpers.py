"""Helpers shared by the engine test modules."""

from __future__ import annotations


def finish_after_abort(engine, aborted: str) -> dict:
    """Step ``engine`` until nothing is left, checking that request ``aborted`` reports its end
    once (finish_reason "abort", no tokens) and nothing more; the completions of the requests
    that finished (kept with ``keep_completion=True``), by id."""
    done, ends, last = {}, 0, False
    while not last:
        last = not engine.has_unfinished()        # one more step reads what an abort left
        for ev in engine.step():
            if ev.request_id == aborted:
                assert ev.finished and ev.finish_reason == "abort" and not ev.new_token_ids
                ends += 1
            elif ev.finished:
                done[ev.request_id] = engine.pop_completion(ev.request_id)
    assert ends == 1, "an aborted request reports its end once"
    return done
