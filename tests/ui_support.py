"""Helpers for the app's tests: launching the app, a workspace that already holds the built-in demo dataset (linked
from the session's dataset cache, so it is generated once per test session), a small uploadable
.zip in the dataset format, and the tiny settings that make the whole workflow run in seconds."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

from diffubias.builtin import ensure_builtin

DEMO_FOLDER = "colored-digits-rho0.01-seed0"
# The whole workflow in seconds on a CPU: tiny model, one epoch, few generated images. Keyed by
# RunConfig field, in the order of the tabs' widgets (API clients pass them by position too).
# The biased model is as wide as the classifier here: at the default 4 one epoch of 40 steps
# leaves it short of fitting even the demo's shortcut (6 epochs of 157 do, bench/detection.py).
TINY_BIAS = {"arch": "auto", "width": 8, "biased_epochs": 1, "gce_q": 0.7, "top_k": 0.02,
             "seed": 0, "batch_size": 256, "ranker": "gce", "biased_selection": "last",
             "committee_size": 5, "biased_width": 8}
TINY_GENERATE = {"images_per_prompt": 2, "max_images": 40}
TINY_DEBIAS_EPOCHS = 1
TINY_CAM_SAMPLES = 12


def launch(workspace: Path):
    """The app as `python app.py --workspace WORKSPACE` serves it, on a free port, without
    blocking: (studio, server, url); `server.close()` stops it."""
    from ui.launch import parse_args
    from ui.studio import Studio

    studio = Studio.open(workspace)
    server = serve(studio, parse_args(["--workspace", str(workspace)]))
    studio.start_background_work()
    return studio, server, server.url


def serve(studio, args):
    """`studio`'s app served as app.serve does, on a free port of 127.0.0.1: an AppServer."""
    import app
    from ui.launch import listen
    from ui.server import AppServer

    app.serve_workspace_statically(studio)
    return AppServer(app.build_app(studio), app.launch_options(args, studio),
                     listen("127.0.0.1", 0))


def link_demo_dataset(builtin_cache: Path, workspace_root: Path) -> Path:
    """Put the built-in demo dataset where the app generates it, as a link to the cache."""
    source = ensure_builtin("colored-digits", cache_dir=builtin_cache, conflict_ratio=0.01,
                            seed=0)
    link = Path(workspace_root) / "images" / "builtin" / DEMO_FOLDER
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(source.resolve(), target_is_directory=True)
    return link


def make_dataset_zip(path: Path, dataset_root: Path, *, per_class: dict[str, int]) -> Path:
    """A .zip in the upload format: the first `per_class[split]` rows of each class in each
    split of `dataset_root`, wrapped in one folder (as zipping a folder does)."""
    with open(dataset_root / "metadata.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    picked, taken = [], {}
    for row in rows:
        key = (row["split"], row["label"])
        if taken.get(key, 0) < per_class.get(row["split"], 0):
            taken[key] = taken.get(key, 0) + 1
            picked.append(row)
    with zipfile.ZipFile(path, "w") as archive:
        for row in picked:
            archive.write(dataset_root / row["path"], f"mini/{row['path']}")
        header = list(picked[0])
        lines = [",".join(header)] + [",".join(_cell(row[h]) for h in header) for row in picked]
        archive.writestr("mini/metadata.csv", "\n".join(lines) + "\n")
    return path


def _cell(value: str) -> str:
    return f'"{value}"' if "," in value else value
