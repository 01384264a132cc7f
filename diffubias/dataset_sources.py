"""Where a dataset comes from: `load_dataset` turns a source (`builtin:<name>`, a folder, or a
.zip) into an `ImageDataset`, picking the layout that the folder holds.

Knows: the three kinds of source, that a folder with `metadata.csv` is the CSV layout and any
other folder an ImageFolder, and how to find the dataset root inside an extracted zip (through
the folder that zipping a folder adds). Does not know: the layouts themselves (`metadata_csv`,
`image_folder`), zip safety (`archives`) or how built-ins are generated (`diffubias.builtin`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from diffubias.archives import extract_zip
from diffubias.builtin import BUILTIN_NAMES, ensure_builtin
from diffubias.dataset import METADATA_FILE, ImageDataset
from diffubias.decoding import CheckedFiles
from diffubias.image_folder import is_hidden, load_image_folder
from diffubias.metadata_csv import load_metadata_csv
from diffubias.progress import ProgressFn, report

BUILTIN_PREFIX = "builtin:"
CHECKED_FOLDER = "checked"  # under cache_dir: what checking each dataset folder found


def load_dataset(
    source: str | Path,
    *,
    cache_dir: Path,
    seed: int = 0,
    conflict_ratio: float = 0.01,
    valid_fraction: float = 0.2,
    progress: ProgressFn | None = None,
) -> ImageDataset:
    """Load `source`: "builtin:<name>", a folder, or a .zip file (extracted under `cache_dir`).

    `conflict_ratio` and `seed` pick the built-in variant; `seed` and `valid_fraction` also drive
    the train/valid split of a plain ImageFolder. Other sources ignore them. `progress` hears
    the extraction of a .zip and the check of every image; what the check found is remembered
    under `cache_dir` (`CheckedFiles`), so opening the same folder again checks only files that
    changed.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1); got {valid_fraction!r}")
    cache_dir = Path(cache_dir)
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        name = source.removeprefix(BUILTIN_PREFIX)
        root = ensure_builtin(name, cache_dir=cache_dir, conflict_ratio=conflict_ratio, seed=seed)
        # we generated it: every image is sound
        return load_metadata_csv(root, name=source, verify=False)
    path = Path(source).expanduser()
    if path.is_dir():
        path = path.resolve()
        return _load_root(path, name=path.name, seed=seed, valid_fraction=valid_fraction,
                          progress=progress, cache_dir=cache_dir)
    if path.is_file() and path.suffix.lower() == ".zip":
        report(progress, 0.0, f"extracting {path.name}")
        root = _find_data_root(extract_zip(path, cache_dir=cache_dir))
        return _load_root(root, name=path.stem, seed=seed, valid_fraction=valid_fraction,
                          progress=progress, cache_dir=cache_dir)
    builtins = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_NAMES)
    raise ValueError(
        f"dataset source {str(source)!r} is not a folder, a .zip file, or one of {builtins}"
    )


def _load_root(root: Path, *, name: str, seed: int, valid_fraction: float,
               progress: ProgressFn | None, cache_dir: Path) -> ImageDataset:
    checked = CheckedFiles(cache_dir / CHECKED_FOLDER
                           / f"{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.json")
    if (root / METADATA_FILE).is_file():
        if not (root / METADATA_FILE).resolve().is_relative_to(root.resolve()):
            raise ValueError(f"{name}/{METADATA_FILE} is a link to a file outside the dataset "
                             "folder; copy the file in instead")
        ds = load_metadata_csv(root, name=name, verify=True, progress=progress,
                               checked=checked)
    else:
        ds = load_image_folder(root, name=name, seed=seed, valid_fraction=valid_fraction,
                               progress=progress, checked=checked)
    checked.save()  # only for a dataset that loaded: a refused one leaves nothing behind
    return ds


def _find_data_root(extracted: Path) -> Path:
    """Descend through single wrapping folders (zipping a folder adds one) to the dataset root."""
    root = extracted
    while not (root / METADATA_FILE).is_file():
        entries = [e for e in root.iterdir() if not is_hidden(e.name) and e.name != "__MACOSX"]
        if len(entries) != 1 or not entries[0].is_dir():
            break
        only = entries[0]
        if not any(child.is_dir() or child.name == METADATA_FILE for child in only.iterdir()):
            break  # `only` holds images directly: it is a class folder, not a wrapper
        root = only
    return root
