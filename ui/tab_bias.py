"""Tab 2, Bias: train the deliberately biased classifier, see the per-sample loss histogram and
the detection metrics, browse the top-K highest-loss candidates per class, and exclude tiles
from the set that gets captioned.

Builds widgets only; the work is in the callbacks passed in (see `BiasCallbacks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from diffubias.config import ARCHITECTURES, BIASED_SELECTIONS, FLOAT_RANGES, RANKERS, RunConfig
from storage.models import JobKind
from ui.bias_service import CandidatePage, DetectionView, SampleDetail
from ui.events import (
    GPU,
    Pager,
    TabRefresh,
    markdown_text,
    open_project,
    page_info,
    percent,
    progress_callback,
    remember_in_url,
    shown_settings,
    shows_errors,
    url_param,
)

ALL_CLASSES = -1
PAGE_SIZES = (24, 48, 96, 200)
DEFAULTS = RunConfig()


@dataclass(frozen=True)
class BiasCallbacks:
    train: Callable[..., DetectionView]  # (project, {RunConfig field: value}, *, ui)
    view: Callable[..., DetectionView]  # (project, *, label)
    page: Callable[..., CandidatePage]  # (project, *, label, page, page_size)
    detail: Callable[[int, int], SampleDetail]
    exclude: Callable[[int, int, bool], SampleDetail]
    class_names: Callable[[int | None], list[str]]
    settings: Callable[[int | None], dict[str, Any]]  # the project's RunConfig as a dict
    stop: Callable[[int | None], str]
    truth_shown: Callable[[int | None], bool]  # does the review see the bias column
    show_truth: Callable[[int, bool], bool]


def build(callbacks: BiasCallbacks, project: gr.Number) -> TabRefresh:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            gr.Markdown("### Biased model\nA classifier trained with Generalized Cross Entropy "
                        "learns the easy shortcut first; the samples it then gets wrong are "
                        "the **bias-conflicting** candidates.")
            ranker = gr.Dropdown(list(RANKERS), value=DEFAULTS.ranker, label="ranker",
                                 info="gce: the method's; erm-early: plain CE stopped early "
                                 "(JTT); committee: bias-amplified (BiasEnsemble), slower",
                                 elem_id="bias-ranker")
            arch = gr.Dropdown(list(ARCHITECTURES), value=DEFAULTS.arch, label="architecture",
                               info="auto: small CNN up to 64 px, ResNet-18 above")
            with gr.Row():
                width = gr.Number(DEFAULTS.width, precision=0, label="width", min_width=80,
                                  elem_id="bias-width", info="the debiased model's")
                biased_width = gr.Number(DEFAULTS.biased_width, precision=0,
                                         label="biased width", min_width=80,
                                         elem_id="bias-biased-width",
                                         info="small CNN; narrow: less room for the classes")
                epochs = gr.Number(DEFAULTS.biased_epochs, precision=0, label="epochs",
                                   min_width=80, elem_id="bias-epochs")
            # a slider needs ends: RunConfig's (it refuses q = 0, saying why)
            gce_q = gr.Slider(*FLOAT_RANGES["gce_q"][:2], value=DEFAULTS.gce_q, step=0.05,
                              label="GCE q", info="higher: leans harder on the easy samples")
            top_k = gr.Number(DEFAULTS.top_k, label="top-K per class",
                              info="≥ 1: a count; < 1: a share of the class",
                              elem_id="bias-topk")
            with gr.Row():
                seed = gr.Number(DEFAULTS.seed, precision=0, label="seed", min_width=80)
                batch = gr.Number(DEFAULTS.batch_size, precision=0, label="batch size",
                                  min_width=80)
            with gr.Row():
                selection = gr.Dropdown(list(BIASED_SELECTIONS), value=DEFAULTS.biased_selection,
                                        label="scoring epoch", min_width=120,
                                        info="train-valid-gap: the epoch that generalises worst")
                committee = gr.Number(DEFAULTS.committee_size, precision=0,
                                      label="committee size", min_width=80,
                                      info="committee ranker only")
            # the API's order: the settings it always had, then the ones added later
            settings = {"arch": arch, "width": width, "biased_epochs": epochs, "gce_q": gce_q,
                        "top_k": top_k, "seed": seed, "batch_size": batch, "ranker": ranker,
                        "biased_selection": selection, "committee_size": committee,
                        "biased_width": biased_width}
            with gr.Row():
                train = gr.Button("Train biased model", variant="primary", elem_id="train-biased")
                stop = gr.Button("Stop", variant="stop", scale=0, min_width=80,
                                 elem_id="stop-biased")
            status = gr.Markdown("", elem_id="bias-status")
        with gr.Column(scale=3):
            metrics = gr.Markdown("*Train the biased model to see the loss histogram.*",
                                  elem_id="bias-metrics")
            histogram = gr.Plot(label="Per-sample loss", elem_id="loss-histogram")
    gr.Markdown("### Top-K candidates\nHighest loss first. Select a tile to see it large; "
                "exclude it if it is not a real bias-conflicting sample (mislabelled, "
                "unreadable) so it is not captioned.")
    truth = gr.Checkbox(False, label="show the dataset's bias labels (⚑ on conflicting tiles)",
                        info="off while you review, so your choices are your own; on for an "
                        "audit of labelled data. The report says whether the review saw them.",
                        elem_id="show-truth")
    with gr.Row(equal_height=True):
        label = gr.Dropdown([("all classes", ALL_CLASSES)], value=ALL_CLASSES, label="class",
                            scale=0, min_width=180, elem_id="candidate-class")
        page_size = gr.Dropdown(list(PAGE_SIZES), value=48, label="per page", scale=0,
                                min_width=100, elem_id="candidate-page-size")
        pager = Pager.build("candidates")
    page_ids = gr.State([])
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="candidates: class · loss (⚑ bias-conflicting, ✗ excluded)",
                                 columns=6, height=560,
                                 object_fit="contain", allow_preview=False,
                                 elem_id="candidate-gallery", buttons=[])
        with gr.Column(scale=1, min_width=260):
            large = gr.Image(label="selected", interactive=False, height=260,
                             elem_id="candidate-large", buttons=[])
            detail = gr.Markdown("*Select a tile.*", elem_id="candidate-detail")
            sample_id = gr.Number(None, precision=0, visible=False)
            toggle = gr.Button("Exclude from candidates", interactive=False,
                               elem_id="toggle-exclude")
            selected_excluded = gr.State(False)

    @shows_errors(status=status)
    def on_train(project_id, progress: gr.Progress = gr.Progress(),
                 **changes) -> tuple:
        project_id = open_project(project_id)
        view = callbacks.train(project_id, changes, ui=progress_callback(progress))
        page = callbacks.page(project_id, label=None, page=1, page_size=48)
        return (done_message(view), metrics_markdown(view), view.histogram, *page_outputs(page),
                gr.Dropdown(value=ALL_CLASSES), 48)

    def show_page(page_number, project_id, label_value, size) -> tuple:
        page = callbacks.page(project_id, label=_label(label_value),
                              page=int(page_number or 1), page_size=int(size or 48))
        return page_outputs(page)

    def show_class(project_id, label_value, size) -> tuple:
        view = callbacks.view(project_id, label=_label(label_value))
        return (view.histogram, *show_page(1, project_id, label_value, size))

    @shows_errors
    def on_select(project_id, ids: list[int], evt: gr.SelectData) -> tuple:
        if project_id is None or evt.index is None or evt.index >= len(ids):
            return gr.Image(), "*Select a tile.*", None, gr.Button(interactive=False), False
        return detail_outputs(callbacks.detail(int(project_id), ids[evt.index]))

    @shows_errors
    def on_toggle(project_id, sample, excluded: bool) -> tuple:
        if project_id is None or sample is None:
            raise ValueError("Select a candidate tile first")
        return detail_outputs(callbacks.exclude(int(project_id), int(sample), not excluded))

    page_outputs_list = [gallery, page_ids, pager.page, pager.info]
    detail_outputs_list = [large, detail, sample_id, toggle, selected_excluded]
    train_event = train.click(
        on_train, [project], [status, metrics, histogram, *page_outputs_list, label, page_size],
        inputs_kwargs=settings, api_name="train_biased", **GPU)
    stop.click(callbacks.stop, project, status, cancels=[train_event], api_name="stop_biased")
    pager.wire(show_page, [project, label, page_size], page_outputs_list,
               api_name="candidates_page")
    label.change(None, label, None, js=remember_in_url("class"))  # kept across a reload
    label.input(show_class, [project, label, page_size], [histogram, *page_outputs_list],
                api_visibility="private")
    page_size.input(lambda p, lab, size: show_page(1, p, lab, size), [project, label, page_size],
                    page_outputs_list, api_visibility="private")
    gallery.select(on_select, [project, page_ids], detail_outputs_list,
                   api_visibility="private")
    def after_toggle(page_number, project_id, label_value, size) -> tuple:
        """The summary (its count of excluded candidates) and the page, marks included."""
        view = callbacks.view(project_id, label=_label(label_value))
        return metrics_markdown(view), *show_page(page_number, project_id, label_value, size)

    toggle.click(on_toggle, [project, sample_id, selected_excluded], detail_outputs_list,
                 api_visibility="private").then(
        after_toggle, [pager.page, project, label, page_size], [metrics, *page_outputs_list],
        api_visibility="private")

    @shows_errors
    def set_excluded(project_id: int, sample: int, excluded: bool) -> dict:
        """Exclude (True) or include (False) a candidate, by project and sample id."""
        d = callbacks.exclude(int(project_id), int(sample), bool(excluded))
        return {"sample_id": d.sample_id, "excluded": d.excluded, "label": d.label,
                "loss": d.loss}

    gr.api(set_excluded, api_name="set_excluded")

    def candidate_list(project_id: int, label: int = ALL_CLASSES, page: int = 1,
                       page_size: int = 48) -> list[dict]:
        """One page of candidates as data: sample id and caption (class · loss)."""
        found = callbacks.page(int(project_id), label=_label(label), page=int(page),
                               page_size=int(page_size))
        return [{"sample_id": sample, "caption": caption}
                for sample, (_, caption) in zip(found.sample_ids, found.tiles, strict=True)]

    gr.api(candidate_list, api_name="candidate_list")

    @shows_errors
    def on_truth(project_id, shown, page_number, label_value, size) -> tuple:
        callbacks.show_truth(open_project(project_id), bool(shown))
        return refresh(project_id, page_number, label_value, size)

    def refresh(project_id, page_number, label_value, size,
                request: gr.Request | None = None) -> tuple:
        label_value = class_from_url(project_id, request, label_value)
        view = callbacks.view(project_id, label=_label(label_value))
        return (metrics_markdown(view), view.histogram,
                *show_page(page_number, project_id, label_value, size))

    def class_from_url(project_id, request: gr.Request | None, default: Any) -> Any:
        """The class filter the URL keeps (a reload shows the same class), if this project
        has that class; else `default`."""
        wanted = url_param(request, "class")
        names = callbacks.class_names(project_id) if wanted is not None else []
        if wanted is not None and wanted.lstrip("-").isdigit() and (
                ALL_CLASSES <= int(wanted) < len(names)):
            return int(wanted)
        return default

    def settings_of(project_id, request: gr.Request | None = None) -> tuple:
        names = callbacks.class_names(project_id)
        choices = [("all classes", ALL_CLASSES), *((n, i) for i, n in enumerate(names))]
        chosen = class_from_url(project_id, request, ALL_CLASSES)
        return (gr.Dropdown(choices=choices, value=chosen),
                *shown_settings(callbacks.settings(project_id), settings), "")

    truth.input(on_truth, [project, truth, pager.page, label, page_size],
                [metrics, histogram, *page_outputs_list], api_name="show_truth")

    def show_settings(project_id, request: gr.Request) -> tuple:
        return (*settings_of(project_id, request), callbacks.truth_shown(project_id))

    return TabRefresh(refresh, [project, pager.page, label, page_size],
                      [metrics, histogram, *page_outputs_list],
                      show_settings, [label, *settings.values(), status, truth],
                      jobs={JobKind.BIASED_TRAIN: train})


def _label(value: Any) -> int | None:
    return None if value is None or int(value) == ALL_CLASSES else int(value)


def page_outputs(page: CandidatePage) -> tuple:
    return (page.tiles, page.sample_ids, page.page,
            page_info(page.page, page.n_pages, page.total, "candidates") if page.total else "")


def detail_outputs(d: SampleDetail) -> tuple:
    conflict = {True: " · **bias-conflicting**", False: " · bias-aligned", None: ""}[d.conflicting]
    lines = [f"**{d.label}**" + (f" · bias: {d.bias}" if d.bias else "") + conflict,
             f"loss **{d.loss:.3f}** · rank {d.rank_in_class + 1 if d.rank_in_class is not None else '–'}"
             f" in its class · {d.split} #{d.position}",
             "**excluded** from captioning" if d.excluded else "in the candidate set"]
    if d.captions:
        lines.append("**Captions**")
        lines += [f"- {text} *({source})*" for text, source in d.captions]
    button = gr.Button("Include again" if d.excluded else "Exclude from candidates",
                       interactive=True)
    text = "\n\n".join(lines[:3]) + ("\n\n" + "\n".join(lines[3:]) if d.captions else "")
    return d.image, text, d.sample_id, button, d.excluded


def done_message(view: DetectionView) -> str:
    took = f" in {view.seconds:.0f} s" if view.seconds else ""
    return (f"✓ Trained and scored {view.n_scored} training samples{took}; "
            f"{view.n_candidates} candidates.")


def metrics_markdown(view: DetectionView) -> str:
    if view.job_id is None:
        return "*Train the biased model to see the loss histogram and the candidates.*"
    m, t = view.metrics, view.test
    lines = [f"**{view.n_candidates} candidates** (top-K per class) of {view.n_scored} scored "
             f"training samples; {view.n_excluded} excluded."]
    if view.whole_classes:
        k = view.params.get("top_k")
        listed = ", ".join(f"{name} ({size})" for name, size in view.whole_classes.items())
        lines.append(f"⚠ K = {k:g} is not smaller than these classes, so each is a candidate "
                     f"whole: {listed}. Use a smaller K or a fraction (e.g. 0.02) to rank within "
                     "them." if isinstance(k, (int, float)) else
                     f"⚠ Taken whole (K is not smaller than the class): {listed}.")
    if m.get("precision_at_k") is not None:
        lines.append(
            "Detection (the bias is known): "
            f"precision@K **{percent(m.get('precision_at_k'))}**, recall@K "
            f"**{percent(m.get('recall_at_k'))}**, R-precision "
            f"**{percent(m.get('r_precision'))}**, AUROC **{_num(m.get('auroc'))}** "
            f"({m.get('n_conflicts')} bias-conflicting samples in train).")
    if t:
        lines.append(f"Biased model on the {view.split} split: overall "
                     f"{percent(t.get('overall'))}"
                     + (f", aligned {percent(t.get('aligned'))}, conflicting "
                        f"{percent(t.get('conflicting'))}, unbiased {percent(t.get('unbiased'))}"
                        if t.get("unbiased") is not None else "") + ".")
    lines += biased_model_lines(view.biased_model)
    return "\n\n".join(lines)


def biased_model_lines(b: dict[str, Any]) -> list[str]:
    """Is the biased model biased: its own train and validation accuracy per epoch (no bias
    label), what the committee left out, and the warning when it looks unbiased."""
    if not b.get("epochs"):
        return []
    per_epoch = " · ".join(f"{e['epoch']}: {percent(e.get('train_accuracy'))} / "
                           f"{percent(e.get('valid_accuracy'))}" for e in b["epochs"])
    lines = [f"Biased model (ranker **{b.get('ranker', 'gce')}**), train / validation accuracy "
             f"per epoch: {per_epoch}; epoch {b.get('selected_epoch')} scores"
             + (f" (chance {percent(b['chance'])})" if b.get("chance") is not None else "")
             + "."]
    if b.get("n_dropped") is not None:
        lines.append(f"The committee left {b['n_dropped']} samples it did not fit out of the "
                     "scoring model's training.")
    if b.get("warning"):
        lines.append(f"⚠ {markdown_text(b['warning'])}")
    return lines


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
