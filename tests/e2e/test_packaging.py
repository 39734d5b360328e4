"""The wheel ships the Hydra config tree: `dataflex-run` works from any directory after a
non-editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_non_editable_wheel_composes_configs_from_another_directory(tmp_path):
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path, ROOT], check=True)
    (wheel,) = tmp_path.glob("dataflex-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.startswith("dataflex/conf/") and n.endswith(".yaml")}
    in_tree = {
        f"dataflex/{p.relative_to(ROOT / 'dataflex').as_posix()}" for p in (ROOT / "dataflex/conf").rglob("*.yaml")
    }
    assert shipped == in_tree

    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import dataflex; print(dataflex.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert where.stdout.strip().startswith(str(site))  # the installed copy, not the checkout
    result = subprocess.run(
        [sys.executable, "-m", "dataflex.cli.run", "--cfg", "job", "model=mistral7b", "selector=none"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "name_or_path: mistralai/Mistral-7B-v0.1" in result.stdout
