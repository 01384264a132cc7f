"""The workspace folder: the database file plus every file the app writes, one sub-folder per kind.

Rows store paths relative to the workspace root, so a workspace can be moved or copied whole.
`Workspace.resolve` is the one way back from a stored path to a file, and it refuses any path that
would leave the root. The check is lexical (no symlinks followed), so a person may link a large
image folder into the workspace on purpose.

This module knows nothing of the database schema, torch or Gradio.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

DATABASE_NAME = "diffubias.sqlite"

# kind -> sub-folder. Kinds are fixed so that files of one kind never land in another's folder.
FOLDERS = {
    "images": "images",  # imported dataset images
    "masks": "masks",  # imported segmentation / bias masks
    "thumbnails": "thumbnails",
    "weights": "weights",  # classifier weights (safetensors)
    "generated": "generated",  # diffusion outputs
    "gradcam": "gradcam",
    "reports": "reports",
    "exports": "exports",
    "uploads": "uploads",  # browser uploads and the web server's file cache
}


# Folders whose sub-folders are named by the job that wrote them.
JOB_FOLDERS = ("weights", "generated", "gradcam", "reports", "exports")


class WorkspaceUnavailable(RuntimeError):
    """The workspace cannot be created or written (read-only, full, not a folder)."""


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def database_path(self) -> Path:
        return self.root / DATABASE_NAME

    def path_for(self, kind: str, *parts: str | int) -> Path:
        """The absolute path of a file of `kind`, e.g. `path_for("generated", job_id, "0001.png")`.

        Creates nothing; `atomic_write_bytes` makes the parent folders.
        """
        if kind not in FOLDERS:
            raise ValueError(f"unknown workspace kind {kind!r}; expected one of {sorted(FOLDERS)}")
        relative = PurePosixPath(FOLDERS[kind], *(str(part) for part in parts))
        return self.resolve(relative.as_posix())

    def resolve(self, relative_path: str) -> Path:
        """The absolute path of a stored relative path; ValueError if it is absolute or escapes."""
        candidate = PurePosixPath(relative_path.replace("\\", "/"))
        if not relative_path or candidate.is_absolute() or Path(relative_path).anchor:
            raise ValueError(f"expected a path relative to the workspace, got {relative_path!r}")
        normal = PurePosixPath(os.path.normpath(candidate.as_posix()))
        if normal.parts[:1] == ("..",) or normal == PurePosixPath("."):
            raise ValueError(f"path {relative_path!r} leaves the workspace {str(self.root)!r}")
        return self.root / normal

    def relative(self, path: Path) -> str:
        """The string to store for a file under the root (posix separators)."""
        normal = Path(os.path.normpath(Path(path).absolute()))
        root = Path(os.path.normpath(self.root.absolute()))
        if not normal.is_relative_to(root) or normal == root:
            raise ValueError(f"path {str(path)!r} is not inside the workspace {str(root)!r}")
        return normal.relative_to(root).as_posix()


def check_writable(root: Path) -> None:
    """Create `root` if needed and prove a file can be written there; WorkspaceUnavailable with
    the folder and the reason otherwise (before any database write, so nothing is half done)."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(root / ".write-check", b"ok")
        (root / ".write-check").unlink()
    except OSError as error:
        raise WorkspaceUnavailable(f"the workspace {str(root)!r} is not usable: "
                                   f"{describe_os_error(error)}") from error


def describe_os_error(error: OSError) -> str:
    """A file-system error as advice a person can act on."""
    reason = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"the disk is full{where}: free some space (or move the workspace with "
                "--workspace) and run it again")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"it is not writable{where}: {reason}; fix its permissions or choose another "
                "folder with --workspace")
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"a file is in the way{where}: {reason}; choose a folder with --workspace"
    return f"{reason}{where}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
