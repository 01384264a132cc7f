"""Detection benchmark: every ranker of `diffubias.rankers` side by side on built-in datasets x
conflict ratios x seeds, with the product's default settings: how well each one's loss ranking
finds the bias-conflicting training samples (read from the bias column, for this measurement
only), how long detection takes, and what its biased model's diagnostics said.

Usage:
  python bench/detection.py --quick      # the hardest variant of each built-in, 1 %, seed 0
  python bench/detection.py --jobs 2     # every built-in and severity, 1 %, seeds 0-4
  python bench/detection.py --jobs 2 --resume    # continue a stopped run from its checkpoint
  python bench/detection.py --add --rankers gce-6ep-cl     # a ranker more, on the run's grid
  python bench/detection.py --add-datasets builtin:colored-digits-sigma0.2  # every ranker on it
  python bench/detection.py --confirm builtin:shape-scenes-subtle --seeds 5-14 \
      --rankers gce,gce-narrow          # more seeds for a difference, kept out of the grid
  python bench/detection.py --datasets builtin:colored-digits-sigma0.05,builtin:shape-scenes \
      --seeds 0,1,2 --ratios 0.005,0.01 --rankers gce,committee --set width=8
Writes docs/benchmarks-detection.json (every row) and the `detection` section of
docs/BENCHMARKS.md; the checkpoint (docs/benchmarks-detection.partial.json) is written after
each (dataset, ratio, seed). Metrics: AP (average precision of the whole ranking), AUROC,
R-precision and precision@K (K per class as configured), mean with a 95 % Student t interval
over seeds; differences from `gce` are paired by seed. This module runs the rankers and stores
rows; bench/detection_tables.py renders them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from debias import _machine, _parse_set, dataset_label, write_json  # noqa: E402
from detection_tables import METRICS, render  # noqa: E402
from markdown import BENCHMARKS_MD, write_section  # noqa: E402

from diffubias.builtin import BUILTIN_NAMES  # noqa: E402
from diffubias.config import RunConfig  # noqa: E402
from diffubias.prepared import PreparedDataset  # noqa: E402
from diffubias.stages.detect import detect_bias  # noqa: E402

JSON = ROOT / "docs" / "benchmarks-detection.json"
# name: the RunConfig changes that make the variant (on top of the run's config); each names its
# epochs, selection and width, so that a change of the product's defaults does not change it.
# Until `biased_width` existed the biased model had the classifier's width, 16.
_W16 = {"biased_width": 16}
_LAST3 = {"biased_epochs": 3, "biased_selection": "last", **_W16}
VARIANTS = {
    "gce": {"ranker": "gce", **_LAST3},  # the method's biased model as the paper trains it
    "erm-early": {"ranker": "erm-early", **_LAST3},
    "committee": {"ranker": "committee", **_LAST3},
    # item 3 of issue 17: twice the epochs, keeping the one that fits train but generalises
    # worst to the validation split (no bias label)
    "gce-gap": {"ranker": "gce", "biased_selection": "train-valid-gap", "biased_epochs": 6,
                **_W16},
    # ablations of gce-gap: its epochs without the selection, and the selection on fewer epochs
    "gce-6ep": {"ranker": "gce", "biased_epochs": 6, "biased_selection": "last", **_W16},
    "gce-gap-4ep": {"ranker": "gce", "biased_selection": "train-valid-gap", "biased_epochs": 4,
                    **_W16},
    # the most epochs that kept the demo's detection within 1.5x of gce's (issue 17, item 5)
    "gce-4ep": {"ranker": "gce", "biased_epochs": 4, "biased_selection": "last", **_W16},
    # gce-6ep with the classifier's weights channels-last (diffubias.models.CHANNELS_LAST): the
    # same model and math, 1.5x faster on CPU, which brings 6 epochs within issue 17's 1.5x
    "gce-6ep-cl": {"ranker": "gce", "biased_epochs": 6, "biased_selection": "last", **_W16},
    # gce-6ep-cl with a biased model a quarter as wide (4 channels at the first stage, not 16):
    # too narrow to learn much of the classes, so its losses follow the shortcut
    "gce-narrow": {"ranker": "gce", "biased_epochs": 6, "biased_selection": "last",
                   "biased_width": 4},
}
# The variants run with channels-last weights; every other one in the plain layout, as all
# rows were before (rows record it as "channels_last")
CHANNELS_LAST_VARIANTS = ("gce-6ep-cl", "gce-narrow")
HARDEST = ("builtin:colored-digits-sigma0.2", "builtin:shape-scenes-subtle")
# Issue 17's targets are read on the hardest variant of each built-in, and on LfF's weakest
# colour severity, the hardest colour variant before the weaker ones beyond LfF's were added
TARGET_DATASETS = (*HARDEST, "builtin:colored-digits-sigma0.05")
PROFILES = {"quick": {"ratios": (0.01,), "seeds": (0,)},
            "full": {"ratios": (0.01,), "seeds": (0, 1, 2, 3, 4)}}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def default_datasets(quick: bool) -> tuple[str, ...]:
    """Every built-in (each severity) for the full run; for --quick the hardest variant of each
    family where it exists, else the family itself."""
    names = tuple(f"builtin:{n}" for n in BUILTIN_NAMES)
    if not quick:
        return names
    return tuple(h if h in names else h.split("-sigma")[0].removesuffix("-subtle")
                 for h in HARDEST)


@contextmanager
def _layout(variant: str) -> Iterator[None]:
    """The classifier's memory layout `variant` runs in (CHANNELS_LAST_VARIANTS)."""
    from diffubias import models

    before, models.CHANNELS_LAST = models.CHANNELS_LAST, variant in CHANNELS_LAST_VARIANTS
    try:
        yield
    finally:
        models.CHANNELS_LAST = before


def run_setting(dataset: str, ratio: float, seed: int, *, base: RunConfig,
                variants: Sequence[str], threads: int = 1) -> list[dict]:
    """Every ranker variant on one (dataset, ratio, seed): one row each."""
    if threads:
        torch.set_num_threads(threads)
    cfg = base.with_overrides(dataset=dataset, conflict_ratio=ratio, seed=seed)
    data = PreparedDataset.load(cfg)
    rows = []
    for name in variants:
        with _layout(name):
            start = time.perf_counter()
            detection = detect_bias(data, cfg.with_overrides(**VARIANTS[name]))
            seconds = time.perf_counter() - start
        m, d = detection.metrics, detection.diagnostics
        rows.append({"dataset": dataset_label(dataset), "conflict_ratio": ratio, "seed": seed,
                     "ranker": name, "channels_last": name in CHANNELS_LAST_VARIANTS,
                     **{k: m[k] for k in (*METRICS, "recall_at_k",
                                                          "n_selected", "n_conflicts")},
                     "seconds": seconds, "selected_epoch": d.selected_epoch,
                     "train_accuracy": d.train_accuracy, "valid_accuracy": d.valid_accuracy,
                     "transfer": d.transfer, "warned": d.warning is not None,
                     "n_dropped": d.info.get("n_dropped"),
                     "test_conflicting": detection.test.to_dict()["conflicting"]})
        _log(f"  {rows[-1]['dataset']} rho={ratio} seed={seed} {name}: "
             f"AP {m['average_precision']:.3f}, AUROC {m['auroc']:.3f}, "
             f"R-precision {m['r_precision']:.3f}, {seconds:.0f} s")
    return rows


def run_grid(datasets: Sequence[str], *, ratios: Sequence[float], seeds: Sequence[int],
             base: RunConfig, variants: Sequence[str], checkpoint: Path | None = None,
             resume: dict | None = None, jobs: int = 1, threads: int = 1) -> dict:
    """Variants x datasets x ratios x seeds, seeds outermost; with `checkpoint`, the rows so far
    are written there after each (dataset, ratio, seed), and `resume` (such a checkpoint, same
    config and variants) keeps its settings and runs the rest."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown rankers {unknown}; expected some of {tuple(VARIANTS)}")
    meta = {"machine": _machine(), "torch_threads": threads or torch.get_num_threads(),
            "jobs": jobs, "datasets": list(datasets), "ratios": list(ratios),
            "seeds": list(seeds), "variants": {v: VARIANTS[v] for v in variants},
            "config": base.to_dict(), "load_average_before": os.getloadavg()}
    rows, earlier_s = [], 0.0
    if resume is not None:
        if (RunConfig.from_dict(resume["meta"]["config"]) != base
                or resume["meta"]["variants"] != meta["variants"]):
            raise ValueError("the checkpoint was made with another config or rankers; delete it "
                             "or run with the same settings")
        rows, earlier_s = list(resume["rows"]), resume["meta"]["wall_s"]
    done = {(r["dataset"], r["conflict_ratio"], r["seed"]) for r in rows}
    todo = [(d, r, s) for s in seeds for r in ratios for d in datasets
            if (dataset_label(d), r, s) not in done]
    _log(f"{len(todo)} settings to run, {len(done)} done")
    start = time.perf_counter()
    out = {"meta": meta, "rows": rows}

    def record(new_rows: list[dict]) -> None:
        rows.extend(new_rows)
        meta.update(wall_s=earlier_s + time.perf_counter() - start,
                    load_average_after=os.getloadavg(),
                    resumed_after_s=earlier_s if resume is not None else None)
        if checkpoint is not None:
            write_json(out, checkpoint)

    kwargs = {"base": base, "variants": variants, "threads": threads}
    if jobs <= 1:
        for setting in todo:
            record(run_setting(*setting, **kwargs))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(run_setting, *s, **kwargs) for s in todo]):
                record(future.result())
    meta.setdefault("wall_s", earlier_s)
    return out


def run_base(meta: dict) -> RunConfig:
    """The config a stored run ran on. One from before `biased_width` existed trained its
    biased models at the classifier's `width`."""
    config = dict(meta["config"])
    config.setdefault("biased_width", config["width"])
    return RunConfig.from_dict(config)


def add_rankers(results: dict, variants: Sequence[str], *, jobs: int, threads: int,
                command: str) -> dict:
    """`results` with the rows of `variants` added, run on its own grid and config (the
    datasets, ratios and seeds it holds); meta["added"] records each such pass."""
    meta = results["meta"]
    new = [v for v in variants if v not in meta["variants"]]
    if not new:
        raise ValueError(f"the run already holds {list(variants)}")
    labels = {dataset_label(d): d for d in meta["datasets"]}
    datasets = [labels[d] for d in dict.fromkeys(r["dataset"] for r in results["rows"])]
    added = run_grid(datasets, ratios=meta["ratios"], seeds=meta["seeds"], base=run_base(meta),
                     variants=new, jobs=jobs, threads=threads)
    meta["variants"].update(added["meta"]["variants"])
    return _merge(results, added, {"command": command, "variants": new})


def add_datasets(results: dict, datasets: Sequence[str], *, jobs: int, threads: int,
                 command: str) -> dict:
    """`results` with every one of its rankers run on `datasets` too, on its ratios, seeds and
    config, so that the new rows stand side by side with the old; meta["added"] records it."""
    meta = results["meta"]
    base = run_base(meta)
    changed = [v for v, overrides in meta["variants"].items() if v not in VARIANTS
               or base.with_overrides(**overrides) != base.with_overrides(**VARIANTS[v])]
    if changed:
        raise ValueError(f"rankers {changed} are defined otherwise now than in the run; rerun it")
    held = {dataset_label(d) for d in meta["datasets"]}
    new = [d for d in datasets if dataset_label(d) not in held]
    if not new:
        raise ValueError(f"the run already holds {list(datasets)}")
    added = run_grid(new, ratios=meta["ratios"], seeds=meta["seeds"], base=base,
                     variants=list(meta["variants"]), jobs=jobs, threads=threads)
    meta["datasets"] = [*meta["datasets"], *new]
    return _merge(results, added, {"command": command,
                                   "datasets": [dataset_label(d) for d in new],
                                   "variants": list(meta["variants"])})


def _merge(results: dict, added: dict, what: dict) -> dict:
    """`results` with the rows of `added` (a run_grid result) appended, and the pass recorded
    in meta["added"]: `what` it ran, its wall time and load."""
    results["meta"].setdefault("added", []).append(
        {**what, "wall_s": added["meta"]["wall_s"],
         "load_average_before": added["meta"]["load_average_before"],
         "load_average_after": added["meta"].get("load_average_after")})
    results["rows"] = [*results["rows"], *added["rows"]]
    return results


def confirm(results: dict, datasets: Sequence[str], seeds: Sequence[int],
            variants: Sequence[str], *, jobs: int, threads: int, command: str) -> dict:
    """More seeds for `variants` on `datasets`, with the run's ratios and config: their rows go
    to meta["confirmation"], apart from the grid's, so that the grid's tables stay one grid;
    the section pools them with the grid's own seeds for the paired differences."""
    meta = results["meta"]
    taken = set(meta["seeds"]) & set(seeds)
    if taken:
        raise ValueError(f"seeds {sorted(taken)} are the grid's own; pick others")
    extra = run_grid(datasets, ratios=meta["ratios"], seeds=seeds, base=run_base(meta),
                     variants=variants, jobs=jobs, threads=threads)
    held = meta.setdefault("confirmation", {"rows": [], "passes": []})
    held["rows"] = [*held["rows"], *extra["rows"]]
    held["passes"].append({"command": command, "wall_s": extra["meta"]["wall_s"],
                           "load_average_before": extra["meta"]["load_average_before"]})
    return results


def colour_ceiling(dataset: str, ratio: float, seed: int, *, config: RunConfig) -> dict:
    """An ORACLE upper bound for a colored-digits built-in, never a ranker: ranks the train
    digits by how much likelier each one's colour is under the other classes' LfF mean colours
    (the conflicting share spread evenly over them, as generated) than under its own, with the
    generator's palette, sigma and clamping (which no ranker knows): the Bayes ranking given
    the colour. The colour is all an image holds of its bias attribute, so once noise pushes a
    bias-aligned digit's colour towards another class's, no detector can tell it from a
    conflicting one."""
    import pandas as pd
    from PIL import Image

    from diffubias.builtin import BUILTINS, colored_digits, ensure_builtin
    from diffubias.scoring import detection_metrics

    name = dataset.removeprefix("builtin:")
    sigma = BUILTINS[name].params.get("color_sigma", colored_digits.COLOR_SIGMA)
    folder = ensure_builtin(name, cache_dir=config.cache_path, conflict_ratio=ratio, seed=seed)
    table = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)
    train = table[table.split == "train"]
    colours = []
    for path in train.path:  # a digit's colour: its brightest pixel, where the stroke is full
        pixels = np.asarray(Image.open(folder / path)).reshape(-1, 3).astype(np.float64) / 255
        colours.append(pixels[pixels.sum(axis=1).argmax()])
    labels = np.array([colored_digits.CLASS_NAMES.index(c) for c in train.label])
    attributes = np.array([colored_digits.COLOR_NAMES.index(b) for b in train.bias])
    loglik = _colour_loglik(np.stack(colours), colored_digits.MEAN_COLORS, max(sigma, 1e-3))
    own = loglik[np.arange(len(labels)), labels]
    others = np.where(np.eye(loglik.shape[1], dtype=bool)[labels], -np.inf, loglik)
    score = np.logaddexp.reduce(others, axis=1) - own
    m = detection_metrics(score, labels, labels != attributes, k=config.top_k)
    return {"dataset": dataset_label(dataset), "conflict_ratio": ratio, "seed": seed,
            **{k: getattr(m, k) for k in METRICS}}


def _colour_loglik(colours: np.ndarray, means: np.ndarray, sigma: float) -> np.ndarray:
    """float (N, M): log-likelihood of each observed colour (N, 3) under each mean colour
    (M, 3), as the generator draws it: Gaussian noise of `sigma` per channel, clamped to
    [0, 1]. A channel at 0 or 1 (to 8 bits) was clamped: its likelihood is the tail's mass."""
    from scipy.stats import norm

    x, mu = colours[:, None, :], means[None, :, :]  # (N, 1, 3), (1, M, 3)
    inside = norm.logpdf(x, loc=mu, scale=sigma)
    low, high = norm.logcdf(0.0, loc=mu, scale=sigma), norm.logsf(1.0, loc=mu, scale=sigma)
    per_channel = np.where(x <= 0.5 / 255, low, np.where(x >= 254.5 / 255, high, inside))
    return per_channel.sum(axis=2)  # channels drawn independently


def add_ceiling(results: dict) -> dict:
    """`results` with `colour_ceiling` on every colored-digits dataset x ratio x seed it holds."""
    meta = results["meta"]
    config = run_base(meta)
    meta["ceiling"] = [colour_ceiling(d, r, s, config=config)
                       for d in meta["datasets"] if _family(d) == "colored-digits"
                       for r in meta["ratios"] for s in meta["seeds"]]
    return results


def _family(dataset: str) -> str | None:
    from diffubias.builtin import BUILTINS

    name = dataset.removeprefix("builtin:")
    return BUILTINS[name].family if dataset.startswith("builtin:") and name in BUILTINS else None


# -- the demo's detection time -------------------------------------------------------------------



def demo_time(variants: Sequence[str], *, repeats: int = 3, device: str = "cpu") -> dict:
    """Detection on the app's demo project with each ranker, as the app runs it (torch's own
    thread count), `repeats` rounds alternating the rankers so that load drifts hit all alike;
    the median seconds and each one's ratio to `gce`'s (3 epochs in the plain layout: the
    detection issue 17 found, which its 1.5x target is set against)."""
    from ui.datasets import DEMO_CONFLICT_RATIO, DEMO_SOURCE  # what the app's demo holds

    cfg = RunConfig(device=device).with_overrides(dataset=DEMO_SOURCE,
                                                  conflict_ratio=DEMO_CONFLICT_RATIO, seed=0)
    data = PreparedDataset.load(cfg)
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(repeats):
        for name in variants:
            with _layout(name):
                start = time.perf_counter()
                detect_bias(data, cfg.with_overrides(**VARIANTS[name]))
                seconds[name].append(time.perf_counter() - start)
            _log(f"  demo round {round_ + 1}: {name} {seconds[name][-1]:.1f} s")
    medians = {v: float(np.median(t)) for v, t in seconds.items()}
    return {"repeats": repeats, "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(), "seconds": seconds, "median_s": medians,
            "ratio_to_gce": {v: medians[v] / medians["gce"] for v in medians}
            if "gce" in medians else {}}


# -- command line ---------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the hardest variant of each built-in, 1 %%, seed 0")
    parser.add_argument("--datasets", help="comma-separated, e.g. builtin:colored-digits-sigma0.05"
                        ",builtin:shape-scenes-subtle (default: every built-in; --quick: the "
                        "hardest of each)")
    parser.add_argument("--ratios", help="comma-separated conflict ratios (default 0.01)")
    parser.add_argument("--seeds", help="comma-separated, ranges allowed: 0,1,2 or 5-14 "
                        "(default 0-4; --quick: 0)")
    parser.add_argument("--rankers", default=",".join(VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a RunConfig field for every run, e.g. width=8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1,
                        help="settings run at once in worker processes")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (0: torch's own)")
    parser.add_argument("--json", type=Path, default=JSON)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the .partial.json checkpoint next to --json")
    parser.add_argument("--from-json", action="store_true",
                        help="redraw the section from --json without training")
    parser.add_argument("--add", action="store_true",
                        help="run --rankers on the grid of the finished run in --json (its "
                             "datasets, ratios, seeds and config) and add their rows to it")
    parser.add_argument("--add-datasets", metavar="DATASETS",
                        help="comma-separated: run every ranker of the finished run in --json on "
                             "these too (its ratios, seeds and config) and add their rows to it")
    parser.add_argument("--confirm", metavar="DATASETS",
                        help="comma-separated: run --rankers on these with --seeds (not the "
                             "grid's) and keep the rows apart, for the differences")
    parser.add_argument("--ceiling", action="store_true",
                        help="add the colour oracle's upper bound on every colored-digits "
                             "dataset of the run in --json (seconds; an oracle, never a ranker)")
    parser.add_argument("--demo-time", action="store_true",
                        help="time --rankers on the demo project and add it to --json")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section instead of writing BENCHMARKS.md")
    args = parser.parse_args(argv)
    command = " ".join(["python bench/detection.py",
                        *(argv if argv is not None else sys.argv[1:])])
    passes = {"add": lambda r: add_rankers(r, _names(args.rankers), jobs=args.jobs,
                                           threads=args.threads, command=command),
              "add_datasets": lambda r: add_datasets(r, _names(args.add_datasets),
                                                     jobs=args.jobs, threads=args.threads,
                                                     command=command),
              "confirm": lambda r: confirm(r, _names(args.confirm), _seeds(args.seeds),
                                           _names(args.rankers), jobs=args.jobs,
                                           threads=args.threads, command=command),
              "ceiling": add_ceiling}
    chosen = [name for name in passes if getattr(args, name)]
    if chosen:  # a pass over the stored run that adds to it
        results = passes[chosen[0]](json.loads(args.json.read_text()))
        write_json(results, args.json)
    elif args.from_json or args.demo_time:
        results = json.loads(args.json.read_text())
        if args.demo_time:
            results["meta"]["demo_time"] = demo_time(_names(args.rankers), device=args.device)
            write_json(results, args.json)
    else:
        profile = PROFILES["quick" if args.quick else "full"]
        base = RunConfig(device=args.device).with_overrides(**_parse_set(args.set))
        checkpoint = args.json.with_name(args.json.stem + ".partial.json")
        datasets = (tuple(_names(args.datasets)) if args.datasets
                    else default_datasets(args.quick))
        results = run_grid(
            datasets, base=base,
            ratios=tuple(float(x) for x in args.ratios.split(",")) if args.ratios
            else profile["ratios"],
            seeds=_seeds(args.seeds) if args.seeds else profile["seeds"],
            variants=_names(args.rankers),
            checkpoint=checkpoint, jobs=args.jobs, threads=args.threads,
            resume=json.loads(checkpoint.read_text()) if args.resume else None)
        results["meta"]["command"] = command
        write_json(results, args.json)
        checkpoint.unlink(missing_ok=True)  # the whole run is in --json now
    body = render(results, command=results["meta"].get("command", "python bench/detection.py"),
                  order=tuple(VARIANTS), channels_last=CHANNELS_LAST_VARIANTS,
                  targets=TARGET_DATASETS)
    if args.no_write:
        print(body)
        return
    write_section("detection", body)
    print(f"wrote {BENCHMARKS_MD} and {args.json}")


def _names(text: str) -> list[str]:
    """ "a, b,,c" -> ["a", "b", "c"]: a comma-separated option."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _seeds(text: str | None) -> tuple[int, ...]:
    """ "0,1,2" or "5-14" (both ends included), or a mix: "0,5-9"."""
    if not text:
        raise SystemExit("--seeds is needed here, e.g. --seeds 5-14")
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, _, high = part.partition("-")
        seeds += range(int(low), int(high or low) + 1)
    return tuple(seeds)


if __name__ == "__main__":
    main()
