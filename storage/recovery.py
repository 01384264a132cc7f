"""Start-up recovery after a crash or a kill: what a previous process left half done.

A job that was queued or running when its process died is marked interrupted (with a message
saying to run it again). Its files that no row points at (an image written but not yet recorded,
weights of a model that was never stored, a report half exported) and any temp file of an
unfinished atomic write are removed, so what is on disk matches what the database lists. Files a
row still points at stay: generated images of an interrupted generation are what a rerun resumes
from.

Files are only ever removed inside `<kind>/<job id>/` folders of jobs that did not finish, and
symlinks are never followed. Knows nothing of torch or Gradio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from storage import repository as repo
from storage.db import Store
from storage.workspace import JOB_FOLDERS


@dataclass(frozen=True)
class Recovery:
    interrupted: list[int] = field(default_factory=list)  # job ids marked interrupted now
    removed: list[str] = field(default_factory=list)  # workspace-relative paths deleted


def recover(store: Store) -> Recovery:
    """Mark the jobs a dead process left active as interrupted and remove their stray files."""
    with store.sessions.begin() as session:
        interrupted = repo.interrupt_active_jobs(session)
        unfinished = repo.unfinished_job_ids(session)
        keep = repo.referenced_paths(session, unfinished)
    workspace = store.workspace
    removed = []
    for kind in JOB_FOLDERS:
        for job_id in unfinished:
            folder = workspace.path_for(kind, job_id)
            if folder.is_symlink() or not folder.is_dir():
                continue
            for path in _files(folder):
                relative = workspace.relative(path)
                if relative not in keep:
                    path.unlink()
                    removed.append(relative)
            _remove_empty_folders(folder)
    return Recovery(interrupted, removed)


def _files(folder: Path) -> list[Path]:
    out = []
    for parent, folders, names in os.walk(folder, followlinks=False):
        folders[:] = [f for f in folders if not (Path(parent) / f).is_symlink()]
        out += [Path(parent) / name for name in names
                if (Path(parent) / name).is_file() and not (Path(parent) / name).is_symlink()]
    return sorted(out)


def _remove_empty_folders(folder: Path) -> None:
    for parent, _, _ in sorted(os.walk(folder, followlinks=False), key=lambda w: -len(w[0])):
        try:
            Path(parent).rmdir()
        except OSError:  # not empty
            pass
