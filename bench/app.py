"""The web app's speed: start-up, a 200-thumbnail gallery page, histogram and top-K queries over
200,000 stored scores, and the whole demo workflow with the default settings through the UI's
API.

Usage: python bench/app.py [--skip-workflow]   (writes the `app` section of docs/BENCHMARKS.md)

Start-up and the workflow run `python app.py` in a child process on a fresh workspace and talk to
it over HTTP (gradio_client), as a browser would; the 200k-score queries run on a synthetic store.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from markdown import machine_line, write_section  # noqa: E402

N_SCORES = 200_000
REPEATS = 5
STARTS = 3  # start-up is measured on this many fresh workspaces; the median is reported


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Started:
    process: subprocess.Popen
    answer_s: float  # process start to the first HTTP answer (the 503 starting page)
    page_s: float  # ... to HTTP 200 on / (the app's page)
    api_s: float  # ... to its page config and API answering


def start_app(workspace: Path, port: int, *args: str) -> Started:
    """`python app.py --workspace WORKSPACE --port PORT ARGS...`, timed until it serves."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py", "--workspace", str(workspace),
                                "--port", str(port), *args], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    answer = page = None
    while True:
        if process.poll() is not None:
            raise RuntimeError("the app exited during start-up")
        try:
            status = httpx.get(url, timeout=1).status_code
            answer = answer or time.perf_counter() - start
            if page is None and status == 200:
                page = time.perf_counter() - start
            if page is not None and httpx.get(url + "config", timeout=1).status_code == 200:
                return Started(process, answer, page, time.perf_counter() - start)
        except httpx.HTTPError:
            pass
        time.sleep(0.02)


def timed(call, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return median(times)


def bench_startup_and_workflow(skip_workflow: bool) -> dict:
    from gradio_client import Client

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        starts = []
        for i in range(STARTS - 1):
            started = start_app(Path(tmp) / f"start{i}", free_port())
            started.process.terminate()
            started.process.wait(timeout=30)
            starts.append(started)
        workspace = Path(tmp) / "workspace"
        port = free_port()
        started = start_app(workspace, port)
        process, page_s = started.process, started.page_s
        starts.append(started)
        out.update(answer_s=median(s.answer_s for s in starts),
                   answer_max_s=max(s.answer_s for s in starts),
                   page_s=median(s.page_s for s in starts), api_s=median(s.api_s for s in starts),
                   page_min_s=min(s.page_s for s in starts))
        try:
            # the warm-up's native-library loads hold the GIL for seconds after a start
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False,
                            httpx_kwargs={"timeout": 60})
            start = time.perf_counter()
            while (project := client.predict(api_name="/open_page")[1]) is None:
                time.sleep(0.2)
            out["demo_ready_s"] = page_s + time.perf_counter() - start
            if skip_workflow:
                return out
            from diffubias.config import RunConfig

            d = RunConfig()
            steps = {}
            t = time.perf_counter()
            detection = client.predict(project, d.arch, d.width, d.biased_epochs, d.gce_q,
                                       d.top_k, d.seed, d.batch_size,
                                       api_name="/train_biased")[1]
            steps["train biased model, score, top-K"] = time.perf_counter() - t
            out["gallery"] = bench_gallery(client, project, port)
            t = time.perf_counter()
            _, _, table, _ = client.predict(project, d.captioner, "", 3, "", 0, "", 10,
                                            api_name="/run_captioner")
            table["data"][0][3] = "a red digit on a black background"
            client.predict(project, table, api_name="/save_prompts")
            steps["caption, filter, keywords, edit a prompt"] = time.perf_counter() - t
            t = time.perf_counter()
            client.predict(project, d.generator, "", d.gen_steps, d.guidance_scale,
                           d.images_per_prompt, d.seed, d.max_images, api_name="/generate")
            steps["generate images"] = time.perf_counter() - t
            t = time.perf_counter()
            status, summary = client.predict(project, d.debias_epochs, True,
                                             api_name="/train_debiased")[:2]
            steps["train vanilla and debiased models"] = time.perf_counter() - t
            t = time.perf_counter()
            client.predict(project, d.cam_method, "conflicting", d.cam_samples,
                           api_name="/run_gradcam")
            client.predict(project, api_name="/export_report")
            steps["Grad-CAM and export"] = time.perf_counter() - t
            out.update(steps=steps, workflow_s=sum(steps.values()), debias_status=status,
                       detection=detection, debias_summary=summary, config=d)
        finally:
            process.terminate()
            process.wait(timeout=30)
    return out


def bench_gallery(client, project: int, port: int) -> dict:
    """A page of 200 candidate thumbnails: the handler (thumbnails made on the first call) and
    fetching every image over HTTP."""
    def page():
        return client.predict(1, project, -1, 200, api_name="/candidates_page")[0]

    start = time.perf_counter()
    tiles = page()
    cold = time.perf_counter() - start
    warm = timed(page)
    urls = [f"http://127.0.0.1:{port}/gradio_api/file={t['image']['path']}" for t in tiles]

    def fetch_all():
        with httpx.Client() as http:
            for url in urls:
                http.get(url).raise_for_status()

    return {"n": len(tiles), "cold_s": cold, "warm_s": warm, "fetch_s": timed(fetch_all),
            "bytes": sum(Path(t["image"]["path"]).stat().st_size for t in tiles)}


def bench_scores() -> dict:
    """Histogram and top-K queries over 200,000 stored scores (10 classes, bias known)."""
    from storage import open_store
    from storage import repository as repo
    from ui import bias_service

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "workspace")
        rng = random.Random(0)
        classes = [f"class{i}" for i in range(10)]
        with store.sessions.begin() as session:
            project = repo.create_project(session, name="bench", source="synthetic",
                                          class_names=classes, bias_names=classes, image_size=28)
            repo.add_samples(session, project.id, (
                {"position": i, "path": f"images/{i}.png", "split": "train", "label": i % 10,
                 "bias": i % 10 if rng.random() > 0.01 else rng.randrange(10)}
                for i in range(N_SCORES)))
            job = repo.create_job(session, project.id, "biased_train")
            ids = repo.sample_ids_by_position(session, project.id)
            losses = {sid: rng.expovariate(1.0) for sid in ids.values()}
            ranked = sorted(losses, key=losses.get, reverse=True)
            per_class: dict[int, int] = {}
            rows = []
            for sid in ranked:
                label = (sid - 1) % 10
                rank = per_class.get(label, 0)
                per_class[label] = rank + 1
                rows.append({"sample_id": sid, "loss": losses[sid], "is_candidate": rank < 400,
                             "rank_in_class": rank if rank < 400 else None})
            repo.add_scores(session, job.id, rows)
            repo.finish_job(session, job.id, "done", result={"threshold": 1.0})
        names = classes
        results = {}
        with store.sessions() as session:
            results["histogram_sql_s"] = timed(lambda: repo.loss_histogram(session, job.id,
                                                                           bins=60))
            results["histogram_figure_s"] = timed(lambda: bias_service.loss_histogram_figure(
                session, job.id, names, 1.0))
            results["histogram_figure_class_s"] = timed(lambda: bias_service.loss_histogram_figure(
                session, job.id, names, 1.0, label=3))
            results["topk_page_s"] = timed(lambda: (
                repo.count_candidates(session, job.id),
                repo.top_candidates(session, job.id, offset=1000, limit=200)))
            results["topk_class_page_s"] = timed(lambda: repo.top_candidates(
                session, job.id, label=7, offset=200, limit=200))
        store.close()
    return results


def _backends(config) -> str:
    """The captioner and generator the demo project's `auto` settings stood for, marked when
    either is an oracle."""
    from diffubias.shipped_models import oracle_note, resolve
    from ui.datasets import DEMO_SOURCE

    names = {k: resolve(getattr(config, k), DEMO_SOURCE, kind=k)
             for k in ("captioner", "generator")}
    notes = [n for n in (oracle_note(v, DEMO_SOURCE) for v in names.values()) if n]
    text = f"captioner `{names['captioner']}`, generator `{names['generator']}`"
    return text + (f" (UPPER BOUND: {'; '.join(notes)})" if notes else
                   " (the project's own models, no oracle)")


def render(startup: dict, scores: dict) -> str:
    lines = ["## Web app (`app.py`)", "",
             f"Measured by `python bench/app.py` on {machine_line()}; load average at the start "
             f"{os.getloadavg()[0]:.1f} (other work shares the cores). Medians of {REPEATS} runs "
             "where repeated.", "",
             "| what | target | measured |", "|---|---|---|",
             f"| `python app.py` → first answer: the 503 starting page (process start to the "
             f"first HTTP answer; median of {STARTS} fresh starts, slowest "
             f"{startup['answer_max_s']:.2f} s) | < 3 s | {startup['answer_s']:.2f} s |",
             f"| → the app's page served (process start to HTTP 200; fastest "
             f"{startup['page_min_s']:.2f} s) | < 3 s | {startup['page_s']:.2f} s |",
             f"| → page config and API answering | | {startup['api_s']:.2f} s |",
             f"| → demo project ready on a fresh workspace (generated in the background) | | "
             f"{startup['demo_ready_s']:.1f} s |"]
    gallery = startup.get("gallery")
    if gallery:
        lines += [
            f"| top-K gallery page of {gallery['n']} thumbnails, first view (makes them) | < 1 s"
            f" | {gallery['cold_s']:.2f} s |",
            f"| the same page again (API round trip) | < 1 s | {gallery['warm_s']:.2f} s |",
            f"| fetching its {gallery['n']} thumbnails over HTTP "
            f"({gallery['bytes'] / 1024:.0f} KiB) | | {gallery['fetch_s']:.2f} s |"]
    lines += [
        f"| loss histogram, SQL bins, {N_SCORES:,} scores | < 1 s | "
        f"{scores['histogram_sql_s']:.3f} s |",
        f"| loss histogram figure (aligned/conflicting, hover classes), {N_SCORES:,} scores | "
        f"< 1 s | {scores['histogram_figure_s']:.3f} s |",
        f"| the same for one class | < 1 s | {scores['histogram_figure_class_s']:.3f} s |",
        f"| top-K page of 200 + count, {N_SCORES:,} scores | < 1 s | "
        f"{scores['topk_page_s'] * 1000:.1f} ms |",
        f"| top-K page of 200 of one class | < 1 s | {scores['topk_class_page_s'] * 1000:.1f} ms |"]
    if "steps" in startup:
        d = startup["config"]
        lines += [f"| whole demo workflow through the UI's API, default settings | < 6 min | "
                  f"{startup['workflow_s'] / 60:.1f} min |", "",
                  f"The workflow used the library's defaults: biased model {d.biased_epochs} "
                  f"epochs (width {d.biased_width}; the classifiers' {d.width}), "
                  f"{_backends(d)} with "
                  f"{d.images_per_prompt} images per kept prompt, {d.debias_epochs} epochs for "
                  f"the vanilla and the debiased model, Grad-CAM on {d.cam_samples} "
                  f"bias-conflicting test images, then the report. Results as the app shows "
                  "them:", "",
                  "\n>\n".join(f"> {line}" for line in [*startup["detection"].split("\n\n"),
                                                          startup["debias_summary"]]), "",
                  "| step | seconds |", "|---|---|"]
        lines += [f"| {name} | {seconds:.1f} |" for name, seconds in startup["steps"].items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-workflow", action="store_true",
                        help="start-up and queries only (no training)")
    args = parser.parse_args()
    scores = bench_scores()
    startup = bench_startup_and_workflow(args.skip_workflow)
    body = render(startup, scores)
    print(body)
    print(f"wrote {write_section('app', body)}")


if __name__ == "__main__":
    main()
