"""End-to-end CLI runs on the built-in datasets: wall time, peak memory and the headline figures.

Usage: python bench/pipeline.py [--out runs/bench]   (writes the `pipeline` section of
docs/BENCHMARKS.md). Each run is the README's CLI in a child process, timed from outside.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from markdown import machine_line, write_section  # noqa: E402

RUNS = (
    ("colored-digits", ["--dataset", "builtin:colored-digits", "--conflict-ratio", "0.01",
                        "--seed", "0"]),
    ("shape-scenes", ["--dataset", "builtin:shape-scenes", "--conflict-ratio", "0.01",
                      "--seed", "0"]),
)


def run_one(name: str, args: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "diffubias", "run", *args, "--out", str(out / name)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = json.loads((out / name / "report.json").read_text())
    return {"name": name, "cmd": " ".join(["python -m diffubias run", *args, "--out", "DIR"]),
            "wall_s": wall, "peak_mb": peak_mb, "report": report}


def _backends_line(results: list[dict]) -> str:
    """Which captioner and generator the runs used, and whether that is the method or an
    upper bound."""
    from diffubias.shipped_models import oracle_note, resolve

    parts = []
    for r in results:
        config, dataset = r["report"]["config"], r["report"]["config"]["dataset"]
        names = [resolve(config[k], dataset, kind=k) for k in ("captioner", "generator")]
        notes = [oracle_note(n, dataset) for n in names]
        parts.append(f"{r['name']}: captioner `{names[0]}`, generator `{names[1]}`"
                     + (f" (UPPER BOUND: {'; '.join(n for n in notes if n)})"
                        if any(notes) else " (the project's own models: the method, no oracle)"))
    return "Backends (the defaults): " + "; ".join(parts) + "."


def fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def render(results: list[dict]) -> str:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = ["## End-to-end pipeline (CLI, CPU)", "",
             f"Measured by `python bench/pipeline.py` on {machine_line()}; load average at the "
             f"end {load} (a load above 2 means other work shared the 2 cores and stretched the "
             "wall times). Wall time includes every stage, dataset generation on first use and "
             "process start-up. Peak memory is the largest child process's maximum RSS so far.",
             "", _backends_line(results), ""]
    lines += ["| dataset | wall (s) | peak RSS (MB) | r-precision | AUROC | precision@K | "
              "recall@K | vanilla unbiased | debiased unbiased | gain (points) | "
              "CAM in object: before -> debiased (object area: chance) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rep = r["report"]
        det, models, cam = rep["detection"], rep["models"], rep.get("gradcam", {})
        van, deb = models["vanilla"]["test"]["unbiased"], models["debiased"]["test"]["unbiased"]
        cam_text = ("n/a" if cam.get("object_mass_before") is None else
                    f"{cam.get('before', 'biased')} {cam['object_mass_before']:.3f} -> "
                    f"{cam['object_mass_after']:.3f} ({cam['object_area']:.3f})")
        lines.append(f"| {r['name']} | {r['wall_s']:.0f} | {r['peak_mb']:.0f} | "
                     f"{fmt(det['r_precision'])} | {fmt(det['auroc'])} | "
                     f"{fmt(det['precision_at_k'])} | {fmt(det['recall_at_k'])} | {fmt(van)} | "
                     f"{fmt(deb)} | {100 * (deb - van):+.1f} | {cam_text} |")
    lines += ["", "Test accuracies (overall / aligned / conflicting / unbiased):", ""]
    lines += ["| dataset | model | overall | aligned | conflicting | unbiased |",
              "|---|---|---|---|---|---|"]
    for r in results:
        for role in ("biased", "vanilla", "debiased"):
            t = r["report"]["models"][role]["test"]
            lines.append(f"| {r['name']} | {role} | {fmt(t['overall'])} | {fmt(t['aligned'])} | "
                         f"{fmt(t['conflicting'])} | {fmt(t['unbiased'])} |")
    lines += ["", "Stage timings (s):", "", "| dataset | " + " | ".join(
        k for k in results[0]["report"]["timings_s"]) + " |",
        "|---|" + "---|" * len(results[0]["report"]["timings_s"])]
    for r in results:
        t = r["report"]["timings_s"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:.1f}" for v in t.values()) + " |")
    lines += ["", "Commands:", ""] + [f"- `{r['cmd']}`" for r in results]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args()
    results = [run_one(name, run_args, args.out) for name, run_args in RUNS]
    path = write_section("pipeline", render(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
