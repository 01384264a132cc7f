"""`pip install .` gives a working install, and the three lists of dependencies agree.

One wheel is built from a copy of the source (the working tree stays clean), installed into a
folder with `pip --target`, and its two console scripts run from outside the repository, so they
import the installed copy: the CLI prints its help, the app prints its help, and the installed
storage package creates a database from its bundled migrations. Then pyproject.toml's pins must
be requirements.txt's, and the Dockerfile's base image must carry requirements.txt's torch.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "app.py"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("diffubias", "storage", "ui"):
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    # no build isolation: setuptools is already in the environment (torch needs it), so the
    # build needs no network
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
          str(source), "-w", str(tmp / "dist")])
    (built,) = (tmp / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
          str(target), str(wheel)])
    return target


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1",
            "GRADIO_ANALYTICS_ENABLED": "False"}


def _top_packages() -> set[str]:
    """The top-level packages pyproject.toml's package discovery includes."""
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.split(".")[0] for pattern in include}


def test_the_wheel_holds_the_packages_the_migrations_and_the_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "app.py" in names
    # every module of every package (subpackages too), wherever it lies in the tree
    expected = {p.relative_to(ROOT).as_posix() for top in _top_packages()
                for p in (ROOT / top).rglob("*.py")
                if "__pycache__" not in p.parts and "migrations" not in p.parts}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    migrations = {p.relative_to(ROOT).as_posix() for p in (ROOT / "storage/migrations").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts}
    assert migrations and migrations <= names, sorted(migrations - names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "diffubias = diffubias.cli:main" in text
    assert "diffubias-studio = ui.launch:main" in text
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)


def test_the_installed_commands_run_from_outside_the_repository(installed, tmp_path):
    env = _env(installed)
    cli = _run([str(installed / "bin" / "diffubias"), "--help"], cwd=tmp_path, env=env)
    assert cli.stdout.startswith("usage: diffubias ") and "docs/guide" in cli.stdout
    _run([str(installed / "bin" / "diffubias"), "generate", "--help"], cwd=tmp_path, env=env)
    app = _run([str(installed / "bin" / "diffubias-studio"), "--help"], cwd=tmp_path, env=env)
    assert "--workspace" in app.stdout
    # the installed copy is the one imported, and its migrations build a database
    probe = ("import app, diffubias, storage; from pathlib import Path; "
             "from storage import open_store; "
             f"assert all(Path(m.__file__).is_relative_to(Path(r'{installed}')) "
             "for m in (app, diffubias, storage)); "
             "store = open_store(Path('ws')); print(sorted(p.name for p in Path('ws').iterdir()))"
             )
    done = _run([sys.executable, "-c", probe], cwd=tmp_path, env=env)
    assert "diffubias.sqlite" in done.stdout


def _requirements() -> dict[str, str]:
    """requirements.txt as {name: full line}, comments dropped."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out[re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower()] = line.replace(" ", "")
    return out


def test_pyproject_pins_what_requirements_txt_pins():
    project = PYPROJECT["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    as_dict = {re.split(r"[=<>!~\[; ]", d, maxsplit=1)[0].lower(): d.replace(" ", "")
               for d in declared}
    assert as_dict == _requirements(), "pyproject.toml and requirements.txt disagree"
    test_only = {re.split(r"[=<>!~\[; ]", d, maxsplit=1)[0].lower()
                 for d in project["optional-dependencies"]["test"]}
    assert {"torch", "torchvision", "gradio"}.isdisjoint(test_only)


def test_the_docker_base_image_carries_the_pinned_torch():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    torch_pin = _requirements()["torch"].split("==")[1]
    assert base.startswith(f"pytorch/pytorch:{torch_pin}-cuda"), base
    # every importable part of the package is copied into the image
    for part in ("app.py", *_top_packages()):
        assert re.search(rf"^COPY .*\b{re.escape(part)}\b", dockerfile, re.MULTILINE), part
