"""The docs stay true to the code.

Every command in README.md and docs/**/*.md that runs the CLI or the app (`python -m diffubias`,
`diffubias`, `python app.py`, `diffubias-studio`, `accelerate launch -m diffubias`, `docker run`
of the image, `make run ARGS=...`) must parse with the current parsers, and its options must make
a valid RunConfig; every relative link and image must exist and every `#anchor` must name a
heading; the docs sections that the CLI's help and errors point to must exist; the metadata
scripts of the dataset pages must write a metadata.csv that loads. Commands are parsed, not run
(no training), so this stays fast.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffubias import cli
from diffubias.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
GUIDE = ROOT / "docs" / "guide"
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
IMAGE = "diffubias-studio"  # the Docker image name the docs build and run

_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


# -- finding the commands ----------------------------------------------------------------------

def _shell_commands(block: str) -> list[str]:
    """The command lines of a shell block: continuations joined, `&&`/`;` chains split."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        out += [part.strip() for part in re.split(r"&&|;", line) if part.strip()]
    return out


def doc_commands(path: Path) -> list[str]:
    """Shell commands of a Markdown file: fenced shell blocks, and inline code spans."""
    text = path.read_text(encoding="utf-8")
    commands = []
    for lang, body in _FENCE.findall(text):
        if lang in SHELL_FENCES:
            commands += _shell_commands(body)
    prose = _FENCE.sub("", text)
    commands += [span for span in _INLINE.findall(prose) if " " in span.strip()]
    return commands


def _after(tokens: list[str], *marker: str) -> list[str] | None:
    for i in range(len(tokens) - len(marker) + 1):
        if tuple(tokens[i:i + len(marker)]) == marker:
            return tokens[i + len(marker):]
    return None


def classify(command: str) -> tuple[str, list[str]] | None:
    """("cli" | "app", its arguments) for a command that runs the CLI or the app; else None."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError:
        return None
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):  # FOO=1 cmd ...
        tokens = tokens[1:]
    if not tokens:
        return None
    program, args = Path(tokens[0]).name, tokens[1:]
    if program in ("python", "python3"):
        if args[:2] == ["-m", "diffubias"]:
            return ("cli", args[2:]) if args[2:] else None
        if args and args[0] in ("app.py", "./app.py"):  # the repository's, not bench/app.py
            return "app", args[1:]
        return None
    if program == "diffubias":
        return ("cli", args) if args else None
    if program == "diffubias-studio":
        return "app", args
    if program == "accelerate" and args[:1] == ["launch"]:
        rest = _after(args, "-m", "diffubias")
        return ("cli", rest) if rest is not None else None
    if program == "docker" and args[:1] == ["run"] and IMAGE in args:
        options, rest = args[:args.index(IMAGE)], args[args.index(IMAGE) + 1:]
        entrypoint = _after(options, "--entrypoint")
        if entrypoint is None:
            return "app", rest
        if entrypoint[0] == "diffubias":
            return "cli", rest
        if entrypoint[0] == "accelerate":
            return classify(shlex.join(["accelerate", *rest]))
        return None
    if program == "make" and "run" in args:
        value = next((a.removeprefix("ARGS=") for a in args if a.startswith("ARGS=")), "")
        return "app", shlex.split(value)
    return None


def all_doc_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in DOC_FILES:
        for command in doc_commands(path):
            kind = classify(command)
            if kind is not None:
                found.append((f"{path.relative_to(ROOT)}: {command}", *kind))
    return found


def help_examples() -> list[tuple[str, str, list[str]]]:
    """The examples each CLI command's --help prints."""
    found = []
    for name, (_, examples, _) in cli.COMMANDS.items():
        for command in _shell_commands(examples.format(prog="diffubias")):
            kind = classify(command)
            assert kind is not None, f"`{name} --help` example is not a CLI command: {command}"
            found.append((f"`{name} --help`: {command}", *kind))
    return found


DOC_COMMANDS = all_doc_commands()
HELP_EXAMPLES = help_examples()


# -- checking that they parse ------------------------------------------------------------------

def check_cli_args(args: list[str], capsys) -> None:
    parser = cli.build_parser()
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(args)
        assert exit_info.value.code == 0
        capsys.readouterr()
        return
    try:
        namespace = parser.parse_args(args)
    except SystemExit:
        pytest.fail(f"does not parse: {capsys.readouterr().err.strip()}")
    RunConfig().with_overrides(**cli._overrides(namespace))  # option values are valid


def check_app_args(args: list[str], capsys) -> None:
    from ui import launch

    try:
        launch.parse_args(args)
    except SystemExit as exit_info:
        assert exit_info.code == 0, f"does not parse: {capsys.readouterr().err.strip()}"
    capsys.readouterr()


@pytest.mark.parametrize(("where", "kind", "args"), DOC_COMMANDS + HELP_EXAMPLES,
                         ids=[c[0] for c in DOC_COMMANDS + HELP_EXAMPLES])
def test_every_documented_command_parses(where, kind, args, capsys):
    if kind == "cli":
        check_cli_args(args, capsys)
    else:
        check_app_args(args, capsys)


def test_the_docs_show_every_command_and_way_to_run():
    text = [where for where, _, _ in DOC_COMMANDS]
    subcommands = {args[0] for _, kind, args in DOC_COMMANDS if kind == "cli" and args}
    assert subcommands >= {"run", "detect", "caption", "filter", "generate", "debias", "gradcam",
                           "report"}
    for form in ("python -m diffubias", "accelerate launch", "docker run", "python app.py",
                 "diffubias-studio --help", "make run"):
        assert any(form in where for where in text), f"no documented command uses {form!r}"


def test_the_command_finder_reads_every_form():
    assert classify("HF_HUB_OFFLINE=1 .venv/bin/python -m diffubias run --out r") == \
        ("cli", ["run", "--out", "r"])
    assert classify("docker run --gpus all --entrypoint diffubias -v a:/b diffubias-studio "
                    "detect --out r") == ("cli", ["detect", "--out", "r"])
    assert classify("docker run -p 7860:7860 diffubias-studio --auth a:b") == \
        ("app", ["--auth", "a:b"])
    assert classify("make run ARGS=\"--port 8080\"") == ("app", ["--port", "8080"])
    assert classify("python make_metadata.py pets") is None
    assert classify("python bench/app.py --quick") is None
    assert _shell_commands("a \\\n  --b c  # note\nd && e") == ["a  --b c  # note", "d", "e"]


def test_a_wrong_option_in_the_docs_would_fail(capsys):
    with pytest.raises(pytest.fail.Exception):
        check_cli_args(["run", "--out", "r", "--no-such-option", "1"], capsys)
    with pytest.raises(ValueError):
        check_cli_args(["run", "--out", "r", "--baselines", "nope"], capsys)
    with pytest.raises(AssertionError):
        check_app_args(["--no-such-option"], capsys)


def test_help_runs_for_the_cli_and_the_app():
    env_python = [sys.executable]
    for argv in (["-m", "diffubias", "--help"], ["-m", "diffubias", "generate", "--help"],
                 ["app.py", "--help"]):
        done = subprocess.run(env_python + argv, cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "usage:" in done.stdout


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_help_has_examples_and_a_docs_section(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    assert f"docs: {cli.DOCS}/" in out


# -- links, images and anchors -----------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}


def check_target(source: Path, target: str) -> None:
    """`target` (a path relative to `source`'s folder, maybe with #anchor) exists."""
    path_part, _, anchor = target.partition("#")
    path = (source.parent / path_part).resolve() if path_part else source
    assert path.exists(), f"{source.relative_to(ROOT)} links to missing {target}"
    if anchor and path.suffix == ".md":
        assert anchor in anchors(path), f"{source.relative_to(ROOT)}: no heading #{anchor} " \
            f"in {path.relative_to(ROOT)}"


@pytest.mark.parametrize("path", DOC_FILES, ids=[str(p.relative_to(ROOT)) for p in DOC_FILES])
def test_every_link_and_image_exists(path):
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    for target in _LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            check_target(path, target)


def test_the_guide_shows_every_screenshot():
    text = (GUIDE / "user-guide.md").read_text(encoding="utf-8")
    for png in sorted((ROOT / "docs" / "screenshots").glob("*.png")):
        assert f"../screenshots/{png.name}" in text


def test_the_docs_sections_the_cli_points_to_exist():
    sections = [section for _, _, section in cli.COMMANDS.values()]
    sections += [section for _, section in cli._ERROR_DOCS]
    for section in sections:
        check_target(GUIDE / "README.md", section)
    for source in (ROOT / "Dockerfile", ROOT / "diffubias" / "cli.py"):
        for target in re.findall(r"docs/guide/[\w./-]+(?:#[\w-]+)?", source.read_text()):
            check_target(ROOT / "README.md", target.rstrip("."))


def test_errors_name_the_docs_section(tmp_path, capsys):
    assert cli.main(["caption", "--out", str(tmp_path / "nothing")]) == 2
    assert "see docs/guide/user-guide.md#the-command-line" in capsys.readouterr().err
    assert cli.main(["detect", "--dataset", str(tmp_path / "missing"), "--out",
                     str(tmp_path / "run")]) == 2
    assert "see docs/guide/dataset-format.md" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["detect", "--dataset", "d"])  # no --out: argparse's usage error
    assert "see `diffubias detect --help` for the options and examples, and " \
        "docs/guide/dataset-format.md" in capsys.readouterr().err
    assert cli.docs_section("caption", "model 'x/y' is not in the Hugging Face cache") == \
        "docs/guide/models.md#offline-use-with-a-pre-filled-cache"
    assert cli.docs_section("generate", "something else") == "docs/guide/models.md#diffusion-models"


# -- the metadata scripts ----------------------------------------------------------------------

def python_block(page: str, marker: str) -> str:
    blocks = [body for lang, body in _FENCE.findall((GUIDE / page).read_text(encoding="utf-8"))
              if lang == "python" and marker in body]
    assert len(blocks) == 1, f"expected one python block with {marker!r} in {page}"
    return blocks[0]


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _run_script(tmp_path: Path, code: str, *args: str) -> None:
    script = tmp_path / "script.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_the_worked_example_script_writes_a_dataset_that_loads(tmp_path):
    from diffubias.dataset_sources import load_dataset

    root = tmp_path / "pets-photos"
    for split in ("train", "valid", "test"):
        for label, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            for bias in ("indoor", "outdoor"):
                for i in range(2):
                    _png(root / split / label / bias / f"{i}.jpg", colour)
    _run_script(tmp_path, python_block("dataset-format.md", "<split>/<label>/<bias>"), str(root))
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    assert ds.class_names == ("cat", "dog") and ds.bias_names == ("indoor", "outdoor")
    assert sorted(ds.split.tolist()).count("train") == 8 and not ds.skipped


def test_the_paper_layout_script_writes_a_dataset_that_loads(tmp_path):
    from diffubias.dataset_sources import load_dataset

    root = tmp_path / "cifar10c"
    n = 0
    for folder, pairs in (("1pct/align", [(0, 0), (1, 1)] * 3), ("1pct/conflict", [(0, 1)]),
                          ("5pct/align", [(0, 0)]), ("1pct/valid", [(0, 1), (1, 0)]),
                          ("test", [(0, 0), (0, 1), (1, 0), (1, 1)])):
        for label, bias in pairs:
            n += 1
            _png(root / folder / str(label) / f"{n}_{label}_{bias}.png", (label * 200, 0, 0))
    _run_script(tmp_path, python_block("paper-settings.md", "LfF/DFA layout"), str(root), "1pct")
    ds = load_dataset(root, cache_dir=tmp_path / "cache")
    splits = ds.split.tolist()
    assert (splits.count("train"), splits.count("valid"), splits.count("test")) == (7, 2, 4)
    assert not any(p.startswith("5pct/") for p in ds.paths)  # only the chosen ratio
    assert ds.class_names == ("0", "1") and ds.bias_names == ("0", "1")
