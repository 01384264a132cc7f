"""Paths we did not write (a cell of metadata.csv, a member name in an uploaded zip) turned into a
normalised posix path that stays inside its root, or refused.

Knows: separators (Windows backslashes and drive letters), `.` and `..`. Does not know: the file
system (nothing is resolved or checked to exist) or where the path came from; callers word the
error.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

_DRIVE = re.compile(r"[A-Za-z]:")


def safe_relative_path(raw: str) -> str | None:
    """`raw` as a normalised posix path inside its root, or None if absolute or using '..'."""
    text = raw.replace("\\", "/")  # a Windows-made CSV or zip may use backslashes
    if text.startswith("/") or _DRIVE.match(text):
        return None
    parts = [part for part in PurePosixPath(text).parts if part != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)
