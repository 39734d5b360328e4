"""Sweeps on a REAL one-node SLURM cluster (scripts/slurm.sh: munge + slurmctld + slurmd on localhost).

The session fixture starts the cluster (installing Debian's packages when missing and root) and
stops it afterwards if it started it; where it cannot start, every test here is skipped with the
reason. Both tests go through sweeps/compare_mixers.sh with hydra/launcher=slurm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataflex.train.components import Mixer

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SLURM_SH = REPO / "scripts" / "slurm.sh"
# the jobs import this module (its BlockingMixer) and the support package
TESTS = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]]
# on this cluster: no GPUs, one core and no memory request per job, short limits
CLUSTER = ["hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=null",
           "hydra.launcher.timeout_min=20", "hydra.launcher.signal_delay_s=30"]
SMALL = ["model=tiny", "logger=jsonl", "data.max_samples=16", "data.cutoff_len=64", "trainer.per_device_train_batch_size=2",
         "trainer.logging_steps=1", "eval.before=false", "eval.after=false"]


class BlockingMixer(Mixer):
    """Test-only mixer: uniform proportions; inside a SLURM job, attempt r (SLURM_RESTART_COUNT) stops
    at optimizer step ``at_steps[r]``, writes ``<marker>.<r>`` (the job id) and waits there until the
    test preempts the job. Outside SLURM (and on later attempts) it never blocks."""

    def __init__(self, marker: str, at_steps: list[int]):
        super().__init__(warmup_steps=0, update_every=1)
        self.marker, self.at_steps = marker, list(at_steps)

    def initial_proportions(self, ctx):
        return torch.full((ctx.sampler.num_domains,), 1.0 / ctx.sampler.num_domains)

    def update(self, ctx):
        attempt = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        if "SLURM_JOB_ID" in os.environ and attempt < len(self.at_steps) and ctx.global_step == self.at_steps[attempt]:
            Path(f"{self.marker}.{attempt}").write_text(os.environ["SLURM_JOB_ID"])
            time.sleep(600)  # the preemption kills or interrupts the job here
        return self.initial_proportions(ctx)


def _slurm_env() -> dict[str, str]:
    out = subprocess.run(["bash", str(SLURM_SH), "env"], capture_output=True, text=True, check=True).stdout
    env = dict(os.environ)
    for line in out.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value.replace("$PATH", os.environ.get("PATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*map(str, TESTS), env.get("PYTHONPATH")]))
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.fixture(scope="session")
def slurm_cluster():
    env = _slurm_env()
    already = subprocess.run(["bash", str(SLURM_SH), "status"], env=env).returncode == 0
    if not already:
        up = subprocess.run(["bash", str(SLURM_SH), "up"], capture_output=True, text=True, env=env, timeout=600)
        if up.returncode != 0:
            reason = (up.stderr.strip().splitlines() or ["scripts/slurm.sh up failed"])[-1]
            pytest.skip(f"no SLURM cluster: {reason}")
    yield env
    if not already:
        subprocess.run(["bash", str(SLURM_SH), "down"], env=env, timeout=120)


def sweep(env, *args, cwd):
    command = [str(REPO / "sweeps" / "compare_mixers.sh"), "slurm", "--no-report", *args]
    return subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def losses(run_dir: Path) -> list[float]:
    by_step = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            by_step[record["step"]] = record["train/loss"]
    return [by_step[s] for s in sorted(by_step)]


def test_two_job_sweep_through_the_slurm_launcher(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "sweep"
    process = sweep(slurm_cluster, "mixer=none", "seed=1,2", *SMALL, "trainer.max_steps=2", *CLUSTER,
                    f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    for seed in (1, 2):
        metrics = json.loads((sweep_dir / "mixer=none" / f"seed={seed}" / "metrics.json").read_text())
        assert metrics["global_step"] == 2 and metrics["final_train_loss"] > 0
    # both ran as SLURM jobs (submitit's sbatch files and logs under .submitit)
    assert len(list(sweep_dir.glob(".submitit/*/*_submission.sh"))) >= 1
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert manifest["launcher"] == "slurm" and [j["dir"] for j in manifest["jobs"]] == ["mixer=none/seed=1", "mixer=none/seed=2"]


def test_preempted_job_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(slurm_cluster, tmp_path):
    """One job preempted twice mid-training: at step 3 by `scontrol requeue` (SLURM kills and requeues
    it), at step 5 by the signal submitit listens for (USR2: submitit checkpoints the launcher's call
    and requeues the job itself). Each attempt resumes from the newest checkpoint (save_steps=2)."""
    from support.config import compose_config

    from dataflex.run import Run

    marker = tmp_path / "blocked"
    component = [f"+mixer._target_={__name__}.BlockingMixer", f"+mixer.marker={marker}", "+mixer.at_steps=[3,5]"]
    training = ["trainer.max_steps=6", "trainer.save_steps=2"]
    sweep_dir = tmp_path / "sweep"
    process = sweep(slurm_cluster, "mixer=none", "seed=1", *SMALL, *training, *component, *CLUSTER,
                    f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    for attempt, preempt in enumerate([["scontrol", "requeue"], ["scancel", "--signal=USR2"]]):
        blocked, deadline = Path(f"{marker}.{attempt}"), time.time() + 600
        while not blocked.exists():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, f"attempt {attempt} never reached its step"
            time.sleep(0.5)
        done = subprocess.run([*preempt, blocked.read_text().strip()], env=slurm_cluster, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]

    run_dir = sweep_dir / "mixer=none" / "seed=1"
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 6
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    for checkpoint in ("checkpoint-2", "checkpoint-4"):  # each later attempt resumed, none restarted
        assert f"resuming from {run_dir}/checkpoints/{checkpoint}" in logs
    assert "Caught signal SIGUSR2" in logs and "this job is preempted" in logs  # submitit's own requeue

    # the same run, uninterrupted, in this process (BlockingMixer only blocks inside a SLURM job)
    reference = tmp_path / "reference"
    overrides = [o for o in SMALL if not o.startswith("logger=")]
    shared = ["data=offline_domains", "trainer=pt_full", "++trainer.include_num_input_tokens_seen=non_padding"]  # the sweep's
    Run(compose_config([*shared, "seed=1", *overrides, *training, *component], tiny=False), reference).fit()
    assert losses(run_dir) == pytest.approx(losses(reference), abs=1e-6)
