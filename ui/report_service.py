"""The stakeholder report and the downloads: one self-contained HTML file (charts with plotly.js
inlined, images as data URIs, so it opens offline and can be mailed), the debiased model's
weights, and the augmented data (the generated images that were not rejected, in the dataset
format: images plus metadata.csv, ready to add to the train split).

`export_report` reads only the store and the workspace: everything it shows was stored by the
stages. It writes under workspace/reports/<job>/ and workspace/exports/<job>/.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diffubias.text_safety import csv_cell
from storage import atomic_write_bytes
from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.bias_service import detection_view
from ui.caption_service import captions_view
from ui.debias_service import METRICS, debias_view
from ui.generate_service import current_images
from ui.gradcam_service import gradcam_view
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.studio import Studio
from ui.thumbnails import thumbnail

MAX_GALLERY = 40  # tiles per gallery in the report
MAX_PROMPTS = 60
MAX_CAM_ROWS = 16


@dataclass(frozen=True)
class ExportView:
    job_id: int | None
    report: str | None  # absolute paths, in the workspace
    model: str | None
    dataset: str | None
    n_generated: int


def export_report(studio: Studio, project_id: int, *, ui: UiProgress | None = None
                  ) -> ExportView:
    with studio.store.sessions() as session:
        if repo.latest_job(session, project_id, JobKind.BIASED_TRAIN) is None:
            raise ValueError("nothing to report yet: train the biased model in tab 2 first")

    def work(progress: JobProgress) -> JobOutcome:
        return _export(studio, project_id, progress)

    studio.jobs.run(project_id, JobKind.EXPORT, {}, work, ui=ui)
    return export_view(studio, project_id)


def export_view(studio: Studio, project_id: int | None) -> ExportView:
    if project_id is None:
        return ExportView(None, None, None, None, 0)
    with studio.store.sessions() as session:
        job = repo.latest_job(session, int(project_id), JobKind.EXPORT)
    if job is None:
        return ExportView(None, None, None, None, 0)
    workspace = studio.store.workspace

    def absolute(key: str) -> str | None:
        value = job.result.get(key)
        return str(workspace.resolve(value)) if value else None

    return ExportView(job.id, absolute("report"), absolute("model"), absolute("dataset"),
                      job.result.get("n_generated", 0))


def _export(studio: Studio, project_id: int, progress: JobProgress) -> JobOutcome:
    start = time.perf_counter()
    workspace = studio.store.workspace
    progress(0.1, "collecting results")
    page = render_report(studio, project_id)
    report = workspace.path_for("reports", progress.job_id, "report.html")
    atomic_write_bytes(report, page.encode("utf-8"))
    progress(0.6, "packing the generated images")
    dataset, n_generated = _augmented_zip(studio, project_id, progress.job_id)
    with studio.store.sessions() as session:
        debiased = repo.latest_model(session, project_id, ModelRole.DEBIASED)
    result = {"report": workspace.relative(report),
              "model": debiased.weights_path if debiased else None,
              "dataset": workspace.relative(dataset) if dataset else None,
              "n_generated": n_generated}
    return JobOutcome(result, {"export": time.perf_counter() - start})


def _augmented_zip(studio: Studio, project_id: int, job_id: int) -> tuple[Path | None, int]:
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        prompts, images = current_images(session, project_id)
        sources = repo.samples_by_ids(session, {p.sample_id for p in prompts if p.sample_id})
    images = [im for im in images if im.accepted is not False]
    if not images:
        return None, 0
    by_id = {p.id: p for p in prompts}
    buffer = io.BytesIO()
    rows = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # PNGs: already compressed
        for image in images:
            prompt = by_id[image.prompt_id]
            name = f"generated/{project.class_names[prompt.label]}/{Path(image.path).name}"
            archive.write(workspace.resolve(image.path), name)
            source = sources.get(prompt.sample_id)
            rows.append({"path": name, "split": "train",
                         "label": project.class_names[prompt.label], "caption": prompt.text,
                         "source_path": source.path if source else "", "seed": image.seed,
                         "model": image.model,
                         "review": {True: "accepted", None: "unreviewed"}[image.accepted]})
        table = io.StringIO()
        # the default "\r\n" line ending: with "\n" a cell holding a bare "\r" is not quoted
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        # captions come from models and users: guard formulas for whoever opens it in a sheet
        writer.writerows({k: csv_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                         for row in rows)
        archive.writestr("metadata.csv", table.getvalue())
        archive.writestr("README.txt", (
            f"Generated bias-conflicting images for {project.name}, made by DiffuBias Studio.\n"
            "metadata.csv follows the dataset format (path, split, label, caption) plus "
            "provenance columns.\nAdd these rows to your train split to train the debiased "
            "model yourself.\n"))
    path = workspace.path_for("exports", job_id, "augmented-dataset.zip")
    atomic_write_bytes(path, buffer.getvalue())
    return path, len(images)


# -- the HTML page -----------------------------------------------------------------------------


def render_report(studio: Studio, project_id: int) -> str:
    """The whole report as one HTML string."""
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        jobs = {kind: repo.latest_job(session, project_id, kind) for kind in
                (JobKind.BIASED_TRAIN, JobKind.CAPTION, JobKind.FILTER, JobKind.GENERATE,
                 JobKind.DEBIAS, JobKind.GRADCAM)}
        candidates = []
        if jobs[JobKind.BIASED_TRAIN] is not None:
            candidates = repo.top_candidates(session, jobs[JobKind.BIASED_TRAIN].id,
                                             limit=MAX_GALLERY, include_excluded=False)
        _, images = current_images(session, project_id)
        prompt_text = {p.id: p.text for p in repo.list_prompts(session, project_id)}
    workspace = studio.store.workspace
    detection = detection_view(studio, project_id)
    captions = captions_view(studio, project_id)
    debias = debias_view(studio, project_id)
    cams = gradcam_view(studio, project_id, rows_per_page=MAX_CAM_ROWS)
    names = project.class_names
    summary = project.settings.get("summary", {})
    figures = []  # plotly.js goes into the first chart only
    parts = [f"<h1>Bias audit: {_e(project.name)}</h1>",
             f"<p class=muted>DiffuBias Studio report, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
             f"Source: {_e(project.source)}.</p>"]

    parts.append("<h2>1. Dataset</h2>")
    parts.append(_table(["split", "images"], [[s, n] for s, n in
                                              summary.get("split_sizes", {}).items()]))
    parts.append(f"<p>{len(names)} classes ({_e(', '.join(names))}); image size "
                 f"{project.image_size} px; bias attribute "
                 f"{'known: ' + _e(', '.join(project.bias_names)) if project.bias_names else 'unknown'}"
                 f"; {summary.get('n_skipped', 0)} file(s) skipped at import.</p>")

    parts.append("<h2>2. Bias detection</h2>")
    if detection.job_id is None:
        parts.append("<p>Not run.</p>")
    else:
        parts.append(f"<p>A deliberately biased classifier (GCE, settings below) scored "
                     f"{detection.n_scored} training samples; the highest-loss samples of each "
                     f"class (top-K per class, {detection.n_candidates} in all) are the "
                     f"bias-conflicting candidates ({detection.n_excluded} excluded by the "
                     "reviewer).</p>")
        metrics = {k: v for k, v in detection.metrics.items() if isinstance(v, (int, float))}
        if metrics:
            parts.append(_table(["metric", "value"], [[k, _fmt(v)] for k, v in metrics.items()]))
        if detection.histogram is not None:
            figures.append(detection.histogram)
            parts.append(_figure(detection.histogram, first=len(figures) == 1))
        parts.append("<h3>Top candidates</h3>")
        parts.append(_gallery([(thumbnail(workspace, workspace.resolve(c.path), project.id,
                                          c.sample_id), f"{names[c.label]} · {c.loss:.2f}")
                               for c in candidates]))
        parts.append(_settings(detection.params))

    parts.append("<h2>3. Captions and prompts</h2>")
    if captions.caption_job_id is None:
        parts.append("<p>Not run.</p>")
    else:
        kept = [p for p in captions.prompts if p.keep]
        parts.append(f"<p>Captioner <b>{_e(captions.captioner)}</b>: {captions.n_captions} "
                     f"captions of {captions.n_images} candidates. Text filter: top "
                     f"{captions.top_f} words ({_e(', '.join(w for w, _ in captions.top_words))})"
                     f"; {len(kept)} prompts kept, "
                     f"{sum(p.edited for p in captions.prompts)} edited by hand.</p>")
        parts.append(_table(["class", "prompt", "edited"],
                            [[p.label, p.text, "yes" if p.edited else ""]
                             for p in kept[:MAX_PROMPTS]]))
        if captions.keywords:
            parts.append("<h3>Bias keywords per class</h3>")
            parts.append(_table(["class", "keywords (candidates / aligned samples using it)"],
                                [[c, ", ".join(f"{k['term']} ({k['n_candidates']}/"
                                               f"{k['n_aligned']})" for k in found[:6])]
                                 for c, found in captions.keywords.items()]))

    parts.append("<h2>4. Generated images</h2>")
    kept_images = [im for im in images if im.accepted is not False]
    if not images:
        parts.append("<p>Not run.</p>")
    else:
        generate = jobs[JobKind.GENERATE]
        parts.append(f"<p>{len(images)} images, {len(images) - len(kept_images)} rejected by the "
                     f"reviewer. Generator: {_e(str(generate.result.get('model')))}.</p>")
        parts.append(_gallery([(thumbnail(workspace, workspace.resolve(im.path), "generated",
                                          im.id), prompt_text.get(im.prompt_id, ""))
                               for im in kept_images[:MAX_GALLERY]]))
        parts.append(_settings(generate.params, skip=("filter_job_id",)))

    parts.append("<h2>5. Accuracy before and after</h2>")
    if not debias.rows:
        parts.append("<p>Not run.</p>")
    else:
        parts.append(_table(["model", *METRICS, "training images"],
                            [[r.role, *(_fmt(r.test.get(m)) for m in METRICS),
                              r.n_train if r.n_train is not None else ""]
                             for r in debias.rows]))
        if debias.figure is not None:
            figures.append(debias.figure)
            parts.append(_figure(debias.figure, first=len(figures) == 1))

    parts.append("<h2>6. Where the models look (Grad-CAM)</h2>")
    if cams.job_id is None:
        parts.append("<p>Not run.</p>")
    else:
        parts.append(f"<p>{_e(cams.method)} on {cams.n_samples} {_e(cams.sample_set)} samples; "
                     "each model explains its own prediction. Accuracy on them: "
                     + ", ".join(f"{k} {v:.1%}" for k, v in cams.agreement.items()) + ".</p>")
        if cams.figure is not None:
            figures.append(cams.figure)
            parts.append(_figure(cams.figure, first=len(figures) == 1))
        parts.append(_gallery([(Path(path), caption) for path, caption in cams.tiles],
                              columns=3))
    parts.append("<h2>Settings</h2>")
    parts.append(_settings(project.settings.get("config", {})))
    return _page(f"Bias audit: {project.name}", "\n".join(parts))


def _e(text: Any) -> str:
    return html.escape(str(text))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return _e(value)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _settings(settings: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    rows = [[k, v] for k, v in sorted(settings.items()) if k not in skip
            and not isinstance(v, (list, dict))]
    return "<details><summary>settings</summary>" + _table(["setting", "value"], rows) + \
        "</details>"


def _data_uri(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    mime = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}.get(suffix, "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _gallery(tiles: list[tuple[Path, str]], columns: int | None = None) -> str:
    style = f' style="grid-template-columns: repeat({columns}, 120px)"' if columns else ""
    cells = "".join(f'<figure><img src="{_data_uri(Path(p))}" alt=""><figcaption>{_e(c)}'
                    "</figcaption></figure>" for p, c in tiles)
    return f'<div class="gallery"{style}>{cells}</div>'


def _figure(figure, *, first: bool) -> str:
    return figure.to_html(include_plotlyjs=first, full_html=False)


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1f2933; }}
h1 {{ margin-bottom: 0.2em; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: 0.2em;
       margin-top: 2em; }}
.muted {{ color: #667; }}
table {{ border-collapse: collapse; margin: 0.8em 0; }}
td, th {{ border: 1px solid #ddd; padding: 4px 10px; text-align: left; font-size: 0.92em; }}
th {{ background: #f4f6f8; }}
.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, 120px); gap: 8px; }}
figure {{ margin: 0; }} figure img {{ width: 112px; height: 112px; object-fit: contain;
       image-rendering: pixelated; background: #eee; }}
figcaption {{ font-size: 0.75em; color: #445; }}
</style></head><body>
{body}
</body></html>
"""
