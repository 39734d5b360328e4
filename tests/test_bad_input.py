"""The bad-input matrix (issue 8): every case fails before or at the start of training with ONE
line naming what is wrong and what to do, a non-zero exit, and no output a reader could take for a
finished run (no ``metrics.json``, no checkpoint).

Most cases run in-process through ``Run`` (seconds each); :func:`test_cli_exit_code_and_one_line`
checks, for a representative subset, what a user sees from ``dataflex-run``: exit code 2, one
``dataflex: error:`` line, no traceback.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import compose_config
from dataflex.config import ConfigError
from dataflex.run import Run

QUIET = ["eval.before=false", "eval.after=false", "trainer.max_steps=2"]
PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]


def local_domain(tmp_path: Path, name: str, text: str, formatting: str = "alpaca") -> list[str]:
    """Overrides that train on one local file ``name.jsonl`` holding ``text``."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text)
    return [f"data.domains=[{name}]", f"+data.registry.{name}.file_name={path}",
            f"+data.registry.{name}.formatting={formatting}"]


def refused(tmp_path: Path, overrides: list[str], pattern: str) -> str:
    """Run in-process; assert a one-line ConfigError matching ``pattern`` and no finished output."""
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as err:
        Run(compose_config([*QUIET, *overrides]), run_dir).fit()
    message = str(err.value)
    assert "\n" not in message, message
    assert re.search(pattern, message), message
    assert not (run_dir / "metrics.json").exists()
    assert not list((run_dir / "checkpoints").glob("checkpoint-*"))
    return message


GOOD_ROW = json.dumps({"instruction": "a", "input": "", "output": "b"})

CASES = {
    # components: names, keys, types, values
    "misspelled selector key": (["selector=loss", "+selector.budgt=8"], r"unknown key 'budgt'.*did you mean 'budget'"),
    "misspelled mixer key": ([*PT, "mixer=odm", "+mixer.alhpa=0.5"], r"unknown key 'alhpa'.*did you mean 'alpha'"),
    "wrong type": (["selector=loss", "selector.budget=lots"], r"budget must be an int count or a float fraction"),
    "budget larger than the pool": (["selector=loss", "selector.budget=100000"], r"asks for 100000 samples but the pool has only 256"),
    "budget zero": (["selector=random", "selector.budget=0"], r"select at least 1"),
    "budget fraction above one": (["selector=random", "selector.budget=1.5"], r"fraction must lie in \(0, 1\]"),
    "candidates below the budget": (["selector=loss", "selector.budget=32", "selector.candidates=16",
                                     "selector.warmup_steps=1", "selector.update_every=1"],
                                    r"selector=loss at step 1: candidates \(16\) must be at least the budget \(32\)"),
    "unknown loss rule": (["selector=loss", "selector.rule=median"], r"rule must be one of"),
    "negative proportions": ([*PT, "mixer=static", "mixer.proportions=[-1,1,1,1,1,1,1]"], r"negative|>= 0"),
    "proportions not matching the domains": ([*PT, "mixer=static", "mixer.proportions=[0.5,0.5]"], r"2 .*7 domains|7 domains.*2"),
    "odm alpha out of range": ([*PT, "mixer=odm", "mixer.alpha=1.5"], r"alpha must lie in \[0, 1\]"),
    "settings without a component": (["+weighter.strategy=linupper"], r"no weighter chosen"),
    # model and data
    "unknown model path": (["model.name_or_path=/nonexistent/model"], r"cannot load model '/nonexistent/model'"),
    "unregistered dataset": (["data.domains=[nosuchset]"], r"dataset 'nosuchset' is not registered"),
    "unknown trainer key": (["+trainer.learning_rat=0.1"], r"unknown LLaMA-Factory key\(s\) 'learning_rat'"),
    "stage mismatch": (["data=offline_domains"], r"pick a pt trainer \(e\.g\. trainer=pt_full\)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_in_one_line(tmp_path, case):
    overrides, pattern = CASES[case]
    refused(tmp_path, overrides, pattern)


FILE_CASES = {
    "missing dataset file": (None, r"file .*gone\.jsonl not found"),
    "corrupt JSON line": (GOOD_ROW + '\n{"instruction": "a", "input": ""\n', r"line 2 is not valid JSON"),
    "missing field": (json.dumps({"instruction": "a", "input": ""}) + "\n", r"line 1 has no field 'output'"),
    "empty domain": ("\n", r"holds no rows; an empty domain"),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_dataset_files_are_refused_naming_file_and_line(tmp_path, case):
    text, pattern = FILE_CASES[case]
    if text is None:
        overrides = ["data.domains=[gone]", f"+data.registry.gone.file_name={tmp_path / 'gone.jsonl'}"]
    else:
        overrides = local_domain(tmp_path, "bad", text)
    refused(tmp_path, overrides, pattern)


def test_zero_usable_samples_after_tokenisation(tmp_path):
    # every conversation starts with the assistant: LLaMA-Factory drops them all
    rows = json.dumps({"conversations": [{"from": "gpt", "value": "x"}]}) + "\n"
    refused(tmp_path, local_domain(tmp_path, "roles", rows, "sharegpt"), r"dataset 'roles' has no usable sample after tokenisation")


def test_output_dir_holding_another_run(tmp_path):
    Run(compose_config([*QUIET, "trainer.max_steps=1"]), tmp_path / "run").fit()
    with pytest.raises(ConfigError) as err:
        Run(compose_config([*QUIET, "trainer.max_steps=1", "seed=7"]), tmp_path / "run").fit()
    message = str(err.value)
    assert "holds another run" in message and "seed: 42 -> 7" in message and "\n" not in message


BIN = Path(sys.executable).parent


def dataflex_run(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(BIN / "dataflex-run"), "model=tiny", *QUIET, *args, f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["selector=loss", "selector.budget=100000"], "pool has only"),
        (["data.domains=[nosuchset]"], "nosuchset"),
        (["selector=loss", "+selector.budgt=8"], "budgt"),
    ],
    ids=["budget", "dataset", "key"],
)
def test_cli_exit_code_and_one_line(tmp_path, args, needle):
    result = dataflex_run(tmp_path, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and needle in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.parametrize("group", ["selector", "mixer", "weighter", "model"])
def test_unknown_group_option_lists_the_valid_ones(tmp_path, group):
    result = dataflex_run(tmp_path, f"{group}=bogus")
    assert result.returncode != 0
    assert f"{group}/bogus" in result.stderr and "Available options" in result.stderr
    assert "Traceback" not in result.stderr
