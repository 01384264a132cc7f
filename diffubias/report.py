"""The audit report as one self-contained HTML page: what a report shows (`ReportContent`, frozen
dataclasses) and `render_report_html`, the one renderer of it.

The app fills a `ReportContent` from its store, the CLI from a run folder; both render it here,
so the two reports read the same. Self-contained: plotly.js is inlined in the first chart only,
every image is a data URI, and the page asks nothing of the network, so it opens offline and can
be mailed. This module reads the image files it is given and calls `to_html` on the figures; it
knows nothing of where they came from or how the numbers were computed (no torch, no store).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffubias.report_page import (
    escape,
    number,
    percent,
    report_page,
    settings_table,
    table,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

ACCURACY_METRICS = ("overall", "aligned", "conflicting", "unbiased")
MAX_TILES = 40  # per gallery: every tile is inlined, so the page grows with each one
MAX_PROMPTS = 60
MAX_CAM_ROWS = 16
MAX_KEYWORDS = 6  # per class


@dataclass(frozen=True)
class Tile:
    """One image of a gallery with the caption under it."""

    image: Path
    caption: str = ""


@dataclass(frozen=True)
class DatasetSummary:
    class_names: tuple[str, ...]
    split_sizes: Mapping[str, int]  # split -> images, in the order shown
    image_size: int | None  # px, the side models train on
    bias_names: tuple[str, ...] = ()  # empty: the bias attribute is unknown
    n_skipped: int = 0  # files skipped at import


@dataclass(frozen=True)
class Detection:
    """Stages 1-3: the biased model's per-sample scores and the top-K candidates."""

    n_scored: int
    n_candidates: int
    n_excluded: int | None  # excluded by a reviewer; None where nobody reviews (the CLI)
    metrics: Mapping[str, Any] = field(default_factory=dict)  # only the numbers are shown
    histogram: go.Figure | None = None
    candidates: tuple[Tile, ...] = ()  # one per candidate, highest loss first
    sheets: tuple[Tile, ...] = ()  # contact sheets of candidates, shown at their own size
    settings: Mapping[str, Any] = field(default_factory=dict)
    # did the reviewer see the bias column: {"ever_shown", "excluded_while_shown"}; {}: no review
    review: Mapping[str, Any] = field(default_factory=dict)
    # the scoring model's own accuracies per epoch and its warning when it looks unbiased
    # (diffubias.rankers.Diagnostics.to_dict()); {}: not recorded
    biased_model: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PromptLine:
    label: str  # class name
    text: str
    edited: bool = False  # a person changed the caption's text


@dataclass(frozen=True)
class Keyword:
    """A term that describes a class's candidates far more often than its aligned samples."""

    term: str
    n_candidates: int
    n_aligned: int


@dataclass(frozen=True)
class Captions:
    """Stages 4-5: captions of the candidates and the text filter's prompts."""

    captioner: str
    n_captions: int
    n_images: int
    top_f: int
    top_words: tuple[str, ...]
    n_kept: int
    n_edited: int
    prompts: tuple[PromptLine, ...] = ()  # the kept ones
    keywords: Mapping[str, tuple[Keyword, ...]] | None = None  # class -> keywords; None: not run
    oracle: str = ""  # why the captions are an upper bound (shipped_models.oracle_note), or ""


@dataclass(frozen=True)
class Generation:
    """Stage 6: the generated images."""

    generator: str
    n_images: int
    n_rejected: int | None  # by a reviewer; None where nobody reviews (the CLI)
    tiles: tuple[Tile, ...] = ()  # the kept images, prompt as caption
    sheets: tuple[Tile, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)
    oracle: str = ""  # why the images are an upper bound (shipped_models.oracle_note), or ""
    # the verify stage's summary (n_images, n_passed, n_wrong_class, n_aligned, n_copies), and
    # what a failing image meant (image_checks: propose or drop); {} when nothing was checked
    checks: Mapping[str, Any] = field(default_factory=dict)
    image_checks: str = "propose"


@dataclass(frozen=True)
class ModelAccuracy:
    model: str  # biased, vanilla, debiased or a baseline
    test: Mapping[str, float | None]  # metric (ACCURACY_METRICS) -> accuracy; None: no samples
    n_train: int | None = None


@dataclass(frozen=True)
class Accuracy:
    """Stages 7-8: test accuracy of each model."""

    models: tuple[ModelAccuracy, ...]
    figure: go.Figure | None = None
    note: str | None = None  # evaluation_split.evaluation_note: no test split


@dataclass(frozen=True)
class CamRow:
    image: Path
    before: Path  # the biased model's Grad-CAM overlay
    after: Path  # the debiased model's
    captions: tuple[str, str, str]  # under the image, before and after


@dataclass(frozen=True)
class GradCam:
    """Stage 9: where the debiased model and the one it is compared with look."""

    method: str
    n_samples: int
    sample_set: str  # which samples were explained, e.g. "conflicting"
    agreement: Mapping[str, float] = field(default_factory=dict)  # model -> accuracy on them
    figure: go.Figure | None = None  # CAM mass inside the object, when there are masks
    rows: tuple[CamRow, ...] = ()
    sheets: tuple[Tile, ...] = ()  # or comparison sheets holding many rows
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportContent:
    """Everything a report shows. A step left as None was not run."""

    name: str  # what was audited: the project, or the dataset of a run folder
    source: str  # where its data came from
    created: datetime  # shown as UTC
    dataset: DatasetSummary
    detection: Detection | None = None
    captions: Captions | None = None
    generation: Generation | None = None
    accuracy: Accuracy | None = None
    gradcam: GradCam | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # the whole configuration
    # the closed loop, one dict per round (ROUND_COLUMNS); () when no round was re-scored
    rounds: tuple[Mapping[str, Any], ...] = ()


def render_report_html(content: ReportContent) -> str:
    """The whole report as one HTML page that needs nothing but itself."""
    figures = _Figures()
    parts = [f"<h1>Bias audit: {escape(content.name)}</h1>",
             f"<p class=muted>DiffuBias Studio report, {content.created:%Y-%m-%d %H:%M} UTC. "
             f"Source: {escape(content.source)}.</p>"]
    oracles = [step.oracle for step in (content.captions, content.generation)
               if step is not None and step.oracle]
    if oracles:
        parts.append("<p class=warn><b>Upper bound, not the method:</b> this run used an oracle "
                     "that reads what no model could know, so its accuracies overstate what "
                     f"DiffuBias achieves with real models. {escape(' '.join(oracles))}</p>")
    parts += ["<h2>1. Dataset</h2>", *_dataset(content.dataset)]
    for title, step, render in (("2. Bias detection", content.detection, _detection),
                                ("3. Captions and prompts", content.captions, _captions),
                                ("4. Generated images", content.generation, _generation),
                                ("5. Accuracy before and after", content.accuracy, _accuracy),
                                ("6. Where the models look (Grad-CAM)", content.gradcam,
                                 _gradcam)):
        parts += [f"<h2>{title}</h2>", *(render(step, figures) if step is not None
                                          else [NOT_RUN])]
    if content.rounds:
        parts += ["<h2>7. Rounds of the closed loop</h2>", *_rounds(content.rounds)]
    parts += ["<h2>Settings</h2>", settings_table(content.settings)]
    return report_page(f"Bias audit: {content.name}", "\n".join(parts))


# -- the sections -------------------------------------------------------------------------------

NOT_RUN = "<p>Not run.</p>"


class _Figures:
    """Renders charts in page order; plotly.js goes into the first one only."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, figure: go.Figure) -> str:
        self.n += 1
        return figure.to_html(include_plotlyjs=self.n == 1, full_html=False)


def _dataset(d: DatasetSummary) -> list[str]:
    bias = "known: " + escape(", ".join(d.bias_names)) if d.bias_names else "unknown"
    return [table(["split", "images"], [[s, n] for s, n in d.split_sizes.items()]),
            f"<p>{len(d.class_names)} classes ({escape(', '.join(d.class_names))}); image size "
            f"{d.image_size} px; bias attribute {bias}; {d.n_skipped} file(s) skipped at "
            "import.</p>"]


def _detection(d: Detection, figure: _Figures) -> list[str]:
    excluded = f" ({d.n_excluded} excluded by the reviewer)" if d.n_excluded is not None else ""
    ranker = d.biased_model.get("ranker", "gce")
    parts = [f"<p>A deliberately biased classifier (ranker {escape(ranker)}, settings below) "
             f"scored {d.n_scored} "
             f"training samples; the highest-loss samples of each class (top-K per class, "
             f"{d.n_candidates} in all) are the bias-conflicting candidates{excluded}.</p>"]
    if d.review:
        parts.append("<p>The review " + (
            f"saw the dataset's bias labels: {d.review['excluded_while_shown']} exclusions were "
            "decided with them on screen, so the candidates are not the product's alone.</p>"
            if d.review.get("ever_shown") else "did not see the dataset's bias labels.</p>"))
    metrics = {k: v for k, v in d.metrics.items() if isinstance(v, (int, float))}
    if metrics:
        parts.append(table(["metric", "value"], [_metric_row(k, v) for k, v in metrics.items()]))
    parts += _biased_model(d.biased_model)
    if d.histogram is not None:
        parts.append(figure(d.histogram))
    parts += ["<h3>Top candidates</h3>", *_images(d.candidates[:MAX_TILES], d.sheets),
              settings_table(d.settings)]
    return parts


def _biased_model(b: Mapping[str, Any]) -> list[str]:
    if not b.get("epochs"):
        return []
    rows = [[e["epoch"], percent(e.get("train_accuracy")), percent(e.get("valid_accuracy"))]
            for e in b["epochs"]]
    warning = [f"<p class=warn>{escape(b['warning'])}</p>"] if b.get("warning") else []
    return [*warning, f"<p>The biased model per epoch (epoch {b['selected_epoch']} scores):</p>",
            table(["epoch", "train accuracy", "validation accuracy"], rows)]


def _captions(c: Captions, _: _Figures) -> list[str]:
    parts = [f"<p>Captioner <b>{escape(c.captioner)}</b>{_oracle(c.oracle)}: {c.n_captions} "
             f"captions of {c.n_images} "
             f"candidates. Text filter: top {c.top_f} words ({escape(', '.join(c.top_words))}); "
             f"{c.n_kept} prompts kept, {c.n_edited} edited by hand.</p>",
             table(["class", "prompt", "edited"],
                    [[p.label, p.text, "yes" if p.edited else ""]
                     for p in c.prompts[:MAX_PROMPTS]])]
    if c.keywords:
        parts += ["<h3>Bias keywords per class</h3>",
                  table(["class", "keywords (candidates / aligned samples using it)"],
                         [[label, ", ".join(f"{k.term} ({k.n_candidates}/{k.n_aligned})"
                                            for k in found[:MAX_KEYWORDS])]
                          for label, found in c.keywords.items()])]
    return parts


def _generation(g: Generation, _: _Figures) -> list[str]:
    rejected = f", {g.n_rejected} rejected by the reviewer" if g.n_rejected is not None else ""
    return [f"<p>{g.n_images} images{rejected}. Generator: <b>{escape(g.generator)}</b>"
            f"{_oracle(g.oracle)}.</p>", *_checks(g),
            *_images(g.tiles[:MAX_TILES], g.sheets), settings_table(g.settings)]


def _checks(g: Generation) -> list[str]:
    c = g.checks
    if not c:
        return []
    meant = ("left out of training" if g.image_checks == "drop" else
             "proposed for rejection to the reviewer")
    return [f"<p>Automatic checks: {c['n_passed']} of {c['n_images']} images passed; "
            f"{c['n_wrong_class']} captioned without their class, {c['n_aligned']} easy for the "
            f"biased model (bias-aligned), {c['n_copies']} near-copies of a training image. "
            f"Images failing a check were {meant}.</p>"]


def _oracle(note: str) -> str:
    return f" <span class=warn>({escape(note)})</span>" if note else ""


def _accuracy(a: Accuracy, figure: _Figures) -> list[str]:
    parts = [f"<p class=warn>{escape(a.note)}</p>"] if a.note else []
    parts += [table(["model", *ACCURACY_METRICS, "training images"],
                    [[m.model, *(percent(m.test.get(k)) for k in ACCURACY_METRICS),
                      m.n_train if m.n_train is not None else ""] for m in a.models])]
    if a.figure is not None:
        parts.append(figure(a.figure))
    return parts


def _gradcam(g: GradCam, figure: _Figures) -> list[str]:
    text = (f"{escape(g.method)} on {g.n_samples} {escape(g.sample_set)} samples; each model explains "
            "its own prediction.")
    if g.agreement:
        text += " Accuracy on them: " + ", ".join(f"{k} {v:.1%}" for k, v in g.agreement.items()) \
            + "."
    parts = [f"<p>{text}</p>"]
    if g.figure is not None:
        parts.append(figure(g.figure))
    tiles = [Tile(path, caption) for row in g.rows[:MAX_CAM_ROWS]
             for path, caption in zip((row.image, row.before, row.after), row.captions)]
    parts += _images(tiles, g.sheets, columns=6)  # two samples a row, across the page
    if g.settings:
        parts.append(settings_table(g.settings))
    return parts


ROUND_COLUMNS = {"round": "round", "source": "candidates from", "n_candidates": "candidates",
                 "n_images": "generated images trained", "unbiased": "unbiased",
                 "conflicting": "conflicting", "n_still_wrong": "candidates still wrong",
                 "mean_gap": "gap (proxy)", "mean_true_gap": "gap (bias column)"}


def _rounds(rounds: tuple[Mapping[str, Any], ...]) -> list[str]:
    return ["<p>Each round's debiased model on the test split, and on the training set "
            "afterwards: how many of the round's candidates it still gets wrong, and the gap "
            "between its accuracy on the rest of each class and on the candidates (mean over "
            "classes; the bias-column gap, where the dataset has one, is what the proxy "
            "estimates). Later rounds train on the images of every round.</p>",
            table(list(ROUND_COLUMNS.values()),
                   [[number(r.get(k)) for k in ROUND_COLUMNS] for r in rounds])]


# -- HTML pieces --------------------------------------------------------------------------------

# the detection metrics as the app names and shows them: (name, shown as a percentage)
DETECTION_METRICS = {
    "n_selected": ("candidates (top-K)", False), "n_conflicts": ("bias-conflicting in train", False),
    "precision_at_k": ("precision@K", True), "recall_at_k": ("recall@K", True),
    "r_precision": ("R-precision", True), "auroc": ("AUROC", False),
    "average_precision": ("average precision", True)}


def _metric_row(key: str, value: float) -> list[str]:
    name, share = DETECTION_METRICS.get(key, (key.replace("_", " "), False))
    return [escape(name), f"{value:.1%}" if share else number(value)]


def _data_uri(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    mime = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg",
            "jpeg": "image/jpeg"}.get(suffix, "image/png")
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _tile_html(tile: Tile) -> str:
    return (f'<figure><img src="{_data_uri(Path(tile.image))}" alt=""><figcaption>'
            f"{escape(tile.caption)}</figcaption></figure>")


def _gallery(tiles: tuple[Tile, ...] | list[Tile], columns: int | None = None) -> str:
    """Fixed-size tiles filling the width; with `columns`, that many across the whole page,
    the images as wide as their column (Grad-CAM: image, before, after for two samples a row)."""
    style = (f' style="grid-template-columns: repeat({columns}, minmax(0, 1fr))"' if columns
             else "")
    wide = " wide" if columns else ""
    return f'<div class="gallery{wide}"{style}>{"".join(_tile_html(t) for t in tiles)}</div>'


def _sheets(sheets: tuple[Tile, ...]) -> str:
    """Contact sheets, many tiles in one image: shown at their own size, not as a tile."""
    return f'<div class="sheets">{"".join(_tile_html(s) for s in sheets)}</div>'


def _images(tiles: tuple[Tile, ...] | list[Tile], sheets: tuple[Tile, ...],
            columns: int | None = None) -> list[str]:
    """A gallery of the tiles (an empty one when there are no sheets either), then the sheets."""
    return ([_gallery(tiles, columns)] if tiles or not sheets else []) + \
        ([_sheets(sheets)] if sheets else [])
