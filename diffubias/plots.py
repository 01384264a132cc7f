"""Charts and image grids for an audit report: plotly figures for the interactive bits, PIL images
for the static ones.

`loss_histogram` shows where the biased model's per-sample losses put the bias-conflicting
samples; `accuracy_bars` compares models on overall / aligned / conflicting / unbiased accuracy;
`object_mass_bars` how much of each model's Grad-CAM falls on the object;
`contact_sheet` tiles images with a caption under each. `write_html` and `save_png` write them
atomically; the HTML embeds plotly.js so it opens offline. Nothing here needs a browser or kaleido,
and nothing knows how the numbers were computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import plotly.graph_objects as go
import torch
from PIL import Image, ImageDraw, ImageFont

from diffubias.files import atomic_path
from diffubias.report import ACCURACY_METRICS

_ALIGNED_COLOR = "#4C78A8"
_CONFLICT_COLOR = "#E45756"
_CAPTION_LINES = 2  # a caption longer than this many lines is cut with an ellipsis
_GAP = 4  # px between columns; rows are already apart by their caption band
_BACKGROUND = (255, 255, 255)
_TILE_BACKGROUND = (224, 224, 224)  # around an image that is not square
_INK = (20, 20, 20)


def loss_histogram(
    losses: np.ndarray,
    *,
    is_conflict: np.ndarray | None = None,
    threshold: float | None = None,
    n_selected: int | None = None,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    bins: int = 60,
    log_y: bool = True,
    log_x: bool | None = None,
) -> go.Figure:
    """Histogram of per-sample losses; with `is_conflict`, bias-aligned and bias-conflicting
    samples as two overlaid bar traces on the same bin edges.

    `threshold` (the loss of the K-th highest sample) draws a dashed vertical line annotated with
    how many samples reach it. With K per class, pass the lowest class threshold and
    `n_selected`, the number of candidates: the line then says it is the lowest of several, since
    more samples than the candidates reach it. With `labels`, hovering a bar lists its commonest classes, named by
    `class_names` when given. The y axis is logarithmic by default because conflicting samples are
    often ~1% of the data. Each trace's `y` holds the exact counts.

    The loss axis is logarithmic when `log_x`, or (None) when most losses are under a hundredth
    of the highest, as after GCE training: on a linear axis they and the threshold would all sit
    in the first bin. Bins are then equal in log10(loss), the traces' `x` and the line are in
    log10 units, and the ticks read as losses.
    """
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 1 or losses.size == 0:
        raise ValueError(f"losses must be a non-empty 1-D array, got shape {losses.shape}")
    if not np.isfinite(losses).all():
        raise ValueError(f"losses must be finite, got {int((~np.isfinite(losses)).sum())} not")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    groups = _histogram_groups(losses, is_conflict)
    label_array = _check_labels(labels, class_names, losses.size)
    if threshold is not None and not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")

    highest = float(losses.max())
    if log_x is None:
        log_x = highest > 0 and float(np.median(losses)) < highest / 100
    floor = max(float(losses[losses > 0].min(initial=highest)), highest * 1e-6) if log_x else 0.0
    position = np.log10(np.maximum(losses, floor)) if log_x else losses
    edges = np.histogram_bin_edges(position, bins=bins)
    loss_edges = 10.0 ** edges if log_x else edges
    centers = (edges[:-1] + edges[1:]) / 2
    # Which bin each sample falls in; the last bin is closed, as in np.histogram.
    bin_of = np.clip(np.searchsorted(edges, position, side="right") - 1, 0, len(centers) - 1)
    fig = go.Figure()
    for name, selected, color in groups:
        counts = np.bincount(bin_of[selected], minlength=len(centers))
        hover = "loss %{customdata[0]:.3g} to %{customdata[1]:.3g}<br>%{y} samples"
        customdata: list[list[object]] = [[lo, hi] for lo, hi in zip(loss_edges[:-1],
                                                                      loss_edges[1:])]
        if label_array is not None:
            tops = _top_classes(bin_of[selected], label_array[selected], len(centers), class_names)
            customdata = [row + [top] for row, top in zip(customdata, tops)]
            hover += "<br>%{customdata[2]}"
        fig.add_trace(
            go.Bar(
                x=centers,
                y=counts,
                width=np.diff(edges),
                name=name,
                marker_color=color,
                opacity=0.65 if len(groups) > 1 else 0.9,
                customdata=customdata,
                hovertemplate=hover + f"<extra>{name}</extra>",
            )
        )
    if threshold is not None:
        reach = int((losses >= threshold).sum())
        if n_selected is None:
            text = f"top-K threshold {threshold:.3g} ({reach} at or above)"
        else:
            text = (f"lowest per-class top-K threshold {threshold:.3g}: {n_selected} candidates, "
                    f"{reach} samples at or right of it")
        x = math.log10(max(threshold, floor)) if log_x else threshold
        # the label on the side with room, so it covers neither the y ticks nor the last bars
        left_of = (x - edges[0]) > 0.55 * (edges[-1] - edges[0])
        fig.add_vline(
            x=x,
            line_dash="dash",
            line_color="black",
            line_width=2,
            annotation_text=text,
            annotation_position="top left" if left_of else "top right",
            annotation_bgcolor="rgba(255,255,255,0.8)",
        )
    fig.update_layout(barmode="overlay", bargap=0, title="Per-sample loss", legend_title_text="")
    fig.update_xaxes(title_text="per-sample loss" + (" (log scale)" if log_x else ""))
    if log_x:
        decades = range(math.ceil(edges[0]), math.floor(edges[-1]) + 1)
        fig.update_xaxes(tickvals=list(decades), ticktext=[f"{10.0 ** d:g}" for d in decades])
    if log_y:
        # Plotly takes a log axis's range in log10 units; starting below 1 keeps 1-count bars.
        # One tick per decade: the 2s and 5s clutter a short range.
        top = max(int(np.max(trace.y)) for trace in fig.data)
        fig.update_yaxes(type="log", range=[math.log10(0.5), math.log10(top * 2)], dtick=1,
                         title_text="samples (log)")
    else:
        fig.update_yaxes(title_text="samples")
    return fig


def accuracy_bars(rows: Mapping[str, Mapping[str, float | None]]) -> go.Figure:
    """Grouped bars: one group per metric (overall, aligned, conflicting, unbiased, then any other
    key), one bar per model. Values are fractions in [0, 1]; None or nan (e.g. a split with no
    samples) is left out."""
    if not rows:
        raise ValueError("rows must name at least one model")
    metrics = [m for m in ACCURACY_METRICS if any(m in r for r in rows.values())]
    for row in rows.values():
        metrics += [m for m in row if m not in metrics]
    fig = go.Figure()
    for model, row in rows.items():
        shown = [(m, row[m]) for m in metrics if m in row and _is_number(row[m])]
        for metric, value in shown:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{model}/{metric} accuracy must be in [0, 1], got {value}")
        fig.add_trace(
            go.Bar(
                name=model,
                x=[m for m, _ in shown],
                y=[v for _, v in shown],
                text=[f"{v:.1%}" for _, v in shown],
                textposition="outside",
            )
        )
    fig.update_layout(barmode="group", title="Accuracy by split", legend_title_text="model")
    fig.update_xaxes(title_text="split", categoryorder="array", categoryarray=metrics)
    fig.update_yaxes(title_text="accuracy", range=[0, 1.1], tickformat=".0%")
    return fig


def class_gap_bars(classes: Sequence[Mapping[str, object]], *, round_number: int) -> go.Figure:
    """Per class, the debiased model's training accuracy on the round's candidates (the
    conflicting proxy) next to the rest of the class (the aligned proxy): `classes` as
    `diffubias.stages.rescore.ClassGap` dicts. A class whose bars differ still has a shortcut."""
    fig = go.Figure()
    names = [str(c["name"]) for c in classes]
    for key, label in (("rest_accuracy", "rest of the class (aligned, proxy)"),
                       ("candidate_accuracy", "candidates (conflicting, proxy)")):
        values = [c[key] for c in classes]
        fig.add_trace(go.Bar(name=label, x=names, y=values,
                             text=[f"{v:.0%}" if _is_number(v) else "" for v in values],
                             textposition="outside"))
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": 1.15},
                      title=f"What the round-{round_number} debiased model still gets wrong")
    fig.update_yaxes(title_text="training accuracy", range=[0, 1.15], tickformat=".0%")
    return fig


def object_mass_bars(before: float, after: float, area: float | None, *,
                     before_role: str = "vanilla") -> go.Figure:
    """Mean share of Grad-CAM mass inside the object mask, the `before_role` (vanilla or biased)
    vs the debiased model, against the share an evenly spread map would get (`area`, the
    object's share of the image)."""
    figure = go.Figure(go.Bar(x=[before_role, "debiased"], y=[before, after],
                              text=[f"{before:.1%}", f"{after:.1%}"], textposition="outside",
                              marker_color=[_CONFLICT_COLOR, _ALIGNED_COLOR]))
    if area is not None:
        figure.add_hline(y=area, line_dash="dash", line_color="black",
                         annotation_text=f"object area {area:.1%} (an evenly spread map)")
    figure.update_layout(title="Grad-CAM mass inside the object", height=320,
                         margin={"l": 50, "r": 20, "t": 50, "b": 40})
    figure.update_yaxes(title_text="share of CAM mass", range=[0, 1.1], tickformat=".0%")
    return figure


def contact_sheet(
    images: torch.Tensor | np.ndarray,
    *,
    captions: Sequence[str] | None = None,
    columns: int = 10,
    tile: int = 96,
    title: str | None = None,
    column_titles: Sequence[str] | None = None,
) -> Image.Image:
    """A grid of uint8 (N, 3 or 1, H, W) images, each fitted into a `tile`-px square (nearest
    neighbour when enlarging, so small images stay crisp), row-major, `min(columns, N)` wide.

    Under each tile its caption, wrapped to at most two lines and cut with an ellipsis ("\\n"
    forces a break); above the grid an optional title line and a row of column titles. Columns
    are 4 px apart, so the width is `c * tile + (c - 1) * 4` for c = min(columns, N); each row is
    `tile` plus the caption band high.
    """
    array = _check_image_batch(images)
    n_images = array.shape[0]
    if captions is not None and len(captions) != n_images:
        raise ValueError(f"captions must be one per image ({n_images}), got {len(captions)}")
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if tile < 8:
        raise ValueError(f"tile must be >= 8 px, got {tile}")
    columns = min(columns, n_images)
    if column_titles is not None and len(column_titles) != columns:
        raise ValueError(f"column_titles must have {columns} entries, got {len(column_titles)}")

    font_size = max(10, min(14, tile // 8))
    font = ImageFont.load_default(size=font_size)
    line_height = font_size + 3
    wrapped = [_wrap(text, font, tile - 4, _CAPTION_LINES) for text in captions or ()]
    caption_height = max((len(lines) for lines in wrapped), default=0) * line_height
    caption_height += 4 if captions is not None else 0
    title_font = ImageFont.load_default(size=font_size + 4)
    title_height = font_size + 12 if title else 0
    header_height = line_height + 6 if column_titles is not None else 0
    rows = math.ceil(n_images / columns)
    width = columns * tile + (columns - 1) * _GAP
    height = title_height + header_height + rows * (tile + caption_height)

    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((4, 4), _truncate(title, title_font, width - 8), fill=_INK, font=title_font)
    for column, text in enumerate(column_titles or ()):
        text = _truncate(text, font, tile - 4)
        left = column * (tile + _GAP) + (tile - font.getlength(text)) / 2
        draw.text((left, title_height + 3), text, fill=_INK, font=font)
    top = title_height + header_height
    for index in range(n_images):
        row, column = divmod(index, columns)
        x, y = column * (tile + _GAP), top + row * (tile + caption_height)
        sheet.paste(_fit_tile(array[index], tile), (x, y))
        for line_number, line in enumerate(wrapped[index] if wrapped else ()):
            draw.text((x + 2, y + tile + 2 + line_number * line_height), line, fill=_INK, font=font)
    return sheet


def write_html(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Write `fig` as one self-contained HTML page (plotly.js embedded, opens offline); atomic."""
    html = fig.to_html(include_plotlyjs=True, full_html=True)
    return _write_atomically(Path(path), lambda file: file.write(html.encode("utf-8")))


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Save a PIL image as PNG; atomic, so a reader never sees half a file."""
    return _write_atomically(Path(path), lambda file: image.save(file, format="PNG"))


def _write_atomically(path: Path, write: Callable[[IO[bytes]], object]) -> Path:
    with atomic_path(path) as temp, open(temp, "wb") as file:
        write(file)
    return path


def _histogram_groups(
    losses: np.ndarray, is_conflict: np.ndarray | None
) -> list[tuple[str, np.ndarray, str]]:
    if is_conflict is None:
        return [("all samples", np.ones(losses.size, dtype=bool), _ALIGNED_COLOR)]
    conflict = np.asarray(is_conflict)
    if conflict.shape != losses.shape or conflict.dtype != bool:
        raise ValueError(
            f"is_conflict must be bool with one entry per loss {losses.shape}, "
            f"got {conflict.dtype} {conflict.shape}"
        )
    return [
        ("bias-aligned", ~conflict, _ALIGNED_COLOR),
        ("bias-conflicting", conflict, _CONFLICT_COLOR),
    ]


def _check_labels(
    labels: np.ndarray | None, class_names: Sequence[str] | None, n: int
) -> np.ndarray | None:
    if labels is None:
        return None
    array = np.asarray(labels)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer) or array.min() < 0:
        raise ValueError(
            f"labels must be non-negative ints, one per loss ({n},), "
            f"got {array.dtype} {array.shape}"
        )
    if class_names is not None and array.max() >= len(class_names):
        raise ValueError(f"class_names has {len(class_names)} names but label {array.max()} occurs")
    return array


def _top_classes(
    bin_of: np.ndarray, labels: np.ndarray, n_bins: int, class_names: Sequence[str] | None
) -> list[str]:
    """Per bin, its three commonest classes with counts, e.g. "seven 8, one 4"."""
    tops = []
    for b in range(n_bins):
        classes, counts = np.unique(labels[bin_of == b], return_counts=True)
        order = np.argsort(-counts, kind="stable")[:3]
        named = [
            f"{class_names[classes[i]] if class_names is not None else classes[i]} {counts[i]}"
            for i in order
        ]
        tops.append(", ".join(named))
    return tops


def _is_number(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def _check_image_batch(images: torch.Tensor | np.ndarray) -> np.ndarray:
    array = images.numpy(force=True) if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {array.dtype}")
    if array.ndim != 4 or array.shape[1] not in (1, 3) or array.shape[0] == 0:
        raise ValueError(f"images must be (N>0, 3 or 1, H, W), got shape {array.shape}")
    return array


def _fit_tile(image: np.ndarray, tile: int) -> Image.Image:
    """A (C, H, W) uint8 image scaled to fit a tile x tile square, centred on grey."""
    hwc = np.transpose(image, (1, 2, 0))  # (C, H, W) -> (H, W, C)
    picture = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc).convert("RGB")
    scale = tile / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    picture = picture.resize(size, resample)
    if picture.size == (tile, tile):
        return picture
    square = Image.new("RGB", (tile, tile), _TILE_BACKGROUND)
    square.paste(picture, ((tile - picture.width) // 2, (tile - picture.height) // 2))
    return square


def _wrap(text: str, font: ImageFont.ImageFont, width: float, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` px; a word too long for a line is broken; past `max_lines`
    the last line ends in an ellipsis."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        remaining = paragraph
        while True:
            cut = _longest_fitting_prefix(remaining, font, width)
            if cut < len(remaining) and " " in remaining[1:cut + 1]:
                cut = remaining.rindex(" ", 1, cut + 1)  # break at the last space that fits
            lines.append(remaining[:cut].rstrip())
            remaining = remaining[cut:].lstrip()
            if not remaining:
                break
    if len(lines) <= max_lines:
        return lines
    kept = lines[: max_lines - 1]
    return [*kept, _truncate(" ".join(lines[max_lines - 1 :]) + "…", font, width)]


def _truncate(text: str, font: ImageFont.ImageFont, width: float) -> str:
    if font.getlength(text) <= width:
        return text
    cut = _longest_fitting_prefix(text, font, width - font.getlength("…"))
    return text[:cut].rstrip() + "…"


def _longest_fitting_prefix(text: str, font: ImageFont.ImageFont, width: float) -> int:
    """Length of the longest prefix of `text` no wider than `width` px (at least 1 if non-empty,
    so wrapping always advances)."""
    low, high = 1, len(text)
    while low < high:  # binary search: prefix widths grow with length
        middle = (low + high + 1) // 2
        if font.getlength(text[:middle]) <= width:
            low = middle
        else:
            high = middle - 1
    return min(low, len(text))
