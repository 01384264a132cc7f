"""Small images for the galleries, made on first request and kept in workspace/thumbnails.

A thumbnail is keyed by what it shows (a sample id, a generated image id), never modified once
written, and served straight from disk. Tiny images (28 px digits) are enlarged with nearest
neighbour so they stay crisp; large ones are reduced with Lanczos.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from storage import Workspace, atomic_write_bytes

THUMBNAIL_PX = 112
LARGE_PX = 320


def thumbnail(workspace: Workspace, source: Path, *parts: str | int, size: int = THUMBNAIL_PX,
              fmt: str = "webp") -> Path:
    """The thumbnail of `source` at workspace/thumbnails/<parts>.<fmt>, made if missing."""
    *folders, name = (str(part) for part in parts)
    target = workspace.path_for("thumbnails", *folders, f"{name}-{size}.{fmt}")
    if not target.exists():
        atomic_write_bytes(target, render(source, size=size, fmt=fmt))
    return target


def render(source: Path, *, size: int, fmt: str = "webp") -> bytes:
    """`source` fitted into a size x size square (aspect kept), encoded as `fmt`."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        scale = size / max(image.size)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        enlarged = scale >= 1
        if enlarged:
            scale = max(1, round(scale))  # whole multiples keep every source pixel one size
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new_size, resample)
    buffer = io.BytesIO()
    if fmt == "webp":
        # lossless keeps enlarged pixel art sharp and is smaller than lossy for it
        image.save(buffer, format="WEBP", lossless=enlarged, quality=85, method=0)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue()
