"""Tab 3, Captions: caption the candidates, filter the captions into prompts, edit the prompt
table (keep, class, text), and see each class's bias keywords when the library offers them.

Builds widgets only; the work is in the callbacks passed in (see `CaptionCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffubias.config import RunConfig
from diffubias.shipped_models import BASE_CAPTIONERS
from storage.models import JobKind
from ui.caption_service import CaptionsView
from ui.events import (
    GPU,
    TabRefresh,
    file_url,
    open_project,
    progress_callback,
    shown_settings,
    shows_errors,
)

PROMPT_HEADERS = ["keep", "id", "class", "prompt", "source", "matched words",
                  "sent to the generator as"]
PROMPT_TYPES = ["bool", "number", "str", "str", "markdown", "str", "str"]
KEYWORD_HEADERS = ["class", "keywords: share of candidates vs of bias-aligned samples using it"]
KEYWORDS_SHOWN = 6
DEFAULTS = RunConfig()


@dataclass(frozen=True)
class CaptionCallbacks:
    run: Callable[..., CaptionsView]  # (project, {RunConfig field: value}, *, model_id, ui)
    apply_filter: Callable[[int, dict[str, Any]], CaptionsView]  # (project, {top_f, stop words})
    save: Callable[[int, list[dict[str, Any]]], tuple[CaptionsView, int]]
    anchoring: Callable[[int, dict[str, Any]], CaptionsView]  # (project, {template, synonyms})
    view: Callable[[int | None], CaptionsView]
    settings: Callable[[int | None], dict[str, Any]]
    stop: Callable[[int | None], str]
    captioners: Callable[[], list[str]]  # called on page load: listing them imports torch
    keywords_available: bool


def build(callbacks: CaptionCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Captioner\nDescribe each candidate in words; the filter keeps "
                        "the captions that use the most common words, which name what the "
                        "candidates share.")
            captioner = gr.Dropdown(list(BASE_CAPTIONERS), value=DEFAULTS.captioner,
                                    label="captioner", elem_id="captioner",
                                    info="auto: builtin-blip (the small BLIP pretrained here) on "
                                    "the built-in datasets, else the dataset's own captions "
                                    "(metadata; on the built-ins those are an oracle, written "
                                    "from the true bias)")
            model_id = gr.Textbox(label="or a model id / local folder", max_lines=1,
                                  placeholder="e.g. Salesforce/blip-image-captioning-base")
            per_image = gr.Number(DEFAULTS.captions_per_image, precision=0,
                                  label="captions per image")
            with gr.Accordion("VLM instruction", open=False):
                instruction = gr.Textbox(DEFAULTS.caption_instruction, lines=2,
                                         show_label=False)
            gr.Markdown("### Text filter")
            with gr.Row():
                top_f = gr.Number(DEFAULTS.top_f, precision=0, label="F (top words)",
                                  info="0: 2 × classes", min_width=100, elem_id="top-f")
                keywords_n = gr.Number(DEFAULTS.keywords_top_n, precision=0,
                                       label="keywords per class", info="0: none",
                                       min_width=100, visible=callbacks.keywords_available)
            stop_words = gr.Textbox(label="extra stop words", placeholder="comma-separated",
                                    max_lines=2, elem_id="stop-words")
            with gr.Accordion("Class anchoring", open=False):
                template = gr.Textbox(DEFAULTS.prompt_template, max_lines=1,
                                      label="template for prompts that do not name their class",
                                      info="{caption} and {class}; empty: send prompts as "
                                      "they are", elem_id="prompt-template")
                synonyms = gr.Textbox("", label="other words that name a class", max_lines=3,
                                      placeholder="three: 3, III; circle: ring",
                                      elem_id="class-synonyms")
                anchor = gr.Button("Save anchoring", size="sm", elem_id="save-anchoring")
            with gr.Row():
                run = gr.Button("Caption candidates", variant="primary", elem_id="run-captioner")
                stop = gr.Button("Stop", variant="stop", scale=0, min_width=80)
            refilter = gr.Button("Apply the filter again", elem_id="apply-filter")
            status = gr.Markdown("", elem_id="captions-status")
        with gr.Column(scale=3):
            summary = gr.Markdown("*Caption the candidates to get prompts.*",
                                  elem_id="captions-summary")
            table = gr.Dataframe(headers=PROMPT_HEADERS, datatype=PROMPT_TYPES,
                                 interactive=True, static_columns=[1, 4, 5, 6], max_height=900,
                                 column_widths=["88px", "64px", "100px", "30%", "88px", "14%",
                                                "24%"],
                                 wrap=True, label="Prompts: tick keep, fix the class, edit "
                                 "the text, then save", elem_id="prompt-table")
            with gr.Row():
                save = gr.Button("Save edits", variant="primary", scale=0, min_width=140,
                                 elem_id="save-prompts")
                saved = gr.Markdown("", elem_id="save-status")
    gr.Markdown("### Bias keywords per class\nTerms used far more for a "
                                 "class's candidates than for its most bias-aligned samples: "
                                 "they name what the biased model did not expect.",
                                 visible=callbacks.keywords_available)
    keywords = gr.Dataframe(headers=KEYWORD_HEADERS, interactive=False, max_height=420,
                            wrap=True, column_widths=["110px", "90%"],
                            visible=callbacks.keywords_available, elem_id="keywords")

    filter_settings = {"top_f": top_f, "extra_stop_words": stop_words}
    anchor_settings = {"prompt_template": template, "class_synonyms": synonyms}
    settings = {"captions_per_image": per_image, "caption_instruction": instruction,
                **filter_settings, "keywords_top_n": keywords_n, **anchor_settings}

    @shows_errors(status=status)
    def on_run(project_id, progress: gr.Progress = gr.Progress(), *,
               model_id: str = "", **changes) -> tuple:
        # a blank instruction keeps the project's (a VLM needs one)
        changes["caption_instruction"] = (changes.get("caption_instruction") or "").strip() \
            or None
        view = callbacks.run(open_project(project_id), changes, model_id=model_id or "",
                             ui=progress_callback(progress))
        kept = sum(p.keep for p in view.prompts)
        return (f"✓ {view.n_captions} captions of {view.n_images} candidates; {kept} prompts "
                "kept.", *view_outputs(view))

    @shows_errors(status=status)
    def on_filter(project_id, **changes) -> tuple:
        view = callbacks.apply_filter(open_project(project_id), changes)
        kept = sum(p.keep for p in view.prompts)
        return f"✓ Filtered again: {kept} of {len(view.prompts)} prompts kept.", \
            *view_outputs(view)

    @shows_errors(status=status)
    def on_anchor(project_id, **changes) -> tuple:
        view = callbacks.anchoring(open_project(project_id), changes)
        anchored = sum(p.generated_as != p.text for p in view.prompts if p.keep)
        return (f"✓ Anchoring saved: {anchored} kept prompt(s) get their class added.",
                *view_outputs(view))

    @shows_errors(status=saved)
    def on_save(project_id, frame) -> tuple:
        project_id = open_project(project_id)
        rows = [{"keep": r[0], "id": r[1], "class": r[2], "text": r[3]}
                for r in frame.itertuples(index=False) if str(r[1]).strip() not in ("", "nan")]
        view, changed = callbacks.save(project_id, rows)
        return f"✓ Saved {changed} change(s)." if changed else "Nothing changed.", \
            *view_outputs(view)

    shown = gr.State(None)  # the prompt table (filter job id) this page shows
    view_outputs_list = [summary, table, keywords, shown]
    # the API's parameter order: captioner, model_id, then the settings
    run_event = run.click(on_run, [project], [status, *view_outputs_list],
                          inputs_kwargs={"captioner": captioner, "model_id": model_id,
                                         **settings},
                          api_name="run_captioner", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[run_event], api_name="stop_captioner")
    refilter.click(on_filter, [project], [status, *view_outputs_list],
                   inputs_kwargs=filter_settings, api_name="apply_filter")
    save.click(on_save, [project, table], [saved, *view_outputs_list], api_name="save_prompts")
    anchor.click(on_anchor, [project], [status, *view_outputs_list],
                 inputs_kwargs=anchor_settings, api_name="save_anchoring")

    def refresh(project_id, shown_table) -> tuple:
        view = callbacks.view(project_id)
        outputs = view_outputs(view)
        if view.filter_job_id is not None and view.filter_job_id == shown_table:
            # same table: keep what is on screen, a person may be editing it right now
            return outputs[0], gr.skip(), *outputs[2:]
        return outputs

    def show_settings(project_id) -> tuple:
        stored = callbacks.settings(project_id)
        choices = callbacks.captioners()
        chosen = stored.get("captioner", DEFAULTS.captioner)  # a typed model id is not shown
        picker = (gr.Dropdown(choices=choices, value=chosen) if chosen in choices
                  else gr.Dropdown(choices=choices))
        return picker, *shown_settings(stored, settings), "", ""

    return TabRefresh(refresh, [project, shown], view_outputs_list, show_settings,
                      [captioner, *settings.values(), status, saved],
                      jobs={JobKind.CAPTION: run})


def view_outputs(view: CaptionsView) -> tuple:
    return summary_markdown(view), prompt_table(view), keyword_table(view), view.filter_job_id


def summary_markdown(view: CaptionsView) -> str:
    if view.caption_job_id is None:
        return "*Caption the candidates (tab 2 must have run) to get prompts.*"
    kept = sum(p.keep for p in view.prompts)
    edited = sum(p.edited for p in view.prompts)
    lines = [f"**{view.n_captions} captions** of {view.n_images} candidates by "
             f"`{view.captioner}`. Filter: top **{view.top_f}** words"
             + (f" (extra stop words: {', '.join(view.extra_stop_words)})"
                if view.extra_stop_words else "")
             + f" → **{kept} of {len(view.prompts)} prompts kept**, {edited} edited.",
             "Top words: " + ", ".join(f"{w} ({c})" for w, c in view.top_words)]
    if view.oracle:
        lines.append(f"⚠ **Upper bound, not a model**: {view.oracle}.")
    if view.stale:
        lines.append(f"⚠ {view.stale}")
    return "\n\n".join(lines)


def prompt_table(view: CaptionsView):
    import pandas as pd

    rows = [[p.keep, p.prompt_id, p.label, p.text,
             f"![source]({file_url(p.thumbnail)})" if p.thumbnail else "",
             ", ".join(p.matched_words),
             p.generated_as if p.generated_as != p.text else "(as written)"]
            for p in view.prompts]
    return pd.DataFrame(rows, columns=PROMPT_HEADERS)


def keyword_table(view: CaptionsView):
    import pandas as pd

    rows = [[label, ", ".join(f"{k['term']} ({k['candidate_share']:.0%} vs "
                              f"{k['aligned_share']:.0%})" for k in found[:KEYWORDS_SHOWN])
             or "none found"]
            for label, found in (view.keywords or {}).items()]
    return pd.DataFrame(rows, columns=KEYWORD_HEADERS)
