"""Tab 4, Generate: new bias-conflicting images from the kept prompts, reviewed before training.

`run_generation` is a job that goes prompt by prompt: a prompt whose images were already made
with the same request (backend, model, settings, seed, images per prompt) is skipped, so a
stopped or interrupted run resumes; a prompt with images from another request gets new ones.
Each image is written atomically under workspace/generated/<job>/ and recorded with its seed,
model and parameters. Every image counts for training unless a person rejects it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffubias.shipped_models import oracle_note
from storage import atomic_write_bytes
from storage import repository as repo
from storage.models import JobKind
from ui.datasets import project_config, save_project_config, stored_config
from ui.jobs import JobOutcome, JobProgress, UiProgress
from ui.studio import Studio, redone_since
from ui.thumbnails import LARGE_PX, thumbnail

PROMPTS_PER_PAGE = 12


@dataclass(frozen=True)
class GenerationView:
    job_id: int | None
    backend: str
    model: str | None
    n_prompts: int  # kept prompts of the current table
    n_images: int
    n_accepted: int
    n_rejected: int
    tiles: list[tuple[str, str]]  # this page, prompt by prompt; captions are marks and "#id"
    image_ids: list[int]
    columns: int  # images per prompt: one gallery row per prompt
    page: int
    n_pages: int
    params: dict[str, Any]
    oracle: str = ""  # why these images are an upper bound (shipped_models.oracle_note), or ""
    n_checked: int = 0  # images the automatic checks looked at
    proposed: dict[str, int] = field(default_factory=dict)  # reason: unreviewed images with it
    n_proposed: int = 0  # unreviewed images the checks propose to reject
    n_used: int = 0  # images the debias stage will train on
    image_checks: str = "propose"  # the project's setting: what a proposal does
    show: str = "all"  # which images the gallery shows: all, proposed or passed
    checks_note: str = ""  # why the last checks did not look at the class, if they did not
    stale: str = ""  # the jobs that changed the candidates since these images were generated
    tile_prompts: list[str] = field(default_factory=list)  # per tile: "#id class: prompt"

    @property
    def prompt_lines(self) -> list[str]:
        """The prompts of this page, in gallery order, each once."""
        return list(dict.fromkeys(self.tile_prompts))


@dataclass(frozen=True)
class ImageDetail:
    image_id: int
    image: str
    prompt_id: int
    prompt: str
    label: str
    seed: int
    model: str
    accepted: bool | None
    checks: dict[str, Any] = field(default_factory=dict)  # the verify stage's, {} if unchecked


def generator_choices() -> list[str]:
    """`demo` (built-in datasets) plus the library's diffusion model short names."""
    from diffubias.backends import generator_names

    return generator_names()


def run_generation(studio: Studio, project_id: int, changes: Mapping[str, Any], *,
                   model_id: str = "", ui: UiProgress | None = None) -> GenerationView:
    """Generate images for the kept prompts.

    `changes`: {RunConfig field: value} (generator, gen_steps, guidance_scale,
    images_per_prompt, seed, max_images, ...); None keeps the project's last setting.
    `model_id`, a diffusers hub id or local folder, replaces the `generator` choice."""
    if (model_id or "").strip():
        changes = {**changes, "generator": model_id.strip()}
    with studio.store.sessions() as session:
        project = repo.get_project(session, project_id)
        filter_job = repo.latest_job(session, project_id, JobKind.FILTER)
        if filter_job is None:
            raise ValueError("no prompts yet: caption the candidates in tab 3 first")
        prompts = [p for p in repo.list_prompts(session, project_id, job_id=filter_job.id,
                                                kept_only=True) if p.text.strip()]
        samples = repo.samples_by_ids(session, {p.sample_id for p in prompts if p.sample_id})
        settings = project.settings
    if not prompts:
        raise ValueError("no prompt is kept: tick keep on some prompts in tab 3")
    config = project_config(studio.store.workspace, settings).with_changes(changes)
    save_project_config(studio.store, project_id, config)
    from diffubias.stages.generate import capped

    prompts = capped(prompts, config)  # the stage's own cap, so params count them
    params = {"generator": config.generator, "steps": config.gen_steps,
              "guidance_scale": config.guidance_scale, "seed": config.seed,
              "images_per_prompt": config.images_per_prompt, "max_images": config.max_images,
              "filter_job_id": filter_job.id, "n_prompts": len(prompts)}
    positions = {p.id: samples[p.sample_id].position if p.sample_id in samples else -1
                 for p in prompts}

    def work(progress: JobProgress) -> JobOutcome:
        return _generate(studio, project_id, config, prompts, positions, progress)

    studio.jobs.run(project_id, JobKind.GENERATE, params, work, ui=ui)
    return generation_view(studio, project_id)


def _generate(studio: Studio, project_id: int, config, prompts, positions: dict[int, int],
              progress: JobProgress) -> JobOutcome:
    """The generate stage into the store: the same plan, seeds and images as the command line."""
    from diffubias.backends import generator_for
    from diffubias.stages.generate import generate_images

    data = studio.datasets.get(project_id, progress)
    start = time.perf_counter()
    progress(0.0, f"loading generator {config.generator}")
    generator = generator_for(config, dataset_name=data.ds.name,
                              class_names=data.ds.class_names)
    loaded = time.perf_counter()
    description = generator.describe()
    request = {"generator": config.generator, **description}
    sink = StoreSink(studio, progress, request, prompts, positions, data.ds.class_names,
                     config)
    result = generate_images(generator, sink.library_prompts, config,
                             class_names=data.ds.class_names, sink=sink,
                             progress=progress.part(0.02, 0.9))
    sink.drop_stale()
    generated = time.perf_counter()
    checks = {}
    if config.image_checks != "off":
        from ui.checks_service import check_current_images

        checks = check_current_images(studio, project_id, config, progress, start=0.9)
    outcome = {"backend": description["backend"], "model": description.get("model"),
               "n_prompts": len({item.prompt_id for item in result.items}),
               "n_new": result.n_new - result.n_blocked, "n_kept": result.n_existing,
               "n_blocked": result.n_blocked,
               "n_images": result.n_new - result.n_blocked + result.n_existing,
               "request": request, "checks": checks}
    return JobOutcome(outcome, {"load_generator": loaded - start,
                                "generation": generated - loaded,
                                "checks": time.perf_counter() - generated})


class StoreSink:
    """The generate stage's sink (`diffubias.stages.generate.ImageSink`'s three methods, not the
    class, so building the page imports no torch) over the app's store: a PNG under
    workspace/generated/<job>/ and a row per image, committed in one transaction per batch. A
    prompt's images from another request (generator settings, seed, or an edited text) are
    replaced in the transaction that adds its new ones, so a crash never leaves a prompt with
    neither."""

    def __init__(self, studio: Studio, progress: JobProgress, request: dict, prompts,
                 positions: dict[int, int], class_names, config) -> None:
        from diffubias.generation import prompt_id
        from diffubias.stages.generate import anchored
        from diffubias.text_filter import Prompt

        self.studio, self.progress, self.request = studio, progress, request
        self.class_names = class_names
        # the final prompts (class-anchored), so their ids are the plan's
        self.library_prompts = anchored([Prompt(p.text, p.label, positions[p.id], ())
                                         for p in prompts], config, class_names)
        self.row_of: dict[str, int] = {}  # library prompt id -> first stored prompt row with it
        for row, prompt in zip(prompts, self.library_prompts):
            self.row_of.setdefault(prompt_id(prompt), row.id)
        with studio.store.sessions() as session:
            self.stored = repo.list_generated_images(session, prompt_ids=[p.id for p in prompts])
        self.stale: dict[int, Any] = {}  # image id -> stored image no planned image keeps
        self.pending: list[tuple[Any, Path]] = []

    def existing(self, items) -> set[str]:
        planned = {item.key for item in items}
        kept = set()
        for image in self.stored:
            key = image.params.get("key")
            if image.params.get("request") == self.request and key in planned and key not in kept:
                kept.add(key)
            else:
                self.stale[image.id] = image
        return kept

    def add(self, item, image) -> None:
        from diffubias.generation import encode_png

        if image is None:
            return
        path = self.studio.store.workspace.path_for(
            "generated", self.progress.job_id, self.class_names[item.prompt.label],
            f"{item.key}.png")
        atomic_write_bytes(path, encode_png(image))
        self.pending.append((item, path))

    def commit(self) -> None:
        if not self.pending:
            return
        self.progress.check()
        workspace = self.studio.store.workspace
        rows = {self.row_of[item.prompt_id] for item, _ in self.pending}
        replaced = [image for image in self.stale.values() if image.prompt_id in rows]
        with self.studio.store.sessions.begin() as session:
            repo.delete_generated_images(session, [image.id for image in replaced])
            for item, path in self.pending:
                repo.add_generated_image(
                    session, job_id=self.progress.job_id, prompt_id=self.row_of[item.prompt_id],
                    path=workspace.relative(path), seed=item.seed,
                    model=self.request.get("model") or self.request["backend"],
                    params={"request": self.request, "key": item.key,
                            "prompt": item.prompt.text,  # the final, class-anchored prompt
                            "image_index": item.image_index, "backend": self.request["backend"]})
        self._forget(replaced)
        self.pending = []

    def drop_stale(self) -> None:
        """Removes the stale images no commit replaced: of prompts now left out by a lower cap,
        or beyond a smaller number of images per prompt."""
        if self.stale:
            with self.studio.store.sessions.begin() as session:
                repo.delete_generated_images(session, list(self.stale))
            self._forget(list(self.stale.values()))

    def _forget(self, images) -> None:
        # files after the commit: a crash in between leaves files no row points at, which the
        # next start removes, never a row without its file
        for image in images:
            self.stale.pop(image.id, None)
            self.studio.store.workspace.resolve(image.path).unlink(missing_ok=True)


def current_images(session, project_id: int):
    """(kept prompts of the current table, their images) - what training would use."""
    filter_job = repo.latest_job(session, project_id, JobKind.FILTER)
    if filter_job is None:
        return [], []
    prompts = repo.list_prompts(session, project_id, job_id=filter_job.id, kept_only=True)
    images = repo.list_generated_images(session, prompt_ids=[p.id for p in prompts])
    return prompts, images


SHOW = {"all": "all images", "proposed": "proposed for rejection",
        "passed": "passed the checks"}


def generation_view(studio: Studio, project_id: int | None, *, page: int = 1,
                    prompts_per_page: int = PROMPTS_PER_PAGE, show: str = "all"
                    ) -> GenerationView:
    """One page of the current images, prompt by prompt; `show` (a key of SHOW) keeps all of
    them, the unreviewed ones the checks propose to reject, or those that passed every check."""
    from ui.checks_service import proposal, used_for_training

    if show not in SHOW:
        raise ValueError(f"show must be one of {', '.join(SHOW)}; got {show!r}")
    empty = GenerationView(None, "", None, 0, 0, 0, 0, [], [], 4, 1, 1, {}, show=show)
    if project_id is None:
        return empty
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        project = repo.get_project(session, int(project_id))
        if project is None:
            return empty
        job = repo.latest_job(session, project.id, JobKind.GENERATE)
        prompts, images = current_images(session, project.id)
        stale = redone_since(session, job, (JobKind.BIASED_TRAIN, JobKind.ROUND))
    image_checks = stored_config(project.settings).image_checks
    proposed: dict[str, int] = {}
    for image in images:
        for reason in proposal(image) if image.accepted is None else []:
            proposed[reason] = proposed.get(reason, 0) + 1
    wanted = {"all": lambda im: True,
              "proposed": lambda im: im.accepted is None and bool(proposal(im)),
              "passed": lambda im: "checks" in im.params and not proposal(im)}[show]
    by_prompt: dict[int, list] = {}
    for image in images:
        if wanted(image):
            by_prompt.setdefault(image.prompt_id, []).append(image)
    shown = [p for p in prompts if p.id in by_prompt]
    n_pages = max(1, math.ceil(len(shown) / prompts_per_page))
    page = min(max(1, int(page)), n_pages)
    columns = max((len(v) for v in by_prompt.values()), default=4)
    # a tile is too narrow for a prompt: tiles say only their mark and prompt number, and the
    # page lists its prompts in full (`prompt_lines`); the checks' reasons are in the detail
    tiles, ids, tile_prompts = [], [], []
    for prompt in shown[(page - 1) * prompts_per_page: page * prompts_per_page]:
        name = project.class_names[prompt.label]
        for j, image in enumerate(sorted(by_prompt[prompt.id], key=lambda im: im.seed)):
            mark = {True: "✓ ", False: "✗ ", None: ""}[image.accepted]
            if image.accepted is None and proposal(image):
                mark = "⚑ "
            final = image.params.get("prompt", prompt.text)  # as the generator got it
            tiles.append((str(thumbnail(workspace, workspace.resolve(image.path), "generated",
                                        image.id)),
                          mark + (f"#{prompt.id} {name}" if j == 0 else f"#{prompt.id}")))
            ids.append(image.id)
            tile_prompts.append(f"#{prompt.id} {name}: {final}")
    return GenerationView(
        job.id if job else None, job.result.get("backend", "") if job else "",
        job.result.get("model") if job else None, len(prompts), len(images),
        sum(1 for im in images if im.accepted is True),
        sum(1 for im in images if im.accepted is False), tiles, ids, columns, page, n_pages,
        dict(job.params) if job else {},
        oracle_note(job.result.get("backend", ""), project.source) if job else "",
        sum("checks" in im.params for im in images), proposed,
        sum(im.accepted is None and bool(proposal(im)) for im in images),
        sum(used_for_training(im, image_checks) for im in images), image_checks, show,
        (job.result.get("checks") or {}).get("class_check_skipped", "") if job else "", stale,
        tile_prompts)


def image_detail(studio: Studio, project_id: int, image_id: int) -> ImageDetail:
    workspace = studio.store.workspace
    with studio.store.sessions() as session:
        image = repo.get_generated_image(session, int(image_id))
        prompt = repo.get_prompt(session, image.prompt_id) if image else None
        if image is None or prompt is None or prompt.project_id != int(project_id):
            raise ValueError(f"generated image {image_id} is not in this project")
        project = repo.get_project(session, int(project_id))
    large = thumbnail(workspace, workspace.resolve(image.path), "generated", "large", image.id,
                      size=LARGE_PX, fmt="png")
    return ImageDetail(image.id, str(large), prompt.id, image.params.get("prompt", prompt.text),
                       project.class_names[prompt.label], image.seed, image.model,
                       image.accepted, dict(image.params.get("checks", {})))


def review_images(studio: Studio, project_id: int, image_ids: list[int],
                  accepted: bool | None) -> int:
    """Accept (True), reject (False) or un-review (None) images of this project."""
    with studio.store.sessions.begin() as session:
        _, images = current_images(session, int(project_id))
        known = {im.id for im in images}
        unknown = [i for i in image_ids if int(i) not in known]
        if unknown:
            raise ValueError(f"image(s) {unknown} are not among this project's current images")
        return repo.set_images_accepted(session, [int(i) for i in image_ids], accepted)


def review_prompt(studio: Studio, project_id: int, image_id: int, accepted: bool | None) -> int:
    """Review every image of the prompt that `image_id` came from."""
    with studio.store.sessions() as session:
        image = repo.get_generated_image(session, int(image_id))
        if image is None:
            raise ValueError(f"generated image {image_id} does not exist")
        siblings = [im.id for im in repo.list_generated_images(session,
                                                               prompt_ids=[image.prompt_id])]
    return review_images(studio, project_id, siblings, accepted)
