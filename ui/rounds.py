"""Rounds of the closed loop, read from the store: which job's candidates each round starts from,
and which generated images every round made.

Round 1 starts from the biased model's candidates (the latest `biased_train` job, tab 2). After
the debiased model is trained, a `rescore` job scores the training set with it; starting round
n + 1 records a `round` job naming that rescore job, whose flagged scores are the new
candidates. A round's captions are those of a caption job over its candidates
(`params.detection_job_id`), its prompts the latest filter over those captions, its images those
of the kept prompts. Training uses every round's images, so the images of round 1 stay trainable
after round 2 starts. Training the biased model again starts over at round 1.

Reads only; knows nothing of models or widgets.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage import repository as repo
from storage.models import JobKind, JobStatus


@dataclass(frozen=True)
class Round:
    number: int  # 1, 2, ...
    source_job_id: int  # whose scores flag the candidates: biased_train (1) or rescore (> 1)
    started_by: int | None  # the round job that started it (None: round 1)
    classes: tuple[int, ...] | None  # the classes its candidates come from (None: every class)


def rounds(session, project_id: int) -> list[Round]:
    """The rounds since the latest biased model, oldest first; [] before any."""
    detection = repo.latest_job(session, project_id, JobKind.BIASED_TRAIN)
    if detection is None:
        return []
    out = [Round(1, detection.id, None, None)]
    started = [job for job in repo.list_jobs(session, project_id, JobKind.ROUND)
               if job.id > detection.id and job.status == JobStatus.DONE]
    for job in sorted(started, key=lambda j: j.id):
        out.append(Round(len(out) + 1, int(job.params["rescore_job_id"]), job.id,
                         tuple(job.params.get("classes") or ()) or None))
    return out


def current_round(session, project_id: int) -> Round | None:
    found = rounds(session, project_id)
    return found[-1] if found else None


def round_filter_jobs(session, project_id: int) -> dict[int, object]:
    """{round number: the latest finished filter job over captions of its candidates}."""
    by_source = {r.source_job_id: r.number for r in rounds(session, project_id)}
    caption_source = {job.id: job.params.get("detection_job_id")
                      for job in repo.list_jobs(session, project_id, JobKind.CAPTION)}
    out: dict[int, object] = {}
    for job in repo.list_jobs(session, project_id, JobKind.FILTER):  # newest first
        if job.status != JobStatus.DONE:
            continue
        number = by_source.get(caption_source.get(job.params.get("caption_job_id")))
        if number is not None and number not in out:
            out[number] = job
    return out


def training_images(session, project_id: int) -> list[tuple[int, list, list]]:
    """(round number, kept prompts, their images) of every round that has prompts, in round
    order: what the debiased model trains on (less what a person or the checks reject)."""
    out = []
    for number, job in sorted(round_filter_jobs(session, project_id).items()):
        prompts = repo.list_prompts(session, project_id, job_id=job.id, kept_only=True)
        images = repo.list_generated_images(session, prompt_ids=[p.id for p in prompts])
        out.append((number, list(prompts), list(images)))
    return out
