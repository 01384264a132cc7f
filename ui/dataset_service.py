"""Tab 1, Dataset: open a built-in, an uploaded .zip or a folder under the data root, and show
what was found (splits, class counts, bias and captions metadata, a sample grid).

Plain functions over a `Studio`: they return project ids or a `DatasetView`, and raise
`ValueError` with a message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffubias.builtin import BUILTIN_NAMES, BUILTIN_TITLES
from diffubias.config import RunConfig
from storage import repository as repo
from ui.datasets import import_archive, import_builtin, import_folder, list_data_root
from ui.jobs import UiProgress
from ui.studio import Studio
from ui.thumbnails import thumbnail

BUILTIN_DATASETS = {f"builtin:{name}": BUILTIN_TITLES[name] for name in BUILTIN_NAMES}
SAMPLES_PER_CLASS = 8


@dataclass(frozen=True)
class DatasetView:
    project_id: int
    name: str
    source: str
    image_size: int
    class_names: list[str]
    bias_names: list[str]
    summary: dict[str, Any]
    class_counts: list[list[Any]]  # class, train, valid, test[, conflicting in train]
    count_headers: list[str]
    tiles: list[tuple[str, str]] = field(default_factory=list)  # (thumbnail path, caption)


def open_builtin(studio: Studio, source: str, conflict_ratio: float, seed: int, *,
                 ui: UiProgress | None = None) -> int:
    if source not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {source!r}; choose one of "
                         f"{', '.join(BUILTIN_DATASETS)}")
    checked = RunConfig(dataset=source, conflict_ratio=conflict_ratio, seed=seed)
    label = source.removeprefix("builtin:").replace("-", " ")
    name = f"Built-in: {label} ({checked.conflict_ratio:.1%}, seed {checked.seed})"
    return import_builtin(studio.store, studio.datasets, source, name=name,
                          conflict_ratio=checked.conflict_ratio, seed=checked.seed, progress=ui)


def upload_archive(studio: Studio, zip_path: str | Path | None, name: str = "", *,
                   ui: UiProgress | None = None) -> int:
    if not zip_path:
        raise ValueError("No file uploaded: drop a .zip with metadata.csv and the images")
    zip_path = Path(zip_path)
    return import_archive(studio.store, studio.datasets, zip_path,
                          name=name.strip() or zip_path.stem, progress=ui)


def open_data_folder(studio: Studio, folder: str | None, name: str = "", *,
                     ui: UiProgress | None = None) -> int:
    if not folder:
        raise ValueError("No folder chosen: pick one from the list of the data root")
    return import_folder(studio.store, studio.datasets, Path(folder), data_root=studio.data_root,
                         name=name.strip() or Path(folder).name, progress=ui)


def data_root_entries(studio: Studio) -> list[str]:
    return list_data_root(studio.data_root)


def dataset_view(studio: Studio, project_id: int | None) -> DatasetView | None:
    if project_id is None:
        return None
    from diffubias.dataset import SPLITS  # imports torch: not before a project is shown

    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        if project is None:
            return None
        counts = repo.class_split_counts(session, project.id)
        pairs = repo.label_bias_counts(session, project.id)
        samples = repo.samples_per_class(session, project.id, split="train",
                                         per_class=SAMPLES_PER_CLASS)
    aligned = majority_bias(pairs)
    headers = ["class", *SPLITS]
    if aligned:
        headers.append("bias-conflicting in train")
    rows = []
    for label, name in enumerate(project.class_names):
        row: list[Any] = [name, *(counts.get((split, label), 0) for split in SPLITS)]
        if aligned:
            row.append(sum(n for (c, b), n in pairs.items() if c == label and b != aligned[c]))
        rows.append(row)
    tiles = []
    for sample in samples:
        caption = project.class_names[sample.label]
        if sample.bias is not None and project.bias_names:
            caption += f" · {project.bias_names[sample.bias]}"
        path = thumbnail(workspace, workspace.resolve(sample.path), project.id, sample.id)
        tiles.append((str(path), caption))
    return DatasetView(project.id, project.name, project.source, project.image_size,
                       list(project.class_names), list(project.bias_names),
                       dict(project.settings.get("summary", {})), rows, headers, tiles)


def import_report(view: DatasetView) -> list[tuple[str, str]]:
    """(path, reason) of each file the import skipped, as stored (the first REPORTED_SKIPS)."""
    return [(str(item["path"]), str(item["reason"])) for item in view.summary.get("skipped", [])]


def opened_message(view: DatasetView) -> str:
    """What the user reads after opening a dataset: its name, and how many files were skipped."""
    message = f"✓ Opened **{view.name}**. The other tabs now work on it."
    skipped = int(view.summary.get("n_skipped", 0))
    if skipped:
        message += (f" ⚠ {skipped} file(s) skipped (unreadable, missing or unsafe): see the "
                    "import report.")
    return message


def majority_bias(pairs: dict[tuple[int, int], int]) -> dict[int, int]:
    """Each class's commonest bias attribute in train (the bias-aligned one); {} if unknown."""
    best: dict[int, tuple[int, int]] = {}
    for (label, bias), count in sorted(pairs.items()):
        if label not in best or count > best[label][1]:
            best[label] = (bias, count)
    return {label: bias for label, (bias, _) in best.items()}
