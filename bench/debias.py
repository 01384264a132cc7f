"""Debiasing benchmark: every method of `diffubias.baselines` x datasets x conflict ratios x seeds
in one run, the detection quality of three rankings at the same K, and the efficiency of the
training loop and of batched scoring, measured side by side.

Usage:
  python bench/debias.py --quick     # 1 % conflicts, seed 0, both built-ins
  python bench/debias.py --jobs 2    # full grid: 0.5/1/2/5 % x seeds 0-4 x both built-ins
  python bench/debias.py --device cuda --jobs 4   # the same on a GPU
  python bench/debias.py --ratios 0.01 --seeds 0,1,2   # a part of it
  python bench/debias.py --dataset builtin:colored-digits --dataset path/to/folder_or.zip
  python bench/debias.py --ablation  # DiffuBias without class anchoring / dropping images
                                     # failing the checks, 1 % x seeds 0-2, its own section
Writes the `debias` and `debias-efficiency` sections of docs/BENCHMARKS.md, PNG charts under
docs/img/ and every row to docs/benchmarks.json. A folder or zip is run at its own conflict share
(measured from its bias column) and needs a generator for the DiffuBias rows, which are otherwise
skipped with the reason. Torch runs on one thread by default: on a shared 2-core machine two
processes with two threads each slow each other down by ~10x (measured), one thread each do not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from markdown import BENCHMARKS_MD, machine_line, write_section  # noqa: E402

from diffubias.baselines import METHODS  # noqa: E402
from diffubias.baselines.run import run_method  # noqa: E402
from diffubias.baselines.shared import (DEFAULT_OPTIONS, BaselineOptions,  # noqa: E402
                                        SharedStages)
from diffubias.builtin import CONFLICT_RATIOS  # noqa: E402
from diffubias.config import RunConfig  # noqa: E402
from diffubias.dataset import ImageDataset  # noqa: E402
from diffubias.generation import Generator  # noqa: E402
from diffubias.images import open_images  # noqa: E402
from diffubias.prepared import (PreparedDataset, new_classifier, test_accuracy,  # noqa: E402
                                train_config)
from diffubias.scoring import detection_metrics, score_samples  # noqa: E402
from diffubias.shipped_models import oracle_note, resolve  # noqa: E402
from diffubias.training import train_classifier  # noqa: E402

DOCS = BENCHMARKS_MD.parent
BUILTINS = ("builtin:colored-digits", "builtin:shape-scenes")
# Half the product's classifier width (16), to keep the grid affordable: with every registered
# method and the real generator it still takes hours on two CPU cores (run it with --jobs 2 and
# --resume in the background, or with --device cuda). Every method trains this same model;
# everything else is RunConfig's default.
BENCH_OVERRIDES = {"width": 8}
# The grid's budget: twice the product's 12 epochs. At 12 epochs LfF and JTT were still improving
# at their last epoch (their papers train far longer); a single-seed probe at 24 epochs put LfF,
# faithful JTT and DFA at or above DiffuBias. Every method gets these same epochs; the budget
# table reports each method's optimizer steps and best epoch.
GRID_OVERRIDES = {**BENCH_OVERRIDES, "debias_epochs": 24}
PROFILES = {"quick": {"ratios": (0.01,), "seeds": (0,), "repeats": 3},
            # 5 seeds: a paired 95 % interval over 3 seeds is too wide to call most settings
            "full": {"ratios": CONFLICT_RATIOS, "seeds": (0, 1, 2, 3, 4), "repeats": 5}}
ROW_KEYS = ("method", "dataset", "conflict_ratio", "seed", "unbiased", "conflicting", "aligned",
            "overall")
RANKINGS = ("gce", "erm", "jtt-error-set")
# the ablation of this project's additions to the method: its own section, json and charts
ABLATION = {"methods": ("vanilla", "diffubias", "diffubias-unanchored", "diffubias-checked"),
            "ratios": (0.01,), "seeds": (0, 1, 2), "section": "debias-ablation",
            "title": "DiffuBias ablations: class anchoring and the image checks",
            "json": DOCS / "benchmarks-ablation.json", "prefix": "ablation_"}
GeneratorFactory = Callable[[PreparedDataset], Generator]
Log = Callable[[str], None]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dataset_label(dataset: str) -> str:
    return dataset.removeprefix("builtin:") if dataset.startswith("builtin:") else (
        Path(dataset).stem)


def _machine() -> str:
    """markdown.machine_line(), flagged when the working tree differs from that commit."""
    import subprocess

    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=DOCS.parent).stdout.strip()
    return machine_line() + (" (plus uncommitted changes)" if dirty else "")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# -- one (dataset, ratio, seed) -------------------------------------------------------------------

def run_setting(dataset: str, ratio: float, seed: int, *, base: RunConfig,
                methods: Sequence[str], options: BaselineOptions,
                generator_factory: GeneratorFactory | None = None, log: Log = _log) -> dict:
    """Every method on one dataset variant, sharing the detection, ERM and generated stages."""
    start = time.perf_counter()
    cfg = replace(base, dataset=dataset, seed=seed,
                  conflict_ratio=ratio if dataset.startswith("builtin:") else base.conflict_ratio)
    data = PreparedDataset.load(cfg)
    positions, _ = data.split("train")
    is_conflict = data.conflicts(positions)
    measured = None if is_conflict is None else float(is_conflict.mean())
    key = {"dataset": dataset_label(dataset),
           "conflict_ratio": ratio if dataset.startswith("builtin:") else measured, "seed": seed}
    shared = SharedStages(data, cfg, options,
                          generator=generator_factory(data) if generator_factory else None)
    rows, skipped = [], []
    for name in methods:
        log(f"  {key['dataset']} rho={key['conflict_ratio']} seed={seed}: {name}")
        try:
            result = run_method(name, data, cfg, shared=shared)
        except ValueError as err:
            if not (METHODS[name].generates or METHODS[name].upper_bound):
                raise
            # no captions or no generator for this dataset: reported, not hidden
            skipped.append({**key, "method": name, "reason": str(err)})
            log(f"    skipped: {err}")
            continue
        rows.append(_row(key, name, "method", result.test, result.training, result.n_train,
                         result.seconds, result.info))
    detection, errors = shared.detection(), shared.error_set()
    for name, training, n in (("biased-gce", detection.training, len(positions)),
                              ("jtt-erm", errors.training, len(positions))):
        rows.append(_row(key, name, "stage", test_accuracy(data, training.model, cfg), training,
                         n, training.seconds, {}))
    detection_rows, curves = [], {}
    if is_conflict is not None and is_conflict.any():
        labels = data.ds.labels[positions]
        for ranking, losses in (("gce", detection.losses), ("erm", errors.losses)):
            metrics = detection_metrics(losses, labels, is_conflict, k=cfg.top_k).to_dict()
            detection_rows.append({**key, "ranking": ranking, **_detection_row(metrics),
                                   "average_precision": _average_precision(is_conflict, losses)})
            curves[ranking] = _pr_curve(is_conflict, losses)
        hits = int(is_conflict[errors.errors].sum())
        detection_rows.append({**key, "ranking": "jtt-error-set",
                               "n_selected": int(errors.errors.sum()),
                               "n_conflicts": int(is_conflict.sum()),
                               "precision_at_k": hits / max(int(errors.errors.sum()), 1),
                               "recall_at_k": hits / int(is_conflict.sum()),
                               "r_precision": None, "auroc": None, "average_precision": None})
    wall = time.perf_counter() - start
    return {"rows": rows, "detection": detection_rows, "skipped": skipped,
            "curves": {**key, **curves},
            "setting": {**key, "wall_s": wall, "peak_rss_mb": _peak_rss_mb(),
                        "stage_seconds": dict(shared.seconds)}}


def _row(key: dict, method: str, role: str, test, training, n_train: int, seconds: float,
         info: dict) -> dict:
    t = test.to_dict()
    return {"method": method, **key, "unbiased": t["unbiased"], "conflicting": t["conflicting"],
            "aligned": t["aligned"], "overall": t["overall"], "role": role,
            "valid_accuracy": training.valid_accuracy, "best_epoch": training.best_epoch,
            "n_train": n_train, "seconds": seconds, "info": info}


def _detection_row(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("n_selected", "n_conflicts", "precision_at_k", "recall_at_k",
                                    "r_precision", "auroc")}


def _average_precision(is_conflict: np.ndarray, losses: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(is_conflict, losses))


def _pr_curve(is_conflict: np.ndarray, losses: np.ndarray, points: int = 101) -> dict:
    """Interpolated precision-recall of the global loss ranking on a recall grid: at each
    recall level, the best precision reached at that recall or beyond."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, _ = precision_recall_curve(is_conflict, losses)
    order = np.lexsort((-precision, recall))  # recall ascending
    best_beyond = np.maximum.accumulate(precision[order][::-1])[::-1]
    grid = np.linspace(0, 1, points)
    at = np.searchsorted(recall[order], grid, side="left").clip(max=len(order) - 1)
    return {"precision": best_beyond[at].round(4).tolist(), "recall": grid.round(4).tolist()}


def run_grid(datasets: Sequence[str], *, ratios: Sequence[float], seeds: Sequence[int],
             base: RunConfig, methods: Sequence[str] = tuple(METHODS),
             options: BaselineOptions = DEFAULT_OPTIONS,
             generator_factory: GeneratorFactory | None = None,
             checkpoint: Path | None = None, resume: dict | None = None,
             jobs: int = 1, threads: int = 1, log: Log = _log) -> dict:
    """Methods x datasets x ratios x seeds in one run; a folder or zip runs once per seed,
    at its own conflict share. Seeds are the outer loop, so a run stopped early still holds
    whole seeds; with `checkpoint`, the results so far are written there after each setting.
    `resume` (such a checkpoint, same grid and config) keeps its settings and runs the rest;
    settings are seeded, so the result is the one an uninterrupted run gives.
    `jobs` > 1 runs that many settings at once in worker processes (each with `threads` torch
    threads): on 2 cores, 2 one-thread workers finish the grid in about half the time."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {tuple(METHODS)}")
    if jobs > 1 and generator_factory is not None:
        raise ValueError("a generator factory runs in this process only: use jobs=1")
    start = time.perf_counter()
    out = {"rows": [], "detection": [], "skipped": [], "curves": [], "settings": []}
    done, earlier_s = set(), 0.0
    if resume is not None:
        _check_resumable(resume["meta"], base, methods, options)
        out = {k: list(resume[k]) for k in out}
        done = {(s["dataset"], s["seed"], s["conflict_ratio"]) for s in out["settings"]}
        earlier_s = resume["meta"]["wall_s"]
        log(f"resuming: {len(done)} settings done in {earlier_s / 60:.1f} min")
    meta = {"machine": _machine(), "torch_threads": torch.get_num_threads(), "jobs": jobs,
            "load_average_before": os.getloadavg(), "datasets": list(datasets),
            "ratios": list(ratios), "seeds": list(seeds), "methods": list(methods),
            "method_summaries": {m: METHODS[m].summary for m in methods},
            "config": base.to_dict(), "options": asdict(options)}
    todo = [(dataset, ratio, seed) for seed in seeds for ratio in ratios for dataset in datasets
            if (dataset.startswith("builtin:") or ratio == ratios[0])  # a folder: one share
            and not any(d == dataset_label(dataset) and s == seed
                        and (r == ratio or not dataset.startswith("builtin:"))
                        for d, s, r in done)]

    def record(result: dict) -> None:
        for part in ("rows", "detection", "skipped"):
            out[part] += result[part]
        out["curves"].append(result["curves"])
        out["settings"].append(result["setting"])
        s = result["setting"]
        log(f"{s['dataset']} rho={s['conflict_ratio']} seed={s['seed']}: "
            f"{s['wall_s']:.0f} s, peak RSS {s['peak_rss_mb']:.0f} MB; "
            f"{(time.perf_counter() - start) / 60:.1f} min so far")
        out["meta"] = {**meta, "wall_s": earlier_s + time.perf_counter() - start,
                       "resumed_after_s": earlier_s if resume is not None else None,
                       "peak_rss_mb": max(_peak_rss_mb(),
                                          *(x["peak_rss_mb"] for x in out["settings"])),
                       "load_average_after": os.getloadavg()}
        if checkpoint is not None:
            write_json(out, checkpoint)

    kwargs = {"base": base, "methods": methods, "options": options}
    if jobs <= 1:
        for dataset, ratio, seed in todo:
            record(run_setting(dataset, ratio, seed, generator_factory=generator_factory,
                               log=log, **kwargs))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(run_setting, *setting, **kwargs) for setting in todo]
            for future in as_completed(futures):
                record(future.result())
    # the order one process runs them in (workers finish in any order)
    order = [dataset_label(d) for d in datasets]
    out["settings"].sort(key=lambda x: (list(seeds).index(x["seed"]), x["conflict_ratio"] or 0,
                                        order.index(x["dataset"])))
    return out


def _init_worker(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def _check_resumable(meta: dict, base: RunConfig, methods: Sequence[str],
                     options: BaselineOptions) -> None:
    # through RunConfig, so a field added since (with its default) does not block a resume
    if (RunConfig.from_dict(meta["config"]) != base or meta["methods"] != list(methods)
            or meta["options"] != asdict(options)):
        raise ValueError("the checkpoint was made with another config, methods or options; "
                         "delete it or run with the same settings")


def write_json(results: dict, path: Path) -> Path:
    """Rows of every trained model and every ranking, and the thinned precision-recall curves
    (so `--from-json` redraws the charts without training)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: results[k] for k in ("meta", "rows", "detection", "skipped", "settings",
                                       "efficiency", "curves") if k in results}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=_json_default))
    os.replace(tmp, path)
    return path


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


# -- aggregation ----------------------------------------------------------------------------------

def summarise(rows: Sequence[dict], metric: str) -> dict[tuple, tuple[float, float, int]]:
    """(dataset, ratio, method) -> (mean, std over seeds (0 for one seed), seeds)."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["role"] == "method" and r[metric] is not None:
            groups.setdefault((r["dataset"], r["conflict_ratio"], r["method"]), []).append(
                r[metric])
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
            for k, v in groups.items()}


def paired_interval(diffs: Sequence[float], confidence: float = 0.95
                    ) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences over seeds: Student's t interval of the mean
    (low = high = nan with one seed)."""
    from scipy import stats

    values = np.asarray(diffs, dtype=np.float64)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)
                 * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def standing(rows: Sequence[dict], *, metric: str = "unbiased",
             method: str = "diffubias") -> list[dict]:
    """For each other method and each (dataset, ratio): the difference `method` minus it in
    points, paired by seed, with its 95 % interval. A setting is a win (loss) only when the
    interval lies above (below) zero; otherwise the seeds cannot tell them apart."""
    values = {(r["dataset"], r["conflict_ratio"], r["seed"], r["method"]): r[metric]
              for r in rows if r["role"] == "method" and r[metric] is not None}
    settings = sorted({(d, r) for d, r, _, m in values if m == method}, key=str)
    out = []
    for other in [m for m in METHODS if m != method]:
        cells = []
        for d, r in settings:
            diffs = [100 * (values[(d, r, s, method)] - values[(d, r, s, other)])
                     for dd, rr, s, m in values if (dd, rr, m) == (d, r, method)
                     and (d, r, s, other) in values]
            if diffs:
                mean, low, high = paired_interval(diffs)
                cells.append({"dataset": d, "ratio": r, "seeds": len(diffs), "mean": mean,
                              "low": low, "high": high})
        if cells:
            means = [c["mean"] for c in cells]
            out.append({"baseline": other, "settings": len(cells), "cells": cells,
                        "wins": sum(c["low"] > 0 for c in cells),
                        "losses": sum(c["high"] < 0 for c in cells),
                        "unclear": sum(not (c["low"] > 0 or c["high"] < 0) for c in cells),
                        "mean_points": float(np.mean(means)), "min_points": float(min(means)),
                        "max_points": float(max(means))})
    return out


# -- plots ----------------------------------------------------------------------------------------

def draw_plots(results: dict, img_dir: Path, prefix: str = "") -> list[Path]:
    """PNG charts (matplotlib, no browser): grouped bars per ratio and accuracy vs ratio for each
    dataset, and the precision-recall curves of the three rankings."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir = Path(img_dir)
    img_dir.mkdir(parents=True, exist_ok=True)
    written = []
    stats = {metric: summarise(results["rows"], metric) for metric in ("unbiased", "conflicting")}
    cfg = results["meta"]["config"]
    methods = [m for m in METHODS if any(k[2] == m for k in stats["unbiased"])]
    palette = plt.get_cmap("tab20").colors  # 20 distinct colours; more methods cycle
    colours = {m: palette[i % len(palette)] for i, m in enumerate(METHODS)}
    for dataset in sorted({k[0] for k in stats["unbiased"]}):
        ratios = sorted({k[1] for k in stats["unbiased"] if k[0] == dataset}, key=_ratio_key)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
        width = 0.8 / len(methods)
        for ax, metric in zip(axes, ("unbiased", "conflicting")):
            for i, m in enumerate(methods):
                values = [stats[metric].get((dataset, r, m), (np.nan, 0, 0)) for r in ratios]
                ax.bar(np.arange(len(ratios)) + (i - (len(methods) - 1) / 2) * width,
                       [v[0] for v in values], width, yerr=[v[1] for v in values],
                       label=_method_cell(m, cfg), color=colours[m], capsize=2)
            ax.set_xticks(np.arange(len(ratios)), [_ratio_text(r) for r in ratios])
            ax.set_xlabel("bias-conflicting share of train")
            ax.set_title(f"{dataset}: {metric} test accuracy")
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
        _legend_below(fig, axes[0], min(4, len(methods)))
        written.append(_save(fig, img_dir / f"{prefix}debias_bars_{dataset}.png"))
        if len(ratios) > 1:
            fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
            x = [100 * r for r in ratios]
            for ax, metric in zip(axes, ("unbiased", "conflicting")):
                for m in methods:
                    v = np.array([stats[metric].get((dataset, r, m), (np.nan, 0, 0))[:2]
                                  for r in ratios])
                    ax.plot(x, v[:, 0], marker="o", label=_method_cell(m, cfg),
                            color=colours[m])
                    ax.fill_between(x, v[:, 0] - v[:, 1], v[:, 0] + v[:, 1], alpha=0.15,
                                    color=colours[m])
                ax.set_xscale("log")
                ax.set_xticks(x, [_ratio_text(r) for r in ratios])
                ax.minorticks_off()
                ax.set_xlabel("bias-conflicting share of train")
                ax.set_title(f"{dataset}: {metric} accuracy vs conflict ratio")
                ax.set_ylim(0, 1)
                ax.grid(alpha=0.3)
            _legend_below(fig, axes[0], min(4, len(methods)))
            written.append(_save(fig, img_dir / f"{prefix}debias_vs_ratio_{dataset}.png"))
        written += _draw_pr(results, dataset, img_dir, plt, prefix)
    return written


def _draw_pr(results: dict, dataset: str, img_dir: Path, plt, prefix: str = ""
             ) -> list[Path]:
    curves = [c for c in results["curves"] if c["dataset"] == dataset and "gce" in c]
    if not curves:
        return []
    seed = min(c["seed"] for c in curves)
    curves = sorted((c for c in curves if c["seed"] == seed),
                    key=lambda c: _ratio_key(c["conflict_ratio"]))
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.6), squeeze=False)
    points = {(d["conflict_ratio"], d["ranking"]): d for d in results["detection"]
              if d["dataset"] == dataset and d["seed"] == seed}
    styles = {"gce": ("#E45756", "GCE loss (DiffuBias)"), "erm": ("#4C78A8", "ERM loss"),
              "jtt-error-set": ("#54A24B", "JTT error set")}
    for ax, c in zip(axes[0], curves):
        for ranking in ("gce", "erm"):
            colour, label = styles[ranking]
            order = np.lexsort((-np.array(c[ranking]["precision"]), c[ranking]["recall"]))
            ax.plot(np.array(c[ranking]["recall"])[order], np.array(c[ranking]["precision"])[order],
                    color=colour, label=label, drawstyle="steps-post")
        markers = {"gce": dict(marker="o", s=70, facecolors="none", linewidths=1.5),
                   "erm": dict(marker="o", s=18), "jtt-error-set": dict(marker="s", s=30)}
        for ranking, (colour, label) in styles.items():
            p = points.get((c["conflict_ratio"], ranking))
            if p is not None:  # the operating points: top-K per class, and the error set
                ax.scatter([p["recall_at_k"]], [p["precision_at_k"]], zorder=3,
                           **{"edgecolors" if ranking == "gce" else "color": colour},
                           **markers[ranking],
                           label=None if ranking != "jtt-error-set" else label)
        ax.set_title(f"{dataset}, {_ratio_text(c['conflict_ratio'])} conflicts, seed {seed}")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    return [_save(fig, img_dir / f"{prefix}detection_pr_{dataset}.png")]


def _legend_below(fig, ax, columns: int) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))


def _save(fig, path: Path) -> Path:
    if not fig.legends:  # _legend_below already laid the figure out
        fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _ratio_key(ratio: float | None) -> float:
    return -1.0 if ratio is None else ratio


def _ratio_text(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:g} %"


# -- efficiency -----------------------------------------------------------------------------------

def plain_training_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                        epochs: int, batch_size: int, lr: float, seed: int) -> None:
    """The minimal PyTorch loop: shuffled tensor batches, CE, Adam; no validation, no logging."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + epoch))
        for batch in order.split(batch_size):
            loss = F.cross_entropy(model(images[batch].float().div_(255)), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


@torch.no_grad()
def score_one_at_a_time(model: torch.nn.Module, images: torch.Tensor,
                        labels: torch.Tensor) -> np.ndarray:
    """One image per forward pass, images already decoded (the compute part of the reference)."""
    model.eval()
    return np.array([F.cross_entropy(model(images[i:i + 1].float() / 255), labels[i:i + 1]).item()
                     for i in range(len(labels))], dtype=np.float32)


@torch.no_grad()
def score_like_reference(model: torch.nn.Module, ds: ImageDataset, positions: np.ndarray, *,
                         size: int) -> np.ndarray:
    """The reference code's scoring loop (extract_bias.py): for each training sample, open and
    decode its file, resize, forward that one image, take its CE loss."""
    model.eval()
    losses = np.empty(len(positions), dtype=np.float32)
    for i, p in enumerate(positions):
        image = Image.open(ds.root / ds.paths[p]).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
        losses[i] = F.cross_entropy(model(x), torch.tensor([int(ds.labels[p])])).item()
    return losses


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def _pair(ours: Callable[[], object], reference: Callable[[], object], *, repeats: int,
          label: str, log: Log) -> tuple[dict, object, object]:
    """Runs the two sides alternately `repeats` times; compares the fastest CPU time of each.
    CPU time, not wall time: on a shared machine other processes stretch wall time by up to
    2x from one repeat to the next, but barely change how much CPU a run needs."""
    times = {"ours_wall_s": [], "ours_cpu_s": [], "reference_wall_s": [],
             "reference_cpu_s": []}
    for i in range(repeats):
        log(f"  efficiency: {label}, repeat {i + 1}/{repeats}")
        reference_out, wall, cpu = _timed(reference)
        times["reference_wall_s"].append(wall)
        times["reference_cpu_s"].append(cpu)
        ours_out, wall, cpu = _timed(ours)
        times["ours_wall_s"].append(wall)
        times["ours_cpu_s"].append(cpu)
    summary = {"ours_s": min(times["ours_cpu_s"]), "reference_s": min(times["reference_cpu_s"]),
               **times}
    summary["ratio"] = summary["ours_s"] / summary["reference_s"]
    return summary, ours_out, reference_out


def efficiency(base: RunConfig, *, widths: Sequence[int] = (16, 8), epochs: int = 1,
               repeats: int = 5, log: Log = _log) -> dict:
    """Our training loop vs the plain loop (same model init, data, batch size and steps) for
    each classifier width, and batched vs one-at-a-time scoring of the whole training split,
    from the image files and from decoded images."""
    cfg = replace(base, dataset="builtin:colored-digits", conflict_ratio=0.01, seed=0)
    data = PreparedDataset.load(cfg)
    positions, train = data.split("train")
    loops = []
    for width in widths:
        wcfg = replace(cfg, width=width)
        summary, _, _ = _pair(
            lambda: train_classifier(new_classifier(data, wcfg), train, valid=None,
                                     config=train_config(wcfg, epochs=epochs, loss="ce"),
                                     desc="ours"),
            lambda: plain_training_loop(new_classifier(data, wcfg), train.images, train.labels,
                                        epochs=epochs, batch_size=wcfg.batch_size, lr=wcfg.lr,
                                        seed=wcfg.seed),
            repeats=repeats, label=f"training loops, width {width}", log=log)
        loops.append({"width": width, "arch": new_classifier(data, wcfg).spec.arch,
                      "train_samples": len(train), "epochs": epochs,
                      "steps": epochs * -(-len(train) // wcfg.batch_size),
                      "batch_size": wcfg.batch_size, **summary,
                      "overhead": summary["ratio"] - 1})
    model = new_classifier(data, cfg)
    from_files, our_losses, reference_losses = _pair(
        lambda: score_samples(model, open_images(data.ds, positions, size=data.image_size)),
        lambda: score_like_reference(model, data.ds, positions, size=data.image_size),
        repeats=repeats, label="scoring from files", log=log)
    in_memory, _, _ = _pair(lambda: score_samples(model, train),
                            lambda: score_one_at_a_time(model, train.images, train.labels),
                            repeats=repeats, label="scoring decoded images", log=log)
    scoring = [{"case": case, "samples": len(positions), "width": cfg.width, **summary,
                "speedup": 1 / summary["ratio"]}
               for case, summary in (("from_files", from_files), ("in_memory", in_memory))]
    return {"loops": loops, "scoring": scoring, "torch_threads": torch.get_num_threads(),
            "scores_max_abs_diff": float(np.abs(reference_losses - our_losses).max()),
            "load_average": os.getloadavg(), "machine": _machine()}


# -- markdown -------------------------------------------------------------------------------------

def _pm(stat: tuple[float, float, int] | None) -> str:
    if stat is None:
        return "-"
    mean, std, n = stat
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def render_debias(results: dict, images: Sequence[Path], *, image_root: Path,
                  command: str, title: str = "Debiasing methods side by side",
                  json_name: str = "benchmarks.json") -> str:
    meta = results["meta"]
    cfg = meta["config"]
    seeds = meta["seeds"]
    lines = [f"## {title}", "",
             f"Measured by `{command}` on {meta['machine']}; torch on {meta['torch_threads']} "
             f"thread(s); load average {_load(meta['load_average_before'])} before, "
             f"{_load(meta['load_average_after'])} after (the machine is shared). Total wall time "
             f"{meta['wall_s'] / 60:.1f} min{_resume_note(meta)}, peak RSS "
             f"{meta['peak_rss_mb']:.0f} MB.", "",
             f"Every method trains the same classifier (`arch={cfg['arch']}`, width "
             f"{cfg['width']}{_width_note(cfg)}) from "
             f"the same seeded initialisation for {cfg['debias_epochs']} epochs (Adam, lr "
             f"{cfg['lr']}, batch {cfg['batch_size']}), picks its checkpoint on the validation "
             "split (never test) and is scored on the unbiased test split. Accuracies are in %, "
             f"mean ± sample std over seeds {', '.join(map(str, seeds))}"
             + (" (one seed: no std)" if len(seeds) == 1 else "") + ". Unbiased accuracy is the "
             "mean over (class, bias) groups; conflicting is accuracy on bias-conflicting test "
             "samples.", "",
             "Methods: " + "; ".join(f"`{m.name}`: {_summary(m.name, meta)}"
                                     for m in METHODS.values()
                                     if m.name in meta["methods"]) + ".",
             "", _settings_text(cfg, meta["options"]), ""]
    oracle = _oracle_text(cfg)
    if oracle:
        lines += [f"**Upper bound, not the method.** {oracle}", ""]
    part = _part_text(meta)
    if part:
        lines += [f"**Part of the grid.** {part}", ""]
    bound = _upper_bound_text(meta["methods"])
    if bound:
        lines += [f"**Upper bound rows.** {bound}", ""]
    if any(METHODS[m].baseline and not METHODS[m].generates for m in meta["methods"]):
        lines += ["Read the baselines with their budgets in mind: every method gets the same "
              f"{cfg['debias_epochs']} epochs, while LfF's paper trains about 100 (its "
                  "relative-difficulty weights only separate the conflicts once the debiased "
                  "model starts fitting them, see tests/test_lff.py); `jtt` keeps fixed T and "
                  "lambda, while `jtt-tuned` and `jtt-tuned-blind` choose them on the validation "
                  "split as JTT's paper does; oversampling repeats the same top-K candidates "
                  "DiffuBias starts from.", ""]
    lines += _standing_lines(results)
    unbiased, conflicting = (summarise(results["rows"], m) for m in ("unbiased", "conflicting"))
    aligned = summarise(results["rows"], "aligned")
    for dataset in sorted({k[0] for k in unbiased}):
        ratios = sorted({k[1] for k in unbiased if k[0] == dataset}, key=_ratio_key)
        methods = [m for m in METHODS if any(k[0] == dataset and k[2] == m for k in unbiased)]
        lines += ["", f"### {dataset}", "",
                  "Unbiased / conflicting / aligned test accuracy (%) by conflict ratio:", "",
                  "| method | " + " | ".join(f"{_ratio_text(r)} unbiased | conflicting | aligned"
                                            for r in ratios) + " |",
                  "|---|" + "---|---|---|" * len(ratios)]
        for m in methods:
            cells = []
            for r in ratios:
                cells += [_pm(unbiased.get((dataset, r, m))),
                          _pm(conflicting.get((dataset, r, m))), _pm(aligned.get((dataset, r, m)))]
            lines.append(f"| {_method_cell(m, cfg)} | " + " | ".join(cells) + " |")
    lines += _budget_lines(results["rows"], cfg)
    lines += _ablation_lines(results["rows"])
    lines += _detection_lines(results)
    lines += _timing_lines(results)
    if results["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {s['method']} on {s['dataset']}: {s['reason']}"
                                         for s in results["skipped"]]
    lines += ["", "Charts (grouped bars per ratio; accuracy vs ratio; precision-recall of the "
              "rankings, dots at top-K, square at the JTT error set):", ""]
    lines += [f"![{p.stem}]({Path(os.path.relpath(p, image_root)).as_posix()})" for p in images]
    lines += ["", f"Every row (each trained model, each ranking) is in `docs/{json_name}`."]
    return "\n".join(lines)


def _summary(name: str, meta: dict) -> str:
    """What `name` did when these results were measured (recorded with them), else what it
    does now."""
    return meta.get("method_summaries", {}).get(name) or METHODS[name].summary


def _oracle_text(cfg: dict) -> str:
    """Why the DiffuBias rows are an upper bound on the built-ins, or "" (real models)."""
    notes = [oracle_note(resolve(cfg[kind], "builtin:", kind=kind), "builtin:")
             for kind in ("captioner", "generator")]
    if not any(notes):
        return ""
    return ("Every DiffuBias row (`diffubias`, `diffubias-no-filter`) in this section ran with "
            f"the `{cfg['captioner']}` captioner and the `{cfg['generator']}` generator: "
            + "; ".join(n for n in notes if n) + ". They measure the method with a perfect "
            "captioner and generator; `python bench/zoo.py` measures the project's real models, "
            "and a rerun of this benchmark with the defaults (`auto`) uses them.")


def _method_cell(name: str, cfg: dict) -> str:
    """A method's name, marked where its rows are an upper bound (an oracle method, or a
    DiffuBias variant run with oracle backends)."""
    method = METHODS[name]
    oracle = method.upper_bound or (method.generates and _oracle_text(cfg))
    return f"{name} (oracle: upper bound)" if oracle else name


def _part_text(meta: dict) -> str:
    """What of the full grid a run left out, or "" for the full grid."""
    full = PROFILES["full"]
    ratios = [r for r in full["ratios"] if r not in meta["ratios"]]
    seeds = [s for s in full["seeds"] if s not in meta["seeds"]]
    if not (ratios or seeds):
        return ""
    left = " and ".join(part for part in (
        ratios and "conflict ratios " + ", ".join(_ratio_text(r) for r in ratios),
        seeds and "seeds " + ", ".join(map(str, seeds))) if part)
    return (f"This run left out {left} of the full grid (`python bench/debias.py`): its "
            "tables and counts cover the settings it ran, nothing more.")


def _upper_bound_text(methods: Sequence[str]) -> str:
    """What the oracle methods of this run are, or ""."""
    names = [m for m in methods if METHODS[m].upper_bound]
    if not names:
        return ""
    notes = []
    for m in names:
        text = f"`{m}`: {METHODS[m].summary}."
        if METHODS[m].generates:
            text += (" It shares the detection and the candidates of `diffubias`; the gap "
                     "between the two is what the project's own captioner and generator cost "
                     "against perfect ones.")
        else:
            text += (" It reads the bias labels no method here is given: the ceiling the "
                     "others are measured against.")
        notes.append(text)
    return " ".join(notes)


def _resume_note(meta: dict) -> str:
    if not meta.get("resumed_after_s"):
        return ""
    return (" (the process was stopped from outside and resumed from its per-setting "
            "checkpoint; the total sums the finished settings of every part, not the minutes "
            "lost in interrupted ones)")


def _width_note(cfg: dict) -> str:
    default = RunConfig().width
    return "" if cfg["width"] == default else (
        f"; the product default is {default}, changed so the full grid fits its time budget")


def _settings_text(cfg: dict, options: dict) -> str:
    copies = options["oversample_copies"] or cfg["captions_per_image"] * cfg["images_per_prompt"]
    jtt_epochs = options["jtt_epochs"] or cfg["biased_epochs"]
    # a run from before biased_width existed trained its biased model at the classifier's width
    width = cfg.get("biased_width", cfg["width"])
    return (f"Settings: biased (GCE) model {cfg['biased_epochs']} epochs, width {width}, "
            f"q {cfg['gce_q']}; "
            f"top-K {cfg['top_k']} per class; JTT T = {jtt_epochs} epochs, "
            f"lambda {options['jtt_upweight']:g}; LfF EMA {options['lff_ema']}; "
            f"DiffuBias {_backend(cfg, 'captioner')} captions x {cfg['captions_per_image']}, "
            f"{_backend(cfg, 'generator')} generator x {cfg['images_per_prompt']} images per "
            "prompt; "
            f"oversampling {copies} copies per candidate (as many added images as DiffuBias makes "
            "from a candidate whose captions all pass the filter).")


def _backend(cfg: dict, kind: str) -> str:
    """`cfg`'s captioner or generator on the built-ins, `auto` spelled out."""
    name = resolve(cfg[kind], "builtin:", kind=kind)
    return f"`{name}`" if name == cfg[kind] else f"`{name}` (`{cfg[kind]}`)"


def _load(avg: Sequence[float]) -> str:
    return "/".join(f"{x:.1f}" for x in avg)


def _standing_lines(results: dict) -> list[str]:
    rows = standing(results["rows"])
    conflict_rows = {r["baseline"]: r for r in standing(results["rows"], metric="conflicting")}
    if not rows:
        return []
    cfg = results["meta"]["config"]
    oracle = _oracle_text(cfg)
    lines = ["### Where DiffuBias stands" + (" (with oracles: an upper bound)" if oracle else ""),
             "",
             "DiffuBias minus the other method, in points of mean test accuracy, paired by seed. "
             "A setting (dataset, ratio) counts as a win or a loss only when the 95 % interval "
             "of the paired difference (Student's t over the seeds) lies above or below zero; "
             "otherwise the seeds cannot tell the two apart (unclear).", "",
             "| vs | settings | unbiased: wins / losses / unclear | mean (min, max) | "
             "conflicting: wins / losses / unclear | mean (min, max) |",
             "|---|---|---|---|---|---|"]
    sentences = []
    for r in rows:
        c = conflict_rows.get(r["baseline"])
        lines.append(f"| {_method_cell(r['baseline'], cfg)} | {r['settings']} | {r['wins']} / "
                     f"{r['losses']} / {r['unclear']} | "
                     f"{r['mean_points']:+.1f} ({r['min_points']:+.1f}, {r['max_points']:+.1f}) | "
                     + (f"{c['wins']} / {c['losses']} / {c['unclear']} | {c['mean_points']:+.1f} "
                        f"({c['min_points']:+.1f}, {c['max_points']:+.1f}) |" if c else "- | - |"))
        n = r["settings"]
        verdict = ("beats" if r["wins"] == n else "loses to" if r["losses"] == n else
                   "cannot be told apart from" if r["unclear"] == n else
                   "beats or cannot be told apart from" if r["losses"] == 0 else
                   "loses to or cannot be told apart from" if r["wins"] == 0 else
                   "is mixed against")
        sentences.append(f"DiffuBias {verdict} {_method_cell(r['baseline'], cfg)} in unbiased "
                         f"accuracy ({r['wins']} wins, {r['losses']} losses, {r['unclear']} "
                         f"unclear in {n} settings; {r['mean_points']:+.1f} points on average).")
    same = _filter_kept_everything(results["rows"])
    if same:
        sentences.append(f"On {', '.join(same)} the text filter kept every caption, so the two "
                         "DiffuBias rows are one and the same model there (computed once).")
    lines += ["", " ".join(sentences)]
    for dataset in sorted({c["dataset"] for r in rows for c in r["cells"]}):
        ratios = sorted({c["ratio"] for r in rows for c in r["cells"] if c["dataset"] == dataset},
                        key=_ratio_key)
        lines += ["", f"Unbiased accuracy on {dataset}, DiffuBias minus each method: mean "
                  "[95 % interval] in points:", "",
                  "| vs | " + " | ".join(_ratio_text(x) for x in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for r in rows:
            cells = {c["ratio"]: c for c in r["cells"] if c["dataset"] == dataset}
            lines.append(f"| {_method_cell(r['baseline'], cfg)} | " + " | ".join(
                _interval_text(cells.get(x)) for x in ratios) + " |")
    return lines


def _budget_lines(rows: Sequence[dict], cfg: dict) -> list[str]:
    """Each method's budget: samples per epoch, optimizer steps in all (epochs x batches), and
    the epoch its checkpoint came from, with how often that was the last one (a method whose
    best epoch is its last might still have been improving)."""
    methods = [m for m in METHODS if any(r["method"] == m and r["role"] == "method"
                                         for r in rows)]
    if not methods:
        return []
    epochs, batch = cfg["debias_epochs"], cfg["batch_size"]
    lines = ["", f"Budgets: every method trains {epochs} epochs (batch {batch}); a method that "
             "adds samples takes more optimizer steps per epoch. Best epoch: the checkpoint the "
             "validation split chose (mean over runs), and in how many runs it was the last "
             "epoch (then the method might still have been improving).", "",
             "| method | samples per epoch | optimizer steps | best epoch | best = last |",
             "|---|---|---|---|---|"]
    for m in methods:
        mine = [r for r in rows if r["method"] == m and r["role"] == "method"]
        n = float(np.mean([r["n_train"] for r in mine]))
        steps = float(np.mean([epochs * -(-r["n_train"] // batch) for r in mine]))
        best = [r["best_epoch"] for r in mine if r.get("best_epoch") is not None]
        last = sum(b == epochs for b in best)
        lines.append(f"| {_method_cell(m, cfg)} | {n:,.0f} | {steps:,.0f} | "
                     + (f"{np.mean(best):.1f} | {last} of {len(best)} |" if best else "- | - |"))
    return lines


def _ablation_lines(rows: Sequence[dict]) -> list[str]:
    """What the ablations changed, per dataset: the share of prompts anchoring rewrote and the
    share of generated images the checks kept (means over the rows that have them)."""
    lines = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset and r["role"] == "method"]
        anchored = [r["info"]["n_anchored"] / r["info"]["n_prompts"] for r in mine
                    if r["method"] == "diffubias" and r["info"].get("n_anchored") is not None]
        kept = [r["info"]["n_trained_generated"] / r["info"]["n_generated"] for r in mine
                if r["method"] == "diffubias-checked" and r["info"].get("n_generated")]
        parts = []
        if anchored and any(r["method"] == "diffubias-unanchored" for r in mine):
            parts.append(f"class anchoring rewrote {100 * np.mean(anchored):.1f} % of the kept "
                         "prompts (the others already named their class)")
        if kept:
            parts.append(f"the checks kept {100 * np.mean(kept):.1f} % of the generated images "
                         "(`diffubias-checked` trains on those only)")
        if parts:
            lines.append(f"On {dataset}, " + "; ".join(parts) + ".")
    return ["", " ".join(lines)] if lines else []


def _interval_text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    if np.isnan(cell["low"]):
        return f"{cell['mean']:+.1f} (one seed)"
    mark = " ✓" if cell["low"] > 0 else " ✗" if cell["high"] < 0 else ""
    return f"{cell['mean']:+.1f} [{cell['low']:+.1f}, {cell['high']:+.1f}]{mark}"


def _filter_kept_everything(rows: Sequence[dict]) -> list[str]:
    """Datasets on which the filtered and unfiltered DiffuBias runs used the same prompts."""
    prompts: dict[str, dict[tuple, int]] = {}
    for r in rows:
        if r["method"] in ("diffubias", "diffubias-no-filter"):
            prompts.setdefault(r["method"], {})[(r["dataset"], r["conflict_ratio"], r["seed"])] = (
                r["info"].get("n_prompts"))
    filtered, unfiltered = prompts.get("diffubias", {}), prompts.get("diffubias-no-filter", {})
    datasets = sorted({k[0] for k in filtered if k in unfiltered})
    return [d for d in datasets
            if all(filtered[k] == unfiltered[k] for k in filtered if k[0] == d and k in unfiltered)]


def _detection_lines(results: dict) -> list[str]:
    if not results["detection"]:
        return []
    lines = ["", "### Detection: which ranking finds the bias-conflicting training samples", "",
             "At the same K per class: the biased GCE model's CE loss (DiffuBias's stage 3), a "
             "plain ERM model's CE loss after the same number of epochs (JTT's identification "
             "model), and JTT's error set (the ERM model's mistakes; its size is its own). Mean "
             "over seeds; AP is average precision of the whole ranking.", "",
             "| dataset | ratio | ranking | selected | conflicts | precision | recall | "
             "r-precision | AUROC | AP |", "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for d in results["detection"]:
        groups.setdefault((d["dataset"], d["conflict_ratio"], d["ranking"]), []).append(d)
    for (dataset, ratio, ranking), ds in sorted(
            groups.items(), key=lambda kv: (kv[0][0], _ratio_key(kv[0][1]),
                                            RANKINGS.index(kv[0][2]))):
        def mean(k: str):
            values = [d[k] for d in ds if d[k] is not None]
            return float(np.mean(values)) if values else None

        lines.append(f"| {dataset} | {_ratio_text(ratio)} | {ranking} | "
                     f"{mean('n_selected'):.0f} | {mean('n_conflicts'):.0f} | "
                     f"{_num(mean('precision_at_k'))} | {_num(mean('recall_at_k'))} | "
                     f"{_num(mean('r_precision'))} | {_num(mean('auroc'))} | "
                     f"{_num(mean('average_precision'))} |")
    return lines + ["", _detection_verdict(results["detection"])]


def _detection_verdict(detection: Sequence[dict]) -> str:
    """One sentence: does the GCE ranking beat the plain ERM ranking (average precision)?"""
    ap = {(d["dataset"], d["conflict_ratio"], d["seed"], d["ranking"]): d["average_precision"]
          for d in detection if d["ranking"] in ("gce", "erm")}
    pairs = [(ap[k[:3] + ("gce",)], ap[k[:3] + ("erm",)]) for k in ap if k[3] == "gce"
             and k[:3] + ("erm",) in ap]
    better = sum(g > e + 0.005 for g, e in pairs)
    worse = sum(g < e - 0.005 for g, e in pairs)
    return (f"GCE ranking vs plain ERM ranking, average precision per (dataset, ratio, seed): "
            f"higher in {better}, lower in {worse}, within 0.005 in "
            f"{len(pairs) - better - worse} of {len(pairs)} runs (mean "
            f"{np.mean([g for g, _ in pairs]):.3f} vs {np.mean([e for _, e in pairs]):.3f})."
            + (" On these runs the bias is strong enough that a plain ERM model ranks the "
               "conflicts as well as the GCE model does, so this benchmark cannot tell the two "
               "rankings apart." if better == 0 and worse == 0 else ""))


def _timing_lines(results: dict) -> list[str]:
    lines = ["", "### Cost", "",
             "Wall time per method (s, mean over settings; shared stages counted in every method "
             "that uses them) and per setting:", "",
             "| dataset | " + " | ".join(METHODS) + " | setting wall (s) | peak RSS (MB) |",
             "|---|" + "---|" * (len(METHODS) + 2)]
    for dataset in sorted({s["dataset"] for s in results["settings"]}):
        cells = []
        for m in METHODS:
            secs = [r["seconds"] for r in results["rows"]
                    if r["dataset"] == dataset and r["method"] == m and r["role"] == "method"]
            cells.append(f"{np.mean(secs):.0f}" if secs else "-")
        settings = [s for s in results["settings"] if s["dataset"] == dataset]
        lines.append(f"| {dataset} | " + " | ".join(cells)
                     + f" | {np.mean([s['wall_s'] for s in settings]):.0f} | "
                     f"{max(s['peak_rss_mb'] for s in settings):.0f} |")
    return lines


def render_efficiency(eff: dict, *, command: str) -> str:
    repeats = len(eff["loops"][0]["ours_cpu_s"])
    lines = [
        "## Training loop and scoring efficiency", "",
        f"Measured by `{command}` on {eff['machine']}; torch on {eff['torch_threads']} "
        f"thread(s), load average {_load(eff['load_average'])} at the end (shared machine). The "
        f"two sides of each row run alternately, {repeats} times; the table compares the "
        "smallest CPU time of each (process CPU seconds: other processes on a shared machine "
        "stretch wall time, not the CPU a run needs; wall times are listed below).", "",
        "| measurement | ours (CPU s) | reference (CPU s) | result | goal |",
        "|---|---|---|---|---|"]
    for loop in eff["loops"]:
        lines.append(
            f"| training: `train_classifier` vs a minimal PyTorch loop ({loop['arch']}, width "
            f"{loop['width']}, {loop['train_samples']} colored-digits images, {loop['steps']} "
            f"steps of {loop['batch_size']}, no validation) | {loop['ours_s']:.2f} | "
            f"{loop['reference_s']:.2f} | overhead {100 * loop['overhead']:+.1f} % | "
            "under 10 % |")
    what = {"from_files": "decode the files and score (`open_images` + `score_samples`, "
                          "batches of 512) vs the reference loop: open, decode and forward one "
                          "image at a time",
            "in_memory": "compute only, images already decoded: `score_samples` vs one image "
                         "per forward pass"}
    for sc in eff["scoring"]:
        lines.append(f"| scoring all {sc['samples']} training images (width {sc['width']}): "
                     f"{what[sc['case']]} | {sc['ours_s']:.2f} | {sc['reference_s']:.2f} | "
                     f"{sc['speedup']:.1f}x faster | at least 10x |")
    rows = ([(f"width {loop['width']} loop", loop) for loop in eff["loops"]]
            + [(f"scoring {sc['case'].replace('_', ' ')}", sc) for sc in eff["scoring"]])
    lines += ["", "Wall times of every repeat (s): " + "; ".join(
        f"{name}: ours {_list(r['ours_wall_s'])}, reference {_list(r['reference_wall_s'])}"
        for name, r in rows)
        + f". Our scores and the reference loop's agree to {eff['scores_max_abs_diff']:.1e}."]
    compute = next(sc for sc in eff["scoring"] if sc["case"] == "in_memory")
    ours_ms, reference_ms = (1000 * compute[k] / compute["samples"]
                             for k in ("ours_s", "reference_s"))
    if reference_ms / ours_ms < 10:
        lines += ["", f"Batching removes per-call overhead, not arithmetic: the batched pass "
                  f"still spends {ours_ms:.2f} ms of CPU per image and the one-image loop "
                  f"{reference_ms:.2f} ms, so with this classifier on this CPU batching gains "
                  f"{reference_ms / ours_ms:.1f}x and the 10x goal is not met. (Where per-call "
                  "overhead dominates, as on a GPU, the gap should be larger; not measured "
                  "here, this machine has none.)"]
    return "\n".join(lines)


def _list(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# -- command line ---------------------------------------------------------------------------------

def _parse_set(pairs: Sequence[str]) -> dict:
    types = {f.name: f.type for f in fields(RunConfig)}
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if name not in types:
            raise SystemExit(f"--set {pair}: unknown config field {name!r}")
        out[name] = {"int": int, "float": float}.get(str(types[name]), str)(value)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one ratio (1 %%), one seed")
    parser.add_argument("--ratios", help="comma-separated conflict ratios, e.g. 0.01,0.05 "
                        "(default: the profile's)")
    parser.add_argument("--seeds", help="comma-separated seeds, e.g. 0,1,2 (default: the "
                        "profile's)")
    parser.add_argument("--dataset", action="append", help="repeatable; default: both built-ins")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a RunConfig field for every run, e.g. debias_epochs=6")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (0: torch's own)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="settings run at once in worker processes (2 on a 2-core machine)")
    parser.add_argument("--ablation", action="store_true",
                        help="the ablation of class anchoring and the image checks: "
                        + ", ".join(ABLATION["methods"]) + " at 1 %% x seeds 0-2, written to "
                        "its own section, json and charts")
    parser.add_argument("--device", default="cpu",
                        help="where every model trains and generates (cpu, cuda, auto)")
    parser.add_argument("--no-efficiency", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--img-dir", type=Path, default=DOCS / "img")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the .partial.json checkpoint next to --json")
    parser.add_argument("--from-json", action="store_true",
                        help="redraw charts and tables from --json without training")
    parser.add_argument("--no-write", action="store_true",
                        help="print the markdown sections instead of writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    section = ABLATION if args.ablation else {
        "section": "debias", "title": "Debiasing methods side by side",
        "json": DOCS / "benchmarks.json", "prefix": ""}
    args.json = args.json or section["json"]
    if args.ablation:
        args.no_efficiency = True
        args.ratios = args.ratios or ",".join(map(str, ABLATION["ratios"]))
        args.seeds = args.seeds or ",".join(map(str, ABLATION["seeds"]))
        args.methods = ",".join(ABLATION["methods"])
    if args.from_json:
        results = json.loads(args.json.read_text())
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        profile = PROFILES["quick" if args.quick else "full"]
        base = RunConfig(device=args.device).with_overrides(**{**GRID_OVERRIDES,
                                                          **_parse_set(args.set)})
        checkpoint = args.json.with_name(args.json.stem + ".partial.json")
        ratios = (tuple(float(x) for x in args.ratios.split(",")) if args.ratios
                  else profile["ratios"])
        seeds = tuple(int(x) for x in args.seeds.split(",")) if args.seeds else profile["seeds"]
        results = run_grid(args.dataset or BUILTINS, ratios=ratios, seeds=seeds, base=base,
                           methods=[m.strip() for m in args.methods.split(",") if m.strip()],
                           checkpoint=checkpoint, jobs=args.jobs, threads=args.threads,
                           resume=json.loads(checkpoint.read_text()) if args.resume else None)
        results["meta"]["command"] = " ".join(
            ["python bench/debias.py", *(argv if argv is not None else sys.argv[1:])])
        if not args.no_efficiency:
            results["efficiency"] = efficiency(RunConfig(device="cpu"),
                                               widths=(RunConfig().width, base.width),
                                               repeats=profile["repeats"])
        write_json(results, args.json)
    command = results["meta"].get("command", "python bench/debias.py (partial run)")
    sections = {}
    if "efficiency" in results:
        sections["debias-efficiency"] = render_efficiency(results["efficiency"], command=command)
    images = draw_plots(results, args.img_dir, prefix=section["prefix"])
    sections[section["section"]] = render_debias(
        results, images, image_root=BENCHMARKS_MD.parent, command=command,
        title=section["title"], json_name=args.json.name)
    if args.no_write:
        print("\n\n".join(sections.values()))
        return
    for name, body in sections.items():
        write_section(name, body)
    print(f"wrote {BENCHMARKS_MD}, {args.json} and {len(images)} charts")


if __name__ == "__main__":
    main()
