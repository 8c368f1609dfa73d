"""The converted-checkpoint cache (``kvlab.models.converted_cache``): a GGUF file is parsed and
dequantized once, the next read comes from the cache without the parse and gives the same model;
an edited file, a damaged entry or an entry of other shapes is converted again; a cache that
cannot be written, or one turned off, changes nothing but the time."""

from __future__ import annotations

import os

import numpy as np
import pytest

from kvlab.models import bundled
from kvlab.models.converted_cache import ENV_DIR, ConvertedCache
from kvlab.models.gguf_file import read_gguf_weights


def test_the_second_read_skips_the_parse_and_gives_the_same_checkpoint(tmp_path, monkeypatch):
    import gguf

    source, cache = bundled.locate(), ConvertedCache(tmp_path)
    config, weights, tokenizer = read_gguf_weights(source, cache)
    assert cache.read(source) is not None

    def no_parse(*args, **kwargs):
        raise AssertionError("the cache held the conversion; nothing should parse the file")

    with monkeypatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", no_parse)
        config2, weights2, tokenizer2 = read_gguf_weights(source, cache)
    assert config2 == config and sorted(weights2) == sorted(weights)
    for name, w in weights.items():
        np.testing.assert_array_equal(weights2[name], w, err_msg=name)
    assert not weights2["wq"].flags.writeable                 # memory-mapped, read-only
    text = "The capital of France is"
    assert tokenizer2.encode(text) == tokenizer.encode(text)
    assert tokenizer2.eos_token_ids == tokenizer.eos_token_ids

    meta, _ = cache.read(source)                            # an entry of other shapes: converted again
    cache.write(source, meta, {**weights, "embed": np.zeros((3, 4), np.float32)})
    _, weights3, _ = read_gguf_weights(source, cache)
    assert weights3["embed"].shape == weights["embed"].shape
    assert cache.read(source)[1]["embed"].shape == weights["embed"].shape


def test_an_edited_file_or_a_damaged_entry_is_a_miss(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF one")
    cache = ConvertedCache(tmp_path / "cache")
    cache.write(source, {"a": 1}, {"embed": np.arange(6, dtype=np.float32).reshape(2, 3)})
    assert cache.read(source)[0] == {"a": 1}
    entry = cache.entry(source)
    os.utime(source, ns=(1, 1))                             # a new modification time
    assert cache.entry(source) != entry and cache.read(source) is None
    cache.write(source, {"a": 2}, {"embed": np.zeros((2, 3), np.float32)})
    (cache.entry(source) / "embed.npy").unlink()
    assert cache.read(source) is None


def test_a_cache_that_cannot_be_written_is_skipped(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF")
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    cache = ConvertedCache(blocked)                         # its directory cannot be made
    cache.write(source, {}, {"embed": np.zeros(2, np.float32)})
    assert cache.read(source) is None


@pytest.mark.parametrize("setting, want", [("", None), ("{tmp}/here", "{tmp}/here")])
def test_the_cache_directory_comes_from_the_environment(setting, want, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DIR, setting.format(tmp=tmp_path))
    got = ConvertedCache.default()
    want = want if want is None else want.format(tmp=tmp_path)
    assert (got if got is None else str(got.directory)) == want
    monkeypatch.delenv(ENV_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ConvertedCache.default().directory == tmp_path / "kvlab"
