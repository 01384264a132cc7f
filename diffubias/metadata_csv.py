"""The `metadata.csv` layout: reading the CSV, validating every row, and loading the rows whose
files exist and decode into an `ImageDataset`.

Columns: `path, split, label` (required), and optionally `bias`, `caption`, `caption_2`, ... and
`mask` (see `diffubias.dataset` for the format). Knows: CSV parsing (encodings, a byte-order mark,
formula-guarded cells), which problems are fatal (a `ValueError` naming the line: unknown split,
empty label, a path escaping the folder, labels missing from train) and which skip a row (a
missing, duplicate or unreadable file, reported in `ImageDataset.skipped`). Does not know: how a
source is found or extracted (`dataset_sources`, `archives`) or how an image is decoded
(`decoding`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from diffubias.dataset import (
    METADATA_FILE,
    SPLITS,
    ImageDataset,
    SkippedFile,
    check_anything_left,
    index_names,
)
from diffubias.decoding import CheckedFiles, drop_unreadable
from diffubias.progress import ProgressFn
from diffubias.relative_paths import safe_relative_path
from diffubias.text_safety import from_csv_cell

REQUIRED_COLUMNS = ("path", "split", "label")
_CAPTION_COLUMN = re.compile(r"caption(_\d+)?")


def load_metadata_csv(root: Path, *, name: str, verify: bool,
                      progress: ProgressFn | None = None,
                      checked: CheckedFiles | None = None) -> ImageDataset:
    """The dataset `root/metadata.csv` describes. `verify` decodes every kept image and mask
    once (`drop_unreadable`, reporting to `progress`, remembering in `checked`); only a dataset
    we generated ourselves may skip that."""
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
        keep, unreadable = drop_unreadable(root, [paths[i] for i in keep], kept_masks, keep,
                                           progress, checked)
        skipped += unreadable
    check_anything_left(len(table), keep, skipped)

    kept = table.iloc[keep]
    caption_columns = [c for c in table.columns if _CAPTION_COLUMN.fullmatch(c)]
    captions = tuple(
        tuple(c for c in row if c) for row in kept[caption_columns].itertuples(index=False)
    )
    labels, class_names = _check_labels(kept["label"].to_numpy(dtype=object), split[keep], skipped)
    bias, bias_names = None, ()
    if "bias" in table.columns:
        bias, bias_names = index_names(kept["bias"].to_numpy(dtype=object))
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
    path = safe_relative_path(raw)
    if path is None:
        raise ValueError(
            f"{METADATA_FILE} line {line}: {column} {raw!r} escapes the dataset folder; "
            "expected a relative path without '..'"
        )
    return path


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
    labels, names = index_names(label_names)
    return labels, names
