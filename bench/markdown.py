"""Writes one benchmark's section of docs/BENCHMARKS.md, leaving the other sections alone.

Each benchmark owns the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nEvery number here was written by a script in `bench/`; the command is "
          "given with each section. Ratios are measured side by side in one run.\n")


def machine_line() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=BENCHMARKS_MD.parent).stdout.strip() or "unknown"
    return (f"commit `{commit}`, {platform.machine()} with {os.cpu_count()} cores, "
            f"Python {platform.python_version()}")


def write_section(name: str, body: str) -> Path:
    BENCHMARKS_MD.parent.mkdir(exist_ok=True)
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->",
                         re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip() + "\n\n" + block + "\n")
    tmp = BENCHMARKS_MD.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, BENCHMARKS_MD)
    return BENCHMARKS_MD
