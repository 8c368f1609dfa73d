"""A KV tier on local disk: page records in one memory-mapped file (the storage level of SGLang's
HiCache, DeepSpeed ZeRO-Inference's NVMe offload), below the host tier.

The file lives in a directory the user names (created if missing) under a unique name, so several
tiers may share a directory. It is allocated in full when the tier is built (a disk too small fails
then, with the path in the message, not later in the middle of a write) and deleted by ``close()``:
the index of what it holds is in memory, so the file means nothing once the tier is gone. Records
are written and read back as their raw bytes, so any dtype (bfloat16, fp8, the uint8 of quantized
pages) survives unchanged.

Examples:
    >>> import tempfile, jax, numpy as np
    >>> from kvlab.kvcache.tiers import DiskTier
    >>> spec = jax.ShapeDtypeStruct((2, 3), "float16")
    >>> with DiskTier(tempfile.mkdtemp(), num_pages=4, page_record=spec) as tier:
    ...     _ = tier.put(b"block-a", np.full((2, 3), 0.5, np.float16))
    ...     tier.get(b"block-a").tolist(), tier.stats().pages_used
    ([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]], 1)
"""

from __future__ import annotations

import os
import pathlib
import tempfile
import weakref

import numpy as np

from kvlab.kvcache.eviction import LRU
from kvlab.kvcache.tiers.array_tier import ArrayTier


def _remove(path: str) -> None:
    pathlib.Path(path).unlink(missing_ok=True)


def _page_file(directory: pathlib.Path, nbytes: int) -> str:
    """Create the directory if needed and a page file of ``nbytes`` in it; its path."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"DiskTier needs a directory for its page file; {directory} is a file")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="kvlab-tier-", suffix=".pages", dir=directory)
    except OSError as err:
        raise ValueError(f"DiskTier cannot create its page file in {directory} ({err.strerror}); "
                         f"give a directory this process can write") from None
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, nbytes)
        else:                                     # pragma: no cover - not Linux
            os.ftruncate(fd, nbytes)
    except OSError as err:
        os.close(fd)
        _remove(name)
        raise ValueError(f"DiskTier cannot allocate {nbytes} bytes in {directory} ({err.strerror}); "
                         f"free space there or ask for fewer pages") from None
    os.close(fd)
    return name


class DiskTier(ArrayTier):
    """``num_pages`` records of ``page_record`` (a ``jax.ShapeDtypeStruct``; or None, bound later
    by ``bind``, which allocates the file then) in a file under ``path`` (a directory), evicted by
    ``eviction`` (default ``LRU()``) when full. ``close()`` (or leaving a ``with`` block) deletes
    the file; any use after that is a ValueError."""

    def __init__(self, path, num_pages: int, page_record=None, eviction=None):
        self.directory = pathlib.Path(path)
        self.file = None
        self._closed = False
        super().__init__(num_pages, page_record, LRU() if eviction is None else eviction)

    def _new_records(self, shape, dtype) -> np.memmap:
        if self._closed:
            raise ValueError(f"DiskTier at {self.directory} is closed")
        self.file = _page_file(self.directory, self.num_pages * int(np.prod(shape)) * dtype.itemsize)
        self._finalizer = weakref.finalize(self, _remove, self.file)   # also if never closed
        return np.memmap(self.file, dtype=dtype, mode="r+", shape=(self.num_pages, *shape))

    @property
    def closed(self) -> bool:
        return self._closed

    def _storage(self):
        if self._closed:
            raise ValueError(f"DiskTier at {self.file or self.directory} is closed")
        return super()._storage()

    def close(self) -> None:
        """Unmap and delete the page file; the tier forgets every record. Idempotent."""
        self._closed = True
        self._records = None
        self.clear()
        if self.file is not None:
            self._finalizer()

    def __enter__(self) -> DiskTier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
