"""Tab 5, Debias: train the debiased classifier on the train split plus the generated images that
were not rejected, of every round of the closed loop (`ui.rounds`), and, for comparison, the
vanilla one on the train split alone; then compare overall / bias-aligned / bias-conflicting /
unbiased test accuracy of all three models.

`train_debiased_models` runs the debias stage (`diffubias.stages.debias`) as a job and stores both models'
weights and metrics; with `baselines` it then trains each named baseline of `diffubias.baselines`
(LfF, JTT, oversampled top-K, DiffuBias without the text filter) the way that method works on its
own with the project's settings: the candidates the user kept in tab 2, captions from the
project's captioner (not the edited prompts).
`debias_view` reads them back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from diffubias.baselines import baseline_names
from diffubias.evaluation_split import evaluated_on, evaluation_note
from diffubias.report import ACCURACY_METRICS
from storage import repository as repo
from storage.models import JobKind, ModelRole
from ui.checks_service import used_for_training
from ui.datasets import project_config, save_project_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.rounds import current_round, training_images
from ui.studio import Studio

if TYPE_CHECKING:
    import plotly.graph_objects as go


def roles() -> tuple[str, ...]:
    """The app's own model roles, then every baseline registered now."""
    return (*(role.value for role in ModelRole), *baseline_names())




@dataclass(frozen=True)
class AccuracyRow:
    role: str
    test: dict[str, Any]  # GroupAccuracy.to_dict()
    n_train: int | None
    epochs: int | None
    weights: str  # relative to the workspace


@dataclass(frozen=True)
class DebiasView:
    job_id: int | None
    rows: list[AccuracyRow]
    n_generated: int
    seconds: float | None
    stale: str | None = None
    figure: go.Figure | None = field(default=None, repr=False)
    split: str = "test"  # what the accuracies are measured on (diffubias.evaluation_split)
    split_note: str | None = None


def train_debiased_models(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                          train_vanilla: bool = True, ui: UiProgress | None = None) -> DebiasView:
    """Train the debiased model (and the vanilla one, and the chosen baselines) as a job.

    `changes`: {RunConfig field: value}, e.g. debias_epochs and baselines; None keeps the
    project's setting."""
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        if repo.latest_model(session, project_id, ModelRole.BIASED) is None:
            raise ValueError("no biased model yet: train it in tab 2 first")
        per_round = training_images(session, project_id)
        current = current_round(session, project_id)
        prompts = [p for _, round_prompts, _ in per_round for p in round_prompts]
        images = [im for _, _, round_images in per_round for im in round_images]
        settings = project.settings
        config = project_config(studio.store.workspace, settings).with_changes(changes)
        images = [im for im in images if used_for_training(im, config.image_checks)]
        reviewed = []  # the candidates the user kept in tab 2, for the baselines that use them
        if config.baselines:
            detection = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
            reviewed = [c.position for c in repo.top_candidates(
                session, detection.id, limit=None, include_excluded=False)]
    if not images:
        raise ValueError("no generated images to train on: generate some in tab 4 (rejected "
                         "images are left out, and with image_checks 'drop' those the checks "
                         "propose to reject)")
    save_project_config(studio.store, project_id, config)
    labels = {p.id: p.label for p in prompts}
    params = {"debias_epochs": config.debias_epochs, "train_vanilla": bool(train_vanilla),
              "baselines": list(config.baselines), "image_ids": [im.id for im in images],
              "round": current.number,
              "images_per_round": {str(number): sum(used_for_training(im, config.image_checks)
                                                    for im in round_images)
                                   for number, _, round_images in per_round}}

    def work(progress: JobProgress) -> JobOutcome:
        return _train(studio, project_id, config, [(studio.store.workspace.resolve(im.path),
                                                    labels[im.prompt_id]) for im in images],
                      bool(train_vanilla), reviewed, progress)

    studio.jobs.run(project_id, JobKind.DEBIAS, params, work, ui=ui)
    return debias_view(studio, project_id)


def _train(studio: Studio, project_id: int, config, generated: list, train_vanilla: bool,
           reviewed: list[int], progress: JobProgress) -> JobOutcome:
    """The debias stage on the accepted images, stored: weights first, then the rows in one
    short transaction (evaluating a model must not hold SQLite's write lock)."""
    import torch

    from diffubias.images import stack_images
    from diffubias.models import save_classifier
    from diffubias.stages.debias import train_debiased

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    progress(0.0, f"loading {len(generated)} generated images")
    images = stack_images([path for path, _ in generated], size=data.image_size)
    labels = torch.tensor([label for _, label in generated], dtype=torch.int64)
    loaded = time.perf_counter()
    result = train_debiased(data, config, images, labels, train_vanilla=train_vanilla,
                            candidates=np.asarray(reviewed, dtype=np.int64),
                            before_each=lambda _: progress.check(),
                            progress=progress.part(0.02, 0.95))
    trained = time.perf_counter()
    progress(0.96, "saving the models")
    progress.check()
    workspace = studio.store.workspace
    models = []  # (role, weights path, arch, metrics)
    for role, model in result.models.items():
        weights = workspace.path_for("weights", progress.job_id, f"{role}.safetensors")
        save_classifier(model.model, weights)
        models.append((role, weights, model.model.spec.arch, model.metrics(config)))
    progress.check()
    with studio.store.sessions.begin() as session:
        for role, weights, arch, metrics in models:
            repo.add_model(session, project_id, role=role, weights_path=workspace.relative(weights),
                           arch=arch, job_id=progress.job_id, metrics=metrics)
    return JobOutcome({"test": {role: metrics["test"] for role, _, _, metrics in models},
                       "n_train": result.n_train, "n_generated": result.n_generated},
                      {"load_images": loaded - start, "train": trained - loaded,
                       "evaluate_and_store": time.perf_counter() - trained})


def debias_view(studio: Studio, project_id: int | None, *,
                with_figure: bool = True) -> DebiasView:
    if project_id is None:
        return DebiasView(None, [], 0, None)
    with studio.store.sessions() as session:
        job = repo.latest_job(session, int(project_id), JobKind.DEBIAS)
        models = {role: repo.latest_model(session, int(project_id), role) for role in roles()}
        detection = repo.latest_job(session, int(project_id), JobKind.BIASED_TRAIN)
        project = repo.get_project(session, int(project_id))
    sizes = (project.settings.get("summary") or {}).get("split_sizes", {}) if project else {}
    # a baseline counts only if the latest debias job trained it (the user may have dropped it)
    baselines = baseline_names()
    # the biased model trains on the train split alone; older jobs did not record its size
    rows = [AccuracyRow(role, dict(m.metrics.get("test", {})),
                        m.metrics.get("n_train") or (sizes.get("train") if role == "biased"
                                                     else None),
                        m.metrics.get("epochs"), m.weights_path)
            for role, m in models.items() if m is not None
            and (role not in baselines or (job is not None and m.job_id == job.id))]
    stale = None
    biased, debiased = models["biased"], models["debiased"]
    if (biased is not None and debiased is not None and detection is not None
            and debiased.created_at < biased.created_at):
        stale = ("The debiased model predates the current biased model: generate from the new "
                 "candidates and train again to compare like with like.")
    figure = None
    if with_figure and any(r.test for r in rows):
        from diffubias.plots import accuracy_bars

        figure = accuracy_bars({r.role: {m: r.test.get(m) for m in ACCURACY_METRICS}
                                for r in rows})
        figure.update_layout(height=360, margin={"l": 50, "r": 20, "t": 50, "b": 40})
    return DebiasView(job.id if job else None, rows,
                      job.result.get("n_generated", 0) if job else 0,
                      job.timings.get("total") if job else None, stale, figure,
                      evaluated_on(sizes), evaluation_note(sizes))
