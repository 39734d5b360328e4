"""Sweeps on a REAL one-node SLURM cluster (scripts/slurm.sh: munge + slurmctld + slurmd on localhost).

The session fixture starts the cluster (installing Debian's packages when missing and root) and
stops it afterwards if it started it; where it cannot start, every test here is skipped with the
reason. The sweep tests go through sweeps/compare_mixers.sh with hydra/launcher=slurm; the multi-task
test runs one job as 2 SLURM tasks through dataflex-run's launcher keys.
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

from dataflex.train.components import Mixer, Scheduled

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SLURM_SH = REPO / "scripts" / "slurm.sh"
# the jobs import this module (its BlockingMixer) and the support package
TESTS = [Path(__file__).resolve().parent, Path(__file__).resolve().parents[1]]
# on this cluster: no GPUs, one core and no memory request per job, short limits
CLUSTER = [
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=null",
    "hydra.launcher.timeout_min=20",
    "hydra.launcher.signal_delay_s=30",
]
SMALL = [
    "model=tiny",
    "logger=jsonl",
    "data.max_samples=16",
    "data.cutoff_len=64",
    "trainer.per_device_train_batch_size=2",
    "trainer.logging_steps=1",
    "eval.before=false",
    "eval.after=false",
]


class BlockingMixer(Scheduled, Mixer):
    """Test-only mixer: uniform proportions; inside a SLURM job, attempt r (SLURM_RESTART_COUNT) stops
    at optimizer step ``at_steps[r]``, writes ``<marker>.<r>`` (the job id) and waits there until the
    test preempts the job. Outside SLURM (and on later attempts) it never blocks."""

    marker: str
    at_steps: list[int]
    update_every: int = 1

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
    process = sweep(
        slurm_cluster,
        "mixer=none",
        "seed=1,2",
        *SMALL,
        "trainer.max_steps=2",
        *CLUSTER,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-3000:]
    for seed in (1, 2):
        metrics = json.loads((sweep_dir / "mixer=none" / f"seed={seed}" / "metrics.json").read_text())
        assert metrics["global_step"] == 2 and metrics["final_train_loss"] > 0
    # both ran as SLURM jobs (submitit's sbatch files and logs under .submitit)
    assert len(list(sweep_dir.glob(".submitit/*/*_submission.sh"))) >= 1
    assert len(list(sweep_dir.glob(".submitit/*/*_result.pkl"))) == 2
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    assert manifest["launcher"] == "slurm" and [j["dir"] for j in manifest["jobs"]] == [
        "mixer=none/seed=1",
        "mixer=none/seed=2",
    ]


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
    process = sweep(
        slurm_cluster,
        "mixer=none",
        "seed=1",
        *SMALL,
        *training,
        *component,
        *CLUSTER,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    for attempt, preempt in enumerate([["scontrol", "requeue"], ["scancel", "--signal=USR2"]]):
        blocked, deadline = Path(f"{marker}.{attempt}"), time.time() + 600
        while not blocked.exists():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, f"attempt {attempt} never reached its step"
            time.sleep(0.5)
        done = subprocess.run(
            [*preempt, blocked.read_text().strip()], env=slurm_cluster, capture_output=True, text=True
        )
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
    shared = [
        "data=offline_domains",
        "trainer=pt_full",
        "++trainer.include_num_input_tokens_seen=non_padding",
    ]  # the sweep's
    Run(compose_config([*shared, "seed=1", *overrides, *training, *component], tiny=False), reference).fit()
    assert losses(run_dir) == pytest.approx(losses(reference), abs=1e-6)


def test_two_slurm_tasks_decide_the_same_and_as_one_process(slurm_cluster, tmp_path):
    """One job as 2 SLURM tasks (hydra.launcher.tasks_per_node=2: srun starts both ranks, each sets up
    torch.distributed from SLURM's environment, no torchrun): every decision is identical on both ranks
    and equal to a one-process run with the same global batch (issue 20). The decisions are recorded by
    the rank probe, installed in each task by a Hydra callback."""
    from support.config import TINY
    from support.ranks import BASE, LOSS, ODM, PT, assert_as_one_process, assert_ranks_agree, decisions, launch

    probe, sweep_dir = tmp_path / "probe", tmp_path / "sweep"
    probe.mkdir()
    overrides = [*PT, *LOSS, *ODM]
    command = [
        str(Path(sys.executable).parent / "dataflex-run"),
        "-m",
        "hydra/launcher=slurm",
        "hydra.launcher.nodes=1",
        "hydra.launcher.tasks_per_node=2",
        "nproc=2",
        *TINY,
        *BASE,
        *overrides,
        "trainer.per_device_train_batch_size=2",
        *CLUSTER,
        "hydra.launcher.timeout_min=10",
        "+hydra.callbacks.probe._target_=rank_probe.ProbeCallback",
        f"+hydra.callbacks.probe.out_dir={probe}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=job",
    ]
    env = {**slurm_cluster, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    logs = "".join(p.read_text() for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + logs[-3000:]
    # one SLURM job of two tasks (submitit's per-task logs), which ran one training job
    assert {p.name.split("_")[1] for p in sweep_dir.glob(".submitit/*/*_log.out")} == {"0", "1"}
    assert json.loads((sweep_dir / "job" / "metrics.json").read_text())["global_step"] == 6

    r0, r1 = (torch.load(probe / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert_ranks_agree(r0, r1)
    (single,) = launch(tmp_path, "one", overrides, nproc=1)
    assert_as_one_process(decisions(r0), decisions(single))
    assert len(decisions(r0, "select")) == 2 and len(decisions(r0, "update")) == 6
