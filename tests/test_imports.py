"""First imports from several threads (ui.imports): a concurrent circular import, planted in a
tiny package, fails without the lock and passes with it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# `base` imports `validation` before it defines clone(); `validation` imports `base` and calls
# its clone() later; `metrics` imports `validation` and calls it. Each order works on one thread.
# On two threads (one imports base, the other metrics) each holds the module lock the other
# needs; CPython breaks the deadlock by handing `validation` the half-run `base`, and `metrics`
# finds no clone: "partially initialized module 'racepkg.base' has no attribute 'clone'", the
# race the app met as "cannot import name 'clone' from partially initialized module
# 'sklearn.base'". The sleeps make the interleaving certain.
PACKAGE = {
    "__init__.py": "",
    "base.py": """
        import time
        time.sleep(0.3)
        from racepkg import validation
        time.sleep(0.5)
        def clone():
            return "clone"
    """,
    "validation.py": """
        import time
        time.sleep(0.6)
        from racepkg import base
        def check():
            return base.clone()
    """,
    "metrics.py": """
        from racepkg import validation
        validation.check()
    """,
}

# Two packages that import each other: one thread starts from each. Waiting on both sides would
# deadlock; the locks see the circle and leave it to CPython, which hands one side a
# half-initialised module (harmless here: only the module object is used) as it always has.
CIRCLE = {
    "circle_a/__init__.py": """
        import time
        time.sleep(0.3)
        import circle_b
        A = 1
    """,
    "circle_b/__init__.py": """
        import time
        time.sleep(0.3)
        import circle_a
        B = 1
    """,
}

SCRIPT = """
import importlib, json, sys, threading
sys.path.insert(0, sys.argv[1])
if sys.argv[2] == "serialised":
    from ui.imports import serialise_imports
    serialise_imports()
errors = []
def load(name):
    try:
        importlib.import_module(name) if name.endswith("base") else __import__(name)
    except Exception as error:
        errors.append(str(error))
names = sys.argv[3].split(",")
threads = [threading.Thread(target=load, args=(n,)) for n in names]
for t in threads:
    t.start()
for t in threads:
    t.join(30)
print(json.dumps({"errors": errors, "alive": any(t.is_alive() for t in threads)}))
"""


def _race(tmp_path: Path, mode: str, files: dict[str, str] | None = None,
          names: str = "racepkg.base,racepkg.metrics") -> dict:
    files = files or {f"racepkg/{name}": body for name, body in PACKAGE.items()}
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(body))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode, names], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_planted_race_fails_an_import_without_the_lock(tmp_path):
    result = _race(tmp_path, "plain")
    assert not result["alive"]
    assert any("partially initialized module 'racepkg.base'" in e for e in result["errors"]), \
        result


def test_serialised_imports_wait_for_the_whole_import(tmp_path):
    result = _race(tmp_path, "serialised")
    assert result == {"errors": [], "alive": False}


def test_packages_that_import_each_other_are_left_to_cpython_without_a_deadlock(tmp_path):
    start = time.monotonic()
    result = _race(tmp_path, "serialised", CIRCLE, "circle_a,circle_b")
    assert result == {"errors": [], "alive": False}
    assert time.monotonic() - start < 20  # no wait for the locks' time-out (120 s)


def test_loaded_modules_take_the_fast_path_and_fromlists_still_work():
    from ui import imports

    imports.serialise_imports()
    imports.serialise_imports()  # idempotent: the originals are kept once
    import importlib

    assert importlib.import_module("json") is json
    from os import path  # a fromlist over a loaded module
    assert path is sys.modules["os.path"]
    assert imports.loaded("json") and not imports.loaded("no_such_module_here")
