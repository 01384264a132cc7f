"""`python -m diffubias.zoo train <model> --domain <built-in> --out DIR [--steps N] [--seed S]`.

Trains one zoo model for one built-in domain into DIR: checkpoints in DIR/checkpoint/ every
`--checkpoint-every` steps (the same command resumes after an interruption), then the final model
and its model card (DIR/README.md). `TRAINERS` maps each model name to its recipe, imported only
when asked for; a new model adds one entry. Knows: arguments. Does not know: any training detail.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from diffubias.builtin import BUILTIN_FAMILIES

# model name: "module:function"; the function takes (domain, out, *, steps, seed,
# checkpoint_every, show_progress, log) and returns the folder it wrote
TRAINERS = {
    "captioner": "diffubias.zoo.recipes:train_captioner_folder",
    "judge": "diffubias.zoo.recipes:train_judge_folder",
    "ldm": "diffubias.zoo.ldm_run:train_to_folder",
}
EXAMPLES = """\
examples:
  {prog} train captioner --domain colored-digits --out models/colored-digits-captioner
  {prog} train judge --domain shape-scenes --out runs/zoo/shape-scenes-judge --steps 1500
  nohup {prog} train captioner --domain shape-scenes --out runs/zoo/ss-cap > cap.log 2>&1 &

Interrupted? Run the same command again: it continues from DIR/checkpoint/last.safetensors.
With the same --steps the result equals an uninterrupted run's; another --steps continues with
the schedule of the new total. --steps at or below the checkpoint's step writes the model as it stands."""


def build_parser(prog: str = "python -m diffubias.zoo") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Pretrain the project's own small models (captioner, judge, ...) "
        "on a built-in domain's balanced corpus.", epilog=EXAMPLES.format(prog=prog),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train one model into a folder (resumable)",
                                epilog=EXAMPLES.format(prog=prog),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("model", choices=sorted(TRAINERS), help="which model to train")
    train.add_argument("--domain", required=True, choices=BUILTIN_FAMILIES,
                       help="the built-in dataset whose domain the model learns")
    train.add_argument("--out", required=True, type=Path,
                       help="folder for the model, its card and its checkpoint/")
    train.add_argument("--steps", type=_positive, default=None,
                       help="optimisation steps in all (default: the model's own)")
    train.add_argument("--seed", type=_non_negative, default=0,
                       help="seeds the corpus, the initial weights and the batch order")
    train.add_argument("--checkpoint-every", type=_positive, default=250, metavar="N",
                       help="write DIR/checkpoint/last.safetensors every N steps (default 250)")
    train.add_argument("--threads", type=_positive, default=None,
                       help="torch CPU threads (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m diffubias.zoo") -> int:
    args = build_parser(prog).parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    module, function = TRAINERS[args.model].split(":")
    train = getattr(importlib.import_module(module), function)
    try:
        out = train(args.domain, args.out, steps=args.steps, seed=args.seed,
                    checkpoint_every=args.checkpoint_every, show_progress=not args.no_progress,
                    log=_log)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    _log(f"wrote {out}")
    return 0


def _log(message: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(message, file=sys.stderr)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value
