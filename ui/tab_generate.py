"""Tab 4, Generate: new bias-conflicting images from the kept prompts, shown one gallery row per
prompt, each image accepted or rejected before training.

Builds widgets only; the work is in the callbacks passed in (see `GenerateCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffubias.config import RunConfig
from diffubias.shipped_models import BASE_GENERATORS
from storage.models import JobKind
from ui.events import (
    GPU,
    Pager,
    TabRefresh,
    markdown_text,
    open_project,
    page_info,
    progress_callback,
    remember_in_url,
    shown_settings,
    shows_errors,
    url_param,
)
from ui.generate_service import SHOW, GenerationView, ImageDetail

DEFAULTS = RunConfig()
TILES_PER_ROW = 6  # wider rows overflow the column instead of shrinking the tiles


@dataclass(frozen=True)
class GenerateCallbacks:
    run: Callable[..., GenerationView]  # (project, {RunConfig field: value}, *, model_id, ui)
    view: Callable[..., GenerationView]  # (project, *, page, show)
    detail: Callable[[int, int], ImageDetail]
    review: Callable[[int, list[int], bool | None], int]
    review_prompt: Callable[[int, int, bool | None], int]
    reject_proposed: Callable[[int], int]  # (project) -> images rejected
    settings: Callable[[int | None], dict[str, Any]]
    stop: Callable[[int | None], str]
    generators: Callable[[], list[str]]  # called on page load: listing them imports torch


def build(callbacks: GenerateCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Generator\nEach kept prompt becomes new images labelled with the "
                        "class of the sample it describes. `auto` is `builtin-ldm` on the "
                        "built-in datasets: the small latent diffusion model pretrained here "
                        "(runs on the CPU). `oracle-renderer` draws with the dataset's own "
                        "generator: an upper bound, not a model. Stable Diffusion wants a GPU.")
            generator = gr.Dropdown(list(BASE_GENERATORS), value=DEFAULTS.generator,
                                    label="backend", elem_id="generator")
            model_id = gr.Textbox(label="or a diffusers model id / local folder", max_lines=1,
                                  placeholder="e.g. stable-diffusion-v1-5/stable-diffusion-v1-5")
            with gr.Row():
                steps = gr.Number(DEFAULTS.gen_steps, precision=0, label="steps", min_width=80,
                                  info="0: the model's own (25 SD, 15 builtin-ldm)")
                guidance = gr.Number(DEFAULTS.guidance_scale, label="guidance", min_width=80)
            with gr.Row():
                per_prompt = gr.Number(DEFAULTS.images_per_prompt, precision=0,
                                       label="images per prompt", min_width=80,
                                       elem_id="images-per-prompt")
                seed = gr.Number(DEFAULTS.seed, precision=0, label="seed", min_width=80)
            max_images = gr.Number(DEFAULTS.max_images, precision=0,
                                   label="at most this many images", info="0: no cap",
                                   elem_id="max-images")
            settings = {"gen_steps": steps, "guidance_scale": guidance,
                        "images_per_prompt": per_prompt, "seed": seed, "max_images": max_images}
            with gr.Row():
                run = gr.Button("Generate images", variant="primary", elem_id="run-generate")
                stop = gr.Button("Stop", variant="stop", scale=0, min_width=80)
            status = gr.Markdown("", elem_id="generate-status")
        with gr.Column(scale=3):
            summary = gr.Markdown("*Generate images from the kept prompts.*",
                                  elem_id="generate-summary")
            with gr.Row():
                show = gr.Radio([(label, key) for key, label in SHOW.items()], value="all",
                                label="show", elem_id="generated-show", scale=3)
                reject_all = gr.Button("✗ Reject every proposed image", size="sm", scale=1,
                                       elem_id="reject-proposed")
            pager = Pager.build("generated")
            page_ids = gr.State([])
            gallery = gr.Gallery(label="generated images, a row per prompt",
                                 columns=TILES_PER_ROW,
                                 height=600, object_fit="contain", allow_preview=False,
                                 elem_id="generated-gallery", buttons=[])
            prompt_list = gr.Markdown("", elem_id="generated-prompts")
        with gr.Column(scale=1, min_width=240):
            large = gr.Image(label="selected", interactive=False, height=240, buttons=[],
                             elem_id="generated-large")
            detail = gr.Markdown("*Select an image to review it.*", elem_id="generated-detail")
            image_id = gr.State(None)
            with gr.Row():
                accept = gr.Button("✓ Accept", interactive=False, elem_id="accept-image")
                reject = gr.Button("✗ Reject", variant="stop", interactive=False,
                                   elem_id="reject-image")
            reject_prompt = gr.Button("✗ Reject this prompt's images", interactive=False,
                                      variant="stop", size="sm", elem_id="reject-prompt")
            gr.Markdown("*Images nobody reviewed are used for training; rejected ones are "
                        "not. Every image is checked after generation (does its caption name "
                        "its class, does the biased model find it hard, is it a copy of a "
                        "training image); ⚑ marks the ones that fail a check.*")

    @shows_errors(status=status)
    def on_run(project_id, progress: gr.Progress = gr.Progress(), *,
               model_id: str = "", **changes) -> tuple:
        view = callbacks.run(open_project(project_id), changes, model_id=model_id or "",
                             ui=progress_callback(progress))
        took = view.params.get("n_prompts", 0)
        return (f"✓ {view.n_images} images from {took} prompts.", *view_outputs(view))

    def show_page(page_number, project_id, shown="all") -> tuple:
        return view_outputs(callbacks.view(project_id, page=int(page_number or 1),
                                           show=shown or "all"))

    @shows_errors
    def on_select(project_id, ids: list[int], evt: gr.SelectData) -> tuple:
        if project_id is None or evt.index is None or evt.index >= len(ids):
            return gr.Image(), "*Select an image to review it.*", None, *_buttons(False)
        return detail_outputs(callbacks.detail(int(project_id), ids[evt.index]))

    def review(accepted: bool | None, whole_prompt: bool):
        @shows_errors
        def handler(project_id, selected, page_number, shown) -> tuple:
            if project_id is None or selected is None:
                raise ValueError("Select an image first")
            if whole_prompt:
                callbacks.review_prompt(int(project_id), int(selected), accepted)
            else:
                callbacks.review(int(project_id), [int(selected)], accepted)
            return (*detail_outputs(callbacks.detail(int(project_id), int(selected))),
                    *show_page(page_number, project_id, shown))
        return handler

    page_outputs = [summary, gallery, prompt_list, page_ids, pager.page, pager.info]
    detail_outputs_list = [large, detail, image_id, accept, reject, reject_prompt]
    # the API's parameter order: generator, model_id, then the settings
    run_event = run.click(on_run, [project], [status, *page_outputs],
                          inputs_kwargs={"generator": generator, "model_id": model_id,
                                         **settings},
                          api_name="generate", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[run_event], api_name="stop_generate")
    pager.wire(show_page, [project, show], page_outputs, api_name="generated_page")
    show.change(lambda project_id, shown: show_page(1, project_id, shown), [project, show],
                page_outputs, api_visibility="private")

    @shows_errors(status=status)
    def on_reject_all(project_id, shown) -> tuple:
        n = callbacks.reject_proposed(open_project(project_id))
        return (f"✗ Rejected {n} proposed image(s).", *show_page(1, project_id, shown))

    reject_all.click(on_reject_all, [project, show], [status, *page_outputs],
                     api_name="reject_proposed")
    gallery.select(on_select, [project, page_ids], detail_outputs_list,
                   api_visibility="private")
    for button, accepted, whole in ((accept, True, False), (reject, False, False),
                                    (reject_prompt, False, True)):
        button.click(review(accepted, whole), [project, image_id, pager.page, show],
                     [*detail_outputs_list, *page_outputs], api_visibility="private")

    @shows_errors
    def review_image(project_id: int, image: int, accepted: bool) -> dict:
        """Accept (True) or reject (False) one generated image, by project and image id."""
        callbacks.review(int(project_id), [int(image)], bool(accepted))
        d = callbacks.detail(int(project_id), int(image))
        return {"image_id": d.image_id, "accepted": d.accepted, "prompt": d.prompt}

    gr.api(review_image, api_name="review_image")

    def generated_list(project_id: int, page: int = 1, shown: str = "all") -> list[dict]:
        """One page of generated images as data: image id and caption; `shown`: all,
        proposed (for rejection by the checks) or passed."""
        view = callbacks.view(int(project_id), page=int(page), show=shown)
        return [{"image_id": image, "caption": caption, "prompt": prompt}
                for image, (_, caption), prompt in zip(view.image_ids, view.tiles,
                                                       view.tile_prompts, strict=True)]

    gr.api(generated_list, api_name="generated_list")

    def refresh(project_id, page_number, shown) -> tuple:
        return show_page(page_number, project_id, shown)

    def show_settings(project_id, request: gr.Request) -> tuple:
        stored = callbacks.settings(project_id)
        choices = callbacks.generators()
        chosen = stored.get("generator", DEFAULTS.generator)  # a typed model id is not shown
        picker = (gr.Dropdown(choices=choices, value=chosen) if chosen in choices
                  else gr.Dropdown(choices=choices))
        shown = url_param(request, "show")  # the filter a reload keeps
        return (picker, *shown_settings(stored, settings), "",
                shown if shown in SHOW else gr.skip())

    show.change(None, show, None, js=remember_in_url("show"))
    return TabRefresh(refresh, [project, pager.page, show], page_outputs, show_settings,
                      [generator, *settings.values(), status, show],
                      jobs={JobKind.GENERATE: run})


def view_outputs(view: GenerationView) -> tuple:
    if view.n_images == 0:
        summary = (f"*{view.n_prompts} kept prompts. Generate images from them.*"
                   if view.n_prompts else "*Caption the candidates (tab 3) to get prompts.*")
    else:
        unreviewed = view.n_images - view.n_accepted - view.n_rejected
        summary = (f"**{view.n_images} images** from {view.n_prompts} kept prompts by "
                   f"`{view.model or view.backend}` · {view.n_accepted} accepted, "
                   f"{view.n_rejected} rejected, {unreviewed} not reviewed · "
                   f"**{view.n_used} will be used for training**.")
        if view.n_proposed:
            what = ("left out unless you accept them" if view.image_checks == "drop" else
                    "used unless you reject them")
            summary += (f"\n\n⚑ The checks propose to reject **{view.n_proposed}** of the "
                        "images nobody reviewed (" + ", ".join(
                            f"{n} {reason}" for reason, n in view.proposed.items())
                        + f"): {what}.")
        elif view.n_checked:
            summary += f"\n\nEvery one of the {view.n_checked} checked images passed the checks."
        if view.checks_note:
            summary += f"\n\n⚠ The class was not checked: {view.checks_note}."
        if view.oracle:
            summary += f"\n\n⚠ **Upper bound, not a model**: {view.oracle}."
        if view.stale:
            summary += (f"\n\n⚠ These images come from earlier candidates: {view.stale} ran "
                        "since. Caption the current candidates (tab 3), then generate again.")
    info = page_info(view.page, view.n_pages, view.n_images, "images") if view.n_images else ""
    # whole prompts per row: 2 per prompt -> 3 prompts a row, 6 -> 1, 12 -> 1 (12 wide)
    columns = max(view.columns, view.columns * (TILES_PER_ROW // max(view.columns, 1)))
    return (summary, gr.Gallery(value=view.tiles, columns=columns), prompt_list(view),
            view.image_ids, view.page, info)


def prompt_list(view: GenerationView) -> str:
    """The page's prompts in full, since a tile has room only for its mark and number."""
    if not view.tiles:
        return ""
    return ("**Prompts on this page** (✓ accepted · ✗ rejected · ⚑ proposed for rejection by "
            "the checks; select an image for its checks)\n\n"
            + "\n".join(f"- {markdown_text(line)}" for line in view.prompt_lines))


def _buttons(enabled: bool) -> tuple:
    return (gr.Button(interactive=enabled), gr.Button(interactive=enabled),
            gr.Button(interactive=enabled))


def detail_outputs(d: ImageDetail) -> tuple:
    state = {True: "✓ accepted", False: "✗ rejected", None: "not reviewed (used for training)"}
    text = (f"**#{d.prompt_id} {d.label}**: {d.prompt}\n\nseed {d.seed} · `{d.model}`\n\n"
            f"{state[d.accepted]}")
    c = d.checks
    if c:
        seen = ("not checked (no model captioner)" if c.get("caption") is None else
                f"“{c['caption']}” ({'names' if c['shows_class'] else 'does not name'} "
                "its class)")
        text += (f"\n\n**Checks**: caption {seen} · biased-model loss {c['bias_loss']:.2f} "
                 f"({'hard: conflicting' if c['conflicting'] else 'easy: bias-aligned'}) · "
                 f"{c['hash_distance']} bits from the nearest training image"
                 + (" (a near-copy)" if c["copy"] else "")
                 + ("" if not c.get("reasons") else f" · ⚑ {'; '.join(c['reasons'])}"))
    return (d.image, text, d.image_id, *_buttons(True))
