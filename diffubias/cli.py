"""Command line: `diffubias <command>` (installed) or `python -m diffubias <command>`.

`run` does every stage; `detect` only stages 1-3 (works on any dataset); the other commands run
one stage on an existing run folder, e.g. after editing its prompts.csv, and `report` redraws
report.html from it. Options given to a single-stage command override the run's saved config for
that stage and later ones. Every command's `--help` ends with examples and the docs page that
explains it; an error names the docs section that helps fix it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from diffubias.baselines import baseline_names
from diffubias.config import ARCHITECTURES, BIASED_SELECTIONS, CAM_METHODS, RANKERS, RunConfig
from diffubias.pipeline import STAGES, run_stages
from diffubias.run_folder import Run
from diffubias.run_folder_report import REPORT_HTML

DOCS = "docs/guide"  # in the repository; tests/test_docs.py checks every page and anchor below

# per command: (one-line help, examples with {prog} for the program name, docs section)
COMMANDS = {
    "run": (
        "every stage: detect, caption, filter, generate, debias, rescore, gradcam, report",
        """\
  {prog} run --dataset builtin:colored-digits --conflict-ratio 0.01 --seed 0 --out runs/cd
  {prog} run --dataset path/to/folder_or.zip --out runs/mine --captioner blip --generator sd15 \\
      --steps 25 --images-per-prompt 4
  {prog} run --dataset builtin:shape-scenes --out runs/ss --device cpu --debias-epochs 4""",
        "user-guide.md#the-command-line"),
    "detect": (
        "stages 1-3: biased model, scores, top-K candidates (any dataset)",
        """\
  {prog} detect --dataset path/to/folder_or.zip --out runs/mine
  {prog} detect --dataset path/to/data --out runs/mine --top-k 100 --biased-epochs 5 --seed 1
  {prog} detect --dataset path/to/data --out runs/mine --ranker committee --committee-size 5""",
        "dataset-format.md"),
    "caption": (
        "stage 4 on an existing run: captions of the candidates -> captions.csv",
        """\
  {prog} caption --out runs/mine --captioner blip --captions-per-image 3
  {prog} caption --out runs/mine --captioner llava-llama3 \\
      --caption-instruction "Describe the background and the main object in one sentence."
  {prog} caption --out runs/mine --captioner path/to/saved_blip_folder""",
        "models.md#captioners"),
    "filter": (
        "stage 5: text filter -> prompts.csv (edit its keep/text columns, then generate)",
        """\
  {prog} filter --out runs/mine
  {prog} filter --out runs/mine --top-f 20 --extra-stop-words photo,picture""",
        "user-guide.md#review-and-edit-the-prompts"),
    "generate": (
        "stage 6: images from the kept prompts of prompts.csv -> generated/",
        """\
  {prog} generate --out runs/mine --generator sd15 --steps 25 --images-per-prompt 4
  {prog} generate --out runs/mine --generator sd35 --steps 28 --guidance-scale 3.5 --offload model
  accelerate launch --multi_gpu --num_processes 4 -m diffubias generate --out runs/mine""",
        "models.md#diffusion-models"),
    "debias": (
        "stages 7-8: train the vanilla and debiased models, test accuracies",
        """\
  {prog} debias --out runs/mine --debias-epochs 12
  {prog} debias --out runs/mine --baselines all""",
        "metrics.md#accuracy-of-the-models"),
    "rescore": (
        "stage 8b: what the debiased model still gets wrong -> remaining.json, "
        "next_candidates.csv",
        """\
  {prog} rescore --out runs/mine""",
        "user-guide.md#the-closed-loop"),
    "gradcam": (
        "stage 9: Grad-CAM of the vanilla (or biased) vs the debiased model -> gradcam.png",
        """\
  {prog} gradcam --out runs/mine --cam-method gradcam++ --cam-samples 200""",
        "metrics.md#grad-cam-object-mass"),
    "report": (
        "report.html from an existing run: the app's self-contained report (opens offline)",
        """\
  {prog} report --out runs/mine""",
        "user-guide.md#the-report-of-a-run"),
}
NO_CONFIG_OPTIONS = ("report",)  # commands that only read a run folder: nothing to override

# an error message naming one of these words is explained by that section; first match wins
_ERROR_DOCS = (
    (("Hugging Face", "hub id", "save_pretrained", "HF_HUB_OFFLINE", "chat template",
      "not a BLIP"), "models.md#offline-use-with-a-pre-filled-cache"),
    (("oracle renderer", "builtin-ldm", "builtin-blip", "pretrained on the built-in"),
     "models.md#diffusion-models"),
    (("no captions", "model captioner"), "models.md#captioners"),
    (("CUDA", "cuda", "GPU", "offload"), "gpus.md"),
    (("not a run folder", "stage first"), "user-guide.md#the-command-line"),
    (("prompts.csv", "keep at least one prompt"), "user-guide.md#review-and-edit-the-prompts"),
    (("metadata.csv", "dataset", "split", "label", "zip", "mask", "skipped", "conflict_ratio"),
     "dataset-format.md"),
)


def docs_section(command: str, message: str) -> str:
    """The docs page (and anchor) that explains an error of `command` with this message."""
    for words, section in _ERROR_DOCS:
        if any(word in message for word in words):
            return f"{DOCS}/{section}"
    return f"{DOCS}/{COMMANDS[command][2]}"


def _epilog(command: str | None, prog: str) -> str:
    if command is None:
        examples = "\n".join(COMMANDS[c][1].format(prog=prog).splitlines()[0] for c in COMMANDS)
        return (f"examples (`{prog} <command> --help` for each command's options):\n{examples}\n"
                f"\ndocs: {DOCS}/README.md (start with {DOCS}/user-guide.md)")
    _, examples, section = COMMANDS[command]
    return f"examples:\n{examples.format(prog=prog)}\n\ndocs: {DOCS}/{section}"


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors (unknown option, missing --out) also name the docs."""

    docs = f"{DOCS}/README.md"

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n"
                     f"see `{self.prog} --help` for the options and examples, and {self.docs}\n")


# (config field, help); the flag is the field name with dashes
_OPTIONS = (
    ("dataset", ("builtin:colored-digits, builtin:shape-scenes, their variants (colour "
                 "severities builtin:colored-digits-sigma0.2, -sigma0.1, -sigma0.05, -sigma0.02, "
                 "-sigma0.005, -sigma0.002; builtin:shape-scenes-subtle; see "
                 "dataset-format.md), a folder or a .zip")),
    ("conflict_ratio", "built-ins: share of bias-conflicting train samples (0.005/0.01/0.02/0.05)"),
    ("seed", "seed for data, initialisation, order and generation"),
    ("cache_dir", "cache for built-in datasets and extracted zips (default ~/.cache/diffubias)"),
    ("device", "auto, cpu, cuda, cuda:1, ..."),
    ("image_size", "train/eval side in px (0: the dataset's own, capped at 224)"),
    ("arch", ", ".join(ARCHITECTURES)),
    ("width", "small CNN width"),
    ("init_weights", "local ResNet-18 weights (safetensors or state dict) to start from"),
    ("batch_size", "training batch size"),
    ("lr", "learning rate (Adam)"),
    ("ranker", ("what ranks the training samples: " + ", ".join(RANKERS) + " (gce: the "
                "method's GCE biased model; erm-early: plain CE stopped early, JTT's "
                "identification model; committee: BiasEnsemble's bias-amplified model, trained "
                "without the samples a committee of GCE models does not fit)")),
    ("biased_epochs", "epochs of the biased model (of each committee member too)"),
    ("biased_width", ("small CNN: channels of the biased model's first stage (narrow: room for "
                      "the shortcut, little for the classes)")),
    ("gce_q", "GCE q in (0, 1]"),
    ("biased_selection", ("which epoch of the biased model scores: " + ", ".join(BIASED_SELECTIONS)
                          + " (train-valid-gap: the one that fits train but generalises worst "
                          "to the validation split; no bias label is read)")),
    ("committee_size", "models in the committee ranker's committee"),
    ("top_k", "candidates per class: a count >= 1, or a fraction in (0, 1) of the class"),
    ("captioner", ("caption backend: builtin-blip (the small BLIP pretrained here for the built-in "
                   "datasets, in models/), metadata (the dataset's own captions; on the built-in "
                   "datasets an ORACLE written from the true bias attribute: an upper bound), or a "
                   "BLIP / image-text-to-text VLM by hub id, local folder or short name (blip, "
                   "blip-base, llava, llava-llama3)")),
    ("captions_per_image", "captions per candidate"),
    ("top_f", "text filter: number of top words (0: 2 x classes)"),
    ("extra_stop_words", "text filter: extra stop words, comma-separated"),
    ("prompt_template", "a prompt that does not name its class gets it through this template "
                        "before generation, with {caption} and {class} (empty: off)"),
    ("class_synonyms", "other words that name a class, e.g. 'three: 3, III; circle: ring'"),
    ("image_checks", "checks of every generated image (class in its caption, hard for the "
                     "biased model, not a copy of a training image): off, propose (findings in "
                     "manifest.csv) or drop (failing images left out of training)"),
    ("check_min_loss", "biased-model loss a generated image needs (0: the lowest loss among "
                       "its class's top-K candidates)"),
    ("check_max_hash_distance", "a generated image this many bits or fewer from a training "
                                "image's perceptual hash is a near-copy"),
    ("generator", ("generation backend: builtin-ldm (the small latent diffusion model pretrained "
                   "here for the built-in datasets, in models/; runs on a CPU), oracle-renderer "
                   "(the built-in datasets' own generator, which reads the sample's label: an "
                   "ORACLE, an upper bound, not a model), or a diffusers text-to-image pipeline "
                   "by hub id, local folder or short name (sd15, sdxl, sd35)")),
    ("images_per_prompt", "generated images per kept prompt"),
    ("max_images", "cap on generated images (0: none)"),
    ("debias_epochs", "epochs of the vanilla and debiased models"),
    ("baselines", ("baselines to train and report next to vanilla and DiffuBias, comma-separated: "
                   + ", ".join(baseline_names()) + ", or all")),
    ("cam_method", ", ".join(CAM_METHODS)),
    ("cam_before", "the model Grad-CAM compares the debiased one with: vanilla (trained on the "
                   "same data and schedule) or biased (the GCE model)"),
    ("cam_samples", "test samples whose Grad-CAM object mass is measured"),
    ("caption_instruction", "instruction given to a VLM captioner"),
    ("caption_batch_size", "images per captioning call"),
    ("caption_max_new_tokens", "longest caption, in tokens"),
    ("keywords_top_n", "bias keywords per class in report.json (0: skip keyword discovery)"),
    ("gen_steps", ("diffusion denoising steps (alias --steps), 0: auto (25 on Stable Diffusion, "
                   "15 on small models such as builtin-ldm)")),
    ("guidance_scale", "classifier-free guidance scale"),
    ("negative_prompt", "negative prompt for every image"),
    ("gen_batch_size", ("images per diffusion call, 0: auto (128 for small models such as "
                        "builtin-ldm, 8 for Stable Diffusion; halved on CUDA out-of-memory)")),
    ("gen_width", "generated width in px, a multiple of 8 (0: the model's default)"),
    ("gen_height", "generated height in px, a multiple of 8 (0: the model's default)"),
    ("model_dtype", ("captioner/diffusion dtype: auto (bf16/fp16 on CUDA, fp32 on CPU), fp16, "
                     "bf16, fp32")),
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
        if name in ("extra_stop_words", "baselines"):
            default = ",".join(default) or "none"
        parser.add_argument("--" + name.replace("_", "-"), *_ALIASES.get(name, ()), dest=name,
                            type=kind, default=None,
                            help=f"{help_text} (default: {default})")


def build_parser(prog: str = "diffubias") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog, description="DiffuBias: find and fix spurious bias in an image dataset.",
        epilog=_epilog(None, prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    assert set(COMMANDS) == {"run", "detect", *STAGES[1:]}, "every command needs help and docs"
    for command in COMMANDS:
        help_text = COMMANDS[command][0]
        p = sub.add_parser(command, help=help_text, description=help_text,
                           epilog=_epilog(command, prog),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.docs = f"{DOCS}/{COMMANDS[command][2]}"
        p.add_argument("--out", required=True, type=Path,
                       help="run folder (config.json, report.json and every artifact)")
        if command not in NO_CONFIG_OPTIONS:
            _add_config_options(p)
    return parser


def _overrides(args: argparse.Namespace) -> dict:
    out = {name: getattr(args, name) for name, _ in _OPTIONS
           if getattr(args, name, None) is not None}
    # comma-separated word lists go to RunConfig as typed; it splits and checks them
    if out.get("baselines", "").strip().lower() == "all":
        out["baselines"] = baseline_names()
    return out


def main(argv: list[str] | None = None, *, prog: str = "diffubias") -> int:
    args = build_parser(prog).parse_args(argv)

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
        print(f"error: {err}\nsee {docs_section(args.command, str(err))}", file=sys.stderr)
        return 2
    print(f"report: {run.report_path}")
    if "report" in stages:
        print(f"report: {run.out_dir / REPORT_HTML}")
    return 0
