"""`python -m diffubias.zoo train ...`: trains into a folder with a model card, resumes instead of
retraining, and refuses bad arguments with argparse's message."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffubias.zoo import cli

ROOT = Path(__file__).resolve().parents[1]


def test_train_judge_writes_weights_card_and_checkpoint(tmp_path, one_torch_thread, capsys):
    out = tmp_path / "judge"
    args = ["train", "judge", "--domain", "colored-digits", "--out", str(out), "--steps", "3",
            "--checkpoint-every", "2", "--no-progress"]
    assert cli.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"README.md", "judge.safetensors", "checkpoint"}
    card = (out / "README.md").read_text()
    for section in ("## Training data", "## Measured quality", "- steps: 3", "## Retrain",
                    f"train judge --domain colored-digits --out {out} --steps 3 --seed 0"):
        assert section in card
    written = load_file(out / "judge.safetensors")
    assert cli.main(args) == 0  # resumes at step 3: nothing left to train, same weights
    again = load_file(out / "judge.safetensors")
    assert all(torch.equal(written[k], again[k]) for k in written)
    assert "judge quality: class" in capsys.readouterr().err


def test_trainers_are_importable_callables():
    import importlib

    for name, target in cli.TRAINERS.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize("args, message", [
    (["train", "painter", "--domain", "colored-digits", "--out", "x"], "invalid choice"),
    (["train", "judge", "--domain", "mnist", "--out", "x"], "invalid choice: 'mnist'"),
    (["train", "judge", "--domain", "colored-digits", "--out", "x", "--steps", "0"],
     "expected a positive integer"),
])
def test_bad_arguments_are_refused(args, message, capsys):
    with pytest.raises(SystemExit):
        cli.main(args)
    assert message in capsys.readouterr().err


def test_module_entry_point_prints_help():
    done = subprocess.run([sys.executable, "-m", "diffubias.zoo", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--checkpoint-every" in done.stdout


def test_documented_zoo_commands_parse():
    import re
    import shlex

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "models").glob("*/README.md"))]
    found = [(page, m) for page in pages if page.is_file()  # up to a redirection or backquote
             for m in re.findall(r"python -m diffubias\.zoo ([^`\n>&]+)",
                                 re.sub(r"\\\n\s*", " ", page.read_text()))  # join continuations
             if "<" not in m]  # placeholders such as `train <model>` are prose
    assert any(page.parts[-2:] == ("guide", "models.md") for page, _ in found)
    parser = cli.build_parser()
    for page, rest in found:
        args = shlex.split(rest)
        if "--help" not in args:
            parser.parse_args(args)
