"""The ImageFolder layout: `<class>/<image>` folders and no `metadata.csv`, loaded into an
`ImageDataset` with a seeded, stratified train/valid split.

Knows: which files count as images of which class (any depth under the class folder; hidden
files, `__MACOSX` and loose top-level files do not), and the split. Does not know: the CSV layout
(`metadata_csv`), archives, or how an image is decoded (`decoding`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from diffubias.dataset import (
    METADATA_FILE,
    ImageDataset,
    SkippedFile,
    check_anything_left,
    index_names,
)
from diffubias.decoding import CheckedFiles, drop_unreadable
from diffubias.metadata_csv import REQUIRED_COLUMNS
from diffubias.progress import ProgressFn

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def load_image_folder(root: Path, *, name: str, seed: int, valid_fraction: float,
                      progress: ProgressFn | None = None,
                      checked: CheckedFiles | None = None) -> ImageDataset:
    """The dataset of `root/<class>/<image>` files, split train/valid per class by `seed`;
    `progress` hears how many images were checked, `checked` remembers what was found."""
    class_dirs = sorted(
        d for d in root.iterdir() if d.is_dir() and not is_hidden(d.name) and d.name != "__MACOSX"
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
            or any(is_hidden(part) for part in relative.parts)
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
    if not paths:
        found = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:3])
        raise ValueError(
            f"{name} has no {METADATA_FILE} and no images in its class folders"
            + (f" (found {found})" if found else "")
            + f"; expected {METADATA_FILE} (columns {', '.join(REQUIRED_COLUMNS)}) or "
            "<class>/<image> folders of PNG, JPEG, BMP, GIF, WebP or TIFF files"
        )
    keep, unreadable = drop_unreadable(root, paths, None, list(range(len(paths))), progress,
                                       checked)
    skipped += unreadable
    check_anything_left(len(paths), keep, skipped)
    found = {label_names[i] for i in keep}
    skipped += [
        SkippedFile(f"{d.name}/", "class folder without readable images; the class is left out")
        for d in class_dirs if d.name not in found and not d.is_symlink()
    ]
    paths = [paths[i] for i in keep]
    labels, class_names = index_names(np.array([label_names[i] for i in keep], dtype=object))
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


def is_hidden(name: str) -> bool:
    """A dot file or folder (.DS_Store, .git, ._ resource forks): never part of a dataset."""
    return name.startswith(".")
