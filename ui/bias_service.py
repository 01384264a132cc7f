"""Tab 2, Bias: train the biased classifier (GCE), score every train sample, pick the top-K per
class, and browse them.

`train_biased` runs the detect stage (`diffubias.stages.detect`) as a job and stores the scores, the weights
and the metrics; the views read only the store (plus the loss histogram from
`diffubias.plots`), so they stay fast at hundreds of thousands of scores.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffubias.evaluation_split import evaluated_on
from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.dataset_service import majority_bias
from ui.datasets import project_config, save_project_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.review import count_exclusion, truth_shown
from ui.studio import Studio
from ui.thumbnails import LARGE_PX, thumbnail

if TYPE_CHECKING:
    import plotly.graph_objects as go

DEFAULT_PAGE_SIZE = 40


@dataclass(frozen=True)
class DetectionView:
    job_id: int | None
    metrics: dict[str, Any]  # detection metrics (precision@K, ... when the bias is known)
    test: dict[str, Any]  # the biased model's test accuracy by group
    params: dict[str, Any]
    n_scored: int
    n_candidates: int
    n_excluded: int
    threshold: float | None
    seconds: float | None
    histogram: go.Figure | None = field(default=None, repr=False)
    # classes whose every training sample is a candidate because K (a count) is not smaller
    # than the class: {class name: class size}
    whole_classes: dict[str, int] = field(default_factory=dict)
    split: str = "test"  # the split the biased model is scored on (diffubias.evaluation_split)
    # its accuracies per epoch and a warning when it looks unbiased
    # (diffubias.rankers.Diagnostics.to_dict()); {} for runs before it was recorded
    biased_model: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CandidatePage:
    tiles: list[tuple[str, str]]  # (thumbnail path, caption)
    sample_ids: list[int]
    page: int  # 1-based
    n_pages: int
    total: int


@dataclass(frozen=True)
class SampleDetail:
    sample_id: int
    image: str  # a large rendering, in the workspace
    label: str
    bias: str | None
    conflicting: bool | None
    loss: float
    rank_in_class: int | None
    excluded: bool
    split: str
    position: int
    captions: list[tuple[str, str]]  # (text, source)


def current_detection_job(session, project_id: int):
    return repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)


def train_biased(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                 ui: UiProgress | None = None) -> DetectionView:
    """Train the biased model, score the train split, store the top-K; returns the new view.

    `changes`: {RunConfig field: value}, e.g. arch, width, biased_width, biased_epochs, gce_q,
    top_k, seed, batch_size; a setting left out or None keeps the project's last one (at first,
    RunConfig's default)."""
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        if project is None:
            raise ValueError(f"project {project_id} does not exist")
        settings = project.settings
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    save_project_config(studio.store, project_id, config)
    params = {"ranker": config.ranker, "arch": config.arch, "width": config.width,
              "biased_width": config.biased_width, "biased_epochs": config.biased_epochs,
              "gce_q": config.gce_q, "biased_selection": config.biased_selection,
              "top_k": config.top_k,
              "seed": config.seed, "batch_size": config.batch_size}
    if config.ranker == "committee":
        params["committee_size"] = config.committee_size

    def work(progress: JobProgress) -> JobOutcome:
        return _detect(studio, project_id, config, progress)

    studio.jobs.run(project_id, JobKind.BIASED_TRAIN, params, work, ui=ui)
    return detection_view(studio, project_id)


def _detect(studio: Studio, project_id: int, config, progress: JobProgress) -> JobOutcome:
    """The detect stage, stored: scores, the biased model's weights and metrics."""
    from diffubias.models import save_classifier
    from diffubias.stages.detect import detect_bias

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    detection = detect_bias(data, config, progress=progress.part(0.0, 0.97))
    trained = time.perf_counter()
    progress(0.97, "saving scores")
    progress.check()
    weights = studio.store.workspace.path_for("weights", progress.job_id, "biased.safetensors")
    save_classifier(detection.training.model, weights)
    rank = detection.rank_in_class()
    test = detection.test.to_dict()
    with studio.store.sessions.begin() as session:
        ids = repo.sample_ids_by_position(session, project_id)
        repo.add_scores(session, progress.job_id, (
            {"sample_id": ids[int(p)], "loss": float(loss), "is_candidate": bool(r >= 0),
             "rank_in_class": int(r) if r >= 0 else None}
            for p, loss, r in zip(detection.positions, detection.losses, rank, strict=True)))
        history = [vars(epoch) for epoch in detection.training.history]
        repo.add_model(session, project_id, role=ModelRole.BIASED,
                       weights_path=studio.store.workspace.relative(weights),
                       arch=detection.training.model.spec.arch, job_id=progress.job_id,
                       metrics={"test": test, "epochs": config.biased_epochs,
                                "history": history})
    result = {"detection": _finite(detection.metrics), "test": test,
              "threshold": detection.threshold, "n_scored": len(detection.positions),
              "n_candidates": len(detection.selected), "config": config.to_dict(),
              "whole_classes": detection.whole_classes(config.top_k, data.ds.class_names),
              "biased_model": _finite(detection.diagnostics.to_dict())
              if detection.diagnostics is not None else {}}
    return JobOutcome(result, {"train_and_score": trained - start,
                               "evaluate_and_store": time.perf_counter() - trained})


def _finite(value: Any) -> Any:
    """NaN (e.g. recall with no conflicts) as None: JSON columns hold no NaN."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- views -------------------------------------------------------------------------------------


def detection_view(studio: Studio, project_id: int | None, *, label: int | None = None,
                   with_histogram: bool = True) -> DetectionView:
    """The current detection run; the histogram shows one class when `label` is given."""
    empty = DetectionView(None, {}, {}, {}, 0, 0, 0, None, None)
    if project_id is None:
        return empty
    with studio.store.sessions() as session:
        job = current_detection_job(session, int(project_id))
        if job is None:
            return empty
        project = repo.get_project(session, int(project_id))
        n_excluded = repo.count_candidates(session, job.id) - repo.count_candidates(
            session, job.id, include_excluded=False)
        histogram = (loss_histogram_figure(session, job.id, project.class_names,
                                           job.result.get("threshold"), label=label,
                                           show_truth=truth_shown(project.settings))
                     if with_histogram else None)
    result = job.result
    return DetectionView(job.id, result.get("detection", {}), result.get("test", {}),
                         dict(job.params), result.get("n_scored", 0),
                         result.get("n_candidates", 0), n_excluded, result.get("threshold"),
                         job.timings.get("total"), histogram,
                         dict(result.get("whole_classes", {})),
                         evaluated_on(project.settings.get("summary", {})
                                      .get("split_sizes", {})),
                         dict(result.get("biased_model", {})))


def loss_histogram_figure(session, job_id: int, class_names: list[str],
                          threshold: float | None, *, label: int | None = None,
                          show_truth: bool = True) -> go.Figure | None:
    """The per-sample loss histogram, split into bias-aligned and bias-conflicting samples when
    every scored sample's bias is known and `show_truth` (`ui.review`). For one class, the
    threshold is that class's lowest candidate loss; for all, the lowest over the classes (K is
    per class)."""
    from diffubias.evaluation import aligned_bias_per_class, conflict_mask
    from diffubias.plots import loss_histogram

    columns = repo.score_columns(session, job_id)
    if not columns.losses:
        return None
    losses = np.asarray(columns.losses, dtype=np.float64)
    labels = np.asarray(columns.labels, dtype=np.int64)
    is_conflict = None
    if show_truth and all(b is not None for b in columns.biases):
        bias = np.asarray(columns.biases, dtype=np.int64)
        is_conflict = conflict_mask(labels, bias, aligned_bias_per_class(labels, bias))
    title = "Per-sample loss under the biased model"
    if label is not None:
        keep = labels == label
        candidates = keep & np.asarray(columns.is_candidate, dtype=bool)
        threshold = float(losses[candidates].min()) if candidates.any() else None
        losses, labels = losses[keep], labels[keep]
        is_conflict = None if is_conflict is None else is_conflict[keep]
        title += f": class {class_names[label]}"
        if not len(losses):
            return None
    # K is per class: across classes the line is the lowest class threshold, which more samples
    # than the candidates reach, so the annotation counts the candidates instead
    n_selected = None if label is not None else int(np.sum(columns.is_candidate))
    figure = loss_histogram(losses, is_conflict=is_conflict, threshold=threshold, labels=labels,
                            class_names=class_names, n_selected=n_selected)
    figure.update_layout(title=title, height=340, margin={"l": 50, "r": 20, "t": 50, "b": 40},
                         legend={"orientation": "h", "y": 1.14, "x": 0.45})
    return figure


def candidate_page(studio: Studio, project_id: int | None, *, label: int | None = None,
                   page: int = 1, page_size: int = DEFAULT_PAGE_SIZE) -> CandidatePage:
    """One page of the top-K candidates (of one class, or all), highest loss first."""
    if project_id is None:
        return CandidatePage([], [], 1, 1, 0)
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        job = current_detection_job(session, int(project_id))
        if job is None:
            return CandidatePage([], [], 1, 1, 0)
        project = repo.get_project(session, int(project_id))
        total = repo.count_candidates(session, job.id, label=label)
        n_pages = max(1, math.ceil(total / page_size))
        page = min(max(1, int(page)), n_pages)
        rows = repo.top_candidates(session, job.id, label=label,
                                   offset=(page - 1) * page_size, limit=page_size)
        aligned = (_aligned(session, int(project_id)) if truth_shown(project.settings)
                   else {})  # the answer stays hidden while a person reviews
    tiles = []
    for row in rows:
        caption = f"{project.class_names[row.label]} · {row.loss:.2f}"
        if row.bias is not None and aligned and row.bias != aligned.get(row.label):
            caption += " ⚑"  # bias-conflicting (known bias only)
        if row.excluded:
            caption = "✗ " + caption
        path = thumbnail(workspace, workspace.resolve(row.path), project.id, row.sample_id)
        tiles.append((str(path), caption))
    return CandidatePage(tiles, [row.sample_id for row in rows], page, n_pages, total)


def _aligned(session, project_id: int) -> dict[int, int]:
    return majority_bias(repo.label_bias_counts(session, project_id))


def sample_detail(studio: Studio, project_id: int, sample_id: int) -> SampleDetail:
    """A candidate shown large: its label, bias, loss, rank and captions."""
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        job = current_detection_job(session, int(project_id))
        sample = repo.get_sample(session, int(sample_id))
        if job is None or sample is None or sample.project_id != int(project_id):
            raise ValueError(f"sample {sample_id} is not scored in this project; train the "
                             "biased model first")
        score = repo.get_score(session, job.id, sample.id)
        if score is None:
            raise ValueError(f"sample {sample_id} has no score in the current detection run")
        project = repo.get_project(session, int(project_id))
        caption_job = repo.latest_job(session, int(project_id), JobKind.CAPTION)
        captions = ([(c.text, c.source) for c in
                     repo.list_captions(session, caption_job.id, sample_id=sample.id)
                     if c.params.get("set") != "aligned"] if caption_job else [])
        shown = truth_shown(project.settings)
        aligned = _aligned(session, int(project_id)) if shown else {}
    if not captions:
        captions = [(text, "dataset metadata") for text in _metadata_captions(studio, project_id,
                                                                              sample.position)]
    large = thumbnail(workspace, workspace.resolve(sample.path), project.id, "large", sample.id,
                      size=LARGE_PX, fmt="png")
    bias = (project.bias_names[sample.bias]
            if shown and sample.bias is not None and project.bias_names else None)
    conflicting = (sample.bias != aligned.get(sample.label)
                   if sample.bias is not None and aligned else None)
    return SampleDetail(sample.id, str(large), project.class_names[sample.label], bias,
                        conflicting, score.loss, score.rank_in_class, score.excluded,
                        sample.split, sample.position, captions)


def _metadata_captions(studio: Studio, project_id: int, position: int) -> list[str]:
    try:
        return list(studio.datasets.get(project_id).ds.captions[position])
    except (ValueError, OSError):  # the dataset is gone from disk: show no captions
        return []


def set_excluded(studio: Studio, project_id: int, sample_id: int,
                 excluded: bool) -> SampleDetail:
    """Take a candidate out of (or back into) the set that gets captioned."""
    with studio.store.sessions.begin() as session:
        job = current_detection_job(session, int(project_id))
        if job is None:
            raise ValueError("no detection run yet: train the biased model first")
        repo.set_candidate_excluded(session, job.id, int(sample_id), bool(excluded))
        count_exclusion(session, int(project_id))
    return sample_detail(studio, project_id, sample_id)
