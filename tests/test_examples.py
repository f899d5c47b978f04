import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("descriptor", ["support", "features"])
def test_linear_example_is_within_20_percent_of_least_squares(descriptor):
    result = load_example("linear_tasks").run(descriptor)
    assert 0.0095 < result["lstsq_mse"] < 0.016  # the noise floor is 0.01
    assert result["ratio"] <= 1.2, result


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "hypermeta", "--version"], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "hypermeta 0.1.0"
