"""Tab 6, Grad-CAM: where the debiased model and the one it is compared with look, side by side
(`cam_before`: the vanilla model by default, trained on the same data and schedule, the fair
"before"; or the biased GCE model), and (when the dataset has object masks) how much of each
map falls on the object.

`run_gradcam` is a job: it picks samples and runs Grad-CAM with the explain stage
(`diffubias.stages.explain`), and writes each image and both overlays under
workspace/gradcam/<job>/. The job result holds per-sample
predictions, confidences and object masses, so the view needs no model.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffubias.config import CAM_SAMPLE_SETS
from storage import atomic_write_bytes
from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.datasets import project_config, save_project_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.studio import Studio, redone_since

if TYPE_CHECKING:
    import plotly.graph_objects as go

CAM_TILE_PX = 112
ROWS_PER_PAGE = 8


@dataclass(frozen=True)
class CamView:
    job_id: int | None
    method: str
    sample_set: str
    n_samples: int
    mean_mass_before: float | None
    mean_mass_after: float | None
    object_area: float | None
    agreement: dict[str, float]  # accuracy of each model on the explained samples
    tiles: list[tuple[str, str]]  # image, before overlay, debiased overlay per row
    page: int
    n_pages: int
    figure: go.Figure | None = field(default=None, repr=False)
    before_role: str = "vanilla"  # the model the debiased one is compared with
    stale: str = ""  # the jobs that retrained a model since these maps were made


def run_gradcam(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                sample_set: str = "conflicting", ui: UiProgress | None = None) -> CamView:
    """Explain both models on samples of `sample_set` (a CAM_SAMPLE_SETS key) as a job.

    `changes`: {RunConfig field: value}, e.g. cam_method and cam_samples; None keeps the
    project's setting."""
    if sample_set not in CAM_SAMPLE_SETS:
        raise ValueError(f"unknown sample set {sample_set!r}; choose one of "
                         f"{', '.join(CAM_SAMPLE_SETS)}")
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        config = project_config(studio.store.workspace, project.settings).with_changes(changes)
        role = config.cam_before
        before = repo.latest_model(session, project_id, role)
        debiased = repo.latest_model(session, project_id, ModelRole.DEBIASED)
        if before is None or debiased is None:
            where = ("tab 5 with 'also train the vanilla model' ticked" if role == "vanilla"
                     else "tabs 2 and 5")
            raise ValueError(f"Grad-CAM compares the {role} and the debiased model: train "
                             f"both first ({where})")
        candidates = []
        if sample_set == "candidates":
            detection = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
            candidates = [c.position for c in repo.top_candidates(session, detection.id,
                                                                  limit=None)]
    save_project_config(studio.store, project_id, config)
    params = {"method": config.cam_method, "sample_set": sample_set,
              "count": config.cam_samples, "before_role": role,
              "before_model_id": before.id, "debiased_model_id": debiased.id}
    weights = (studio.store.workspace.resolve(before.weights_path),
               studio.store.workspace.resolve(debiased.weights_path))

    def work(progress: JobProgress) -> JobOutcome:
        return _explain(studio, project_id, config, sample_set, candidates, weights, progress)

    studio.jobs.run(project_id, JobKind.GRADCAM, params, work, ui=ui)
    return gradcam_view(studio, project_id)


def _explain(studio: Studio, project_id: int, config, sample_set: str, candidates: list[int],
             weights, progress: JobProgress) -> JobOutcome:
    """The explain stage, stored: each image and both overlays as PNGs, per-sample figures in
    the job result (so the view needs no model)."""
    from diffubias.gradcam import overlay
    from diffubias.models import load_classifier
    from diffubias.stages.explain import cam_positions, explain_models

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    progress(0.05, "loading models")
    before, after = (load_classifier(path) for path in weights)
    positions = cam_positions(data, config, sample_set, candidates)
    if len(positions) == 0:
        raise ValueError(f"no {CAM_SAMPLE_SETS[sample_set]} to explain in this dataset; "
                         "choose another sample set")
    explained = explain_models(data, config, before, after, positions,
                               progress=progress.part(0.2, 0.8))
    images, comparison = explained.images, explained.comparison
    computed = time.perf_counter()
    progress(0.8, "writing overlays")
    progress.check()
    workspace = studio.store.workspace
    labels = data.ds.labels[positions]
    with studio.store.sessions() as session:
        ids = repo.sample_ids_by_position(session, project_id)
    samples = []
    for i, position in enumerate(positions):
        files = {}
        for name, picture in (("image", images[i].permute(1, 2, 0).numpy()),  # CHW -> HWC
                              (config.cam_before,
                               overlay(images[i], comparison.before.cams[i])),
                              ("debiased", overlay(images[i], comparison.after.cams[i]))):
            path = workspace.path_for("gradcam", progress.job_id, f"{i:04d}_{name}.png")
            atomic_write_bytes(path, _png(picture, CAM_TILE_PX))
            files[name] = workspace.relative(path)
        samples.append({
            "position": int(position), "sample_id": ids.get(int(position)),
            "label": int(labels[i]),
            config.cam_before: {"prediction": int(comparison.before.predictions[i]),
                       "confidence": float(comparison.before.confidences[i]),
                       "object_mass": _mass(comparison.object_mass_before, i)},
            "debiased": {"prediction": int(comparison.after.predictions[i]),
                         "confidence": float(comparison.after.confidences[i]),
                         "object_mass": _mass(comparison.object_mass_after, i)},
            "files": files})
    mass = explained.mass_summary()
    result = {"method": config.cam_method, "sample_set": sample_set, "samples": samples,
              "before_role": config.cam_before,
              "mean_object_mass_before": mass["object_mass_before"],
              "mean_object_mass_after": mass["object_mass_after"],
              "object_area": mass["object_area"]}
    return JobOutcome(result, {"gradcam": computed - start,
                               "write": time.perf_counter() - computed})


def _mass(values: np.ndarray | None, i: int) -> float | None:
    return None if values is None else _number(values[i])


def _number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _png(hwc: np.ndarray, size: int) -> bytes:
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(hwc))
    scale = max(1, round(size / max(picture.size)))
    picture = picture.resize((picture.width * scale, picture.height * scale),
                             Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def gradcam_view(studio: Studio, project_id: int | None, *, page: int = 1,
                 rows_per_page: int = ROWS_PER_PAGE) -> CamView:
    empty = CamView(None, "", "", 0, None, None, None, {}, [], 1, 1)
    if project_id is None:
        return empty
    with studio.store.sessions() as session:
        job = repo.latest_job(session, int(project_id), JobKind.GRADCAM)
        if job is None:
            return empty
        project = repo.get_project(session, int(project_id))
        stale = redone_since(session, job, (JobKind.BIASED_TRAIN, JobKind.DEBIAS))
    result = job.result
    samples = result.get("samples", [])
    names = project.class_names
    n_pages = max(1, math.ceil(len(samples) / rows_per_page))
    page = min(max(1, int(page)), n_pages)
    workspace = studio.store.workspace
    roles = (result.get("before_role", "biased"), "debiased")  # older jobs: biased
    tiles = []
    for s in samples[(page - 1) * rows_per_page: page * rows_per_page]:
        tiles.append((str(workspace.resolve(s["files"]["image"])),
                      f"#{s['position']} true: {names[s['label']]}"))
        for role in roles:
            r = s[role]
            caption = f"{role}: {names[r['prediction']]} {r['confidence']:.2f}"
            if r["object_mass"] is not None:
                caption += f" · in object {r['object_mass']:.2f}"
            tiles.append((str(workspace.resolve(s["files"][role])), caption))
    agreement = {}
    if samples:
        for role in roles:
            agreement[role] = float(np.mean([s[role]["prediction"] == s["label"]
                                             for s in samples]))
    before, after = result.get("mean_object_mass_before"), result.get("mean_object_mass_after")
    return CamView(job.id, result.get("method", ""), result.get("sample_set", ""), len(samples),
                   before, after, result.get("object_area"), agreement, tiles, page, n_pages,
                   object_mass_figure(before, after, result.get("object_area"), roles[0]),
                   roles[0], stale)


def object_mass_figure(before: float | None, after: float | None, area: float | None,
                       before_role: str = "vanilla") -> go.Figure | None:
    """Mean share of CAM mass inside the object mask, the `before_role` model vs the debiased
    one, against the share an evenly spread map would get (the object's area); None without
    masks."""
    if before is None or after is None:
        return None
    from diffubias.plots import object_mass_bars

    return object_mass_bars(before, after, area, before_role=before_role)
