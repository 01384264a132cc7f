"""The web app at scale: a 10k, 50k and 200k-image dataset through the app's whole path, as a user
drives it, with time and the app's peak memory at each step.

Usage:
  python bench/scale.py                          # 10k, 50k and 200k images (about an hour here)
  python bench/scale.py --sizes 10000 --no-write # one size, print the table
On a GPU machine the app trains there by itself (device "auto"); the same command measures it.

For each size: a labelled 32 px PNG dataset is generated once (10 classes, a background colour as
the shortcut for 99 % of train, `metadata.csv` with train/valid/test and the bias column) in a
data root; `python app.py --data-root ... --no-demo` is started on a fresh workspace and driven
over HTTP (gradio_client), as a browser would:

1. upload the same dataset as a .zip (`/import_zip`: transfer, extraction, every image checked),
   then open it as a folder from the Dataset tab (`/open_folder`: every image checked); the
   rest runs on the folder's project;
2. the first page of that project (`/open_page`) and of its Dataset-tab sample grid;
3. train the biased model for 1 epoch and score every training sample (`/train_biased`), while
   a second client reads the page every 0.5 s, as another browser tab: its slowest answer is
   how long the store's write lock held readers up;
4. the Bias tab's gallery page (48 and 200 tiles, thumbnails made on first request) and, after
   the app has stopped, the Bias tab's view with the loss histogram over every score (in this
   process, on the same workspace);
5. kill and resume: the same training started again, the app SIGKILLed half-way, restarted
   (time until the page is served again) and the training run again to the end.

Peak memory is the app process's VmHWM (its resident high-water mark) read from /proc. Writes the
`scale` section of docs/BENCHMARKS.md and docs/benchmarks-scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from app import free_port, start_app  # noqa: E402
from markdown import BENCHMARKS_MD, machine_line, write_section  # noqa: E402

SIZES = (10_000, 50_000, 200_000)
IMAGE_PX = 32
N_CLASSES = 10
ALIGNED_SHARE = 0.99
SPLIT_SHARES = {"train": 0.8, "valid": 0.1, "test": 0.1}
COLOURS = np.array([[220, 40, 40], [40, 180, 40], [40, 80, 220], [230, 200, 40], [200, 60, 200],
                    [40, 200, 200], [240, 140, 30], [130, 130, 130], [150, 90, 40],
                    [250, 250, 250]], dtype=np.uint8)
BIASED = {"arch": "auto", "width": 16, "biased_epochs": 1, "gce_q": 0.7, "top_k": 0.02,
          "seed": 0, "batch_size": 256}  # the /train_biased API's parameters, in order
JSON_PATH = ROOT / "docs" / "benchmarks-scale.json"


# -- the dataset -------------------------------------------------------------------------------


def make_zip(folder: Path) -> Path:
    """`folder` zipped (stored, as PNGs do not compress) next to it, made once."""
    import zipfile

    archive = folder.with_suffix(".zip")
    if not archive.exists():
        partial = archive.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    out.write(file, file.relative_to(folder).as_posix())
        partial.rename(archive)
    return archive


def make_dataset(size: int, folder: Path, *, seed: int = 0) -> Path:
    """`size` labelled PNGs with a colour shortcut under `folder` (made once per size)."""
    done = folder / "metadata.csv"
    if done.exists():
        return folder
    from PIL import Image

    rng = np.random.default_rng(seed)
    split = rng.choice(list(SPLIT_SHARES), size=size, p=list(SPLIT_SHARES.values()))
    labels = rng.integers(0, N_CLASSES, size=size)
    aligned = (split == "train") & (rng.random(size) < ALIGNED_SHARE)
    bias = np.where(aligned, labels, rng.integers(0, N_CLASSES, size=size))
    rows = []
    for i in range(size):
        image = np.empty((IMAGE_PX, IMAGE_PX, 3), dtype=np.uint8)
        image[:] = COLOURS[bias[i]]
        image = np.clip(image + rng.integers(-20, 21, size=image.shape), 0, 255).astype(np.uint8)
        # the class: a black bar whose position and direction depend on the label
        offset = 4 + 5 * (labels[i] % 5)
        if labels[i] < 5:
            image[offset:offset + 4, 4:28] = 0
        else:
            image[4:28, offset:offset + 4] = 0
        path = f"{split[i]}/{labels[i]}/{i:06d}.png"
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / path, compress_level=1)
        rows.append(f"{path},{split[i]},class{labels[i]},colour{bias[i]}")
    done.write_text("path,split,label,bias\n" + "\n".join(rows) + "\n")
    return folder


# -- the app -----------------------------------------------------------------------------------


class App:
    """`python app.py` on `workspace` (bench/app.py's start_app), with its memory high-water
    mark read from /proc."""

    def __init__(self, workspace: Path, data_root: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        started = start_app(workspace, port, "--data-root", str(data_root), "--no-demo")
        self.process, self.served_s = started.process, started.page_s

    def client(self):
        from gradio_client import Client

        # the warm-up's native-library loads hold the GIL for seconds after a start
        return Client(self.url, verbose=False, download_files=False,
                      httpx_kwargs={"timeout": 60})

    def peak_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


class Reader(threading.Thread):
    """Another browser tab: reads the page every 0.5 s and keeps its slowest answer."""

    def __init__(self, app: App) -> None:
        super().__init__(daemon=True)
        self.client, self.slowest, self.reads = app.client(), 0.0, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            seconds, _ = timed(lambda: self.client.predict(api_name="/open_page"))
            self.slowest, self.reads = max(self.slowest, seconds), self.reads + 1
            self.stopped.wait(0.5)


def running_job(workspace: Path, after: int) -> sqlite3.Row | None:
    connection = sqlite3.connect(f"file:{workspace / 'diffubias.sqlite'}?mode=ro", uri=True,
                                 timeout=10)
    connection.row_factory = sqlite3.Row
    try:
        return connection.execute("SELECT * FROM jobs WHERE id > ? AND kind = 'biased_train' "
                                  "ORDER BY id DESC LIMIT 1", (after,)).fetchone()
    finally:
        connection.close()


def bench_size(size: int, data_root: Path, workspace: Path) -> dict:
    folder = make_dataset(size, data_root / f"scale-{size}")
    out: dict = {"size": size}
    app = App(workspace, data_root)
    out["served_s"] = app.served_s
    try:
        client = app.client()
        from gradio_client import handle_file

        archive = make_zip(folder)
        out["zip_mb"] = archive.stat().st_size / 1e6
        out["upload_s"], _ = timed(lambda: client.predict(handle_file(str(archive)), "upload",
                                                          api_name="/import_zip"))
        out["upload_peak_mb"] = app.peak_mb()
        out["import_s"], _ = timed(lambda: client.predict(folder.name, api_name="/open_folder"))
        out["import_peak_mb"] = app.peak_mb()
        out["open_page_s"], page = timed(lambda: client.predict(api_name="/open_page"))
        # the page opens the newest project: the folder's
        project = int(page[1])
        reader = Reader(app)
        reader.start()
        out["detect_s"], detect = timed(lambda: client.predict(project, *BIASED.values(),
                                                               api_name="/train_biased"))
        reader.stopped.set()
        reader.join()
        out["detect_status"] = str(detect[0])[:160]
        out["reader_slowest_s"], out["reader_reads"] = reader.slowest, reader.reads
        out["detect_peak_mb"] = app.peak_mb()
        for size_tiles in (48, 200):
            first, _ = timed(lambda n=size_tiles: client.predict(1, project, -1, n,
                                                                  api_name="/candidates_page"))
            again = median(timed(lambda n=size_tiles: client.predict(
                1, project, -1, n, api_name="/candidates_page"))[0] for _ in range(3))
            out[f"gallery_{size_tiles}_first_s"], out[f"gallery_{size_tiles}_s"] = first, again
        out["peak_mb"] = app.peak_mb()
        # kill half-way through the same training, restart, run it again
        newest = running_job(workspace, 0)["id"]
        client.submit(project, *BIASED.values(), api_name="/train_biased")
        while (job := running_job(workspace, newest)) is None or job["progress"] < 0.5:
            if job is not None and job["status"] not in ("queued", "running"):
                raise RuntimeError(f"the job ended before the kill: {job['status']}")
            time.sleep(0.1)
        app.kill()
        app = App(workspace, data_root)
        out["restart_after_kill_s"] = app.served_s
        client = app.client()
        out["rerun_s"], _ = timed(lambda: client.predict(project, *BIASED.values(),
                                                         api_name="/train_biased"))
        out["peak_mb"] = max(out["peak_mb"], app.peak_mb())
    finally:
        app.stop()
    out.update(bias_view(workspace, project))
    return out


def bias_view(workspace: Path, project: int) -> dict:
    """The Bias tab's view with its histogram over every score, timed in this process."""
    from ui import bias_service
    from ui.studio import Studio

    studio = Studio.open(workspace)
    try:
        first, view = timed(lambda: bias_service.detection_view(studio, project))
        again = median(timed(lambda: bias_service.detection_view(studio, project))[0]
                       for _ in range(3))
        return {"bias_view_first_s": first, "bias_view_s": again, "n_scored": view.n_scored}
    finally:
        studio.close()


# -- the report --------------------------------------------------------------------------------


def render(results: dict) -> str:
    rows = results["rows"]
    head = "| step | " + " | ".join(f"{r['size']:,} images" for r in rows) + " | target |"
    lines = ["## The web app at scale", "",
             f"Measured by `{results['command']}` on {results['machine']}; load average "
             f"{results['load_after']} at the end (a load above 2 means other work shared the "
             "2 cores and stretched the times). Each size runs `python app.py --data-root ... "
             "--no-demo` on a fresh workspace and drives it over HTTP as a browser would "
             "(bench/scale.py says how); the dataset is 32 px PNGs, 10 classes, a colour "
             "shortcut. Peak memory is the app process's resident high-water mark.", "",
             head, "|---|" + "---|" * len(rows) + "---|"]

    def row(title: str, key: str, fmt: str, target: str = "") -> None:
        cells = [format(r[key], fmt) if isinstance(r.get(key), (int, float)) else "-"
                 for r in rows]
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {target} |")

    row("page served after start (s)", "served_s", ".1f", "")
    row("upload as a .zip from the Dataset tab, extracted and checked (s)", "upload_s", ".1f")
    row("size of that .zip (MB)", "zip_mb", ".0f")
    row("open as a folder under --data-root, every image checked (s)", "import_s", ".1f")
    row("peak memory after the import (MB)", "import_peak_mb", ".0f")
    row("first page of the project (s)", "open_page_s", ".2f", "< 1 s")
    row("train the biased model 1 epoch, score, store every score (s)", "detect_s", ".1f")
    row("import + 1-epoch detection (min)", "import_detect_min", ".1f", "< 15 min at 200k")
    row("slowest read by another tab during that job (s)", "reader_slowest_s", ".2f")
    row("Bias tab gallery, 48 tiles, first time (s)", "gallery_48_first_s", ".2f")
    row("Bias tab gallery, 48 tiles (s)", "gallery_48_s", ".2f", "< 1 s")
    row("Bias tab gallery, 200 tiles, first time (s)", "gallery_200_first_s", ".2f")
    row("Bias tab view with the loss histogram over every score (s)", "bias_view_s", ".2f",
        "< 1 s")
    row("restart after SIGKILL during the training (s)", "restart_after_kill_s", ".1f")
    row("the killed training run again (s)", "rerun_s", ".1f")
    row("peak memory of the app, whole run (MB)", "peak_mb", ".0f", "< 4,096 MB")
    lines += ["", "Growth from the smallest to the largest size: " + growth(rows) + ".", "",
              "Every figure is in `docs/benchmarks-scale.json`."]
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    if len(rows) < 2:
        return "one size only"
    small, large = rows[0], rows[-1]
    factor = large["size"] / small["size"]
    parts = [f"{factor:.0f}x the images"]
    for key, name in (("import_s", "import time"), ("detect_s", "detection time"),
                      ("peak_mb", "peak memory"), ("gallery_48_s", "gallery page")):
        if small.get(key) and large.get(key):
            parts.append(f"{large[key] / small[key]:.1f}x the {name}")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--data-root", type=Path, default=Path(tempfile.gettempdir())
                        / "diffubias-scale", help="where the datasets are generated (kept)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.data_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{size} images ...", file=sys.stderr, flush=True)
            row = bench_size(size, args.data_root, Path(tmp) / "workspace")
            row["import_detect_min"] = (row["import_s"] + row["detect_s"]) / 60
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    results = {"rows": rows, "machine": machine_line(),
               "command": " ".join(["python bench/scale.py", *(argv or sys.argv[1:])]),
               "load_after": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    text = render(results)
    if args.no_write:
        print(text)
        return
    JSON_PATH.write_text(json.dumps(results, indent=1) + "\n")
    write_section("scale", text)
    print(f"wrote {BENCHMARKS_MD} and {JSON_PATH}")


if __name__ == "__main__":
    main()
