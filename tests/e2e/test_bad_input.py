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
from support.config import compose_config

from dataflex.config import ConfigError
from dataflex.data.assets import asset_path
from dataflex.run import Run

QUIET = ["eval.before=false", "eval.after=false", "trainer.max_steps=2"]
PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]


def local_domain(tmp_path: Path, name: str, text: str, formatting: str = "alpaca") -> list[str]:
    """Overrides that train on one local file ``name.jsonl`` holding ``text``."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text(text)
    return [
        f"data.domains=[{name}]",
        f"+data.registry.{name}.file_name={path}",
        f"+data.registry.{name}.formatting={formatting}",
    ]


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
    "budget larger than the pool": (
        ["selector=loss", "selector.budget=100000", "selector.warmup_steps=1"],
        r"asks for 100000 samples but the pool has only 256",
    ),
    "budget zero": (["selector=random", "selector.budget=0"], r"select at least 1"),
    "budget fraction above one": (["selector=random", "selector.budget=1.5"], r"fraction must lie in \(0, 1\]"),
    "candidates below the budget": (
        [
            "selector=loss",
            "selector.budget=32",
            "selector.candidates=16",
            "selector.warmup_steps=1",
            "selector.update_every=1",
        ],
        # known from the config: refused at start (issue 22), no longer at step 1
        r"selector=loss: candidates \(16\) must be at least the budget \(32\)",
    ),
    "unknown loss rule": (["selector=loss", "selector.rule=median"], r"rule must be one of"),
    "negative proportions": ([*PT, "mixer=static", "mixer.proportions=[-1,1,1,1,1,1,1]"], r"negative|>= 0"),
    "proportions not matching the domains": (
        [*PT, "mixer=static", "mixer.proportions=[0.5,0.5]"],
        r"2 .*7 domains|7 domains.*2",
    ),
    "odm alpha out of range": ([*PT, "mixer=odm", "mixer.alpha=1.5"], r"alpha must lie in \[0, 1\]"),
    "settings without a component": (["+weighter.strategy=linupper"], r"no weighter chosen"),
    # model and data
    "unknown model path": (["model.name_or_path=/nonexistent/model"], r"cannot load model '/nonexistent/model'"),
    "unregistered dataset": (["data.domains=[nosuchset]"], r"dataset 'nosuchset' is not registered"),
    "unknown trainer key": (["+trainer.learning_rat=0.1"], r"unknown LLaMA-Factory key\(s\) 'learning_rat'"),
    "stage mismatch": (["data=offline_domains"], r"pick a pt trainer \(e\.g\. trainer=pt_full\)"),
    # added with the reliability matrix
    "selector needing a validation set without one": (
        [
            "+selector._target_=support.components.NeedsValidationSelector",
            "selector.name=needs_val",
            "data.validation=null",
        ],
        r"^selector=needs_val needs a target/validation set: set data\.validation=",
    ),
    "validation asked for at the start without one": (
        ["+selector._target_=support.components.LateValidationSelector", "data.validation=null"],
        r"needs a target/validation set: set data\.validation=",
    ),
    "proportions naming an unknown domain": (
        [*PT, "mixer=static", "mixer.proportions={offline_domains_cod: 1}"],
        r"'offline_domains_cod' is not a domain; the domains are",
    ),
    "proportions all zero": ([*PT, "mixer=static", "mixer.proportions=[0,0,0,0,0,0,0]"], r"all 0.*positive weight"),
    "cutoff leaving no response token": (
        ["data.cutoff_len=1"],
        r"no usable sample after tokenisation: no row keeps a response token within cutoff_len=1",
    ),
    "unknown nonfinite_loss policy": (["nonfinite_loss=ignore"], r"nonfinite_loss must be one of stop, skip"),
    "nonfinite_loss=skip under ZeRO-3": (
        ["trainer=deepspeed_z3", "nonfinite_loss=skip"],
        r"nonfinite_loss=skip is not supported with DeepSpeed ZeRO-3",
    ),
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
    refused(
        tmp_path,
        local_domain(tmp_path, "roles", rows, "sharegpt"),
        r"dataset 'roles' has no usable sample after tokenisation",
    )


def _conf_missing(*paths: str) -> list[str]:
    from support.config import CONF_DIR

    return [p for p in paths if not (CONF_DIR / p).is_file()]


def _tiny_dir() -> str:
    return str(asset_path("tiny"))


# Cases of components still being written: each runs once its config file exists.
GATED = {
    "doremi eta < 0": (
        ["mixer/doremi.yaml"],
        lambda: [*PT, "mixer=doremi", "mixer.eta=-1", f"mixer.reference_dir={_tiny_dir()}"],
        r"mixer=doremi: eta must be finite and >= 0",
    ),
    "doremi without its reference model": (
        ["mixer/doremi.yaml"],
        lambda: [*PT, "mixer=doremi"],
        r"needs the reference model of step 1: set mixer\.reference_dir=",
    ),
    "less without a validation set": (
        ["selector/less.yaml"],
        lambda: ["selector=less", "selector.warmup_steps=1", "selector.update_every=1", "data.validation=null"],
        r"selector=less.* needs a target/validation set: set data\.validation=",
    ),
    "loss weighter with a bad strategy": (
        ["weighter/loss.yaml"],
        lambda: ["weighter=loss", "weighter.strategy=median"],
        r"weighter=loss: .*strategy",
    ),
}


@pytest.mark.parametrize("case", list(GATED))
def test_bad_input_of_newer_components(tmp_path, case):
    needs, overrides, pattern = GATED[case]
    missing = _conf_missing(*needs)
    if missing:
        pytest.skip(f"dataflex/conf/{missing[0]} does not exist yet")
    refused(tmp_path, overrides(), pattern)


def test_output_dir_holding_foreign_checkpoints(tmp_path):
    """Checkpoints but no dataflex_config.yaml: refused, and nothing in it is deleted or resumed."""
    foreign = tmp_path / "run" / "checkpoints" / "checkpoint-5"
    foreign.mkdir(parents=True)
    (foreign / "trainer_state.json").write_text("{}")  # e.g. a plain LLaMA-Factory run's checkpoint
    with pytest.raises(ConfigError) as err:
        Run(compose_config(QUIET), tmp_path / "run").fit()
    message = str(err.value)
    assert re.search(r"holds checkpoints but no dataflex_config\.yaml .*use a new directory", message), message
    assert "\n" not in message and (foreign / "trainer_state.json").is_file()  # nothing deleted
    assert not (tmp_path / "run" / "dataflex_config.yaml").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_checkpoint_of_another_run_is_not_resumed(tmp_path):
    """A checkpoint copied in from another run (its run id differs) is refused, not trained on."""
    import shutil

    Run(compose_config([*QUIET, "trainer.max_steps=3", "seed=7"]), tmp_path / "other").fit()
    Run(compose_config([*QUIET, "trainer.max_steps=1", "trainer.save_steps=1"]), tmp_path / "run").fit()
    shutil.copytree(
        tmp_path / "other" / "checkpoints" / "checkpoint-3", tmp_path / "run" / "checkpoints" / "checkpoint-3"
    )
    (tmp_path / "run" / "metrics.json").unlink()
    with pytest.raises(ConfigError) as err:
        Run(compose_config([*QUIET, "trainer.max_steps=1", "trainer.save_steps=1"]), tmp_path / "run").fit()
    message = str(err.value)
    assert "checkpoint-3 belongs to another run" in message and "\n" not in message
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_legacy_yaml_with_an_unknown_key(tmp_path):
    import importlib.util

    if importlib.util.find_spec("dataflex.cli.legacy") is None:
        pytest.skip("dataflex/cli/legacy.py (dataflex-cli) does not exist yet")
    config = tmp_path / "legacy.yaml"
    config.write_text(
        "model_name_or_path: tiny\ndataset: offline_sft_definitions\nstage: sft\n"
        "finetuning_type: lora\nlearning_rat: 1.0e-3\nmax_steps: 2\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-m", "dataflex.cli.legacy", "train", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and "'learning_rat'" in errors[0] and "learning_rate" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


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
    return subprocess.run(
        [str(BIN / "dataflex-run"), "model=tiny", *QUIET, *args, f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["selector=loss", "selector.budget=100000", "selector.warmup_steps=1"], "pool has only"),
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


def test_cli_tokenized_pool_without_its_domain_column(tmp_path):
    """A tokenized pool (save_to_disk) lacking data.domain_column: one line, before torchrun starts its
    workers: the run directory holds only what Hydra writes (.hydra/, run.log) (issue 20)."""
    from datasets import Dataset

    pool = Dataset.from_dict({"input_ids": [[1, 2, 3]] * 4, "attention_mask": [[1, 1, 1]] * 4})
    pool.save_to_disk(str(tmp_path / "tok"))
    result = dataflex_run(
        tmp_path,
        "nproc=2",
        "data=slimpajama",
        "trainer=pt_full",
        "mixer=odm",
        "data.domains=null",
        f"data.tokenized_path={tmp_path / 'tok'}",
        "data.domain_column=domain",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and "the rows have no column domain (data.domain_column)" in errors[0], errors
    assert "input_ids, attention_mask" in errors[0] and "Traceback" not in result.stderr
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".hydra", "run.log"]


@pytest.mark.parametrize("group", ["selector", "mixer", "weighter", "model"])
def test_unknown_group_option_lists_the_valid_ones(tmp_path, group):
    result = dataflex_run(tmp_path, f"{group}=bogus")
    assert result.returncode != 0
    assert f"{group}/bogus" in result.stderr and "Available options" in result.stderr
    assert "Traceback" not in result.stderr


def test_traceback_only_when_asked_for(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [
            str(BIN / "dataflex-run"),
            "model=tiny",
            *QUIET,
            "selector=loss",
            "+selector.budgt=8",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr and "budgt" in result.stderr


def test_a_failed_start_does_not_claim_its_directory(tmp_path):
    """An attempt that wrote its config but no checkpoint or metrics (it failed before training)
    does not make the corrected command "another run"; its stale evaluation cache goes."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    Run(compose_config([*QUIET, "seed=7"]), run_dir)._check_run_dir()  # the failed attempt's claim
    (run_dir / "eval_before.json").write_text("{}")
    assert Run(compose_config(QUIET), run_dir)._check_run_dir() is None
    assert "seed: 42" in (run_dir / "dataflex_config.yaml").read_text()
    assert not (run_dir / "eval_before.json").exists()


def test_multi_process_launch_validates_once_before_torchrun(tmp_path):
    """With nproc=2 a bad value is one line from the launcher, not one traceback per worker."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dataflex-run"),
            "model=tiny",
            "nproc=2",
            "trainer.learning_rate=fast",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "launching" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert errors == ["dataflex: error: trainer.learning_rate must be a number >= 0, got 'fast'"], result.stderr[-2000:]


def test_ctrl_c_says_where_to_resume_without_a_traceback(tmp_path):
    """SIGINT after the first checkpoint: exit 130, one line naming the checkpoint, no traceback."""
    import signal
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            str(BIN / "dataflex-run"),
            "model=tiny",
            "data.max_samples=64",
            "trainer.max_steps=400",
            "trainer.save_steps=2",
            "trainer.per_device_train_batch_size=2",
            "eval.before=false",
            "eval.after=false",
            f"hydra.run.dir={run_dir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    deadline = time.time() + 300
    while not list((run_dir / "checkpoints").glob("checkpoint-*/dataflex_state.pt")) and time.time() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("dataflex: interrupted")]
    assert len(lines) == 1 and "checkpoints/checkpoint-" in lines[0] and "Rerun the same command" in lines[0], stderr
