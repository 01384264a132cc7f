"""A job driven from the page against the same job through the API, side by side: the app's
own cost of a browser (its polling and progress redraws share the machine with the training).

Usage: python bench/browser.py [--repeats 3] [--epochs 3]   (writes the `browser` section of
docs/BENCHMARKS.md)

Starts `python app.py` on a fresh workspace, runs the demo workflow up to Generate through the
API (the library's defaults, except 1 biased epoch), then trains the vanilla and the debiased
models `--repeats` times each way, alternating: through gradio_client, and by clicking "Train
debiased model" in headless Chromium (Debian's /usr/bin/chromium through playwright; never a
downloaded browser). Each time is the job's own wall time as the store recorded it; the CPU
seconds Chromium used meanwhile are reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from app import free_port, start_app  # noqa: E402, I001 (bench/app.py, first on sys.path)
from markdown import machine_line, write_section  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
IDLE_S = 30
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]


def cpu_seconds(pattern: str) -> float:
    """User + system CPU seconds of the processes whose command line matches `pattern`."""
    out = subprocess.run(["ps", "-eo", "times,args"], capture_output=True, text=True).stdout
    return float(sum(int(line.split()[0]) for line in out.splitlines()[1:]
                     if pattern in line))


def last_debias_seconds(database: Path) -> float:
    with sqlite3.connect(database) as db:
        timings, = db.execute("SELECT timings FROM jobs WHERE kind = 'debias' AND "
                              "status = 'done' ORDER BY id DESC LIMIT 1").fetchone()
    return float(json.loads(timings)["total"])


def run(repeats: int, epochs: int) -> dict:
    from gradio_client import Client
    from playwright.sync_api import sync_playwright

    from diffubias.config import RunConfig

    d = RunConfig()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "workspace"
        port = free_port()
        process = start_app(workspace, port).process
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False,
                            httpx_kwargs={"timeout": 60})
            while (project := client.predict(api_name="/open_page")[1]) is None:
                time.sleep(0.2)
            client.predict(project, d.arch, d.width, 1, d.gce_q, d.top_k, d.seed, d.batch_size,
                           api_name="/train_biased")
            client.predict(project, d.captioner, "", 3, "", 0, "", 10, api_name="/run_captioner")
            client.predict(project, d.generator, "", d.gen_steps, d.guidance_scale,
                           d.images_per_prompt, d.seed, d.max_images, api_name="/generate")
            api, browser, chromium = [], [], []
            with sync_playwright() as playwright:
                chrome = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                    args=CHROMIUM_ARGS)
                page = chrome.new_page(viewport={"width": 1440, "height": 1000})
                page.set_default_timeout(1_800_000)
                page.goto(f"http://127.0.0.1:{port}/?tab=debias")
                page.wait_for_selector("#debias-summary:has-text('Train')")
                before = cpu_seconds("chrom")
                page.wait_for_timeout(IDLE_S * 1000)  # the open page alone: its poll
                idle = cpu_seconds("chrom") - before
                for i in range(repeats):
                    client.predict(project, epochs, True, api_name="/train_debiased")
                    api.append(last_debias_seconds(workspace / "diffubias.sqlite"))
                    page.reload()
                    page.wait_for_selector("#accuracy-table:has-text('debiased')")
                    box = page.locator("#debias-epochs input")
                    while box.input_value() != str(epochs):  # the settings load may overwrite it
                        box.fill(str(epochs))
                        page.wait_for_timeout(500)
                    before = cpu_seconds("chrom")
                    page.click("#train-debiased")
                    page.wait_for_selector("#debias-status:has-text('Trained on')")
                    chromium.append(cpu_seconds("chrom") - before)
                    browser.append(last_debias_seconds(workspace / "diffubias.sqlite"))
                    print(f"round {i + 1}: API {api[-1]:.1f} s, browser {browser[-1]:.1f} s "
                          f"(Chromium {chromium[-1]:.0f} CPU s)", flush=True)
                chrome.close()
        finally:
            process.terminate()
            process.wait(timeout=30)
    return {"api": api, "browser": browser, "chromium": chromium, "epochs": epochs,
            "idle_cpu_share": idle / IDLE_S, "load": os.getloadavg()[0]}


def render(result: dict) -> str:
    ratio = median(result["browser"]) / median(result["api"])
    rounds = len(result["api"])
    return "\n".join([
        "## The app driven from a browser", "",
        f"Measured by `python bench/browser.py` on {machine_line()}; load average at the end "
        f"{result['load']:.1f}. The demo project's vanilla and debiased models "
        f"({result['epochs']} epochs each) trained {rounds} times through the API and "
        f"{rounds} times by clicking in headless Chromium, alternating, on one app; each time "
        "is the job's own, as the store recorded it.", "",
        "| driven by | job seconds, each run | median | Chromium CPU seconds |",
        "|---|---|---|---|",
        f"| gradio_client (API) | {', '.join(f'{s:.0f}' for s in result['api'])} | "
        f"{median(result['api']):.0f} | |",
        f"| the page (Chromium) | {', '.join(f'{s:.0f}' for s in result['browser'])} | "
        f"{median(result['browser']):.0f} | "
        f"{', '.join(f'{s:.0f}' for s in result['chromium'])} |", "",
        f"Browser / API: **{ratio:.2f}x** (target: within 1.5x). The page redraws a job's "
        "progress bar at most twice a second (`ui.events.progress_callback`, not Gradio's "
        "`track_tqdm`, which sent every step of every progress bar) and the header's "
        "once-a-second poll sends only what changed (`ui.header.follow_jobs`). The open page "
        f"alone, idle, kept Chromium busy {result['idle_cpu_share']:.0%} of one core over "
        f"{IDLE_S} s (the poll): CPU a 2-core machine takes from the training."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit("needs Debian's chromium at /usr/bin/chromium and `pip install "
                         "playwright` (never `playwright install`)")
    body = render(run(args.repeats, args.epochs))
    print(body)
    print(f"wrote {write_section('browser', body)}")


if __name__ == "__main__":
    main()
