"""The step's one input buffer: every field round-trips, and every field starts 256-byte aligned
(a Mosaic GPU kernel rejects an unaligned input, and XLA may pass a slice of the buffer as is)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kvlab.engine.step_inputs import _FIELDS, InputLayout


@settings(max_examples=40, deadline=None)
@given(tokens=st.integers(1, 5000), rows=st.integers(1, 700), changes=st.integers(1, 300))
def test_fields_are_aligned_disjoint_and_round_trip(tokens, rows, changes):
    layout = InputLayout(tokens=tokens, rows=rows, changes=changes)
    views = layout.allocate()
    sizes = {"tokens": tokens, "positions": tokens, "slots": tokens, "cu_q_lens": rows + 1,
             "kv_lens": rows, "logits_indices": rows, "cache_rows": rows, "num_seqs": 1,
             "change_rows": changes, "change_cols": changes, "change_pages": changes}
    base = views.buffer.__array_interface__["data"][0]
    for i, name in enumerate(_FIELDS):                # distinct values: overlaps would clobber them
        view = getattr(views, name)
        assert view.size == sizes[name], name
        offset = view.__array_interface__["data"][0] - base
        if not name.startswith("change_") or name == "change_rows":
            assert offset % 256 == 0, (name, offset)
        view[:] = 1000 * i + np.arange(view.size)
    batch, cache_rows, table_changes = layout.unpack(views.buffer)
    assert batch.tokens.tolist() == views.tokens.tolist()
    assert batch.kv_lens.tolist() == (4000 + np.arange(rows)).tolist()
    assert cache_rows.tolist() == (6000 + np.arange(rows)).tolist()
    assert int(batch.num_seqs) == 7000
    assert table_changes.shape == (3, changes)
    assert table_changes[2].tolist() == (10000 + np.arange(changes)).tolist()
    assert views.buffer.size == layout.size
