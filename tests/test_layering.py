"""The layering rule: diffubias imports no gradio/sqlalchemy; storage imports no torch/gradio."""

import subprocess
import sys

import pytest

FORBIDDEN = {
    "diffubias": ("gradio", "sqlalchemy"),
    "storage": ("torch", "gradio"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_forbidden_layers(package):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in (root / package).rglob("*.py")
                     if p.stem != "__main__" and "migrations" not in p.parts)
    imports = "; ".join(f"import {m}" for m in modules)
    code = (f"import sys; {imports}; "
            f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=root, check=True).stdout.split()
    bad = [m for m in FORBIDDEN[package] if m in loaded]
    assert not bad, f"{package} imports {bad}"
