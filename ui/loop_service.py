"""The closed loop, under tab 5: re-score the training set with the debiased model, show what
remains, start another round on the classes that need it, and compare rounds.

`rescore_round` runs the re-score stage (`diffubias.stages.rescore`) as a `rescore` job and stores
the debiased model's loss per training sample, flagging the next round's candidates (the top-K
of the classes with a gap). `start_next_round` makes those candidates, for the classes a person
picks, the ones tab 3 captions next (`ui.rounds`); the round's images then join the earlier
rounds' in training. `loop_view` reads it back, with one row per round.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from storage import repository as repo
from storage.models import JobKind, JobStatus, ModelRole
from ui.datasets import project_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.rounds import Round, current_round, rounds
from ui.studio import Studio
from ui.thumbnails import thumbnail

if TYPE_CHECKING:
    import plotly.graph_objects as go

STILL_WRONG_SHOWN = 40


@dataclass(frozen=True)
class RoundRow:
    """One round as the comparison table shows it."""

    number: int
    source: str  # where its candidates came from
    n_candidates: int
    n_images: int | None  # generated images the round's debiased model trained on (all rounds)
    test: dict[str, Any]  # the round's debiased model, GroupAccuracy.to_dict(); {} before
    n_still_wrong: int | None  # from its re-scoring; None before
    mean_gap: float | None
    mean_true_gap: float | None  # read from the bias column, where the dataset has one


@dataclass(frozen=True)
class LoopView:
    round: int | None  # the current round, None before a biased model
    rescore_job_id: int | None  # the re-scoring of the current round, if any
    summary: dict[str, Any]  # Remaining.summary() of that re-scoring
    class_names: list[str] = field(default_factory=list)
    still_wrong: list[tuple[str, str]] = field(default_factory=list)  # (thumbnail, caption)
    rounds: list[RoundRow] = field(default_factory=list)
    note: str = ""  # what to do next
    figure: go.Figure | None = field(default=None, repr=False)


def rescore_round(studio: Studio, project_id: int, *, ui: UiProgress | None = None) -> LoopView:
    """Score the training set with the current round's debiased model, as a job."""
    with studio.store.sessions() as session:
        found = rounds(session, project_id)
        if not found:
            raise ValueError("no biased model yet: train it in tab 2 first")
        current = found[-1]
        debias = _debias_job(session, project_id, current, since=found[0].source_job_id)
        model = _debiased_model(session, project_id, debias)
        if model is None:
            raise ValueError(f"no debiased model for round {current.number} yet: train it in "
                             "tab 5 first")
        candidates = repo.top_candidates(session, current.source_job_id, limit=None,
                                         include_excluded=False)
        caption_job = _caption_job(session, project_id, current.source_job_id)
        captions = ([(c.sample_id, c.text) for c in repo.list_captions(session, caption_job.id)
                     if c.params.get("set", "candidate") == "candidate"] if caption_job else [])
        keywords = dict(caption_job.result.get("keywords") or {}) if caption_job else {}
        project = repo.get_project(session, project_id)
        settings = project.settings
        class_names = list(project.class_names)
    config = project_config(studio.store.workspace, settings)
    params = {"round": current.number, "source_job_id": current.source_job_id,
              "debias_job_id": debias.id, "model_id": model.id}
    weights = studio.store.workspace.resolve(model.weights_path)
    positions = [c.position for c in candidates]
    terms = {class_names.index(name): [k["term"] for k in found]
             for name, found in keywords.items() if name in class_names}

    def work(progress: JobProgress) -> JobOutcome:
        return _rescore(studio, project_id, config, weights, positions, captions, terms,
                        current.number, progress)

    studio.jobs.run(project_id, JobKind.RESCORE, params, work, ui=ui)
    return loop_view(studio, project_id)


def _rescore(studio: Studio, project_id: int, config, weights, positions: list[int],
             captions: list[tuple[int, str]], keywords: dict[int, list[str]], number: int,
             progress: JobProgress) -> JobOutcome:
    """The re-score stage, stored: every training sample's loss, the next candidates flagged."""
    from diffubias.captions import Caption
    from diffubias.models import load_classifier
    from diffubias.scoring import ranks_in_class
    from diffubias.stages.rescore import rescore

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    model = load_classifier(weights)
    with studio.store.sessions() as session:
        ids = repo.sample_ids_by_position(session, project_id)
    position_of = {sample_id: position for position, sample_id in ids.items()}
    remaining = rescore(data, config, model, candidates=positions,
                        captions=[Caption(position_of[i], text, "stored")
                                  for i, text in captions],
                        keywords=keywords, round_number=number,
                        progress=progress.part(0.0, 0.9))
    scored = time.perf_counter()
    ranks = dict(zip(remaining.next_candidates.tolist(),
                     ranks_in_class(remaining.next_candidates, data.ds.labels).tolist()))
    progress(0.92, "saving scores")
    progress.check()
    with studio.store.sessions.begin() as session:
        repo.add_scores(session, progress.job_id, (
            {"sample_id": ids[int(p)], "loss": float(loss), "is_candidate": int(p) in ranks,
             "rank_in_class": ranks.get(int(p))}
            for p, loss in zip(remaining.positions, remaining.losses, strict=True)))
    result = {**remaining.summary(),
              "still_wrong": [ids[int(p)] for p in remaining.still_wrong]}
    return JobOutcome(result, {"rescore": scored - start,
                               "store": time.perf_counter() - scored})


def start_next_round(studio: Studio, project_id: int, classes: Sequence[str | int]) -> LoopView:
    """Round n + 1 starts from the current re-scoring's top-K of `classes` (names or indices):
    tab 3 captions them next. Quick: the losses are stored."""
    from diffubias.scoring import ranks_in_class, top_k_per_class

    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        current = current_round(session, project_id)
        rescored = _rescore_job(session, project_id, current) if current else None
        settings = project.settings
        names = list(project.class_names)
    if rescored is None:
        raise ValueError("re-score the training set with the debiased model first")
    wanted = sorted({names.index(c) if isinstance(c, str) and c in names else _index(c, names)
                     for c in classes})
    if not wanted:
        raise ValueError("pick at least one class for the next round")
    config = project_config(studio.store.workspace, settings)
    with studio.store.sessions.begin() as session:
        columns = repo.score_columns(session, rescored.id)
        labels = np.asarray(columns.labels, dtype=np.int64)
        losses = np.asarray(columns.losses, dtype=np.float64)
        sample_ids = np.asarray(columns.sample_ids, dtype=np.int64)
        picked = top_k_per_class(losses, labels, k=config.top_k, classes=set(wanted))
        ranks = dict(zip(sample_ids[picked].tolist(),
                         ranks_in_class(picked, labels).tolist()))
        n = repo.set_candidates(session, rescored.id, ranks)
        job = repo.create_job(session, project_id, JobKind.ROUND, {
            "round": current.number + 1, "rescore_job_id": rescored.id, "classes": wanted})
        repo.start_job(session, job.id)
        repo.finish_job(session, job.id, JobStatus.DONE, result={"n_candidates": n})
    return loop_view(studio, project_id)


def _index(value: str | int, names: list[str]) -> int:
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"unknown class {value!r}; the classes are {', '.join(names)}") from None
    if not 0 <= index < len(names):
        raise ValueError(f"unknown class {value!r}; the classes are {', '.join(names)}")
    return index


# -- reads ------------------------------------------------------------------------------------

def _debias_job(session, project_id: int, of: Round, *, since: int):
    """The latest finished debias job that trained round `of`, after the biased model's job
    `since` (round 1's source)."""
    return next((job for job in repo.list_jobs(session, project_id, JobKind.DEBIAS)
                 if job.id > since and job.status == JobStatus.DONE
                 and job.params.get("round", 1) == of.number), None)


def _debiased_model(session, project_id: int, debias):
    if debias is None:
        return None
    return next((m for m in repo.list_models(session, project_id, role=ModelRole.DEBIASED)
                 if m.job_id == debias.id), None)


def _rescore_job(session, project_id: int, of: Round):
    """The latest finished re-scoring of round `of`."""
    return next((job for job in repo.list_jobs(session, project_id, JobKind.RESCORE)
                 if job.status == JobStatus.DONE and job.params.get("round") == of.number
                 and job.params.get("source_job_id") == of.source_job_id), None)


def _caption_job(session, project_id: int, source_job_id: int):
    return next((job for job in repo.list_jobs(session, project_id, JobKind.CAPTION)
                 if job.status == JobStatus.DONE
                 and job.params.get("detection_job_id") == source_job_id), None)


def loop_view(studio: Studio, project_id: int | None, *, with_figure: bool = True) -> LoopView:
    if project_id is None:
        return LoopView(None, None, {})
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        found = rounds(session, int(project_id))
        if not found:
            return LoopView(None, None, {}, note="Train the biased model (tab 2) first.")
        project = repo.get_project(session, int(project_id))
        names = list(project.class_names)
        table = [_round_row(session, int(project_id), r, since=found[0].source_job_id,
                            names=names) for r in found]
        current = found[-1]
        rescored = _rescore_job(session, int(project_id), current)
        previous = (_rescore_job(session, int(project_id), found[-2])
                    if rescored is None and len(found) > 1 else None)
        shown = rescored or previous
        wrong_ids = list((shown.result.get("still_wrong") or [])[:STILL_WRONG_SHOWN]
                         if shown else [])
        samples = repo.samples_by_ids(session, wrong_ids)
        losses = {i: repo.get_score(session, shown.id, i).loss for i in wrong_ids}
    summary = dict(shown.result) if shown else {}
    still_wrong = []
    for sample_id in wrong_ids:
        sample = samples[sample_id]
        still_wrong.append((str(thumbnail(workspace, workspace.resolve(sample.path), project.id,
                                          sample.id)),
                            f"{names[sample.label]} · {losses[sample_id]:.2f}"))
    figure = None
    if with_figure and summary.get("classes"):
        from diffubias.plots import class_gap_bars

        figure = class_gap_bars(summary["classes"], round_number=summary["round"])
        figure.update_layout(height=320, margin={"l": 50, "r": 20, "t": 60, "b": 40})
    return LoopView(current.number, rescored.id if rescored else None, summary, names,
                    still_wrong, table, _note(current, table[-1], rescored, previous), figure)


def _note(current: Round, row: RoundRow, rescored, previous) -> str:
    n = current.number
    if rescored is not None:
        return (f"Round {n} re-scored. Pick the classes to work on and start round {n + 1}: "
                "tab 3 then captions their candidates, and tab 5 trains on the images of "
                "every round.")
    if previous is not None:
        return (f"Round {n} has started from the debiased model's candidates (shown below: "
                f"round {n - 1}'s). Caption them in tab 3, generate in tab 4, train in tab 5, "
                "then re-score.")
    if not row.test:
        return f"Round {n}: train the debiased model in tab 5, then re-score."
    return f"Round {n} is trained: re-score the training set to see what remains."


def _round_row(session, project_id: int, r: Round, *, since: int,
               names: list[str]) -> RoundRow:
    source = ("the biased model (tab 2)" if r.number == 1 else
              f"the round-{r.number - 1} debiased model")
    if r.classes is not None:
        source += ": " + ", ".join(names[c] for c in r.classes)
    n_candidates = repo.count_candidates(session, r.source_job_id, include_excluded=False)
    debias = _debias_job(session, project_id, r, since=since)
    rescored = _rescore_job(session, project_id, r)
    test = {}
    n_images = None
    if debias is not None:
        test = dict((debias.result.get("test") or {}).get("debiased") or {})
        n_images = len(debias.params.get("image_ids", []))
    result = rescored.result if rescored else {}
    return RoundRow(r.number, source, n_candidates, n_images, test,
                    result.get("n_still_wrong"), result.get("mean_gap"),
                    result.get("mean_true_gap"))
