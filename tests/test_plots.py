"""Plots: the histogram counts every sample once in the right trace, HTML works offline, images
have the sizes their layout promises, and writes are atomic."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffubias import plots


@pytest.fixture
def losses() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mostly low losses, plus 1% conflicting samples with high ones; labels 0..9."""
    rng = np.random.default_rng(0)
    is_conflict = np.zeros(2000, dtype=bool)
    is_conflict[rng.choice(2000, size=20, replace=False)] = True
    values = np.where(is_conflict, rng.normal(5.0, 0.5, 2000), rng.exponential(0.3, 2000))
    labels = rng.integers(0, 10, 2000)
    return values, is_conflict, labels


def test_histogram_splits_aligned_and_conflicting_on_shared_bins(losses):
    values, is_conflict, _ = losses
    threshold = float(np.sort(values)[-20])
    fig = plots.loss_histogram(values, is_conflict=is_conflict, threshold=threshold, bins=40)

    aligned, conflicting = fig.data
    assert (aligned.name, conflicting.name) == ("bias-aligned", "bias-conflicting")
    assert np.sum(aligned.y) == (~is_conflict).sum()
    assert np.sum(conflicting.y) == is_conflict.sum() == 20
    assert np.sum(aligned.y) + np.sum(conflicting.y) == len(values)
    assert len(aligned.x) == 40
    np.testing.assert_array_equal(aligned.x, conflicting.x)
    np.testing.assert_array_equal(aligned.width, conflicting.width)
    # The conflicting samples were planted at high loss: their bins sit right of the aligned mass.
    mean_loss = {t.name: np.average(t.x, weights=t.y) for t in fig.data}
    assert mean_loss["bias-conflicting"] > mean_loss["bias-aligned"]

    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == threshold
    assert "20 at or above" in fig.layout.annotations[0].text
    assert fig.layout.yaxis.type == "log"
    assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text


def test_histogram_without_split_or_threshold(losses):
    values, _, _ = losses
    fig = plots.loss_histogram(values, log_y=False)
    (trace,) = fig.data
    assert np.sum(trace.y) == len(values)
    assert not fig.layout.shapes
    assert fig.layout.yaxis.type != "log"


def test_histogram_hover_names_the_classes_in_a_bin():
    values = np.array([0.1, 0.1, 0.1, 5.0])
    labels = np.array([7, 7, 2, 3])
    names = [f"digit{i}" for i in range(10)]
    fig = plots.loss_histogram(values, labels=labels, class_names=names, bins=2)
    low_bin, high_bin = fig.data[0].customdata
    assert low_bin[2] == "digit7 2, digit2 1"
    assert high_bin[2] == "digit3 1"


def test_histogram_rejects_bad_inputs(losses):
    values, is_conflict, labels = losses
    with pytest.raises(ValueError, match="is_conflict"):
        plots.loss_histogram(values, is_conflict=is_conflict[:10])
    with pytest.raises(ValueError, match="is_conflict"):
        plots.loss_histogram(values, is_conflict=is_conflict.astype(int))
    with pytest.raises(ValueError, match="finite"):
        plots.loss_histogram(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="bins"):
        plots.loss_histogram(values, bins=0)
    with pytest.raises(ValueError, match="class_names"):
        plots.loss_histogram(values, labels=labels, class_names=["a", "b"])


def test_write_html_is_self_contained_and_atomic(tmp_path, losses):
    values, is_conflict, _ = losses
    fig = plots.loss_histogram(values, is_conflict=is_conflict)
    path = tmp_path / "report" / "losses.html"
    path.parent.mkdir()
    path.write_text("stale")

    assert plots.write_html(fig, path) == path
    html = path.read_text(encoding="utf-8")
    assert "plotly.js v" in html  # the bundle's banner: plotly.js is embedded
    assert len(html) > 1_000_000
    assert not re.search(r"<script[^>]*\bsrc=", html)  # nothing fetched from a CDN
    assert [p.name for p in path.parent.iterdir()] == ["losses.html"]  # no temp file left


def test_accuracy_bars_group_models_and_skip_missing():
    rows = {
        "biased": {"overall": 0.9, "aligned": 0.99, "conflicting": 0.1, "unbiased": None},
        "vanilla": {"overall": 0.92, "aligned": 0.98, "conflicting": float("nan")},
        "debiased": {"unbiased": 0.7, "conflicting": 0.6, "overall": 0.8},
    }
    fig = plots.accuracy_bars(rows)
    assert [trace.name for trace in fig.data] == ["biased", "vanilla", "debiased"]
    biased, vanilla, debiased = fig.data
    assert biased.x == ("overall", "aligned", "conflicting")
    assert vanilla.x == ("overall", "aligned")
    assert debiased.x == ("overall", "conflicting", "unbiased")  # the canonical order
    assert debiased.y == (0.8, 0.6, 0.7)
    assert fig.layout.barmode == "group"

    with pytest.raises(ValueError, match="debiased/overall.*80"):
        plots.accuracy_bars({"debiased": {"overall": 80.0}})
    with pytest.raises(ValueError, match="at least one model"):
        plots.accuracy_bars({})


def sheet_height(n: int, **options) -> int:
    images = np.zeros((n, 3, 28, 28), dtype=np.uint8)
    return plots.contact_sheet(images, columns=10, tile=48, **options).size[1]


def test_contact_sheet_size_is_a_grid_of_tiles():
    images = torch.randint(0, 256, (23, 3, 28, 28), dtype=torch.uint8)
    sheet = plots.contact_sheet(images, captions=[f"#{i}" for i in range(23)], columns=10, tile=48)
    assert sheet.mode == "RGB"
    assert sheet.size[0] == 10 * 48 + 9 * 4

    one, two, three = (sheet_height(n, captions=["x"] * n) for n in (10, 20, 23))
    assert three == sheet.size[1]
    assert three - two == two - one == one > 48  # three rows of a tile plus its caption
    assert sheet_height(10) == 48  # no captions, no caption band
    assert sheet_height(10, title="Top conflicts") > 48

    narrow = plots.contact_sheet(images[:3].numpy(), columns=10, tile=48)
    assert narrow.size == (3 * 48 + 2 * 4, 48)


def test_contact_sheet_wraps_then_truncates_long_captions():
    short = sheet_height(2, captions=["seven", "one"])
    long = sheet_height(2, captions=["seven  loss 4.21", "one"])
    longer = sheet_height(2, captions=["seven  loss 4.21 " * 80, "one"])
    assert short < long == longer  # wrapped onto a second line, then cut there


def test_contact_sheet_enlarges_small_images_with_nearest_neighbour():
    checker = np.zeros((1, 1, 2, 2), dtype=np.uint8)  # one-channel images are accepted too
    checker[0, 0, 0, 0] = checker[0, 0, 1, 1] = 255
    sheet = plots.contact_sheet(checker, tile=16)
    pixels = np.asarray(sheet)
    assert set(np.unique(pixels)) == {0, 255}  # no blended greys
    assert (pixels[:8, :8] == 255).all() and (pixels[:8, 8:] == 0).all()


def test_contact_sheet_rejects_bad_inputs():
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        plots.contact_sheet(images.astype(np.float32))
    with pytest.raises(ValueError, match="captions"):
        plots.contact_sheet(images, captions=["a"])
    with pytest.raises(ValueError, match="columns"):
        plots.contact_sheet(images, columns=0)
    with pytest.raises(ValueError, match="N>0"):
        plots.contact_sheet(images[:0])


def test_save_png_round_trips(tmp_path):
    image = Image.new("RGB", (30, 20), (10, 200, 30))
    path = plots.save_png(image, tmp_path / "out" / "sheet.png")
    with Image.open(path) as reloaded:
        assert reloaded.format == "PNG" and reloaded.size == (30, 20)
        assert reloaded.getpixel((0, 0)) == (10, 200, 30)
    assert [p.name for p in path.parent.iterdir()] == ["sheet.png"]


def test_a_skewed_histogram_puts_the_threshold_where_it_can_be_seen():
    """After GCE training most losses are near 0 and the conflicts near 10: on a linear axis the
    threshold sat on the y axis. The loss axis goes logarithmic and the line lands mid-plot."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(np.log(1e-3), 0.5, 9800),
                             rng.normal(10.0, 2.0, 200).clip(0.5)])
    threshold = float(np.sort(values)[-200])
    fig = plots.loss_histogram(values, threshold=threshold, n_selected=200)
    (line,) = fig.layout.shapes
    low, high = fig.data[0].x[0], fig.data[0].x[-1]
    assert line.x0 == pytest.approx(np.log10(threshold))
    assert 0.3 < (line.x0 - low) / (high - low) < 0.95  # not on an edge
    assert "log" in fig.layout.xaxis.title.text
    assert "0.001" in fig.layout.xaxis.ticktext and "10" in fig.layout.xaxis.ticktext
    assert "200 candidates, 200 samples at or right of it" in fig.layout.annotations[0].text
    assert fig.layout.yaxis.dtick == 1
    lo, hi = fig.data[0].customdata[0][:2]  # the hover reads losses, not log10 units
    assert 0 < lo < hi < 0.01
    # most losses far from the top: linear when they are not
    assert plots.loss_histogram(values[-200:]).layout.xaxis.ticktext is None
