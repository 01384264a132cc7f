"""The stakeholder report and the downloads: one self-contained HTML file (charts with plotly.js
inlined, images as data URIs, so it opens offline and can be mailed), the debiased model's
weights, and the augmented data (the generated images that were not rejected, in the dataset
format: images plus metadata.csv, ready to add to the train split).

`export_report` reads only the store and the workspace: everything it shows was stored by the
stages. `report_content` reads them into the library's `ReportContent`, and
`diffubias.report.render_report_html` draws the page, the same one the CLI's `report` writes.
It writes under workspace/reports/<job>/ and workspace/exports/<job>/.
"""

from __future__ import annotations

import csv
import io
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from diffubias.report import (
    MAX_CAM_ROWS,
    MAX_PROMPTS,
    MAX_TILES,
    Accuracy,
    CamRow,
    Captions,
    DatasetSummary,
    Detection,
    Generation,
    GradCam,
    Keyword,
    ModelAccuracy,
    PromptLine,
    ReportContent,
    Tile,
    render_report_html,
)
from diffubias.shipped_models import oracle_note, resolve
from diffubias.text_safety import csv_cell
from storage import atomic_write_bytes
from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.bias_service import detection_view
from ui.caption_service import CaptionsView, captions_view
from ui.checks_service import checks_summary, used_for_training
from ui.datasets import stored_config
from ui.debias_service import DebiasView, debias_view
from ui.generate_service import current_images
from ui.gradcam_service import CamView, gradcam_view
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.loop_service import LoopView, loop_view
from ui.review import review_record
from ui.studio import Studio, redone_since
from ui.thumbnails import thumbnail

# the jobs whose results the report shows
REPORTED_JOBS = (JobKind.BIASED_TRAIN, JobKind.CAPTION, JobKind.FILTER, JobKind.GENERATE,
                 JobKind.DEBIAS, JobKind.GRADCAM)


@dataclass(frozen=True)
class ExportView:
    job_id: int | None
    report: str | None  # absolute paths, in the workspace
    model: str | None
    dataset: str | None
    n_generated: int
    stale: str = ""  # the jobs whose results the report does not include


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
        stale = redone_since(session, job, REPORTED_JOBS)
    if job is None:
        return ExportView(None, None, None, None, 0)
    workspace = studio.store.workspace

    def absolute(key: str) -> str | None:
        value = job.result.get(key)
        return str(workspace.resolve(value)) if value else None

    return ExportView(job.id, absolute("report"), absolute("model"), absolute("dataset"),
                      job.result.get("n_generated", 0), stale)


def _export(studio: Studio, project_id: int, progress: JobProgress) -> JobOutcome:
    start = time.perf_counter()
    workspace = studio.store.workspace
    progress(0.1, "collecting results")
    page = render_report_html(report_content(studio, project_id))
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


# -- the report's content, from the store -------------------------------------------------------


def report_content(studio: Studio, project_id: int) -> ReportContent:
    """What the report shows, read from the store; `render_report_html` draws it."""
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        generate = repo.latest_job(session, project_id, JobKind.GENERATE)
        detection_job = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
        candidates = [] if detection_job is None else repo.top_candidates(
            session, detection_job.id, limit=MAX_TILES, include_excluded=False)
        _, images = current_images(session, project_id)
        prompt_text = {p.id: p.text for p in repo.list_prompts(session, project_id)}
    workspace = studio.store.workspace
    names = project.class_names
    summary = project.settings.get("summary", {})
    dataset = DatasetSummary(tuple(names), dict(summary.get("split_sizes", {})),
                             project.image_size, tuple(project.bias_names or ()),
                             summary.get("n_skipped", 0))
    detection = detection_view(studio, project_id)
    candidate_tiles = tuple(
        Tile(thumbnail(workspace, workspace.resolve(c.path), project.id, c.sample_id),
             f"{names[c.label]} · {c.loss:.2f}") for c in candidates)
    image_checks = stored_config(project.settings).image_checks
    kept_images = [im for im in images if used_for_training(im, image_checks)]
    generator = resolve(generate.params.get("generator", "") if generate else "", project.source,
                        kind="generator")
    return ReportContent(
        project.name, project.source, datetime.now(UTC), dataset,
        detection=None if detection.job_id is None else Detection(
            detection.n_scored, detection.n_candidates, detection.n_excluded,
            detection.metrics, detection.histogram, candidate_tiles,
            settings=detection.params, review=review_record(project.settings),
            biased_model=detection.biased_model),
        captions=_captions(captions_view(studio, project_id), project.source),
        generation=None if not images else Generation(
            generator, len(images), len(images) - len(kept_images),
            tuple(Tile(thumbnail(workspace, workspace.resolve(im.path), "generated", im.id),
                       prompt_text.get(im.prompt_id, "")) for im in kept_images[:MAX_TILES]),
            settings={k: v for k, v in generate.params.items() if k != "filter_job_id"},
            oracle=oracle_note(generator, project.source),
            checks=checks_summary(images), image_checks=image_checks),
        accuracy=_accuracy(debias_view(studio, project_id)),
        gradcam=_gradcam(gradcam_view(studio, project_id, rows_per_page=MAX_CAM_ROWS)),
        settings=project.settings.get("config", {}),
        rounds=_rounds(loop_view(studio, project_id, with_figure=False)))


def _captions(view: CaptionsView, source: str) -> Captions | None:
    if view.caption_job_id is None:
        return None
    kept = [p for p in view.prompts if p.keep]
    keywords = None if not view.keywords else {
        label: tuple(Keyword(k["term"], k["n_candidates"], k["n_aligned"]) for k in found)
        for label, found in view.keywords.items()}
    captioner = resolve(view.captioner, source, kind="captioner")
    return Captions(captioner, view.n_captions, view.n_images, view.top_f,
                    tuple(w for w, _ in view.top_words), len(kept),
                    sum(p.edited for p in view.prompts),
                    tuple(PromptLine(p.label, p.text, p.edited) for p in kept[:MAX_PROMPTS]),
                    keywords, oracle=oracle_note(captioner, source))


def _rounds(view: LoopView) -> tuple[dict, ...]:
    """One dict per round, once any round was re-scored (before, there is nothing to compare)."""
    if not any(r.n_still_wrong is not None for r in view.rounds):
        return ()
    return tuple({"round": r.number, "source": r.source, "n_candidates": r.n_candidates,
                  "n_images": r.n_images, "unbiased": r.test.get("unbiased"),
                  "conflicting": r.test.get("conflicting"), "n_still_wrong": r.n_still_wrong,
                  "mean_gap": r.mean_gap, "mean_true_gap": r.mean_true_gap}
                 for r in view.rounds)


def _accuracy(view: DebiasView) -> Accuracy | None:
    if not view.rows:
        return None
    return Accuracy(tuple(ModelAccuracy(r.role, r.test, r.n_train) for r in view.rows),
                    view.figure, view.split_note)


def _gradcam(view: CamView) -> GradCam | None:
    if view.job_id is None:
        return None
    tiles = [(Path(path), caption) for path, caption in view.tiles]
    rows = tuple(CamRow(image, before, after, (c_image, c_before, c_after))
                 for (image, c_image), (before, c_before), (after, c_after)
                 in zip(tiles[0::3], tiles[1::3], tiles[2::3]))
    return GradCam(view.method, view.n_samples, view.sample_set, view.agreement, view.figure,
                   rows)
