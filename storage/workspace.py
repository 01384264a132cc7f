"""The workspace folder: the database file plus every file the app writes, one sub-folder per kind.

Rows store paths relative to the workspace root, so a workspace can be moved or copied whole.
`Workspace.resolve` is the one way back from a stored path to a file, and it refuses any path that
would leave the root. The check is lexical (no symlinks followed), so a person may link a large
image folder into the workspace on purpose.

This module knows nothing of the database schema, torch or Gradio.
"""

from __future__ import annotations

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
