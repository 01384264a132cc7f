"""Does a second round of the closed loop help, and does its label-free gap track the true one?

Usage: python bench/loop.py [--seeds 0,1,2] [--jobs 2] [--no-write]
(writes the `closed-loop` section of docs/BENCHMARKS.md and docs/benchmarks-loop.json)

For each built-in at 1 % conflicts and each seed, with the product's defaults and the project's
own models (builtin-blip, builtin-ldm), the benchmark's classifier width:

1. round 1: DiffuBias as the debias grid runs it (GCE detection, captions, text filter,
   class-anchored prompts, generation, CE on train + generated images);
2. re-score (`diffubias.stages.rescore`) with the round-1 model: candidates still wrong, the
   per-class gap (rest of the class minus candidates, no bias labels) and, read from the bias
   column for this measurement only, the true gap;
3. round 2: the re-scoring's next candidates (top-K of the classes with a positive gap) are
   captioned, filtered and generated from, and a model trains on the images of both rounds;
4. the control a skeptical reader asks for: as many extra images as round 2 added, generated
   from round 1's prompts with other seeds, so "round 2" is compared with "more of round 1" at
   the same number of images and the same schedule.
Every model is scored on the unbiased test split; differences are paired by seed with 95 %
t intervals (`bench/debias.py::paired_interval`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from debias import BENCH_OVERRIDES, BUILTINS, dataset_label, paired_interval  # noqa: E402
from markdown import machine_line, write_section  # noqa: E402

from diffubias.backends import captioner_for, generator_for  # noqa: E402
from diffubias.baselines.run import run_method  # noqa: E402
from diffubias.baselines.shared import SharedStages  # noqa: E402
from diffubias.config import RunConfig  # noqa: E402
from diffubias.images import stack_images  # noqa: E402
from diffubias.prepared import PreparedDataset, test_accuracy, train_evaluated  # noqa: E402
from diffubias.stages.generate import MemorySink, generate_images  # noqa: E402
from diffubias.stages.prompts import filter_prompts  # noqa: E402
from diffubias.stages.rescore import rescore  # noqa: E402

JSON = ROOT / "docs" / "benchmarks-loop.json"
ARMS = ("vanilla", "round-1", "round-2", "round-1-more")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_setting(dataset: str, seed: int, *, threads: int = 1) -> dict:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    cfg = RunConfig(dataset=dataset, conflict_ratio=0.01, seed=seed,
                    device="cpu").with_overrides(**BENCH_OVERRIDES)
    data = PreparedDataset.load(cfg)
    ds = data.ds
    shared = SharedStages(data, cfg)
    tests = {"vanilla": run_method("vanilla", data, cfg, shared=shared).test}
    round1 = run_method("diffubias", data, cfg, shared=shared)
    tests["round-1"] = round1.test
    prompts1 = shared.prompts(text_filter=True)
    made1, _ = shared.generated(prompts1)
    _log(f"  {dataset_label(dataset)} seed={seed}: round 1 with {len(made1)} images")

    remaining1 = rescore(data, cfg, round1.training.model,
                         candidates=shared.candidate_positions(), captions=shared.captions())
    captioner = captioner_for(cfg, dataset_name=ds.name)
    generator = generator_for(cfg, dataset_name=ds.name, class_names=ds.class_names)
    captions2 = captioner.caption(ds, remaining1.next_candidates.tolist())
    prompts2 = filter_prompts(captions2, ds.labels, cfg, num_classes=ds.num_classes).kept
    sink2 = MemorySink()
    generate_images(generator, prompts2, cfg, class_names=ds.class_names, sink=sink2)
    made2 = sink2.images
    round2 = _train(data, cfg, made1 + made2, "round 2")
    tests["round-2"] = test_accuracy(data, round2, cfg)
    remaining2 = rescore(data, cfg, round2, candidates=remaining1.next_candidates,
                         round_number=2)
    _log(f"  {dataset_label(dataset)} seed={seed}: round 2 added {len(made2)} images")

    more: list = []
    for offset in range(1, 20):  # other seeds for round 1's prompts, until as many images
        if len(more) >= len(made2):
            break
        sink = MemorySink()
        generate_images(generator, prompts1, replace(cfg, seed=cfg.seed + 7919 * offset),
                        class_names=ds.class_names, sink=sink)
        more += sink.images
    more = more[:len(made2)]
    control = _train(data, cfg, made1 + more, "round 1, more images")
    tests["round-1-more"] = test_accuracy(data, control, cfg)

    gaps = [(c["gap"], c["true_gap"]) for c in remaining1.summary()["classes"]
            if c["gap"] is not None and c["true_gap"] is not None]
    r = None
    if len(gaps) > 2 and np.std(np.array(gaps), axis=0).min() > 0:  # else undefined
        r = float(np.corrcoef(np.array(gaps).T)[0, 1])
    return {"dataset": dataset_label(dataset), "seed": seed,
            "test": {arm: t.to_dict() for arm, t in tests.items()},
            "n_images": {"round-1": len(made1), "round-2": len(made1) + len(made2),
                         "round-1-more": len(made1) + len(more)},
            "n_prompts": {"round-1": len(prompts1), "round-2": len(prompts2)},
            "remaining": {"round-1": remaining1.summary(), "round-2": remaining2.summary()},
            "gap_correlation": r, "wall_s": time.perf_counter() - start}


def _train(data: PreparedDataset, cfg: RunConfig, made: list, desc: str):
    images = stack_images([image for _, image in made], size=data.image_size)
    labels = torch.tensor([item.prompt.label for item, _ in made], dtype=torch.int64)
    return train_evaluated(data, cfg, desc=desc, added=(images, labels)).model


def run_all(seeds: list[int], *, jobs: int) -> list[dict]:
    settings = [(d, s) for s in seeds for d in BUILTINS]
    if jobs <= 1:
        return [run_setting(d, s) for d, s in settings]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(run_setting, *zip(*settings)))


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _mean_std(values: list[float]) -> str:
    v = np.array(values, dtype=float) * 100
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def _interval(diffs: list[float]) -> str:
    mean, low, high = paired_interval([100 * d for d in diffs])
    if np.isnan(low):
        return f"{mean:+.1f} (one seed)"
    mark = " ✓" if low > 0 else " ✗" if high < 0 else ""
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]{mark}"


def render(rows: list[dict], meta: dict) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = ["## The closed loop: a second round", "",
             f"Measured by `{meta['command']}` on {meta['machine']}, {meta['wall_s'] / 60:.0f} "
             f"min; 1 % conflicts, seeds {', '.join(map(str, seeds))}, the product's defaults "
             "with the benchmark's classifier width (8) and the project's own captioner and "
             "generator (builtin-blip, builtin-ldm). *round 1* is DiffuBias as in the debias "
             "grid; *round 2* re-scores the training set with the round-1 model, captions and "
             "generates from the top-K of the classes with a positive gap, and trains on the "
             "images of both rounds; *round 1, more images* is the control: as many extra "
             "images as round 2 added, from round 1's prompts with other seeds, same schedule. "
             "Unbiased test accuracy in %, mean ± std over seeds; differences paired by seed "
             "with a 95 % t interval (✓: above zero, ✗: below).", "",
             "| dataset | vanilla | round 1 | round 2 | round 1, more images | round 2 − round 1 "
             "| round 2 − more of round 1 | images (r1 / r2) |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["seed"])
        acc = {arm: [r["test"][arm]["unbiased"] for r in mine] for arm in ARMS}
        n1 = np.mean([r["n_images"]["round-1"] for r in mine])
        n2 = np.mean([r["n_images"]["round-2"] for r in mine])
        lines.append(
            f"| {dataset} | " + " | ".join(_mean_std(acc[a]) for a in ARMS) + " | "
            + _interval([b - a for a, b in zip(acc["round-1"], acc["round-2"])]) + " | "
            + _interval([b - a for a, b in zip(acc["round-1-more"], acc["round-2"])])
            + f" | {n1:.0f} / {n2:.0f} |")
    lines += ["", "What the re-scoring saw (round-1 model on the training set, means over seeds): "
              "the label-free gap (rest of the class minus the candidates) next to the true gap "
              "read from the bias column (aligned minus conflicting training accuracy), their "
              "correlation over classes, and the candidates still wrong:", "",
              "| dataset | gap, proxy (points) | gap, true (points) | r(proxy, true) over classes "
              "| candidates still wrong, round 1 → round 2 |", "|---|---|---|---|---|"]
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        one = [r["remaining"]["round-1"] for r in mine]
        two = [r["remaining"]["round-2"] for r in mine]
        corr = [r["gap_correlation"] for r in mine if r["gap_correlation"] is not None]
        lines.append(
            f"| {dataset} | {100 * np.mean([x['mean_gap'] for x in one]):+.1f} | "
            f"{100 * np.mean([x['mean_true_gap'] for x in one]):+.1f} | "
            + (f"{np.mean(corr):.2f}" if corr else "–") + " | "
            + f"{np.mean([x['n_still_wrong'] for x in one]):.0f} of "
            f"{np.mean([x['n_candidates'] for x in one]):.0f} → "
            f"{np.mean([x['n_still_wrong'] for x in two]):.0f} of "
            f"{np.mean([x['n_candidates'] for x in two]):.0f} |")
    lines += ["", _verdict(rows), "", "Every setting's figures are in "
              "`docs/benchmarks-loop.json`."]
    return "\n".join(lines)


def _verdict(rows: list[dict]) -> str:
    """The sentence the tables support, per dataset: does round 2 beat round 1, and does it beat
    the same number of extra images from round 1's prompts (only an interval above zero
    counts)."""
    parts = []
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["seed"])
        acc = {arm: [r["test"][arm]["unbiased"] for r in mine] for arm in ARMS}
        words = []
        for other, name in (("round-1", "round 1"), ("round-1-more", "more of round 1")):
            _, low, high = paired_interval([100 * (b - a) for a, b in
                                            zip(acc[other], acc["round-2"])])
            verb = ("beats" if low > 0 else "loses to" if high < 0 else
                    "cannot be told apart from")
            words.append(f"{verb} {name}")
        parts.append(f"On {dataset} a second round " + " and ".join(words) + ".")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--from-json", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(JSON.read_text())
        rows, meta = saved["rows"], saved["meta"]
    else:
        start = time.perf_counter()
        machine = machine_line()
        rows = run_all([int(s) for s in args.seeds.split(",")], jobs=args.jobs)
        meta = {"machine": machine, "wall_s": time.perf_counter() - start,
                "load_average_after": os.getloadavg(),
                "command": "python bench/loop.py " + " ".join(sys.argv[1:])}
        JSON.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = render(rows, meta)
    if args.no_write:
        print(text)
    else:
        write_section("closed-loop", text)
        print(text)


if __name__ == "__main__":
    main()
