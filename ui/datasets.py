"""Projects and their datasets: importing a dataset into the store, and loading it back.

A project row keeps, in `settings`, the `RunConfig` it was last run with (`"config"`) and what the
import found (`"summary"`). Every dataset is loaded with `diffubias.dataset_sources` into the
workspace's `images/` folder: built-ins are generated there, archives extracted there, and a
folder under the data root is linked there, so each sample's stored path is relative to the
workspace. A dataset is written to the store only after it loaded and validated; nothing is
written on a `ValueError`.

`DatasetCache` keeps one loaded `PreparedDataset` per project for the life of the process.
Library modules that pull in torch are imported inside the functions that need them, so the web
page can come up before torch has loaded.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffubias.config import RunConfig
from diffubias.progress import ProgressFn, part, report
from storage import Store, Workspace
from storage import repository as repo
from storage.models import JobKind, JobStatus

if TYPE_CHECKING:
    from diffubias.prepared import PreparedDataset

DEMO_NAME = "Demo: colored digits"
DEMO_SOURCE = "builtin:colored-digits"
DEMO_CONFLICT_RATIO = 0.01
LINKS_FOLDER = "links"  # images/links/<name>: folders opened from the data root
REPORTED_SKIPS = 500  # skipped files listed in the import report (all are counted)


def dataset_cache_dir(workspace: Workspace) -> Path:
    """Where built-ins are generated and archives extracted: the workspace's images folder."""
    return workspace.root.absolute() / "images"


def stored_config(project_settings: dict[str, Any]) -> RunConfig:
    """The project's RunConfig, ignoring keys this library version no longer knows."""
    known = {f.name for f in fields(RunConfig)}
    saved = {k: v for k, v in project_settings.get("config", {}).items() if k in known}
    return RunConfig.from_dict(saved)


def project_config(workspace: Workspace, project_settings: dict[str, Any]) -> RunConfig:
    """The RunConfig to run with: the stored one, with the dataset and cache in this workspace."""
    config = stored_config(project_settings)
    dataset = config.dataset
    if not dataset.startswith("builtin:"):
        dataset = str(workspace.resolve(dataset))  # stored relative to the workspace
    return config.with_overrides(dataset=dataset, cache_dir=str(dataset_cache_dir(workspace)))


def save_project_config(store: Store, project_id: int, config: RunConfig) -> None:
    """Remember the settings a stage ran with, so the next page load shows them."""
    with store.sessions.begin() as session:
        record_project_config(session, project_id, config)


def record_project_config(session, project_id: int, config: RunConfig) -> None:
    """`save_project_config` within the caller's transaction."""
    changed = config.to_dict()
    for key in ("dataset", "cache_dir"):  # stay as stored: workspace-relative
        changed.pop(key)
    project = repo.get_project(session, project_id)
    settings = dict(project.settings)
    settings["config"] = {**settings.get("config", {}), **changed}
    repo.update_project_settings(session, project_id, settings)


class DatasetCache:
    """One loaded dataset per project, loaded on first use and kept for the process's life."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._loaded: dict[int, PreparedDataset] = {}
        self._lock = threading.Lock()

    def get(self, project_id: int, progress: ProgressFn | None = None) -> PreparedDataset:
        """The project's dataset; `progress` hears "loading the dataset" when it is not loaded
        yet (a job's first seconds after a restart)."""
        with self._lock:
            if project_id in self._loaded:
                return self._loaded[project_id]
        from diffubias.prepared import PreparedDataset

        if progress is not None:
            progress(0.0, "loading the dataset")

        with self.store.sessions() as session:
            project = repo.get_project(session, project_id)
            if project is None:
                raise ValueError(f"project {project_id} does not exist; pick another project")
            settings = project.settings
        data = PreparedDataset.load(project_config(self.store.workspace, settings))
        with self._lock:
            return self._loaded.setdefault(project_id, data)

    def put(self, project_id: int, data: PreparedDataset) -> None:
        with self._lock:
            self._loaded[project_id] = data


# -- importing ---------------------------------------------------------------------------------


def import_builtin(store: Store, datasets: DatasetCache, source: str, *, name: str,
                   conflict_ratio: float = DEMO_CONFLICT_RATIO, seed: int = 0,
                   progress: ProgressFn | None = None) -> int:
    """A project from a built-in dataset ("builtin:<name>"), generated on first use."""
    config = RunConfig(dataset=source, conflict_ratio=conflict_ratio, seed=seed,
                       cache_dir=str(dataset_cache_dir(store.workspace)))
    return _import(store, datasets, config, name=name, origin=f"{source} ({conflict_ratio:.1%} "
                   f"bias-conflicting, seed {seed})", stored_dataset=source,
                   progress=progress)


def import_archive(store: Store, datasets: DatasetCache, zip_path: Path, *, name: str,
                   progress: ProgressFn | None = None) -> int:
    """A project from an uploaded .zip in the dataset format (extracted under the workspace)."""
    zip_path = Path(zip_path)
    if zip_path.suffix.lower() != ".zip":
        raise ValueError(f"{zip_path.name} is not a .zip file; upload a .zip holding "
                         "metadata.csv and the images, or an ImageFolder")
    from diffubias.archives import extracted_folder

    cache_dir = dataset_cache_dir(store.workspace)
    config = RunConfig(dataset=str(zip_path), cache_dir=str(cache_dir))
    if not zip_path.is_file():
        raise ValueError(f"{zip_path.name} was not found; upload it again")
    folder = extracted_folder(zip_path, cache_dir=cache_dir)
    with removed_on_error(cache_dir, folder.parent, leaf=folder):
        # stored_dataset=None: the extracted folder, so a restart needs no copy of the upload
        return _import(store, datasets, config, name=name, origin=f"upload {zip_path.name}",
                       stored_dataset=None, progress=progress)


def import_folder(store: Store, datasets: DatasetCache, folder: Path, *, data_root: Path | None,
                  name: str, progress: ProgressFn | None = None) -> int:
    """A project from a folder (or .zip) under the data root, linked into the workspace."""
    if data_root is None:
        raise ValueError("no data root is configured; start the app with --data-root DIR to "
                         "open folders on this machine")
    folder = Path(folder)
    if not folder.is_absolute():
        folder = data_root / folder
    folder = folder.resolve()
    if not folder.is_relative_to(data_root.resolve()) or not folder.exists():
        raise ValueError(f"{folder} is not a folder under the data root {data_root}")
    if folder.is_file():
        return import_archive(store, datasets, folder, name=name, progress=progress)
    link = store.workspace.path_for("images", LINKS_FOLDER, _slug(str(folder)))
    if link.is_symlink() and link.resolve() != folder:
        raise ValueError(f"{link} already links to another folder ({link.resolve()})")
    cache_dir = dataset_cache_dir(store.workspace)
    with removed_on_error(cache_dir, link.parent, leaf=link):
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(folder, target_is_directory=True)
        config = RunConfig(dataset=str(folder), cache_dir=str(cache_dir))
        return _import(store, datasets, config, name=name, origin=str(folder),
                       stored_dataset=store.workspace.relative(link), sample_root=link,
                       progress=progress)


@contextmanager
def removed_on_error(*folders: Path, leaf: Path) -> Iterator[None]:
    """If the block raises, `leaf` (a file, link or folder) and those of `folders` (its parents)
    that did not exist before are removed again, so a refused import leaves the workspace as it
    was. A parent is removed only while empty: another import may be writing into it."""
    new = [path for path in (*folders, leaf) if not path.exists() and not path.is_symlink()]
    try:
        yield
    except BaseException:
        for path in reversed(new):  # the leaf first, then its parents, deepest first
            if path.is_symlink() or path.is_file():
                path.unlink(missing_ok=True)
            elif path == leaf:
                shutil.rmtree(path, ignore_errors=True)
            else:
                with suppress(OSError):
                    path.rmdir()
        raise


def unique_project_name(store: Store, name: str) -> str:
    name = " ".join(name.split()) or "dataset"
    with store.sessions() as session:
        candidate, n = name, 2
        while repo.get_project_by_name(session, candidate) is not None:
            candidate, n = f"{name} ({n})", n + 1
    return candidate


def _import(store: Store, datasets: DatasetCache, config: RunConfig, *, name: str, origin: str,
            stored_dataset: str | None, sample_root: Path | None = None,
            progress: ProgressFn | None = None) -> int:
    from diffubias.prepared import PreparedDataset

    start = time.perf_counter()
    # every ValueError is raised here, before anything is stored (the only file written is the
    # cache of checked files, once the dataset loaded: decoding.CheckedFiles)
    data = PreparedDataset.load(config, part(progress, 0.0, 0.9))
    ds = data.ds
    root = sample_root if sample_root is not None else ds.root
    prefix = store.workspace.relative(root)
    if stored_dataset is None:
        stored_dataset = store.workspace.relative(ds.root)
    summary = dataset_summary(data)
    settings = {"config": config.with_overrides(dataset=stored_dataset, cache_dir="").to_dict(),
                "summary": summary}
    bias = ds.bias.tolist() if ds.bias is not None else [None] * len(ds.paths)
    masks = ds.mask_paths or [None] * len(ds.paths)
    rows = ({"position": i, "path": f"{prefix}/{path}", "split": str(ds.split[i]),
             "label": int(ds.labels[i]), "bias": None if b is None or b < 0 else int(b),
             "mask_path": None if m is None else f"{prefix}/{m}"}
            for i, (path, b, m) in enumerate(zip(ds.paths, bias, masks, strict=True)))
    report(progress, 0.9, f"storing {len(ds.paths):,} samples")
    with store.sessions.begin() as session:
        project = repo.create_project(session, name=unique_project_name(store, name),
                                      source=origin, class_names=ds.class_names,
                                      bias_names=ds.bias_names, image_size=data.image_size,
                                      settings=settings)
        repo.add_samples(session, project.id, rows)
        job = repo.create_job(session, project.id, JobKind.IMPORT, {"source": origin})
        repo.start_job(session, job.id)
        repo.finish_job(session, job.id, JobStatus.DONE, result=summary,
                        timings={"total": time.perf_counter() - start})
        project_id = project.id
    datasets.put(project_id, data)
    return project_id


def dataset_summary(data: PreparedDataset) -> dict[str, Any]:
    """What the import found, for the Dataset tab and the report (skipped files listed up to
    REPORTED_SKIPS, all counted)."""
    summary = data.summary()
    summary["skipped"] = summary["skipped"][:REPORTED_SKIPS]
    return summary


def list_data_root(data_root: Path | None) -> list[str]:
    """Folders and .zip files directly under the data root, relative to it."""
    if data_root is None or not data_root.is_dir():
        return []
    entries = [p for p in sorted(data_root.iterdir()) if not p.name.startswith(".")
               and (p.is_dir() or p.suffix.lower() == ".zip")]
    return [p.name for p in entries]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[-80:] or "dataset"
