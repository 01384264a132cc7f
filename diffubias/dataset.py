"""Image datasets on disk: one format, loaded and validated into an `ImageDataset`, and decoded.

The format (what users upload, as a folder or a .zip): images under any sub-folders plus
`metadata.csv` with columns `path, split, label`, and optionally `bias` (an attribute name, used
for evaluation only), `caption`, `caption_2`, ... (any number, empty cells allowed) and `mask`
(a binary object mask PNG, same size as its image). A plain ImageFolder (`<class>/<image>`, no
CSV) also loads, with a seeded stratified train/valid split. Built-ins (`builtin:<name>`) are
generated into the cache on first use by `diffubias.builtin`.

Knows: that format, safe zip extraction (the limits below, checked before anything is
written), validation (bad input raises `ValueError` before any training; missing, corrupt,
oversized, linked-out or duplicate files are skipped and reported in `ImageDataset.skipped`; every
kept image has been decoded once, so training never meets a bad file), decoding images and masks
to fixed-size arrays. Does not know: models, training, batching (see `images.py`), or what
the captions and bias attributes mean.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from sklearn.model_selection import train_test_split

from diffubias.builtin import BUILTIN_NAMES, ensure_builtin
from diffubias.text_safety import from_csv_cell

SPLITS = ("train", "valid", "test")
METADATA_FILE = "metadata.csv"
REQUIRED_COLUMNS = ("path", "split", "label")
BUILTIN_PREFIX = "builtin:"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

# Limits on an upload, each refused with a message before anything is written. An archive member
# is a file to extract; every image is opened (and decoded) once at load time.
MAX_ARCHIVE_FILES = 300_000  # CelebA, the largest common bias benchmark, has ~203,000 images
MAX_UNPACKED_BYTES = 64 << 30
# Images are stored compressed (about 1:1 in a zip), CSVs pack ~10:1 and raw BMP/TIFF masks up
# to ~100:1; a deflate bomb packs ~1000:1. Files under RATIO_CHECK_BYTES may pack tighter (a
# blank mask): a bomb has to be big.
MAX_COMPRESSION_RATIO = 200
RATIO_CHECK_BYTES = 1 << 20
MAX_NAME_BYTES = 255  # one path component, as most file systems allow
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar", ".tbz2",
                    ".txz", ".tar.gz")
MAX_IMAGE_PIXELS = 64_000_000  # 8000 x 8000; each decode holds 3 bytes per pixel
_LARGE_IMAGE_PIXELS = 4_000_000  # decoded two at a time at load, however many threads verify
_LARGE_DECODES = threading.BoundedSemaphore(2)
_IMAGE_MAGIC = ((b"\x89png", "PNG"), (b"\xff\xd8", "JPEG"), (b"gif8", "GIF"), (b"bm", "BMP"),
                (b"riff", "WebP"), (b"ii*\x00", "TIFF"), (b"mm\x00*", "TIFF"))  # lower-cased
_READABLE_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                         zipfile.ZIP_LZMA)

_CAPTION_COLUMN = re.compile(r"caption(_\d+)?")
_DRIVE = re.compile(r"[A-Za-z]:")
# Verifying is file I/O and CRC checks, which release the GIL: threads beyond the core count help.
_VERIFY_THREADS = min(32, 4 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class SkippedFile:
    """A row or file left out at load time, and why."""

    path: str
    reason: str


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make == ambiguous
class ImageDataset:
    """One loaded dataset: per-sample arrays aligned with `paths`."""

    name: str  # "builtin:colored-digits" for built-ins, else the folder or zip name
    root: Path  # folder holding metadata.csv (the extracted folder for a zip)
    paths: tuple[str, ...]  # posix paths relative to root
    split: np.ndarray  # object (N,), each one of SPLITS
    labels: np.ndarray  # int64 (N,), index into class_names
    class_names: tuple[str, ...]  # sorted unique label names
    bias: (
        np.ndarray | None
    )  # int64 (N,), index into bias_names, -1 for an empty cell; None: no column
    bias_names: tuple[str, ...]  # sorted unique bias names; () when there is no bias column
    captions: tuple[tuple[str, ...], ...]  # per sample, the non-empty captions in column order
    mask_paths: tuple[str | None, ...] | None  # per sample, relative to root; None: no mask column
    skipped: tuple[SkippedFile, ...]  # rows and files dropped at load, with the reason

    def __post_init__(self) -> None:
        n = len(self.paths)
        lengths = {
            "split": len(self.split),
            "labels": len(self.labels),
            "captions": len(self.captions),
        }
        if self.bias is not None:
            lengths["bias"] = len(self.bias)
        if self.mask_paths is not None:
            lengths["mask_paths"] = len(self.mask_paths)
        wrong = {field: length for field, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(
                f"ImageDataset fields must have one entry per path ({n}); got lengths {wrong}"
            )

    def indices(self, split: str) -> np.ndarray:
        """int64 positions of the samples in `split` (one of train, valid, test)."""
        if split not in SPLITS:
            raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.split == split).astype(np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_dataset(
    source: str | Path,
    *,
    cache_dir: Path,
    seed: int = 0,
    conflict_ratio: float = 0.01,
    valid_fraction: float = 0.2,
) -> ImageDataset:
    """Load `source`: "builtin:<name>", a folder, or a .zip file (extracted under `cache_dir`).

    `conflict_ratio` and `seed` pick the built-in variant; `seed` and `valid_fraction` also drive
    the train/valid split of a plain ImageFolder. Other sources ignore them.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1); got {valid_fraction!r}")
    cache_dir = Path(cache_dir)
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        root = ensure_builtin(name, cache_dir=cache_dir, conflict_ratio=conflict_ratio, seed=seed)
        return _load_csv(root, name=source, verify=False)  # we generated it: every image is sound
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        return _load_root(path, name=path.name, seed=seed, valid_fraction=valid_fraction)
    if path.is_file() and path.suffix.lower() == ".zip":
        root = _find_data_root(extract_zip(path, cache_dir=cache_dir))
        return _load_root(root, name=path.stem, seed=seed, valid_fraction=valid_fraction)
    builtins = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_NAMES)
    raise ValueError(
        f"dataset source {str(source)!r} is not a folder, a .zip file, or one of {builtins}"
    )


def extract_zip(zip_path: Path, *, cache_dir: Path) -> Path:
    """Extract `zip_path` once into `extracted_folder(zip_path, cache_dir)` and return it.

    Every member is checked before anything is written (`_checked_members`: no absolute paths,
    `..`, links, special files, encryption, nested archives, duplicate or non-UTF-8 names, and
    the file-count, size and compression-ratio limits); only regular files and folders are
    written. Extraction goes to a temporary folder that is renamed into place, so an
    interrupted or refused run leaves no half-written dataset behind.
    """
    zip_path = Path(zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, OSError) as exc:
        raise ValueError(
            f"{zip_path.name} is not a readable zip file ({exc}); it may be truncated or another "
            "kind of archive: create a .zip and upload it again"
        ) from exc
    with archive:
        members = _checked_members(archive, zip_path.name)
        target = extracted_folder(zip_path, cache_dir=cache_dir)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        needed, free = (
            sum(info.file_size for info, _ in members),
            shutil.disk_usage(target.parent).free,
        )
        if needed > free:
            raise ValueError(
                f"{zip_path.name} unpacks to {needed:,} bytes but the workspace has {free:,} "
                "free; free some space or upload a smaller dataset"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for info, name in members:
                _extract_member(archive, info, tmp / name, zip_path.name, name)
            tmp.chmod(0o755)
            _rename_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def extracted_folder(zip_path: Path, *, cache_dir: Path) -> Path:
    """Where `extract_zip` puts `zip_path`: `cache_dir/zips/<hash of its bytes>/`."""
    return Path(cache_dir) / "zips" / _file_digest(Path(zip_path))


def _checked_members(archive: zipfile.ZipFile, zip_name: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, its normalised relative path) for every member to extract; ValueError naming
    the first member that is unsafe or over a limit, and what to do about it."""
    infos = archive.infolist()
    files = [info for info in infos if not info.is_dir()]
    if len(infos) > MAX_ARCHIVE_FILES:
        raise ValueError(
            f"{zip_name} holds {len(infos):,} files and folders; the limit is "
            f"{MAX_ARCHIVE_FILES:,}: split "
            "the dataset into smaller uploads, or open it as a folder under --data-root"
        )
    total = sum(info.file_size for info in files)
    if total > MAX_UNPACKED_BYTES:
        raise ValueError(
            f"{zip_name} unpacks to {total:,} bytes, over the limit of {MAX_UNPACKED_BYTES:,}: "
            "split the dataset into smaller uploads, or open it as a folder under --data-root"
        )
    members: list[tuple[zipfile.ZipInfo, str]] = []
    seen: set[str] = set()
    for info in infos:
        name = _member_name(info, zip_name)
        if name is None:
            continue  # the archive root itself ("/" or ".")
        where = f"{zip_name}: {name!r}"
        if info.is_dir():
            members.append((info, name))
            continue
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ValueError(
                f"{where} is a symbolic link; links are not extracted: re-create the zip with "
                "the files themselves (zip without -y)"
            )
        if kind and kind != stat.S_IFREG:
            raise ValueError(
                f"{where} is a special file (device, pipe or socket): remove it and re-create "
                "the zip"
            )
        if info.flag_bits & 0x1:
            raise ValueError(f"{where} is encrypted: re-create the zip without a password")
        if info.compress_type not in _READABLE_COMPRESSION:
            raise ValueError(
                f"{where} uses compression method {info.compress_type} (e.g. Deflate64 or AES), "
                "which cannot be read: re-create the zip with standard deflate compression"
            )
        if name.lower().endswith(ARCHIVE_SUFFIXES):
            raise ValueError(
                f"{where} is an archive inside the archive: unpack it and zip its files into "
                "the one upload"
            )
        if name in seen:
            raise ValueError(f"{zip_name} holds {name!r} twice: keep one copy and re-create the zip")
        seen.add(name)
        if info.file_size > RATIO_CHECK_BYTES and (
            info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)
        ):
            ratio = info.file_size // max(info.compress_size, 1)
            raise ValueError(
                f"{where} is compressed {ratio}:1, above the limit of "
                f"{MAX_COMPRESSION_RATIO}:1 that guards against zip bombs; images and CSVs never "
                "pack that tightly: remove the file and re-create the zip"
            )
        members.append((info, name))
    packed = sum(info.compress_size for info in files)
    if total > RATIO_CHECK_BYTES and total > MAX_COMPRESSION_RATIO * max(packed, 1):
        raise ValueError(
            f"{zip_name} is compressed {total // max(packed, 1)}:1 overall, above the limit of "
            f"{MAX_COMPRESSION_RATIO}:1 that guards against zip bombs: re-create the zip from "
            "the images and metadata.csv only"
        )
    folders = {str(PurePosixPath(name).parent) for name in seen} | {
        name for info, name in members if info.is_dir()
    }
    folders |= {str(parent) for folder in list(folders) for parent in PurePosixPath(folder).parents}
    clash = sorted(seen & folders)
    if clash:
        raise ValueError(
            f"{zip_name}: {clash[0]!r} is both a file and a folder: rename one and re-create "
            "the zip"
        )
    return members


def _member_name(info: zipfile.ZipInfo, zip_name: str) -> str | None:
    """The member's path, normalised and checked; None for the archive root."""
    raw = info.orig_filename
    if not info.flag_bits & 0x800:  # no UTF-8 flag: zipfile decoded the bytes as cp437
        raw_bytes = raw.encode("cp437")
        try:
            raw = raw_bytes.decode("utf-8")  # most tools write UTF-8 without setting the flag
        except UnicodeDecodeError:
            raise ValueError(
                f"{zip_name}: a member name is not UTF-8 ({raw_bytes!r}); the zip was made with "
                "a legacy code page: re-create it with UTF-8 names (7-Zip, Info-ZIP zip or "
                "Python's zipfile write UTF-8 names)"
            ) from None
    if any(ord(c) < 32 or ord(c) == 127 for c in raw):
        raise ValueError(
            f"{zip_name}: member name {raw!r} contains a control character: rename the file and "
            "re-create the zip"
        )
    if raw.replace("\\", "/").strip("/") in ("", "."):
        return None
    name = _safe_relative_path(raw)
    if name is None:
        raise ValueError(
            f"{zip_name} has member {raw!r} with an absolute path or '..'; expected paths "
            "relative to the archive root: re-create the zip from inside the dataset folder"
        )
    long = [part for part in name.split("/") if len(part.encode()) > MAX_NAME_BYTES]
    if long:
        raise ValueError(
            f"{zip_name}: member {raw[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes: "
            "rename the file and re-create the zip"
        )
    return name


def _extract_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    zip_name: str, name: str) -> None:
    """Write one checked member as a plain file or folder (never a link, never its mode)."""
    if info.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # zipfile stops at the declared size and checks the CRC: a member cannot write more
        with archive.open(info) as source, open(target, "xb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise ValueError(
            f"{zip_name}: {name!r} is damaged ({exc}): re-create the zip and upload it again"
        ) from exc


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


def as_positions(positions: Sequence[int] | np.ndarray | torch.Tensor, length: int) -> np.ndarray:
    """`positions` as an int64 array, each checked to lie in [0, length)."""
    if isinstance(positions, torch.Tensor):
        positions = positions.detach().cpu().numpy()
    array = np.asarray(positions)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            "positions must be a 1-D sequence of integers; "
            f"got shape {array.shape}, dtype {array.dtype}"
        )
    if array.min() < 0 or array.max() >= length:
        bad = array[(array < 0) | (array >= length)][0]
        raise ValueError(f"position {int(bad)} is out of range; expected 0 <= position < {length}")
    return array.astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# Loading


def _load_root(root: Path, *, name: str, seed: int, valid_fraction: float) -> ImageDataset:
    if (root / METADATA_FILE).is_file():
        if not (root / METADATA_FILE).resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{name}/{METADATA_FILE} is a link to a file outside the dataset "
                             "folder; copy the file in instead")
        return _load_csv(root, name=name, verify=True)
    return _load_image_folder(root, name=name, seed=seed, valid_fraction=valid_fraction)


def _load_csv(root: Path, *, name: str, verify: bool) -> ImageDataset:
    table = _read_metadata(root / METADATA_FILE)
    lines = np.arange(len(table)) + 2  # the header is line 1
    split = _check_splits(table["split"].str.lower().to_numpy(dtype=object), lines)
    paths = [
        _checked_path(raw, line, "path") for raw, line in zip(table["path"], lines, strict=True)
    ]
    empty_label = np.flatnonzero(table["label"].to_numpy(dtype=object) == "")
    if len(empty_label):
        raise ValueError(
            f"{METADATA_FILE} line {lines[empty_label[0]]}: empty label; every row needs a label"
        )
    masks: list[str | None] | None = None
    if "mask" in table.columns:
        masks = [
            _checked_path(raw, line, "mask") if raw else None
            for raw, line in zip(table["mask"], lines, strict=True)
        ]

    keep, skipped = _drop_duplicates_and_missing(root, paths, masks, lines)
    if verify:
        kept_masks = None if masks is None else [masks[i] for i in keep]
        keep, unreadable = _drop_unreadable(root, [paths[i] for i in keep], kept_masks, keep)
        skipped += unreadable
    _check_anything_left(len(table), keep, skipped)

    kept = table.iloc[keep]
    caption_columns = [c for c in table.columns if _CAPTION_COLUMN.fullmatch(c)]
    captions = tuple(
        tuple(c for c in row if c) for row in kept[caption_columns].itertuples(index=False)
    )
    labels, class_names = _check_labels(kept["label"].to_numpy(dtype=object), split[keep], skipped)
    bias, bias_names = None, ()
    if "bias" in table.columns:
        bias, bias_names = _index_names(kept["bias"].to_numpy(dtype=object))
    return ImageDataset(
        name=name,
        root=root,
        paths=tuple(paths[i] for i in keep),
        split=split[keep],
        labels=labels,
        class_names=class_names,
        bias=bias,
        bias_names=bias_names,
        captions=captions,
        mask_paths=None if masks is None else tuple(masks[i] for i in keep),
        skipped=tuple(skipped),
    )


def _read_metadata(csv_path: Path) -> pd.DataFrame:
    if csv_path.stat().st_size == 0:
        raise ValueError(f"{METADATA_FILE} is empty; expected a header line "
                         f"({', '.join(REQUIRED_COLUMNS)}) and one row per image")
    try:
        # utf-8-sig: spreadsheets often write a byte-order mark; keep_default_na: "" stays "".
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{METADATA_FILE} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as "
            "UTF-8 (in a spreadsheet: CSV UTF-8)"
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise ValueError(
            f"{METADATA_FILE} is not a readable CSV file ({exc}); expected comma-separated "
            f"columns {', '.join(REQUIRED_COLUMNS)}"
        ) from exc
    table.columns = [str(column).strip().lower() for column in table.columns]
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(
            f"{METADATA_FILE} is missing required column(s) {', '.join(missing)}; expected columns "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: bias, caption, caption_2, ..., mask), "
            f"found {', '.join(table.columns)[:200]}"
        )
    table = table.apply(lambda column: column.str.strip())
    # cells an export guarded against spreadsheet formulas (diffubias.text_safety) read back as
    # they were written
    for column in table.columns:
        if column in ("label", "bias") or _CAPTION_COLUMN.fullmatch(column):
            table[column] = table[column].map(from_csv_cell)
    return table


def _check_splits(split: np.ndarray, lines: np.ndarray) -> np.ndarray:
    unknown = np.flatnonzero(~np.isin(split, SPLITS))
    if len(unknown):
        first = unknown[0]
        raise ValueError(
            f"{METADATA_FILE} line {lines[first]}: split {split[first]!r} is not one of "
            f"{', '.join(SPLITS)} ({len(unknown)} row(s) have an unknown split)"
        )
    return split


def _checked_path(raw: str, line: int, column: str) -> str:
    if not raw:
        raise ValueError(
            f"{METADATA_FILE} line {line}: empty {column}; "
            "expected a path relative to the dataset folder"
        )
    path = _safe_relative_path(raw)
    if path is None:
        raise ValueError(
            f"{METADATA_FILE} line {line}: {column} {raw!r} escapes the dataset folder; "
            "expected a relative path without '..'"
        )
    return path


def _safe_relative_path(raw: str) -> str | None:
    """`raw` as a normalised posix path inside its root, or None if absolute or using '..'."""
    text = raw.replace("\\", "/")  # a Windows-made CSV or zip may use backslashes
    if text.startswith("/") or _DRIVE.match(text):
        return None
    parts = [part for part in PurePosixPath(text).parts if part != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _drop_duplicates_and_missing(
    root: Path, paths: list[str], masks: list[str | None] | None, lines: np.ndarray
) -> tuple[list[int], list[SkippedFile]]:
    keep: list[int] = []
    skipped: list[SkippedFile] = []
    first_line: dict[str, int] = {}
    for i, path in enumerate(paths):
        if path in first_line:
            skipped.append(
                SkippedFile(
                    path, f"duplicate row (line {lines[i]} repeats line {first_line[path]})"
                )
            )
            continue
        first_line[path] = int(lines[i])
        if not (root / path).is_file():
            skipped.append(SkippedFile(path, "image file not found"))
        elif masks is not None and masks[i] is not None and not (root / masks[i]).is_file():
            skipped.append(SkippedFile(path, f"mask file not found: {masks[i]}"))
        else:
            keep.append(i)
    return keep, skipped


def _drop_unreadable(
    root: Path, paths: list[str], masks: list[str | None] | None, rows: list[int]
) -> tuple[list[int], list[SkippedFile]]:
    """Keep the rows whose image (and mask) lies inside `root` and decodes; report the others."""
    inside = root.resolve()

    def problem(i: int) -> str | None:
        image_size, reason = _inspect_file(root / paths[i], inside)
        if reason is not None:
            return reason
        if masks is None or masks[i] is None:
            return None
        mask_size, reason = _inspect_file(root / masks[i], inside)
        if reason is not None:
            return f"mask {masks[i]}: {reason}"
        if mask_size != image_size:
            (mw, mh), (iw, ih) = mask_size, image_size
            return f"mask {masks[i]} is {mw}x{mh}, image is {iw}x{ih}"
        return None

    with ThreadPoolExecutor(_VERIFY_THREADS) as pool:
        problems = list(pool.map(problem, range(len(paths))))
    keep = [row for row, reason in zip(rows, problems, strict=True) if reason is None]
    skipped = [
        SkippedFile(path, reason)
        for path, reason in zip(paths, problems, strict=True)
        if reason is not None
    ]
    return keep, skipped


def _inspect_file(path: Path, inside: Path) -> tuple[tuple[int, int], str | None]:
    """(width, height) and None, or (0, 0) and why the file cannot be used."""
    resolved = path.resolve()
    if not resolved.is_relative_to(inside):
        return (0, 0), "a link that leads outside the dataset folder: copy the file in instead"
    if not resolved.is_file():
        return (0, 0), "not a file"
    if resolved.stat().st_size == 0:
        return (0, 0), "empty file (0 bytes)"
    return _verify_image(resolved)


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


def _check_anything_left(num_rows: int, keep: list[int], skipped: list[SkippedFile]) -> None:
    if keep:
        return
    if num_rows == 0:
        raise ValueError(f"{METADATA_FILE} has no rows; expected one row per image")
    examples = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
    raise ValueError(f"all {num_rows} images were skipped, e.g. {examples}")


def _check_labels(
    label_names: np.ndarray, split: np.ndarray, skipped: list[SkippedFile]
) -> tuple[np.ndarray, tuple[str, ...]]:
    after_skips = f" (after skipping {len(skipped)} file(s))" if skipped else ""
    train_names = set(label_names[split == "train"])
    if not train_names:
        raise ValueError(
            f"no train rows{after_skips}; expected split 'train' on at least some rows"
        )
    unseen = sorted(set(label_names) - train_names)
    if unseen:
        raise ValueError(
            f"label(s) {', '.join(map(repr, unseen))} appear only in valid/test, "
            f"never in train{after_skips}; "
            "every label needs train images"
        )
    if len(train_names) < 2:
        raise ValueError(
            f"train has only one class ({next(iter(train_names))!r}){after_skips}; "
            "expected at least 2 classes"
        )
    labels, names = _index_names(label_names)
    return labels, names


def _index_names(values: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """int64 index of each value into the sorted unique non-empty names; -1 for an empty value."""
    names = tuple(sorted(set(values) - {""}))
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(v, -1) for v in values], dtype=np.int64), names


def _load_image_folder(root: Path, *, name: str, seed: int, valid_fraction: float) -> ImageDataset:
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and not _is_hidden(d.name) and d.name != "__MACOSX"
    )
    if not class_dirs:
        raise ValueError(
            f"{name} has no {METADATA_FILE} and no class sub-folders; expected {METADATA_FILE} "
            f"(columns {', '.join(REQUIRED_COLUMNS)}) or <class>/<image> folders"
        )
    paths: list[str] = []
    label_names: list[str] = []
    skipped: list[SkippedFile] = [
        SkippedFile(d.name, "a link to a folder; links to folders are not followed: copy the "
                    "folder in instead")
        for d in class_dirs if d.is_symlink()
    ]
    for file in sorted(root.rglob("*")):
        relative = file.relative_to(root)
        if (
            not file.is_file()
            or any(_is_hidden(part) for part in relative.parts)
            or relative.parts[0] == "__MACOSX"
        ):
            continue
        if len(relative.parts) == 1:
            if file.suffix.lower() in IMAGE_SUFFIXES:
                skipped.append(SkippedFile(relative.as_posix(), "image outside any class folder"))
        elif file.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append(
                SkippedFile(
                    relative.as_posix(), f"not an image file ({file.suffix or 'no extension'})"
                )
            )
        else:
            paths.append(relative.as_posix())
            label_names.append(relative.parts[0])
    keep, unreadable = _drop_unreadable(root, paths, None, list(range(len(paths))))
    skipped += unreadable
    _check_anything_left(len(paths), keep, skipped)
    found = {label_names[i] for i in keep}
    skipped += [
        SkippedFile(f"{d.name}/", "class folder without readable images; the class is left out")
        for d in class_dirs if d.name not in found and not d.is_symlink()
    ]
    paths = [paths[i] for i in keep]
    labels, class_names = _index_names(np.array([label_names[i] for i in keep], dtype=object))
    split = _stratified_split(labels, class_names, seed=seed, valid_fraction=valid_fraction)
    return ImageDataset(
        name=name,
        root=root,
        paths=tuple(paths),
        split=split,
        labels=labels,
        class_names=class_names,
        bias=None,
        bias_names=(),
        captions=((),) * len(paths),
        mask_paths=None,
        skipped=tuple(skipped),
    )


def _stratified_split(
    labels: np.ndarray, class_names: tuple[str, ...], *, seed: int, valid_fraction: float
) -> np.ndarray:
    if len(class_names) < 2:
        raise ValueError(
            f"only one class folder with images ({class_names[0]!r}); expected at least 2 "
            "classes: add a folder of images per class"
        )
    counts = np.bincount(labels, minlength=len(class_names))
    too_small = [f"{class_names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    if too_small:
        raise ValueError(
            f"class folder(s) {', '.join(too_small)} need at least 2 images to split train/valid"
        )
    try:
        _, valid = train_test_split(
            np.arange(len(labels)), test_size=valid_fraction, stratify=labels, random_state=seed
        )
    except ValueError as exc:
        raise ValueError(
            f"cannot split {len(labels)} images over {len(class_names)} classes with "
            f"valid_fraction "
            f"{valid_fraction:g}: {exc}"
        ) from exc
    split = np.full(len(labels), "train", dtype=object)
    split[valid] = "valid"
    return split


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _find_data_root(extracted: Path) -> Path:
    """Descend through single wrapping folders (zipping a folder adds one) to the dataset root."""
    root = extracted
    while not (root / METADATA_FILE).is_file():
        entries = [e for e in root.iterdir() if not _is_hidden(e.name) and e.name != "__MACOSX"]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        only = entries[0]
        if not any(child.is_dir() or child.name == METADATA_FILE for child in only.iterdir()):
            break  # `only` holds images directly: it is a class folder, not a wrapper
        root = only
    return root


def _file_digest(path: Path) -> str:
    info = path.stat()  # the app asks twice per upload (where to extract, then extracting)
    return _digest_of(str(path.resolve()), info.st_size, info.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _digest_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:24]


def _rename_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; if another process got there first, keep theirs."""
    try:
        os.rename(tmp, target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Decoding


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
