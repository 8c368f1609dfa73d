"""Converted GGUF checkpoints kept on disk. Reading a GGUF file means parsing its metadata (the
tokenizer's vocabulary and merges are hundreds of thousands of small fields) and dequantizing
every tensor: about 15 s for the bundled SmolLM2-135M on one CPU core. The first read keeps the
result (the metadata as JSON, each weight as a ``.npy`` file, opened memory-mapped and read-only
on the next read), so the next load takes about a second.

An entry is named by the source file's resolved path, size and modification time and by
``FORMAT`` (the conversion's version), so an edited or replaced file is converted again. The
directory is ``$KVLAB_CACHE_DIR`` if set (an empty value turns the cache off), else
``$XDG_CACHE_HOME/kvlab`` or ``~/.cache/kvlab``. A cache that cannot be written is skipped, and
an entry that cannot be read (removed files, another version) is converted again: the cache
only ever saves time.

Examples:
    >>> import pathlib, tempfile, numpy as np
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> source = root / "model.gguf"; _ = source.write_bytes(b"GGUF...")
    >>> cache = ConvertedCache(root / "cache")
    >>> cache.read(source) is None
    True
    >>> cache.write(source, {"general.name": "demo"}, {"embed": np.ones((2, 3), np.float32)})
    >>> meta, weights = cache.read(source)
    >>> meta, weights["embed"].shape
    ({'general.name': 'demo'}, (2, 3))
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 2
"""The conversion's version: raise it when what a GGUF file converts to changes (2: the
metadata keeps the RoPE frequency factors)."""

ENV_DIR = "KVLAB_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class ConvertedCache:
    """Converted checkpoints under ``directory`` (see the module docstring)."""

    directory: Path

    @classmethod
    def default(cls) -> ConvertedCache | None:
        """The cache at ``$KVLAB_CACHE_DIR`` (None when it is set empty), else the user's cache
        directory."""
        chosen = os.environ.get(ENV_DIR)
        if chosen is not None:
            return cls(Path(chosen)) if chosen else None
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return cls(Path(base) / "kvlab")

    def entry(self, source: Path) -> Path:
        """The directory that holds ``source``'s conversion."""
        source = Path(source).resolve()
        stat = source.stat()
        key = f"{source}|{stat.st_size}|{stat.st_mtime_ns}|{FORMAT}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:20]
        return Path(self.directory) / "converted" / f"{source.stem}-{digest}"

    def read(self, source: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(metadata, weights by name, read-only memory maps) of ``source``'s conversion, or None."""
        entry = self.entry(source)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            names = json.loads((entry / "weights.json").read_text())
            weights = {name: np.load(entry / f"{name}.npy", mmap_mode="r", allow_pickle=False)
                       for name in names}
        except (OSError, ValueError):
            return None
        return meta, weights

    def write(self, source: Path, meta: dict, weights: dict[str, np.ndarray]) -> None:
        """Keep ``source``'s conversion; nothing happens if the directory cannot be written."""
        entry = self.entry(source)
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=entry.parent, prefix=".partial-"))
        except OSError:
            return
        try:
            for name, w in weights.items():
                np.save(staging / f"{name}.npy", np.ascontiguousarray(w), allow_pickle=False)
            (staging / "meta.json").write_text(json.dumps(meta))
            (staging / "weights.json").write_text(json.dumps(sorted(weights)))    # written last
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
        except OSError:
            pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
