"""Writing files so that a crash, a kill or a full disk leaves the old file or the new one, never
half of one: write a hidden temp file next to the target, flush it to disk, rename it over.

Knows: that pattern. Used for every artifact a later stage or a restarted app reads back
(reports, configs, CSVs, weights, PNGs, manifests).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yields a temp path in `path`'s folder for the caller to write (with any library); on a
    normal exit it is flushed to disk and renamed to `path`, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same folder as the target, so os.replace is a rename within one filesystem; hidden and
    # unique, so a reader never takes it for an artifact and two writers never share it
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        with open(temp, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as temp:
        temp.write_bytes(data)
    return Path(path)
