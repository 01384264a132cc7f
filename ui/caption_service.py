"""Tab 3, Captions: caption the top-K candidates, filter the captions into prompts, let a person
edit them, and (when the library has `diffubias.keywords`) rank each class's bias keywords.

`run_captioner` is a job: it captions the candidates that were not excluded (in batches, so it
reports progress and can be stopped), stores every caption, then runs the text filter, which
stores the prompt table as a `filter` job. `apply_filter` re-runs only the filter. Prompt edits
(keep, class, text) are saved row by row; the original caption text is always kept.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from diffubias.shipped_models import oracle_note, resolve
from diffubias.text_safety import check_prompt_text
from storage import repository as repo
from storage.models import JobKind, JobStatus
from ui.datasets import (
    project_config,
    record_project_config,
    save_project_config,
    stored_config,
)
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.rounds import current_round
from ui.studio import Studio
from ui.thumbnails import thumbnail


@dataclass(frozen=True)
class PromptRow:
    prompt_id: int
    keep: bool
    label: str
    text: str
    original: str
    matched_words: list[str]
    sample_id: int | None
    thumbnail: str | None
    generated_as: str = ""  # the text the generator gets: class-anchored where it lacks the class

    @property
    def edited(self) -> bool:
        return self.text != self.original


@dataclass(frozen=True)
class CaptionsView:
    caption_job_id: int | None = None
    captioner: str = ""
    n_captions: int = 0
    n_images: int = 0
    filter_job_id: int | None = None
    top_f: int = 0
    extra_stop_words: list[str] = field(default_factory=list)
    top_words: list[tuple[str, int]] = field(default_factory=list)
    prompts: list[PromptRow] = field(default_factory=list)
    keywords: dict[str, list[dict[str, Any]]] | None = None
    class_names: list[str] = field(default_factory=list)
    stale: str | None = None  # why the captions may not match the current candidates
    oracle: str = ""  # why these captions are an upper bound (shipped_models.oracle_note), or ""


def captioner_choices() -> list[str]:
    """Every captioning backend the library offers: auto, builtin-blip, metadata, model names."""
    from diffubias.backends import captioner_names

    return captioner_names()


def keywords_available() -> bool:
    """Whether the library has bias keyword discovery (`diffubias.keywords`)."""
    return importlib.util.find_spec("diffubias.keywords") is not None


def run_captioner(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                  model_id: str = "", ui: UiProgress | None = None) -> CaptionsView:
    """Caption the kept candidates of the current round (tab 2's in round 1, the debiased
    model's re-scoring in later rounds, `ui.rounds`), then filter the captions.

    `changes`: {RunConfig field: value} (captioner, captions_per_image, caption_instruction,
    keywords_top_n, and the filter's top_f and extra_stop_words); None keeps the project's
    setting. `model_id`, a hub id or local folder, replaces the `captioner` choice."""
    if (model_id or "").strip():
        changes = {**changes, "captioner": model_id.strip()}
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        current = current_round(session, project_id)
        if current is None:
            raise ValueError("no candidates yet: train the biased model in tab 2 first")
        detection = repo.get_job(session, current.source_job_id)
        n_candidates = repo.count_candidates(session, detection.id, include_excluded=False)
        settings = project.settings
    if not n_candidates:
        raise ValueError("every candidate is excluded: include some in tab 2 first")
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    save_project_config(studio.store, project_id, config)
    params = {"captioner": config.captioner, "per_image": config.captions_per_image,
              "instruction": config.caption_instruction, "detection_job_id": detection.id,
              "keywords_top_n": config.keywords_top_n}

    def work(progress: JobProgress) -> JobOutcome:
        return _caption(studio, project_id, config, detection.id, progress)

    job_id, _ = studio.jobs.run(project_id, JobKind.CAPTION, params, work, ui=ui)
    return apply_filter(studio, project_id, {"top_f": config.top_f,
                                             "extra_stop_words": config.extra_stop_words},
                        caption_job_id=job_id)


def _caption(studio: Studio, project_id: int, config, detection_id: int,
             progress: JobProgress) -> JobOutcome:
    """The caption stage on the kept candidates of `detection_id`, stored (candidate and
    aligned captions)."""
    import numpy as np

    from diffubias.backends import captioner_for
    from diffubias.stages.caption import ScoredSamples, caption_candidates

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    progress(0.0, f"loading captioner {config.captioner}")
    captioner = captioner_for(config, dataset_name=data.ds.name)
    loaded = time.perf_counter()
    with studio.store.sessions() as session:
        columns = repo.score_columns(session, detection_id)
        sample_ids = repo.sample_ids_by_position(session, project_id)
    positions = {sample_id: position for position, sample_id in sample_ids.items()}
    scores = ScoredSamples(
        np.array([positions[i] for i in columns.sample_ids], dtype=np.int64),
        np.asarray(columns.losses),
        np.asarray(columns.is_candidate) & ~np.asarray(columns.excluded))
    result = caption_candidates(data.ds, config, scores, captioner=captioner, progress=progress)
    summary = result.summary()
    if result.keywords is not None:
        summary["keywords"] = result.keywords_by_class(data.ds.class_names)
    progress.check()
    with studio.store.sessions.begin() as session:
        repo.add_captions(session, progress.job_id, (
            {"sample_id": sample_ids[c.position], "text": c.text, "source": c.model or c.backend,
             "params": {**dict(c.params), "set": role}}
            for role, group in (("candidate", result.captions),
                                ("aligned", result.aligned_captions))
            for c in group))
    return JobOutcome(summary, {"load_captioner": loaded - start,
                                "captioning": time.perf_counter() - loaded})


def apply_filter(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                 caption_job_id: int | None = None) -> CaptionsView:
    """Run the text filter over the latest captions (or those of `caption_job_id`); stores a
    fresh prompt table. `changes`: {RunConfig field: value}, the filter's are top_f (0: 2 x
    classes) and extra_stop_words; None keeps the project's setting."""
    from diffubias.captions import Caption
    from diffubias.stages.prompts import filter_prompts, resolved_top_f

    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        if project is None:
            raise ValueError(f"project {project_id} does not exist")
        settings = project.settings
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    with studio.store.sessions.begin() as session:
        project = repo.get_project(session, project_id)
        job = (repo.get_job(session, caption_job_id) if caption_job_id is not None
               else repo.latest_job(session, project_id, JobKind.CAPTION))
        if job is None:
            raise ValueError("no captions yet: run the captioner first")
        rows = [c for c in repo.list_captions(session, job.id)
                if c.params.get("set", "candidate") == "candidate"]
        samples = repo.samples_by_ids(session, {c.sample_id for c in rows})
        captions = [Caption(samples[c.sample_id].position, c.text, c.source) for c in rows]
        labels = {s.position: s.label for s in samples.values()}
        ids = {s.position: s.id for s in samples.values()}
        n_classes = len(project.class_names)
        result = filter_prompts(captions, labels, config, num_classes=n_classes)
        params = {"top_f": resolved_top_f(config, n_classes),
                  "extra_stop_words": list(config.extra_stop_words), "caption_job_id": job.id}
        filter_job = repo.create_job(session, project_id, JobKind.FILTER, params)
        repo.start_job(session, filter_job.id)
        repo.save_prompts(session, project_id, filter_job.id, (
            {"sample_id": ids[p.source], "label": p.label, "text_original": p.text,
             "keep": p.keep, "matched_words": list(p.matched_words)}
            for p in result.kept + result.dropped))
        repo.finish_job(session, filter_job.id, JobStatus.DONE, result={
            "top_words": [[w, c] for w, c in result.top_words], "n_kept": len(result.kept),
            "n_dropped": len(result.dropped)})
        record_project_config(session, project_id, config)
    return captions_view(studio, project_id)


ANCHOR_FIELDS = ("prompt_template", "class_synonyms")


def set_anchoring(studio: Studio, project_id: int, changes: Mapping[str, Any]) -> CaptionsView:
    """Save how prompts that do not name their class are anchored to it before generation
    (`changes`: {prompt_template, class_synonyms}); the prompt table is kept as it is."""
    from diffubias.stages.generate import class_synonyms

    unknown = sorted(set(changes) - set(ANCHOR_FIELDS))
    if unknown:
        raise ValueError(f"not anchoring settings: {', '.join(unknown)}")
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        if project is None:
            raise ValueError(f"project {project_id} does not exist")
        settings, class_names = project.settings, list(project.class_names)
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    class_synonyms(config, class_names)  # refuses a class the project does not have
    save_project_config(studio.store, project_id, config)
    return captions_view(studio, project_id)


def save_prompt_edits(studio: Studio, project_id: int,
                      rows: list[dict[str, Any]]) -> tuple[CaptionsView, int]:
    """Apply edited rows ({"id", "keep", "class", "text"}) to the current prompt table;
    returns the new view and how many prompts changed. An edited text's matched words are
    those of the filter's top words it now contains."""
    from diffubias.text_filter import matched_words  # scikit-learn: not on the page's path

    with studio.store.sessions.begin() as session:
        project = repo.get_project(session, project_id)
        filter_job = repo.latest_job(session, project_id, JobKind.FILTER)
        if filter_job is None:
            raise ValueError("no prompt table yet: run the captioner first")
        current = {p.id: p for p in repo.list_prompts(session, project_id, job_id=filter_job.id)}
        index = {name: i for i, name in enumerate(project.class_names)}
        top_words = [w for w, _ in (filter_job.result or {}).get("top_words", [])]
        changed = 0
        for line, row in enumerate(rows, start=1):
            prompt = current.get(int(row["id"]))
            if prompt is None:
                raise ValueError(f"row {line}: prompt {row['id']} is not in the current table; "
                                 "reload the page")
            text = check_prompt_text(row["text"], where=f"row {line} (prompt {prompt.id})")
            label_name = str(row["class"]).strip()
            if label_name not in index:
                raise ValueError(f"row {line} (prompt {prompt.id}): unknown class "
                                 f"{label_name!r}; expected one of {', '.join(index)}")
            keep = _as_bool(row["keep"])
            if keep and not text:
                raise ValueError(f"row {line} (prompt {prompt.id}) is kept but has no text; "
                                 "write a prompt or untick keep")
            if (text, keep, index[label_name]) != (prompt.text, prompt.keep, prompt.label):
                repo.update_prompt(session, prompt.id, text=text, keep=keep,
                                   label=index[label_name],
                                   matched_words=list(matched_words(text, top_words)))
                changed += 1
    return captions_view(studio, project_id), changed


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "y", "x", "✓")
    return bool(value)


def captions_view(studio: Studio, project_id: int | None) -> CaptionsView:
    if project_id is None:
        return CaptionsView()
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        if project is None:
            return CaptionsView()
        caption_job = repo.latest_job(session, project.id, JobKind.CAPTION)
        filter_job = repo.latest_job(session, project.id, JobKind.FILTER)
        current = current_round(session, project.id)
        prompts = (repo.list_prompts(session, project.id, job_id=filter_job.id)
                   if filter_job else [])
        samples = repo.samples_by_ids(session, {p.sample_id for p in prompts if p.sample_id})
    if caption_job is None:
        return CaptionsView(class_names=list(project.class_names))
    stale = None
    if current is not None and caption_job.params.get("detection_job_id") != (
            current.source_job_id):
        stale = ("These captions describe the candidates of an earlier detection run; run the "
                 "captioner again to caption the current ones." if current.number == 1 else
                 f"Round {current.number} has started: run the captioner to caption its "
                 "candidates (the images of earlier rounds stay in training).")
    rows = []
    for p, final in zip(prompts, _generated_as(project, prompts), strict=True):
        sample = samples.get(p.sample_id) if p.sample_id else None
        thumb = (str(thumbnail(workspace, workspace.resolve(sample.path), project.id, sample.id))
                 if sample else None)
        rows.append(PromptRow(p.id, p.keep, project.class_names[p.label], p.text,
                              p.text_original, list(p.matched_words), p.sample_id, thumb, final))
    result = caption_job.result
    filter_params = filter_job.params if filter_job else {}
    filter_result = filter_job.result if filter_job else {}
    captioner = resolve(caption_job.params.get("captioner", ""), project.source,
                        kind="captioner")
    return CaptionsView(
        caption_job.id, captioner, result.get("n_captions", 0),
        result.get("n_images", 0), filter_job.id if filter_job else None,
        filter_params.get("top_f", 0), list(filter_params.get("extra_stop_words", [])),
        [(w, c) for w, c in filter_result.get("top_words", [])], rows,
        result.get("keywords"), list(project.class_names), stale,
        oracle_note(captioner, project.source))


def _generated_as(project, prompts) -> list[str]:
    """Each prompt's text as the generator will get it, with the project's anchoring."""
    from diffubias.stages.generate import anchored_texts

    return anchored_texts([(p.text, p.label) for p in prompts], stored_config(project.settings),
                          list(project.class_names))
