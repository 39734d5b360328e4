"""sweeps/: the job layout, argument handling and the scripts end to end on the local launcher."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "sweeps"
_spec = importlib.util.spec_from_file_location("dataflex_sweep", SWEEPS / "sweep.py")
sweep_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep_module)
Sweep, SweepError = sweep_module.Sweep, sweep_module.SweepError

# small enough for seconds per job on the tiny model; the eval is tiny but real
SHRINK = [
    "model=tiny",
    "logger=jsonl",
    "data.max_samples=16",
    "data.cutoff_len=64",
    "trainer.max_steps=4",
    "trainer.save_steps=2",
    "trainer.per_device_train_batch_size=2",
    "eval.max_samples=2",
    "eval.batch_size=2",
    "eval.max_new_tokens=2",
    "eval.block_size=32",
]


def mixers(user, methods=("none", "odm", "not_a_mixer_yet")):
    return Sweep("compare_mixers", "mixer", list(methods), ["data=offline_domains", "trainer=pt_full"], "1,2", user)


def test_one_directory_per_arm_and_seed_from_the_swept_overrides(tmp_path):
    sweep = mixers(["local", "model=tiny", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert sweep.skipped == ["not_a_mixer_yet"] and sweep.methods == ["none", "odm"]
    jobs = sweep.jobs()
    assert [j["dir"] for j in jobs] == [
        "mixer=none/seed=1",
        "mixer=none/seed=2",
        "mixer=odm/seed=1",
        "mixer=odm/seed=2",
    ]
    assert sweep.sweep_dir == (tmp_path / "s").resolve()
    excluded = sweep.exclude_keys()
    assert {"seed", "model", "data", "trainer", "logger", "logger.group"} <= set(excluded) and "mixer" not in excluded
    command = sweep.command()
    assert "hydra/launcher=local" in command and f"hydra.sweep.dir={tmp_path / 's'}" in command
    assert "++logger.group=compare_mixers" in command and "logger=wandb" in command  # W&B group = the sweep
    assert any(c.startswith("hydra.sweeper.max_batch_size=") for c in command)
    assert 'run_name="${hydra:job.override_dirname},seed=${seed}"' in command  # W&B run name = the overrides


def test_user_overrides_replace_methods_and_seeds_and_add_arms(tmp_path):
    sweep = mixers(
        [
            "slurm",
            "mixer=odm",
            "seed=7",
            "trainer.learning_rate=0.1,0.2",
            "logger=jsonl",
            f"paths.output_root={tmp_path}",
            "run_name=mine",
        ]
    )
    assert sweep.methods is None and sweep.args.launcher == "slurm"
    assert [j["dir"] for j in sweep.jobs()] == [
        "mixer=odm,trainer.learning_rate=0.1/seed=7",
        "mixer=odm,trainer.learning_rate=0.2/seed=7",
    ]
    assert sweep.sweep_dir == (tmp_path / "sweeps" / "compare_mixers").resolve()
    command = sweep.command()
    assert "logger=wandb" not in command and "hydra/launcher=slurm" in command
    assert [c for c in command if c.startswith("run_name=")] == ["run_name=mine"]
    assert not any("max_batch_size" in c for c in command)  # SLURM bounds parallelism itself (array_parallelism)


@pytest.mark.parametrize(
    "args, message",
    [
        (["slurmm"], "unknown launcher 'slurmm'"),
        (["local", "--bogus"], "unknown option --bogus"),
        (["local", "--parallel", "0"], "--parallel takes a number of jobs >= 1"),
        (["local", "model=tiny", "oops"], "'oops' is neither a launcher nor an override"),
    ],
)
def test_bad_arguments_are_one_clear_error(args, message):
    with pytest.raises(SweepError, match=message):
        mixers(args)


def test_slurm_without_sbatch_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SweepError, match="needs sbatch on PATH.*make slurm-up"):
        mixers(["slurm", "model=tiny"]).run()


def test_no_available_method_names_the_options():
    with pytest.raises(SweepError, match="available: .*odm"):
        mixers(["local"], methods=("nope",))


def test_a_key_inside_the_swept_group_needs_plus_plus(tmp_path):
    sweep = mixers(["local", "mixer=random,odm", "mixer.update_every=2", f"hydra.sweep.dir={tmp_path}"])
    with pytest.raises(SweepError, match=r"write mixer.update_every=2 as \+\+mixer.update_every=2"):
        sweep.validate(sweep.jobs())


def _script(name, *args, cwd):
    env = {**os.environ, "DATAFLEX_PYTHON": sys.executable}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(SWEEPS / name), *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_dry_run_prints_the_jobs_and_launches_nothing(tmp_path):
    result = _script("compare_weighters.sh", "--dry-run", "model=tiny", "seed=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "weighter=none/seed=3" in result.stdout and "dry run: nothing launched" in result.stdout
    assert "dataflex-run --multirun" in result.stdout
    assert not (tmp_path / "outputs").exists()


def _finished(sweep_dir: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(sweep_dir)) for p in sweep_dir.glob("*/*/metrics.json"))


@pytest.mark.slow
def test_compare_mixers_local_end_to_end_with_report_and_resume(tmp_path):
    sweep_dir = tmp_path / "mixers"
    args = [
        "local",
        "--parallel",
        "2",
        "mixer=random,odm",
        "seed=1",
        *SHRINK,
        "++mixer.update_every=2",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    result = _script("compare_mixers.sh", *args, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _finished(sweep_dir) == ["mixer=odm/seed=1", "mixer=random/seed=1"]
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert [j["dir"] for j in manifest["jobs"]] == _finished(sweep_dir)[::-1]  # Hydra's order: random, odm
    assert manifest["commit"] and "compare_mixers.sh" in manifest["command"] and manifest["launcher"] == "local"
    report = (sweep_dir / "report.md").read_text()
    assert "| mixer=random" in report.replace("**", "") and "| mixer=odm" in report.replace("**", "") and "★" in report
    assert (sweep_dir / "report_proportions.png").is_file() and (sweep_dir / "report_loss.png").is_file()
    config = (sweep_dir / "mixer=odm" / "seed=1" / ".hydra" / "config.yaml").read_text()
    assert "group: compare_mixers" in config  # the W&B group, whatever the logger
    before = json.loads((sweep_dir / "mixer=odm" / "seed=1" / "metrics.json").read_text())
    assert before["run_name"] == "mixer=odm,seed=1"  # the tracker's run name: the job's overrides

    # the same command again lands in the same directories; a finished job trains and evaluates
    # nothing and keeps its numbers (an unfinished one would resume from its checkpoint)
    result = _script("compare_mixers.sh", *args, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _finished(sweep_dir) == ["mixer=odm/seed=1", "mixer=random/seed=1"]
    printed = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.out"))  # the jobs' stdout
    for arm in ("mixer=odm", "mixer=random"):
        assert f"run already finished: {sweep_dir}/{arm}/seed=1/metrics.json" in printed
    after = json.loads((sweep_dir / "mixer=odm" / "seed=1" / "metrics.json").read_text())
    assert after == before
    assert len(json.loads((sweep_dir / "manifest.json").read_text())["earlier_launches"]) == 1


@pytest.mark.slow
def test_compare_selectors_local_end_to_end(tmp_path):
    sweep_dir = tmp_path / "selectors"
    result = _script(
        "compare_selectors.sh",
        "local",
        "--parallel",
        "2",
        "selector=random,loss",
        "seed=1",
        *SHRINK,
        "++selector.budget=8",
        "++selector.warmup_steps=1",
        "++selector.update_every=1",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _finished(sweep_dir) == ["selector=loss/seed=1", "selector=random/seed=1"]
    assert "| arm | method | seeds |" in result.stdout  # dataflex-report printed the table
    assert (sweep_dir / "report_selection_overlap.png").is_file()
    records = [
        json.loads(line) for line in (sweep_dir / "selector=loss" / "seed=1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert sum(1 for r in records if "selector/overlap" in r) == 3  # rounds at steps 1..3 (none at 4 = max_steps)


@pytest.mark.parametrize(
    "name", ["odm_qwen2_5_1_5b_slimpajama", "doremi_qwen2_5_1_5b_slimpajama", "odm_qwen2_5_0_5b_pile"]
)
def test_paper_experiments_compose_and_their_components_build(name):
    """Every shipped paper setting composes, and its mixer accepts its keys (no model is loaded)."""
    from support.config import compose_config

    from dataflex.config import to_dict
    from dataflex.train.build import build_component

    cfg = compose_config([f"experiment={name}"], tiny=False)
    assert cfg.model.name.startswith("qwen2_5") and cfg.trainer.stage == "pt" and cfg.trainer.bf16 is True
    assert cfg.trainer.save_steps <= 500  # a requeued job loses at most one save interval
    assert cfg.mixer.name == name.split("_", 1)[0]
    if cfg.mixer.name == "odm":
        assert build_component("mixer", to_dict(cfg)["mixer"]).schedule.update_every == 1


def test_less_mistral7b_composes_with_the_papers_recipe():
    """The LESS paper setting: Mistral-7B LoRA r=128 on Tulu v2, offline LESS at 5% with d=8192."""
    from support.config import compose_config

    from dataflex.cli.less_offline import recipe_settings
    from dataflex.config import to_dict
    from dataflex.train.build import build_component

    cfg = compose_config(["experiment=less_mistral7b"], tiny=False)
    assert cfg.model.name == "mistral7b" and cfg.data.name == "tulu_v2"
    assert (cfg.trainer.finetuning_type, cfg.trainer.lora_rank, cfg.trainer.lora_alpha) == ("lora", 128, 512)
    assert cfg.trainer.per_device_train_batch_size * cfg.trainer.gradient_accumulation_steps == 128
    assert recipe_settings(to_dict(cfg)) == {"warmup_fraction": 0.05, "warmup_epochs": 4, "train_epochs": 4}
    selector = build_component("selector", to_dict(cfg)["selector"])
    assert type(selector).__name__ == "LessOfflineSelector" and selector.proj_dim == 8192
