"""Image files decoded to fixed-size arrays, and checked at load time by decoding them once.

`read_images` and `read_masks` decode the samples of an `ImageDataset`; `drop_unreadable` is how
every loader makes sure that each kept image (and mask) decodes, so training never meets a bad
file. `CheckedFiles` remembers what each check found, by file size and modification time, so a
dataset opened again (after the app restarts) decodes only the files that are new or changed.
Knows: PIL, image modes and how each becomes RGB, EXIF orientation, the pixel limit, what a
truncated or disguised file looks like. Does not know: the dataset layouts (`metadata_csv`,
`image_folder`), archives, models, or batching (see `images.py`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from diffubias.dataset import METADATA_FILE, ImageDataset, SkippedFile, as_positions
from diffubias.files import atomic_write_text
from diffubias.progress import ProgressFn, report

# Every image is opened (and decoded) once at load time; larger ones are refused with a message.
MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000; each decode holds 3 bytes per pixel
_LARGE_IMAGE_PIXELS = 4_000_000  # decoded two at a time at load, however many threads verify
_LARGE_DECODES = threading.BoundedSemaphore(2)
_IMAGE_MAGIC = ((b"\x89png", "PNG"), (b"\xff\xd8", "JPEG"), (b"gif8", "GIF"), (b"bm", "BMP"),
                (b"riff", "WebP"), (b"ii*\x00", "TIFF"), (b"mm\x00*", "TIFF"))  # lower-cased
# Verifying is file I/O and CRC checks, which release the GIL: threads beyond the core count help.
_VERIFY_THREADS = min(32, 4 * (os.cpu_count() or 1))


def read_images(
    ds: ImageDataset, positions: Sequence[int], *, size: int, num_workers: int = 0
) -> torch.Tensor:
    """Decode the images at `positions` to uint8 (N, 3, size, size).

    Every mode becomes RGB (palette, grayscale, 16-bit, CMYK; alpha is composited onto black),
    EXIF orientation is applied, and images not already size x size are stretched to it
    (bilinear, antialiased): stretching rather than cropping keeps the whole scene, where a
    background bias may live. `num_workers` > 0 decodes in that many threads.
    """
    _check_size(size)
    positions = as_positions(positions, len(ds.paths))
    files = [ds.root / ds.paths[p] for p in positions]
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)

    def fill(i: int) -> None:
        out[i] = _decode_rgb(files[i], size).transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)

    _run(fill, len(files), num_workers)
    return torch.from_numpy(out)


def read_masks(ds: ImageDataset, positions: Sequence[int], *, size: int) -> np.ndarray:
    """Object masks at `positions` as bool (N, size, size); any non-zero mask pixel is object."""
    _check_size(size)
    if ds.mask_paths is None:
        raise ValueError(
            f"dataset {ds.name!r} has no mask column; expected a 'mask' column in {METADATA_FILE}"
        )
    positions = as_positions(positions, len(ds.paths))
    out = np.empty((len(positions), size, size), dtype=bool)
    for i, p in enumerate(positions):
        mask_path = ds.mask_paths[p]
        if mask_path is None:
            raise ValueError(
                f"sample {ds.paths[p]!r} (position {p}) has an empty mask cell; "
                "expected a mask path"
            )
        out[i] = _decode_mask(ds.root / mask_path, size)
    return out


def infer_image_size(ds: ImageDataset, *, max_size: int = 224) -> int:
    """The longer side of the first train image, capped at `max_size`."""
    _check_size(max_size)
    train = ds.indices("train")
    if len(train) == 0:
        raise ValueError(f"dataset {ds.name!r} has no train images to infer an image size from")
    with Image.open(ds.root / ds.paths[train[0]]) as image:
        return min(max(image.size), max_size)


class CheckedFiles:
    """What checking each file found, keyed by its resolved path and remembered while its size
    and modification time stay the same; kept in one JSON file (`path`, written atomically).
    A file that cannot be read back (damaged, another version) is treated as empty."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._found: dict[str, list] = {}
        with contextlib.suppress(OSError, ValueError):
            found = json.loads(self.path.read_text())
            if isinstance(found, dict):
                self._found = found

    def get(self, file: Path, stat: os.stat_result) -> tuple[tuple[int, int], str | None] | None:
        entry = self._found.get(str(file))
        if not isinstance(entry, list) or len(entry) != 5 or entry[:2] != [stat.st_size,
                                                                          stat.st_mtime_ns]:
            return None
        return (entry[2], entry[3]), entry[4]

    def put(self, file: Path, stat: os.stat_result, size: tuple[int, int],
            reason: str | None) -> None:
        self._found[str(file)] = [stat.st_size, stat.st_mtime_ns, size[0], size[1], reason]

    def save(self) -> None:
        """Write what was found; a cache: where it cannot be written, the next load checks
        every file again."""
        with contextlib.suppress(OSError):
            atomic_write_text(self.path, json.dumps(self._found, separators=(",", ":")))


def drop_unreadable(
    root: Path,
    paths: list[str],
    masks: list[str | None] | None,
    rows: list[int],
    progress: ProgressFn | None = None,
    checked: CheckedFiles | None = None,
) -> tuple[list[int], list[SkippedFile]]:
    """Keep the rows whose image (and mask) lies inside `root` and decodes; report the others.
    `progress` hears the count checked about every 1 %; `checked` answers for files unchanged
    since they were last checked and learns the rest (the caller saves it once the dataset
    loaded: a refused dataset leaves nothing behind)."""
    inside = root.resolve()

    def problem(i: int) -> str | None:
        image_size, reason = _inspect_file(root / paths[i], inside, checked)
        if reason is not None:
            return reason
        if masks is None or masks[i] is None:
            return None
        mask_size, reason = _inspect_file(root / masks[i], inside, checked)
        if reason is not None:
            return f"mask {masks[i]}: {reason}"
        if mask_size != image_size:
            (mw, mh), (iw, ih) = mask_size, image_size
            return f"mask {masks[i]} is {mw}x{mh}, image is {iw}x{ih}"
        return None

    problems: list[str | None] = []
    every = max(1, len(paths) // 100)
    with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
        for reason in pool.map(problem, range(len(paths))):
            problems.append(reason)
            if len(problems) % every == 0 or len(problems) == len(paths):
                report(progress, len(problems) / len(paths),
                       f"checked {len(problems):,} of {len(paths):,} images")
    keep = [row for row, reason in zip(rows, problems, strict=True) if reason is None]
    skipped = [
        SkippedFile(path, reason)
        for path, reason in zip(paths, problems, strict=True)
        if reason is not None
    ]
    return keep, skipped


def _inspect_file(path: Path, inside: Path,
                  checked: CheckedFiles | None = None) -> tuple[tuple[int, int], str | None]:
    """(width, height) and None, or (0, 0) and why the file cannot be used."""
    resolved = path.resolve()
    if not resolved.is_relative_to(inside):
        return (0, 0), "a link that leads outside the dataset folder: copy the file in instead"
    if not resolved.is_file():
        return (0, 0), "not a file"
    stat = resolved.stat()
    if stat.st_size == 0:
        return (0, 0), "empty file (0 bytes)"
    if checked is not None and (known := checked.get(resolved, stat)) is not None:
        return known
    found = _verify_image(resolved)
    if checked is not None:
        checked.put(resolved, stat, *found)
    return found


def _verify_image(path: Path) -> tuple[tuple[int, int], str | None]:
    """Open and fully decode `path` (JPEGs at 1/8 scale): PIL's `verify` misses truncated JPEGs
    and image data shorter than the header declares, which would otherwise fail mid-training."""
    try:
        with Image.open(path) as image:
            size = image.size
            pixels = size[0] * size[1]
            if pixels > MAX_IMAGE_PIXELS:
                return (0, 0), _too_large(f"{size[0]}x{size[1]} ({pixels / 1e6:.0f} megapixels)")
            image.verify()  # chunk checksums (PNG); a no-op for most formats
        gate = _LARGE_DECODES if pixels > _LARGE_IMAGE_PIXELS else contextlib.nullcontext()
        with gate, Image.open(path) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
            image.load()
            _upright(image.crop((0, 0, 1, 1)))  # reads the EXIF orientation, as decoding will
            _to_rgb(image.crop((0, 0, 1, 1)))  # the colour mode converts (decided by mode only)
    except Image.DecompressionBombError as exc:  # PIL's own, far higher, limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(found.group(1)) if found else 0
        return (0, 0), _too_large(f"{pixels:,} pixels ({pixels / 1e6:.0f} megapixels)")
    except UnidentifiedImageError:
        with open(path, "rb") as file:
            head = file.read(1024).lower()
        if path.suffix.lower() == ".svg" or b"<svg" in head:
            return (0, 0), "SVG (vector) image; only raster images are read: convert it to PNG"
        known = next((name for magic, name in _IMAGE_MAGIC if head.startswith(magic)), None)
        if known:
            return (0, 0), f"truncated or damaged image (a {known} whose header cannot be read)"
        return (0, 0), (
            "not an image (PNG, JPEG, BMP, GIF, WebP or TIFF): remove the row or the file"
        )
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files; each is reported
        return (0, 0), f"truncated or damaged image ({type(exc).__name__}: {exc})"
    return size, None


def _too_large(what: str) -> str:
    return (
        f"image is {what}, above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: "
        "downscale it"
    )


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer; got {size!r}")


def _run(fill: Callable[[int], None], count: int, num_workers: int) -> None:
    if num_workers > 0 and count > 1:
        with ThreadPoolExecutor(num_workers) as pool:
            for _ in pool.map(fill, range(count)):  # iterate to re-raise the first worker error
                pass
    else:
        for i in range(count):
            fill(i)


def _decode_rgb(path: Path, size: int) -> np.ndarray:
    """uint8 (size, size, 3)."""
    with Image.open(path) as image:
        if image.format == "JPEG":  # DCT-domain downscale: decodes large JPEGs much faster
            image.draft("RGB", (size, size))
        image = _upright(image)
        image = _to_rgb(image)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(image, dtype=np.uint8)


def _upright(image: Image.Image) -> Image.Image:
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float: PIL's own convert clips to 0..255, turning most pixels white
        values = np.asarray(image, dtype=np.float64)
        if mode != "F":
            scale = 1 / 257  # integer modes hold 16-bit samples: 65535 -> 255
        else:
            scale = 255.0 if values.max(initial=0.0) <= 1.0 else 1.0  # float images: 0..1 or 0..255
        gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    if mode != "RGB":
        return image.convert("RGB")
    return image


def _decode_mask(path: Path, size: int) -> np.ndarray:
    """bool (size, size)."""
    with Image.open(path) as image:
        image = _upright(image)
        binary = np.asarray(image.convert("L")) > 0
    if binary.shape != (size, size):
        scaled = Image.fromarray(binary.astype(np.uint8) * 255).resize(
            (size, size), Image.Resampling.BILINEAR
        )
        binary = np.asarray(scaled) >= 128
    return binary
