"""The detection benchmark's tables (bench/detection.py): each ranker's metrics over seeds with
their intervals, differences from `gce` paired by seed, the colour oracle's bound, the extra
seeds of a confirmation, issue 17's targets and the demo's detection time, rendered as the
`detection` section of docs/BENCHMARKS.md from the stored rows. Trains nothing; knows the
rankers only by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from debias import dataset_label, paired_interval

METRICS = ("average_precision", "auroc", "r_precision", "precision_at_k")
METRIC_NAMES = {"average_precision": "AP", "auroc": "AUROC", "r_precision": "R-precision",
                "precision_at_k": "precision@K"}


def summary(rows: Sequence[dict]) -> dict[tuple, dict]:
    """(dataset, ratio, ranker) -> {metric: (mean, low, high)} over seeds, plus seconds and
    the diagnostics' means, and the seeds counted."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["conflict_ratio"], r["ranker"]), []).append(r)
    out = {}
    for key, group in groups.items():
        cell = {k: paired_interval([g[k] for g in group]) for k in (*METRICS, "seconds")}
        cell["valid_accuracy"] = float(np.mean([g["valid_accuracy"] for g in group]))
        cell["selected_epoch"] = float(np.mean([g["selected_epoch"] for g in group]))
        cell["warned"] = sum(g["warned"] for g in group)
        cell["seeds"] = len(group)
        out[key] = cell
    return out


def differences(rows: Sequence[dict], metric: str, against: str = "gce") -> dict[tuple, tuple]:
    """(dataset, ratio, ranker) -> (mean, low, high) of ranker minus `against`, paired by seed."""
    values = {(r["dataset"], r["conflict_ratio"], r["seed"], r["ranker"]): r[metric]
              for r in rows}
    diffs: dict[tuple, list[float]] = {}
    for (d, ratio, seed, ranker), value in values.items():
        if ranker != against and (d, ratio, seed, against) in values:
            diffs.setdefault((d, ratio, ranker), []).append(
                value - values[(d, ratio, seed, against)])
    return {k: paired_interval(v) for k, v in diffs.items()}


def _interval(cell: tuple[float, float, float], scale: float = 1.0, digits: int = 3) -> str:
    mean, low, high = (scale * x for x in cell)
    if np.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def render(results: dict, *, command: str, order: Sequence[str],
           channels_last: Sequence[str], targets: Sequence[str]) -> str:
    """The `detection` section of docs/BENCHMARKS.md from a stored run: `order` lists the
    rankers as the benchmark defines them, `channels_last` those that ran channels-last,
    `targets` the datasets issue 17's targets are read on."""
    meta, rows = results["meta"], results["rows"]
    cfg = meta["config"]
    stats = summary(rows)
    # the json sorts its keys: back to the benchmark's order
    variants = sorted(meta["variants"], key=lambda v: (v not in order, list(order).index(v)
                                                       if v in order else 0, v))
    seeds = sorted({r["seed"] for r in rows})
    lines = ["## Detection: the rankers side by side", "",
             f"Measured by `{command}` on {meta['machine']}; torch on {meta['torch_threads']} "
             f"thread(s), {meta['jobs']} job(s); load average "
             f"{', '.join(f'{x:.1f}' for x in meta['load_average_before'])} before (the machine "
             f"is shared, so times are indicative). Wall time {meta['wall_s'] / 60:.1f} min."
             + "".join(_added_line(a) for a in meta.get("added", [])), "",
             f"Settings: the product's defaults at the run's commit (`arch={cfg['arch']}`, "
             f"width {cfg['width']}"
             + (f", biased width {cfg['biased_width']}, " if "biased_width" in cfg else
                " (then the biased model's too: `biased_width` did not exist yet), ") +
             f"{cfg['biased_epochs']} epochs, GCE q {cfg['gce_q']}, batch {cfg['batch_size']}, "
             f"lr {cfg['lr']}, top_k {cfg['top_k']:g} per class, committee of "
             f"{cfg['committee_size']}) unless a ranker changes them (each names its epochs): "
             + "; ".join(f"`{v}` " + ", ".join(f"{k}={x}" for k, x in meta["variants"][v].items())
                         for v in variants) + ". "
             f"Seed(s) {', '.join(map(str, seeds))}: each cell is the mean over the seeds with its "
             "95 % t interval in brackets (none with one seed). The bias column is read only here, "
             "to measure; no ranker reads it."
             + (" " + ", ".join(f"`{v}`" for v in variants if v in channels_last)
                + " ran with the classifier's weights channels-last (the product's layout since "
                "then, `diffubias.models.CHANNELS_LAST`: faster, the same math), the other "
                "rankers in the plain layout; `gce-6ep` against `gce-6ep-cl` shows what the "
                "layout alone changes (rounding)."
                if any(v in channels_last for v in variants) else ""), "",
             "| dataset | ratio | ranker | AP | AUROC | R-precision | precision@K | seconds | "
             "epoch scored | biased model's valid acc. | warned |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = sorted(stats, key=lambda k: (k[0], k[1], variants.index(k[2])))
    for key in order:
        s = stats[key]
        lines.append(f"| {key[0]} | {100 * key[1]:g} % | {key[2]} | "
                     + " | ".join(_interval(s[m]) for m in METRICS)
                     + f" | {_interval(s['seconds'], digits=0)} | {s['selected_epoch']:.1f} | "
                     f"{s['valid_accuracy']:.3f} | "
                     f"{s['warned']}/{s['seeds']} |")
    lines += ["", "Average over the datasets and ratios above (mean of the cells' means):", "",
              "| ranker | " + " | ".join(METRIC_NAMES[m] for m in METRICS) + " | seconds |",
              "|---|" + "---|" * (len(METRICS) + 1)]
    averages = {}
    for v in variants:
        cells = [stats[k] for k in stats if k[2] == v]
        averages[v] = {m: float(np.mean([c[m][0] for c in cells])) for m in (*METRICS, "seconds")}
        lines.append(f"| {v} | " + " | ".join(f"{averages[v][m]:.3f}" for m in METRICS)
                     + f" | {averages[v]['seconds']:.0f} |")
    best = max(averages, key=lambda v: averages[v]["average_precision"])
    lines += ["", f"Best on average by AP: `{best}`."]
    diffs = differences(rows, "average_precision")
    if diffs:
        lines += ["", "AP minus `gce`'s, in points, paired by seed [95 % interval]:", "",
                  "| dataset | ratio | " + " | ".join(v for v in variants if v != "gce") + " |",
                  "|---|---|" + "---|" * (len(variants) - 1)]
        for d, ratio in sorted({k[:2] for k in diffs}):
            lines.append(f"| {d} | {100 * ratio:g} % | " + " | ".join(
                _interval(diffs[(d, ratio, v)], 100, 1) if (d, ratio, v) in diffs else "n/a"
                for v in variants if v != "gce") + " |")
    lines += _ceiling_lines(meta.get("ceiling"), stats)
    lines += _confirmation_lines(meta.get("confirmation"), rows)
    lines += _target_lines(stats, diffs, variants, targets,
                           meta.get("ceiling") or [])
    lines += _demo_time_lines(meta.get("demo_time"))
    lines += ["", "`epoch scored`: the mean epoch whose model scored (the last one unless the "
              "ranker selects). `warned`: runs where the biased model's diagnostics said it "
              "looks unbiased (its validation accuracy carries over at least 70 % of its "
              "train fit above chance, `diffubias.rankers.TRANSFER_WARNING`). Every row is in "
              "`docs/benchmarks-detection.json`."]
    return "\n".join(lines)


def _ceiling_lines(ceiling: list[dict] | None, stats: dict) -> list[str]:
    if not ceiling:
        return []
    lines = ["", "Upper bound on colored-digits, an oracle (`colour_ceiling`: ranks by how much "
             "likelier each digit's colour is under another class's mean colour than its own, "
             "reading the generator's palette and sigma, which no ranker can): the colour is all "
             "an image holds of its bias attribute, so where noise carries an aligned digit's "
             "colour to another class's, no detector can tell it from a conflicting one. Against "
             "it, the best ranker's AP in each row:", "",
             "| dataset | ratio | " + " | ".join(METRIC_NAMES[m] for m in METRICS)
             + " | best ranker's AP |", "|---|---|" + "---|" * (len(METRICS) + 1)]
    groups: dict[tuple, list[dict]] = {}
    for row in ceiling:
        groups.setdefault((row["dataset"], row["conflict_ratio"]), []).append(row)
    for (d, ratio), rows in sorted(groups.items(), key=lambda kv: -_sigma(kv[0][0])):
        ranked = {k[2]: v["average_precision"][0] for k, v in stats.items() if k[:2] == (d, ratio)}
        best = max(ranked, key=ranked.get) if ranked else None
        lines.append(f"| {d} | {100 * ratio:g} % | "
                     + " | ".join(_interval(paired_interval([r[m] for r in rows]))
                                  for m in METRICS)
                     + (f" | {ranked[best]:.3f} (`{best}`) |" if best else " | n/a |"))
    return lines


def _confirmation_lines(confirmation: dict | None, rows: Sequence[dict]) -> list[str]:
    """Each confirmed (dataset, ratio, ranker) against `gce` over the grid's seeds and the
    confirmation's together, paired by seed."""
    if not confirmation or not confirmation["rows"]:
        return []
    extra = confirmation["rows"]
    cells = sorted({(r["dataset"], r["conflict_ratio"]) for r in extra})
    rankers = list(dict.fromkeys(r["ranker"] for r in extra if r["ranker"] != "gce"))
    lines = ["", "More seeds for the differences that matter (" + "; ".join(
                 f"`{p['command']}`, {p['wall_s'] / 60:.1f} min" for p in confirmation["passes"])
             + "): these rows are kept apart from the tables above and pooled here with the "
             "grid's own seeds, paired by seed.", "",
             "| dataset | ratio | ranker | seeds | AP | `gce`'s AP | AP minus `gce`'s, points "
             "[95 %] | seeds where it beats `gce` |", "|---|---|---|---|---|---|---|---|"]
    pooled = [r for r in rows if (r["dataset"], r["conflict_ratio"]) in cells] + list(extra)
    for dataset, ratio in cells:
        for ranker in rankers:
            by_seed = {}
            for r in pooled:
                if r["dataset"] == dataset and r["conflict_ratio"] == ratio:
                    by_seed.setdefault(r["seed"], {})[r["ranker"]] = r["average_precision"]
            pairs = [(s[ranker], s["gce"]) for s in by_seed.values() if {ranker, "gce"} <= set(s)]
            if not pairs:
                continue
            ours, theirs = (np.array(x) for x in zip(*pairs))
            lines.append(f"| {dataset} | {100 * ratio:g} % | {ranker} | {len(pairs)} | "
                         f"{_interval(paired_interval(ours))} | "
                         f"{_interval(paired_interval(theirs))} | "
                         f"{_interval(paired_interval(ours - theirs), 100, 1)} | "
                         f"{int((ours > theirs).sum())} of {len(pairs)} |")
    return lines


def _sigma(label: str) -> float:
    from diffubias.builtin import BUILTINS, colored_digits

    return BUILTINS[label].params.get("color_sigma", colored_digits.COLOR_SIGMA)


def _added_line(added: dict) -> str:
    if "datasets" in added:
        what = (f"ran every ranker on {', '.join(f'`{d}`' for d in added['datasets'])} with the "
                "same ratios, seeds and config")
    else:
        what = (f"added {', '.join(f'`{v}`' for v in added['variants'])} on the same grid and "
                "config")
    return f" Then `{added['command']}` {what} ({added['wall_s'] / 60:.1f} min)."


def _target_lines(stats: dict, diffs: dict, variants: Sequence[str], targets: Sequence[str],
                  ceiling: Sequence[dict] = ()) -> list[str]:
    """Issue 17's targets on the hardest variant of each built-in: AUROC >= 0.9, R-precision
    >= 0.7, AP at least 10 points above `gce` (means over seeds); and which of them lie above
    the colour oracle's bound, where no ranker can meet them."""
    hardest = [dataset_label(h) for h in targets]
    cells = sorted(k for k in stats if k[0] in hardest)
    if not cells:
        return []
    lines = ["", "Targets on the hardest variants (AUROC >= 0.9, R-precision >= 0.7, AP >= "
             "`gce`'s + 10 points; means over seeds):", "",
             "| dataset | ratio | ranker | AUROC | R-precision | AP gain | all met |",
             "|---|---|---|---|---|---|---|"]
    for key in sorted(cells, key=lambda k: (k[0], k[1], variants.index(k[2]))):
        s = stats[key]
        gain = diffs.get(key, (0.0,))[0] if key[2] != "gce" else 0.0
        values = (s["auroc"][0], s["r_precision"][0], gain)
        met = (values[0] >= 0.9, values[1] >= 0.7, values[2] >= 0.10)
        shown = (f"{values[0]:.3f}", f"{values[1]:.3f}", "n/a (the reference)" if key[2] == "gce"
                 else f"{100 * values[2]:+.1f} points")
        lines.append(f"| {key[0]} | {100 * key[1]:g} % | {key[2]} | "
                     + " | ".join(f"{v} ({'yes' if m else 'no'})" for v, m in zip(shown, met))
                     + f" | {'yes' if all(met) else 'no'} |")
    beyond = []
    for dataset, ratio in sorted({k[:2] for k in cells}):
        bound = [r for r in ceiling if (r["dataset"], r["conflict_ratio"]) == (dataset, ratio)]
        if not bound or (dataset, ratio, "gce") not in stats:
            continue
        ap, rp = (float(np.mean([r[m] for r in bound])) for m in ("average_precision",
                                                                   "r_precision"))
        gce_ap = stats[(dataset, ratio, "gce")]["average_precision"][0]
        if rp < 0.7:
            beyond.append(f"on {dataset} R-precision 0.7 lies above the oracle's {rp:.3f}")
        if gce_ap + 0.10 > ap:
            beyond.append(f"on {dataset} `gce`'s AP + 10 points ({gce_ap + 0.10:.3f}) lies "
                          f"above the oracle's AP {ap:.3f}")
    if beyond:
        lines += ["", "Out of reach of any ranker (the colour oracle's bound above): "
                  + "; ".join(beyond) + "."]
    return lines


def _demo_time_lines(demo: dict | None) -> list[str]:
    if not demo:
        return []
    lines = ["", f"Detection on the app's demo project (colored-digits, 1 %, seed 0; `python "
             f"bench/detection.py --demo-time`): median of {demo['repeats']} rounds alternating "
             f"the rankers, torch on {demo['torch_threads']} threads, load average "
             f"{demo['load_average'][0]:.1f} after, each ranker in its layout as above. Target: "
             "the default within 1.5x of `gce`'s (3 epochs, plain layout: the detection issue 17 "
             "found).", "", "| ranker | seconds | x `gce` |", "|---|---|---|"]
    for name, median in demo["median_s"].items():
        ratio = demo["ratio_to_gce"].get(name)
        lines.append(f"| {name} | {median:.1f} | {f'{ratio:.2f}x' if ratio else 'n/a'} |")
    return lines
