"""The layers of DESIGN.md hold: contracts in pyproject.toml, checked here so CI fails on a
broken layer, and at run time the server never imports the trainer or a baseline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    out = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import "
                          "lint_imports; sys.exit(lint_imports(no_cache=True))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and out.stdout.count("KEPT") == 3


def test_a_broken_layer_is_caught(tmp_path):
    # the check can fail: a core module that imports the trainer breaks the layers contract
    package = tmp_path / "src" / "hypermeta"
    shutil.copytree(ROOT / "src" / "hypermeta", package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (package / "spec.py").write_text((package / "spec.py").read_text()
                                     + "\nimport hypermeta.train  # noqa\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    code = ("import sys; sys.path.insert(0, 'src'); from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(no_cache=True))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": str(tmp_path / "src"),
                                                      "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0 and "hypermeta.spec -> hypermeta.train" in out.stdout


def test_the_server_and_the_core_never_import_the_trainer_or_baselines(tmp_path):
    code = """
import sys
import hypermeta, hypermeta.serve
from hypermeta import HyperModel, FunctionalTarget, MLP
core = ("hypermeta.train", "hypermeta.baselines", "hypermeta.runs", "hypermeta.config")
assert not [m for m in core if m in sys.modules and m != "hypermeta.runs"
            and m != "hypermeta.config"], sorted(sys.modules)
assert "hypermeta.train" not in sys.modules and "hypermeta.baselines" not in sys.modules
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
    light = subprocess.run([sys.executable, "-c", "import sys, hypermeta; print(sorted(m for m "
                            "in sys.modules if m.startswith('hypermeta.')))"],
                           capture_output=True, text=True, timeout=120)
    for module in ("train", "runs", "config", "baselines", "tasks", "serve", "cli"):
        assert f"'hypermeta.{module}'" not in light.stdout, light.stdout
