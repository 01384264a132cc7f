"""Security: the app listens on loopback unless told otherwise (and warns when exposed without a
password), the file routes serve workspace files and nothing else (not the database, not a path
outside, not through a symlink or a `..`), and no model loading can run code from a file."""

from __future__ import annotations

import ast
import logging
import re
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest

import app
from storage import Workspace
from tests.ui_support import serve
from ui import launch
from ui.studio import Studio

REPO = Path(__file__).resolve().parent.parent
SOURCES = [REPO / "app.py", *sorted((REPO / "diffubias").rglob("*.py")),
           *sorted((REPO / "ui").rglob("*.py")), *sorted((REPO / "storage").rglob("*.py")),
           *sorted((REPO / "bench").rglob("*.py"))]
SECRET = "TOP-SECRET-CONTENT"


# -- where it listens ----------------------------------------------------------------------------


def test_it_listens_on_loopback_by_default():
    args = launch.parse_args([])
    studio = SimpleNamespace(store=SimpleNamespace(workspace=Workspace(Path("ws"))))
    assert app.launch_options(args, studio)["server_name"] == "127.0.0.1"
    assert launch.exposure_warning(args) is None


@pytest.mark.parametrize("argv, warned", [
    (["--host", "0.0.0.0"], True), (["--host", "::"], True), (["--host", "192.168.1.5"], True),
    (["--host", "myhost.example"], True), (["--host", "0.0.0.0", "--auth", "ann:pw"], False),
    (["--host", "127.0.0.2"], False), (["--host", "::1"], False),
    (["--host", "localhost"], False)])
def test_a_warning_when_exposed_without_a_password(argv, warned, monkeypatch):
    monkeypatch.delenv("DIFFUBIAS_AUTH", raising=False)
    warning = launch.exposure_warning(launch.parse_args(argv))
    assert (warning is not None) == warned
    if warned:
        assert "--auth" in warning


def test_main_logs_the_warning_before_it_opens_anything(monkeypatch, caplog, tmp_path):
    class Stop(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Stop

    monkeypatch.delenv("DIFFUBIAS_AUTH", raising=False)
    monkeypatch.setattr(app, "Studio", SimpleNamespace(open=refuse))
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        launch.main(["--host", "0.0.0.0", "--port", "0", "--workspace", str(tmp_path / "ws")])
    assert any("listening on 0.0.0.0" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


# -- what the file routes serve -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on a workspace holding one thumbnail, a symlink out of it, and a secret outside."""
    root = tmp_path_factory.mktemp("security")
    secret = root / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text(SECRET)
    studio = Studio.open(root / "workspace")
    workspace = studio.store.workspace.root
    thumbnail = workspace / "thumbnails" / "1" / "tile-112.webp"
    thumbnail.parent.mkdir(parents=True)
    thumbnail.write_bytes(b"RIFF\x00\x00\x00\x00WEBP")
    (workspace / "thumbnails" / "escape.txt").symlink_to(secret)
    (workspace / "reports" / "linked").parent.mkdir(parents=True)
    (workspace / "reports" / "linked").symlink_to(secret.parent, target_is_directory=True)
    server = serve(studio, launch.parse_args(["--workspace", str(workspace)]))
    yield SimpleNamespace(url=server.url, workspace=workspace, secret=secret,
                          thumbnail=thumbnail)
    server.close()
    studio.close()


def probes(s) -> dict[str, str]:
    """Name -> the part after /gradio_api/file= (already URL-encoded where it matters)."""
    ws, secret = s.workspace, s.secret
    up = "/".join([".."] * (len(ws.parts) + 2))
    return {
        "absolute system file": "/etc/passwd",
        "encoded absolute": quote("/etc/passwd", safe=""),
        "file in another folder": str(secret),
        "dot-dot out of the workspace": quote(f"{ws}/thumbnails/../../outside/secret.txt"),
        "encoded dot-dot": f"{ws}/thumbnails/%2e%2e/%2e%2e/outside/secret.txt",
        "dot-dot to the root": quote(f"{ws}/{up}/etc/passwd"),
        "relative to the working directory": "app.py",
        "symlinked file inside the workspace": f"{ws}/thumbnails/escape.txt",
        "symlinked folder inside the workspace": f"{ws}/reports/linked/secret.txt",
        "the database": f"{ws}/diffubias.sqlite",
        "the database journal": f"{ws}/diffubias.sqlite-wal",
        "the database, upper case": f"{ws}/DIFFUBIAS.sqlite",
        "a loopback URL": quote(s.url, safe=""),
        "a folder": f"{ws}/thumbnails",
        "backslashes": quote(f"{ws}\\..\\..\\outside\\secret.txt"),
        "null byte": quote(f"{ws}/thumbnails/1/tile-112.webp\x00.txt"),
    }


def test_file_routes_refuse_everything_outside_the_workspace(served):
    refused = {}
    for name, target in probes(served).items():
        for route in ("gradio_api/file=", "file="):
            response = httpx.get(f"{served.url}{route}{target}", timeout=30)
            refused[f"{route}{name}"] = response.status_code
            assert response.status_code in (400, 403, 404), (name, route, response.status_code)
            assert SECRET not in response.text and "root:" not in response.text
    print(f"\n{len(refused)} file-route probes refused")


def test_a_workspace_file_is_served(served):
    response = httpx.get(f"{served.url}gradio_api/file={served.thumbnail}", timeout=30)
    assert response.status_code == 200 and response.content.startswith(b"RIFF")


# -- no code runs from a weights file -----------------------------------------------------------


def calls(tree: ast.AST, dotted: str):
    owner, name = dotted.rsplit(".", 1)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == name and isinstance(node.func.value, ast.Name)
                and node.func.value.id == owner):
            yield node


def keyword(call: ast.Call, name: str):
    found = [k.value for k in call.keywords if k.arg == name]
    return found[0].value if found and isinstance(found[0], ast.Constant) else None


def test_no_source_loads_code_from_a_file():
    assert len(SOURCES) > 20
    problems = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        where = path.relative_to(REPO)
        if re.search(r"trust_remote_code\s*=\s*(True|1)\b", text):
            problems.append(f"{where}: trust_remote_code enabled")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and keyword(node, "trust_remote_code") not in (None,
                                                                                       False):
                problems.append(f"{where}:{node.lineno}: trust_remote_code")
        problems += [f"{where}:{c.lineno}: torch.load without weights_only=True"
                     for c in calls(tree, "torch.load") if keyword(c, "weights_only") is not True]
        problems += [f"{where}:{c.lineno}: torch.save (weights are safetensors)"
                     for c in calls(tree, "torch.save")]
        problems += [f"{where}:{c.lineno}: pickle.{name}" for name in ("load", "loads")
                     for c in calls(tree, f"pickle.{name}")]
        problems += [f"{where}:{c.lineno}: np.load(allow_pickle=True)"
                     for c in calls(tree, "np.load") if keyword(c, "allow_pickle") is True]
    assert problems == []


def test_the_classifier_weights_are_safetensors(tmp_path):
    from diffubias.models import build_classifier, load_classifier, save_classifier

    model = build_classifier(num_classes=2, image_size=8, width=4)
    path = tmp_path / "m.safetensors"
    save_classifier(model, path)
    header_length = int.from_bytes(path.read_bytes()[:8], "little")  # the safetensors layout
    assert path.read_bytes()[8:8 + header_length].startswith(b"{")
    assert load_classifier(path).spec == model.spec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # no temp file left
