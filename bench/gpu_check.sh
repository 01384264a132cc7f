#!/usr/bin/env bash
# GPU check for a lent CUDA machine (no network needed): the tiny BLIP, LLaVA and Stable
# Diffusion pipelines of tests/tiny_models.py loaded by path through diffubias in fp16 and bf16
# on CUDA; batched vs one-per-call throughput, peak GPU memory, seeded reproducibility, and the
# resumable folder writer on the GPU. Then the CPU test files of the same backends.
#
# Usage: bash bench/gpu_check.sh            (about 1-2 minutes once Python packages import)
# Results: $OUT/gpu_check.json and $OUT/gpu_check.md when $OUT is set, else runs/gpu_check/.
# Env: PYTHON (interpreter; default .venv/bin/python, else python3), COMPILE=1 to also time
# torch.compile of the UNet (adds a minute of compilation), SKIP_TESTS=1 to skip pytest,
# GPU_CHECK_DEVICE=cpu for a dry run of the script's logic on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
RESULTS=${OUT:-runs/gpu_check}
mkdir -p "$RESULTS"
nvidia-smi > "$RESULTS/nvidia-smi.txt" 2>&1 \
  || echo "nvidia-smi not found" > "$RESULTS/nvidia-smi.txt"

"$PY" - "$RESULTS" <<'PYEOF'
import json, sys, tempfile, time, os
from pathlib import Path

missing = []
for name in ("torch", "transformers", "diffusers", "accelerate"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"gpu_check: missing packages {missing}; pip install -r requirements.txt first")
import numpy as np
import torch

dev = os.environ.get("GPU_CHECK_DEVICE", "cuda")  # cpu: a dry run of this script's logic
cuda = dev.startswith("cuda")
if cuda and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")

from tiny_models import build_tiny_blip, build_tiny_llava, build_tiny_sd, write_tiny_dataset
from diffubias.captions import make_captioner
from diffubias.dataset_sources import load_dataset
from diffubias.diffusion import (DiffusersGenerator, DiffusionSettings, generate_to_folder,
                                 load_diffusers_generator)
from diffubias.hf_captioners import CaptionSettings, ModelCaptioner
from diffubias.text_filter import Prompt

out_dir = Path(sys.argv[1])
work = Path(tempfile.mkdtemp())
res = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
       "torch": torch.__version__, "bf16_supported": cuda and torch.cuda.is_bf16_supported()}


def sync():
    if cuda:
        torch.cuda.synchronize()


def timed(fn, repeats=3):
    fn()  # warm-up (kernels, allocator)
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def peak_mb(fn):
    if not cuda:
        fn()
        return float("nan")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync()
    return torch.cuda.max_memory_allocated() / 2**20


sd_dir = str(build_tiny_sd(work / "sd"))
prompts = [Prompt(f"a {c} {a} number {i}", i % 2, i, ())
           for i, (c, a) in enumerate([("red", "cat"), ("green", "dog")] * 32)]
for dtype in ("fp16", "bf16", "auto"):
    g = load_diffusers_generator(sd_dir, device=dev, dtype=dtype,
                                 settings=DiffusionSettings(steps=4, batch_size=64))
    one = DiffusersGenerator(g.pipe, g.model, DiffusionSettings(steps=4, batch_size=1))
    n = len(prompts) * 2
    run_b = lambda: g.generate(prompts, images_per_prompt=2, seed=0)
    run_1 = lambda: one.generate(prompts[:16], images_per_prompt=2, seed=0)  # 32 images
    t_b, t_1 = timed(run_b), timed(run_1)
    a, b = run_b(), run_b()
    same = all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) for x, y in zip(a, b))
    res[f"generation_{dtype}"] = {
        "pipe_dtype": str(g.pipe.dtype), "images": n, "batch": 64,
        "batched_images_per_s": n / t_b, "one_per_call_images_per_s": 32 / t_1,
        "speedup": (n / t_b) / (32 / t_1), "peak_mb_batched": peak_mb(run_b),
        "identical_for_identical_seeds": same}
    del g, one
    if cuda:
        torch.cuda.empty_cache()

if os.environ.get("COMPILE") == "1":
    g = load_diffusers_generator(sd_dir, device=dev, dtype="fp16", compile_mode="default",
                                 settings=DiffusionSettings(steps=4, batch_size=64))
    t0 = time.perf_counter()
    g.generate(prompts, images_per_prompt=2, seed=0)
    first = time.perf_counter() - t0
    res["generation_compiled_fp16"] = {
        "first_call_s": first,
        "batched_images_per_s": 128 / timed(lambda: g.generate(prompts, images_per_prompt=2,
                                                                seed=0))}

g = load_diffusers_generator(sd_dir, device=dev, dtype="fp16",
                             settings=DiffusionSettings(steps=2, batch_size=16))
folder = generate_to_folder(g, prompts[:8], work / "gen", images_per_prompt=2, seed=0,
                            class_names=("cat", "dog"))
again = generate_to_folder(g, prompts[:8], work / "gen", images_per_prompt=2, seed=0,
                           class_names=("cat", "dog"))
res["folder_writer"] = {"n_images": folder.n_images, "rerun_new": again.n_new,
                        "rerun_existing": again.n_existing}

ds = load_dataset(str(write_tiny_dataset(work / "data", n_train=28)), cache_dir=work / "cache")
positions = list(range(len(ds.paths)))
for name, builder in (("blip", build_tiny_blip), ("llava", build_tiny_llava)):
    path = str(builder(work / name))
    cap = make_captioner(path, per_image=3, batch_size=32, max_new_tokens=20, device=dev,
                         dtype="fp16")
    one = ModelCaptioner(cap.model, cap.processor, cap.model_name, cap.kind,
                         CaptionSettings(per_image=3, batch_size=1, max_new_tokens=20))
    t_b = timed(lambda: cap.caption(ds, positions))
    t_1 = timed(lambda: one.caption(ds, positions[:16]), repeats=1)
    res[f"captioning_{name}_fp16"] = {
        "model_dtype": str(cap.dtype), "images": len(positions),
        "n_captions": len(cap.caption(ds, positions)),
        "batched_images_per_s": len(positions) / t_b, "one_per_call_images_per_s": 16 / t_1,
        "speedup": (len(positions) / t_b) / (16 / t_1),
        "peak_mb_batched": peak_mb(lambda: cap.caption(ds, positions))}

(out_dir / "gpu_check.json").write_text(json.dumps(res, indent=2))
lines = [f"# GPU check: {res['device']}, torch {res['torch']}", "",
         "| check | batched images/s | one-per-call images/s | speed-up | peak MB | notes |",
         "|---|---|---|---|---|---|"]
for key, v in res.items():
    if isinstance(v, dict) and "batched_images_per_s" in v:
        notes = ", ".join(f"{k}={v[k]}" for k in ("pipe_dtype", "model_dtype",
                                                  "identical_for_identical_seeds", "n_captions")
                          if k in v)
        lines.append(f"| {key} | {v['batched_images_per_s']:.1f} | "
                     f"{v.get('one_per_call_images_per_s', float('nan')):.1f} | "
                     f"{v.get('speedup', float('nan')):.1f}x | "
                     f"{v.get('peak_mb_batched', float('nan')):.0f} | {notes} |")
lines += ["", f"folder writer on CUDA: {res['folder_writer']}"]
(out_dir / "gpu_check.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  "$PY" -m pytest tests/test_diffusion.py tests/test_hf_captioners.py tests/test_keywords.py -q \
    2>&1 | tail -5 | tee "$RESULTS/pytest.txt"
fi
