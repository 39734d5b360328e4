"""The console scripts as a user types them: composed config, clear errors, non-zero exits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def run(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(BIN / "dataflex-run"), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_cfg_job_prints_the_complete_config_from_any_directory(tmp_path):
    result = run("--cfg", "job", "model=mistral7b", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "name_or_path: mistralai/Mistral-7B-v0.1" in out and "template: mistral" in out
    for group in ("model:", "data:", "trainer:", "selector:", "mixer:", "weighter:", "logger:", "eval:"):
        assert f"\n{group}" in f"\n{out}"


def test_unknown_selector_names_the_valid_options(tmp_path):
    result = run("selector=bogus", cwd=tmp_path)
    assert result.returncode != 0
    assert "selector/bogus" in result.stderr and "none" in result.stderr
    assert "Traceback" not in result.stderr


def test_misspelled_trainer_key_is_one_clear_line(tmp_path):
    result = run("model=tiny", "+trainer.learning_rat=0.1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and "learning_rat" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_stage_mismatch_says_which_trainer_to_pick(tmp_path):
    result = run("model=tiny", "data=offline_domains", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "trainer=pt_full" in result.stderr and "Traceback" not in result.stderr


def test_seed_multirun_through_the_local_launcher_gives_each_job_its_own_dir(tmp_path):
    result = run(
        "-m",
        "hydra/launcher=local",
        "seed=1,2",
        "model=tiny",
        "trainer.max_steps=2",
        "eval.before=false",
        "eval.after=false",
        "data.max_samples=16",
        f"paths.output_root={tmp_path}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    finished = sorted(p.parent.name for p in tmp_path.glob("multirun/*/*/metrics.json"))
    assert len(finished) == 2 and "seed=1" in finished[0] and "seed=2" in finished[1]


def test_run_log_keeps_the_runs_own_lines_and_its_error(tmp_path):
    """run.log in the run directory holds the [dataflex] lines of the run, and the one-line error of
    a refused one (issue 22: it was empty in every run)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    bin_ = Path(sys.executable).parent / "dataflex-run"
    ok = subprocess.run(
        [
            str(bin_),
            "model=tiny",
            "data.max_samples=16",
            "trainer.max_steps=1",
            "eval.before=false",
            "eval.after=false",
            f"hydra.run.dir={tmp_path / 'ok'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    log = (tmp_path / "ok" / "run.log").read_text()
    assert "[dataflex.run][INFO] - run " in log and "finished in" in log and "outputs: " in log, log
    bad = subprocess.run(
        [str(bin_), "model=tiny", "trainer.max_steps=0", f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert bad.returncode == 2
    assert "error: trainer.max_steps must be an integer >= 1" in (tmp_path / "bad" / "run.log").read_text()
