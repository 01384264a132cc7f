"""The report of a CLI run folder: `diffubias.report.ReportContent` read from what the stages
wrote there (report.json, scores.csv, captions.csv, prompts.csv, generated/manifest.csv and the
PNG sheets), for `render_report_html` to draw the page the app exports.

It reads only the run folder, never the dataset or a model, so a copied run folder still gives
its report. A step whose files are missing shows as not run. A run folder keeps contact sheets
rather than one file per candidate or Grad-CAM overlay, so those galleries are the sheets.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from diffubias.dataset import SPLITS
from diffubias.evaluation_split import evaluation_note
from diffubias.report import (
    ACCURACY_METRICS,
    MAX_PROMPTS,
    MAX_TILES,
    Accuracy,
    Captions,
    DatasetSummary,
    Detection,
    Generation,
    GradCam,
    Keyword,
    ModelAccuracy,
    PromptLine,
    ReportContent,
    Tile,
)
from diffubias.run_folder import prompt_is_kept, read_csv
from diffubias.shipped_models import oracle_note, resolve

REPORT_HTML = "report.html"
# the config fields that each step's settings table shows
DETECTION_SETTINGS = ("ranker", "arch", "biased_width", "image_size", "init_weights",
                      "biased_epochs", "gce_q", "biased_selection", "committee_size", "top_k",
                      "batch_size", "lr", "seed")
GENERATION_SETTINGS = ("generator", "images_per_prompt", "max_images", "gen_steps",
                       "guidance_scale", "negative_prompt", "gen_width", "gen_height",
                       "gen_batch_size", "model_dtype", "offload", "seed")
GRADCAM_SETTINGS = ("cam_method", "cam_samples")
MODEL_ORDER = ("biased", "vanilla", "debiased")  # then the baselines, by name
CAM_SAMPLE_SET = "conflicting"  # the CLI explains cam_positions' default set


def run_report_content(out_dir: Path, report: Mapping[str, Any], *,
                       created: datetime | None = None) -> ReportContent:
    """What report.html shows, from the run folder `out_dir` and its parsed report.json."""
    out_dir = Path(out_dir)
    if "dataset" not in report:
        raise ValueError(f"{out_dir / 'report.json'} has no dataset: run the `detect` stage first")
    data, config = report["dataset"], report.get("config", {})
    names = list(data["class_names"])
    sizes = data.get("split_sizes", {})  # report.json sorts its keys: back to train, valid, test
    dataset = DatasetSummary(tuple(names), {s: sizes[s] for s in _ordered(sizes, SPLITS)},
                             data.get("image_size"), tuple(data.get("bias_names") or ()),
                             data.get("n_skipped", 0))
    return ReportContent(
        data.get("name", ""), str(config.get("dataset", data.get("root", ""))),
        created or datetime.now(UTC), dataset,
        detection=_detection(out_dir, report, names),
        captions=_captions(out_dir, report),
        generation=_generation(out_dir, report),
        accuracy=_accuracy(report.get("models", {}), sizes),
        gradcam=_gradcam(out_dir, report),
        settings=config, rounds=_rounds(report))


def _rounds(report: Mapping[str, Any]) -> tuple[dict, ...]:
    """The run's one round of the closed loop, once `rescore` ran (the app runs more)."""
    remaining = report.get("remaining")
    if not remaining:
        return ()
    test = report.get("models", {}).get("debiased", {}).get("test", {})
    n_images = report.get("models", {}).get("debiased", {}).get("n_generated")
    return ({"round": 1, "source": "the biased model", "n_candidates":
             remaining["n_candidates"], "n_images": n_images,
             "unbiased": test.get("unbiased"), "conflicting": test.get("conflicting"),
             "n_still_wrong": remaining["n_still_wrong"], "mean_gap": remaining["mean_gap"],
             "mean_true_gap": remaining["mean_true_gap"]},)


def _detection(out_dir: Path, report: Mapping[str, Any], names: list[str]) -> Detection | None:
    from diffubias.plots import loss_histogram

    if not (out_dir / "scores.csv").exists():
        return None
    rows = read_csv(out_dir / "scores.csv")
    losses = np.array([float(r["loss"]) for r in rows])
    is_candidate = np.array([r["candidate"] == "1" for r in rows], dtype=bool)
    index = {name: i for i, name in enumerate(names)}
    labels = np.array([index[r["label"]] for r in rows], dtype=np.int64)
    known = bool(rows) and all(r["conflict"] != "" for r in rows)
    histogram = None
    if len(losses):
        # K is per class: the line is the lowest class threshold, as in the app
        histogram = loss_histogram(
            losses, is_conflict=np.array([r["conflict"] == "1" for r in rows]) if known else None,
            threshold=float(losses[is_candidate].min()) if is_candidate.any() else None,
            n_selected=int(is_candidate.sum()), labels=labels, class_names=names)
        histogram.update_layout(title="Per-sample loss under the biased model")
    return Detection(len(rows), int(is_candidate.sum()), None,
                     report.get("detection", {}), histogram,
                     sheets=_sheets(out_dir, "topk_gallery.png"),
                     settings=_pick(report.get("config", {}), DETECTION_SETTINGS
                                    if report.get("config", {}).get("ranker") == "committee"
                                    else tuple(k for k in DETECTION_SETTINGS
                                               if k != "committee_size")),
                     biased_model=report.get("biased_model") or {})


def _captions(out_dir: Path, report: Mapping[str, Any]) -> Captions | None:
    summary = report.get("captions")
    if summary is None:
        return None
    captioned: dict[str, set[str]] = {}  # source position -> its captions, spaces normalised
    if (out_dir / "captions.csv").exists():
        for row in read_csv(out_dir / "captions.csv"):
            captioned.setdefault(row["position"], set()).add(" ".join(row["text"].split()))
    kept = []
    if (out_dir / "prompts.csv").exists():
        for row in read_csv(out_dir / "prompts.csv"):
            if prompt_is_kept(row["keep"]) and row["text"].strip():
                text = " ".join(row["text"].split())
                # the filter writes each caption as it is: other text was typed by a person
                kept.append(PromptLine(row["label"], row["text"].strip(),
                                       text not in captioned.get(row["source"], {text})))
    text_filter = report.get("filter", {})
    keywords = None if not report.get("keywords") else {
        label: tuple(Keyword(k["term"], k["n_candidates"], k["n_aligned"]) for k in found)
        for label, found in report["keywords"].items()}
    name = resolve(report.get("config", {}).get("captioner") or summary.get("backend", ""),
                   _dataset_name(report), kind="captioner")
    return Captions(name, summary.get("n_captions", 0), summary.get("n_images", 0),
                    text_filter.get("top_f", 0),
                    tuple(w for w, _ in text_filter.get("top_words", [])),
                    len(kept), sum(p.edited for p in kept), tuple(kept[:MAX_PROMPTS]), keywords,
                    oracle=oracle_note(name, _dataset_name(report)))


def _generation(out_dir: Path, report: Mapping[str, Any]) -> Generation | None:
    summary = report.get("generation")
    manifest = out_dir / (summary or {}).get("manifest", "generated/manifest.csv")
    if summary is None or not manifest.exists():
        return None
    rows = read_csv(manifest)
    sheets = _sheets(out_dir, "generated_samples.png")
    tiles = () if sheets else tuple(Tile(manifest.parent / r["file"], r["prompt"])
                                    for r in rows[:MAX_TILES])
    settings = {**_pick(report.get("config", {}), GENERATION_SETTINGS),
                "backend": summary.get("backend"), **summary.get("params", {})}
    name = resolve(report.get("config", {}).get("generator") or str(summary.get("backend")),
                   _dataset_name(report), kind="generator")
    return Generation(name, len(rows), None, tiles, sheets, settings,
                      oracle=oracle_note(name, _dataset_name(report)),
                      checks={} if "skipped" in (summary.get("checks") or {})
                      else summary.get("checks") or {},
                      image_checks=report.get("config", {}).get("image_checks", "propose"))


def _dataset_name(report: Mapping[str, Any]) -> str:
    return str(report.get("dataset", {}).get("name")
               or report.get("config", {}).get("dataset", ""))


def _accuracy(models: Mapping[str, Any], split_sizes: Mapping[str, int]) -> Accuracy | None:
    from diffubias.plots import accuracy_bars

    rows = tuple(ModelAccuracy(m, dict(models[m].get("test", {})), models[m].get("n_train"))
                 for m in _ordered(models, MODEL_ORDER))
    if not rows:
        return None
    figure = None
    if any(r.test for r in rows):
        figure = accuracy_bars({r.model: {k: r.test.get(k) for k in ACCURACY_METRICS}
                                for r in rows})
    return Accuracy(rows, figure, evaluation_note(split_sizes))


def _gradcam(out_dir: Path, report: Mapping[str, Any]) -> GradCam | None:
    from diffubias.plots import object_mass_bars

    summary = report.get("gradcam")
    if summary is None:
        return None
    before, after = summary.get("object_mass_before"), summary.get("object_mass_after")
    figure = (object_mass_bars(before, after, summary.get("object_area"),
                               before_role=summary.get("before", "biased"))
              if before is not None and after is not None else None)
    return GradCam(summary.get("method", ""), summary.get("n_samples", 0), CAM_SAMPLE_SET,
                   figure=figure, sheets=_sheets(out_dir, summary.get("image", "gradcam.png")),
                   settings=_pick(report.get("config", {}), GRADCAM_SETTINGS))


def _sheets(out_dir: Path, name: str) -> tuple[Tile, ...]:
    return (Tile(out_dir / name, name),) if (out_dir / name).exists() else ()


def _ordered(keys: Mapping[str, Any], first: tuple[str, ...]) -> list[str]:
    """The keys named in `first` in that order, then the others by name."""
    return [k for k in first if k in keys] + sorted(set(keys) - set(first))


def _pick(config: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: config[k] for k in keys if k in config}
