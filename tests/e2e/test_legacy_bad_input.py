"""`dataflex-cli train` on broken legacy YAML (issue 22): one clear line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataflex.data.assets import asset_path

BIN = Path(sys.executable).parent


def base(tmp_path, **keys) -> dict:
    return {
        "model_name_or_path": str(asset_path("tiny")),
        "template": "chatml",
        "stage": "sft",
        "finetuning_type": "lora",
        "dataset": "offline_sft_facts",
        "dataset_dir": str(asset_path("tiny").parent.parent / "data"),
        "output_dir": str(tmp_path / "out"),
        "max_steps": 2,
        **keys,
    }


def cli(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [str(BIN / "dataflex-cli"), "train", *args], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )


CASES = {
    "tabs": (
        lambda tmp: "model_name_or_path: tiny\n\tdataset: x\n",
        r"is not valid YAML: found character '\t' that "
        "cannot start any token at line 2, column 1; YAML indents with spaces, not tabs",
    ),
    "bare_string": (lambda tmp: "just a string\n", "does not hold a mapping of keys (it holds str 'just a string')"),
    "list_learning_rate": (
        lambda tmp: yaml.safe_dump(base(tmp, learning_rate=[1, 2])),
        "learning_rate must be a number >= 0, got [1, 2]",
    ),
    "train_step_word": (
        lambda tmp: yaml.safe_dump(base(tmp, train_type="dynamic_select", component_name="loss", train_step="many")),
        "train_step must be an int (a number of optimizer steps), got 'many'",
    ),
    "latin1": (lambda tmp: "model_name_or_path: caf\xe9\n".encode("latin-1"), "is not UTF-8 text"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_broken_yaml_is_one_line(tmp_path, case):
    content, needle = CASES[case]
    path = tmp_path / "config.yaml"
    text = content(tmp_path)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    result = cli(tmp_path, str(path))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{tmp}"], "is a directory; give the training YAML file in it"),
        (["{tmp}/missing.yaml"], "no such file:"),
        ([], "dataflex-cli train needs a training YAML: dataflex-cli train path/to/config.yaml"),
    ],
)
def test_no_yaml_file_is_one_line(tmp_path, args, needle):
    result = cli(tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if line.startswith("dataflex: error:") and needle in line
    ]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine without a GPU")
@pytest.mark.parametrize("key", ["bf16", "fp16"])
def test_mixed_precision_without_a_gpu_is_one_line_before_the_model_loads(tmp_path, key):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(base(tmp_path, **{key: True})))
    result = cli(tmp_path, str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert errors == [
        f"dataflex: error: {key}: true needs a GPU and this machine has none; set {key}: false in the YAML or "
        f"add {key}=false to the dataflex-cli command (training then runs in float32 on the CPU)"
    ], result.stderr
    assert "Loading" not in result.stderr and not (tmp_path / "out").exists()  # no model loaded, nothing written
