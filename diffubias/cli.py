"""Command line: `python -m diffubias <command>`.

`run` does every stage; `detect` only stages 1-3 (works on any dataset); the other commands run
one stage on an existing run folder, e.g. after editing its prompts.csv. Options given to a
single-stage command override the run's saved config for that stage and later ones.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from diffubias.config import RunConfig
from diffubias.pipeline import STAGES, Run, run_stages

EXAMPLES = """examples:
  python -m diffubias run --dataset builtin:colored-digits --conflict-ratio 0.01 --seed 0 --out runs/cd
  python -m diffubias run --dataset builtin:shape-scenes --out runs/ss
  python -m diffubias detect --dataset path/to/folder_or.zip --out runs/mine
  python -m diffubias generate --out runs/cd --images-per-prompt 4   # after editing prompts.csv
"""

# (config field, help); the flag is the field name with dashes
_OPTIONS = (
    ("dataset", "builtin:colored-digits, builtin:shape-scenes, a folder or a .zip"),
    ("conflict_ratio", "built-ins: share of bias-conflicting train samples (0.005/0.01/0.02/0.05)"),
    ("seed", "seed for data, initialisation, order and generation"),
    ("cache_dir", "cache for built-in datasets and extracted zips (default ~/.cache/diffubias)"),
    ("device", "auto, cpu, cuda, cuda:1, ..."),
    ("image_size", "train/eval side in px (0: the dataset's own, capped at 224)"),
    ("arch", "auto, small-cnn or resnet18"),
    ("width", "small CNN width"),
    ("init_weights", "local ResNet-18 weights (safetensors or state dict) to start from"),
    ("batch_size", "training batch size"),
    ("lr", "learning rate (Adam)"),
    ("biased_epochs", "epochs of the biased (GCE) model"),
    ("gce_q", "GCE q in (0, 1]"),
    ("top_k", "candidates per class: a count >= 1, or a fraction in (0, 1) of the class"),
    ("captioner", "caption backend: metadata, or a BLIP / image-text-to-text VLM by hub id, local "
                  "folder or short name (blip, blip-base, llava, llava-llama3)"),
    ("captions_per_image", "captions per candidate"),
    ("top_f", "text filter: number of top words (0: 2 x classes)"),
    ("extra_stop_words", "text filter: extra stop words, comma-separated"),
    ("generator", "generation backend: demo (built-in datasets), or a diffusers text-to-image "
                  "pipeline by hub id, local folder or short name (sd15, sdxl, sd35)"),
    ("images_per_prompt", "generated images per kept prompt"),
    ("max_images", "cap on generated images (0: none)"),
    ("debias_epochs", "epochs of the vanilla and debiased models"),
    ("cam_method", "gradcam, gradcam++, hirescam, xgradcam, layercam, eigencam"),
    ("cam_samples", "test samples whose Grad-CAM object mass is measured"),
    ("caption_instruction", "instruction given to a VLM captioner"),
    ("caption_batch_size", "images per captioning call"),
    ("caption_max_new_tokens", "longest caption, in tokens"),
    ("keywords_top_n", "bias keywords per class in report.json (0: skip keyword discovery)"),
    ("gen_steps", "diffusion denoising steps (alias --steps)"),
    ("guidance_scale", "classifier-free guidance scale"),
    ("negative_prompt", "negative prompt for every image"),
    ("gen_batch_size", "images per diffusion call (halved on CUDA out-of-memory)"),
    ("gen_width", "generated width in px, a multiple of 8 (0: the model's default)"),
    ("gen_height", "generated height in px, a multiple of 8 (0: the model's default)"),
    ("model_dtype", "captioner/diffusion dtype: auto (bf16/fp16 on CUDA, fp32 on CPU), fp16, "
                    "bf16, fp32"),
    ("offload", "diffusion memory: none, model (CPU offload per component) or sequential"),
    ("compile_mode", "torch.compile mode for the UNet/transformer (empty: no compile)"),
)
_ALIASES = {"gen_steps": ("--steps",)}  # extra flags for a config field


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    types = {f.name: f.type for f in fields(RunConfig)}
    defaults = RunConfig()
    for name, help_text in _OPTIONS:
        kind = {"int": int, "float": float}.get(str(types[name]), str)
        default = getattr(defaults, name)
        if name == "extra_stop_words":
            default = ",".join(default) or "none"
        parser.add_argument("--" + name.replace("_", "-"), *_ALIASES.get(name, ()), dest=name,
                            type=kind, default=None,
                            help=f"{help_text} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffubias", description="DiffuBias: find and fix spurious bias in an "
        "image dataset.", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    helps = {"run": "every stage: detect, caption, filter, generate, debias, gradcam",
             "detect": "stages 1-3: biased model, scores, top-K candidates (any dataset)",
             "caption": "stage 4 on an existing run", "filter": "stage 5 -> prompts.csv",
             "generate": "stage 6 from prompts.csv", "debias": "stages 7-8: train and evaluate",
             "gradcam": "stage 9: Grad-CAM before/after"}
    for command in ("run", "detect", *STAGES[1:]):
        p = sub.add_parser(command, help=helps[command], description=helps[command],
                           epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--out", required=True, type=Path, help="run folder")
        _add_config_options(p)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    out = {name: getattr(args, name) for name, _ in _OPTIONS if getattr(args, name) is not None}
    if "extra_stop_words" in out:
        out["extra_stop_words"] = tuple(w.strip() for w in out["extra_stop_words"].split(",")
                                        if w.strip())
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    try:
        if args.command in ("run", "detect"):
            run = Run.create(args.out, RunConfig().with_overrides(**_overrides(args)), log)
            stages = STAGES if args.command == "run" else ("detect",)
        else:
            run = Run.open(args.out, log)
            if _overrides(args):
                run = Run.create(args.out, run.config.with_overrides(**_overrides(args)), log)
            stages = (args.command,)
        run_stages(run, stages)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {run.report_path}")
    return 0
