"""Kill-and-resume matrix (issue 8): SIGKILL a real ``dataflex-run`` at a random step after its
first checkpoint, rerun the same command, and compare with an uninterrupted run.

    python scripts/kill_resume_matrix.py                 # every case whose config exists, summary table
    python scripts/kill_resume_matrix.py loss odm --seed 3 --json out.json

For each case three runs of the tiny model: the uninterrupted one, one killed with SIGKILL (the
whole process group, no chance to clean up) once a complete checkpoint exists and the training
log has reached a randomly drawn step, and the same command again in the killed run's directory
(it resumes from the newest complete checkpoint). Compared, resumed vs uninterrupted:

- selections: every ``selections/round_NNN.json`` present in both, byte-equal JSON content;
- proportions: every logged ``mixer/proportion/<domain>`` (by step; a re-logged step's later line wins);
- DoReMi weights: ``doremi_weights.json``;
- losses: every step's ``train/loss`` and ``metrics.json``'s ``final_train_loss``;
- the final checkpoint's DataFlex state (sampler history and every component's state);
- the final model's tensors.

Numbers must agree to ``TOLERANCE`` (absolute); on these CPUs they agree exactly. The test
``tests/e2e/test_kill_resume.py`` runs each case; this script prints the summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: absolute tolerance of every numeric comparison (losses, proportions, weights, model tensors)
TOLERANCE = 1e-6
MAX_STEPS = 16
SAVE_STEPS = 4

BASE = [
    "model=tiny",
    "data.max_samples=64",
    "data.cutoff_len=128",
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.per_device_train_batch_size=4",
    f"trainer.save_steps={SAVE_STEPS}",
    "trainer.logging_steps=1",
    "eval.before=false",
    "eval.after=false",
]
PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]
LOSS = ["selector=loss", "selector.budget=16", "selector.warmup_steps=2", "selector.update_every=3"]
ODM = ["mixer=odm"]
WEIGHTER = ["weighter=loss", "weighter.warmup_steps=4"]


@dataclass
class Case:
    """One trainer type of the matrix.

    Attributes:
        overrides: ``dataflex-run`` arguments after :data:`BASE`.
        requires: config files (relative to ``dataflex/conf``) the case needs; a missing one skips it.
    """

    overrides: list[str]
    requires: list[str] = field(default_factory=list)


def _tiny_model_dir() -> str:
    from dataflex.data.assets import asset_path

    return str(asset_path("tiny"))


CASES: dict[str, Case] = {
    "selector=loss": Case(LOSS, ["selector/loss.yaml"]),
    "mixer=odm": Case([*PT, *ODM], ["mixer/odm.yaml"]),
    "selector=less": Case(
        [
            "selector=less",
            "selector.budget=16",
            "selector.warmup_steps=2",
            "selector.update_every=4",
            "selector.proj_dim=512",
            "selector.validation_per_subtask=16",
        ],
        ["selector/less.yaml"],
    ),
    # DoReMi step 2: the proxy beside a frozen reference (here the untrained tiny model itself)
    "mixer=doremi (step 2)": Case([*PT, "mixer=doremi", "mixer.reference_dir={tiny}"], ["mixer/doremi.yaml"]),
    "weighter=loss": Case(WEIGHTER, ["weighter/loss.yaml"]),
    "selector+mixer+weighter": Case(
        [*PT, *LOSS, *ODM, *WEIGHTER], ["selector/loss.yaml", "mixer/odm.yaml", "weighter/loss.yaml"]
    ),
}


def conf_dir() -> Path:
    import dataflex

    return Path(dataflex.__file__).parent / "conf"


def missing_configs(name: str) -> list[str]:
    """The config files case ``name`` needs that do not exist (yet)."""
    return [p for p in CASES[name].requires if not (conf_dir() / p).is_file()]


def command(name: str, run_dir: Path) -> list[str]:
    script = Path(sys.executable).parent / "dataflex-run"
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "dataflex.cli.run"]
    overrides = [o.replace("{tiny}", _tiny_model_dir()) for o in CASES[name].overrides]
    return [*head, *BASE, *overrides, f"hydra.run.dir={run_dir}"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR=env.get("DS_ACCELERATOR", "cpu"),
    )
    env.setdefault("OMP_NUM_THREADS", "1")  # the same thread count (and reduction order) for every run
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def read_records(run_dir: Path) -> list[dict]:
    """``metrics.jsonl`` records (a line torn by the kill is skipped)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def by_step(records: list[dict], prefix: str) -> dict[tuple[int, str], float]:
    """``{(step, key): value}`` for keys starting with ``prefix`` (a re-logged step's later line wins)."""
    out = {}
    for r in records:
        for k, v in r.items():
            if k.startswith(prefix) and isinstance(v, (int, float)) and r.get("step") is not None:
                out[(int(r["step"]), k)] = float(v)
    return out


def last_step(run_dir: Path) -> int:
    steps = [int(r["step"]) for r in read_records(run_dir) if "train/loss" in r and r.get("step") is not None]
    return max(steps, default=0)


def complete_checkpoints(run_dir: Path) -> list[int]:
    root = run_dir / "checkpoints"
    return sorted(int(p.name.split("-")[-1]) for p in root.glob("checkpoint-*") if (p / "dataflex_state.pt").is_file())


@contextlib.contextmanager
def spawned(cmd: list[str], log: Path):
    """``cmd`` in its own process group, output to ``log``; the group is SIGKILLed on the way out
    if still running (an exception, a timeout, SIGTERM), so no run outlives its caller."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def run_to_end(cmd: list[str], log: Path, timeout: float = 3600) -> str:
    with spawned(cmd, log) as proc:
        code = proc.wait(timeout=timeout)
    text = log.read_text()
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[-3:])} exited {code}:\n{text[-3000:]}")
    return text


def run_and_kill(cmd: list[str], run_dir: Path, kill_step: int, delay: float, log: Path, timeout: float = 3600) -> dict:
    """Start ``cmd``; once a complete checkpoint exists and ``train/loss`` of ``kill_step`` is
    logged, wait ``delay`` seconds and SIGKILL the whole process group."""
    with spawned(cmd, log) as proc:
        start = time.time()
        while proc.poll() is None:
            if complete_checkpoints(run_dir) and last_step(run_dir) >= kill_step:
                time.sleep(delay)
                os.killpg(proc.pid, signal.SIGKILL)
                break
            if time.time() - start > timeout:
                raise TimeoutError(f"no step {kill_step} within {timeout}s")
            time.sleep(0.01)
        code = proc.wait()
    if code != -signal.SIGKILL:
        raise RuntimeError(
            f"the run ended with {code} before it was killed at step {kill_step}:\n{log.read_text()[-3000:]}"
        )
    return {"logged_step_at_kill": last_step(run_dir), "checkpoints_at_kill": complete_checkpoints(run_dir)}


def _max_diff(a: Any, b: Any) -> float:
    """Largest absolute difference between two nested structures (inf when their shapes differ)."""
    import torch

    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return math.inf
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return math.inf
        return max((_max_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if torch.is_tensor(a):
        if not torch.is_tensor(b) or a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            return 0.0
        a, b = a.double(), b.double()
        both_nan = torch.isnan(a) & torch.isnan(b)
        d = torch.where(both_nan, torch.zeros_like(a), (a - b).abs())
        return float(torch.nan_to_num(d, nan=math.inf).max())
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            return math.inf
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(float(a) - float(b)) if not (math.isnan(a) or math.isnan(b)) else math.inf
    return 0.0 if a == b else math.inf


def _model_tensors(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return {p.name: load_file(p) for p in sorted((run_dir / "model").glob("*.safetensors"))}


def compare(straight: Path, resumed: Path) -> dict[str, Any]:
    """What the resumed run and the uninterrupted run each ended with, and their largest differences."""
    import torch

    out: dict[str, Any] = {}

    def rounds(d):
        return {p.name: json.loads(p.read_text()) for p in sorted((d / "selections").glob("round_*.json"))}

    ra, rb = rounds(straight), rounds(resumed)
    out["selection_rounds"] = len(ra)
    out["selections_equal"] = ra == rb
    ra_, rb_ = by_step(read_records(straight), "mixer/"), by_step(read_records(resumed), "mixer/")
    out["proportion_records"] = len(ra_)
    out["proportions_max_diff"] = _max_diff(ra_, rb_) if ra_.keys() == rb_.keys() else math.inf
    la, lb = by_step(read_records(straight), "train/loss"), by_step(read_records(resumed), "train/loss")
    out["loss_steps"] = len(la)
    out["losses_max_diff"] = _max_diff(la, lb) if la.keys() == lb.keys() else math.inf
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    out["final_train_loss"] = ma["final_train_loss"]
    out["final_loss_diff"] = _max_diff(float(ma["final_train_loss"]), float(mb["final_train_loss"]))
    out["global_step"] = (ma["global_step"], mb["global_step"])
    weights = [d / "doremi_weights.json" for d in (straight, resumed)]
    if weights[0].is_file() or weights[1].is_file():
        out["doremi_weights_max_diff"] = (
            _max_diff(*(json.loads(w.read_text()) for w in weights)) if all(w.is_file() for w in weights) else math.inf
        )
    final = f"checkpoint-{MAX_STEPS}"
    sa, sb = (
        torch.load(d / "checkpoints" / final / "dataflex_state.pt", weights_only=False) for d in (straight, resumed)
    )
    out["dataflex_state_max_diff"] = _max_diff(sa, sb)
    out["model_max_diff"] = _max_diff(_model_tensors(straight), _model_tensors(resumed))
    return out


def problems(result: dict[str, Any]) -> list[str]:
    """Everything in a :func:`run_case` result that breaks "a resumed run ends where an uninterrupted one ends"."""
    bad = []
    c = result["compare"]
    if not c["selections_equal"]:
        bad.append("selections differ")
    for key in (
        "proportions_max_diff",
        "losses_max_diff",
        "final_loss_diff",
        "doremi_weights_max_diff",
        "dataflex_state_max_diff",
        "model_max_diff",
    ):
        if key in c and not c[key] <= TOLERANCE:
            bad.append(f"{key} = {c[key]} > {TOLERANCE}")
    if c["global_step"] != (MAX_STEPS, MAX_STEPS):
        bad.append(f"global_step {c['global_step']}")
    if c["loss_steps"] != MAX_STEPS:
        bad.append(f"{c['loss_steps']} logged losses, expected {MAX_STEPS}")
    if result["resumed_from"] is None:
        bad.append("the second run did not resume from a checkpoint")
    return bad


def run_case(name: str, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """Uninterrupted run, killed run, resumed run; the comparison (see the module docstring)."""
    rng = random.Random(f"{name}:{seed}")
    kill_step = rng.randint(SAVE_STEPS + 1, MAX_STEPS - 3)  # after the first checkpoint, before the end
    delay = rng.uniform(0.0, 0.05)  # lands anywhere in the following step (forward, backward, a save)
    straight, resumed = workdir / "straight", workdir / "resumed"
    t0 = time.time()
    run_to_end(command(name, straight), workdir / "straight.log")
    killed = run_and_kill(command(name, resumed), resumed, kill_step, delay, workdir / "killed.log")
    partial = (resumed / "metrics.json").exists()
    text = run_to_end(command(name, resumed), workdir / "resumed.log")
    found = re.search(r"resuming from \S*checkpoint-(\d+)", text)
    result = {
        "case": name,
        "seed": seed,
        "kill_step": kill_step,
        **killed,
        "metrics_json_after_kill": partial,
        "removed_incomplete": re.findall(r"removing incomplete checkpoint \S*checkpoint-(\d+)", text),
        "resumed_from": int(found.group(1)) if found else None,
        "compare": compare(straight, resumed),
        "wall_s": round(time.time() - t0, 1),
    }
    result["problems"] = problems(result) + (["metrics.json existed after the kill"] if partial else [])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help=f"case names or unique prefixes (default: all); {list(CASES)}")
    parser.add_argument("--seed", type=int, default=0, help="draws the kill step of every case")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so every started run is killed on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    wanted = [
        n for n in CASES if not args.cases or any(n.startswith(c) or n.split("=")[-1].startswith(c) for c in args.cases)
    ]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kill_resume_"))
    results, failed = [], 0
    print(f"{'case':26} {'killed at':>9} {'resumed from':>12} {'rounds':>6} {'props':>5} {'max |diff|':>10}  verdict")
    for name in wanted:
        missing = missing_configs(name)
        if missing:
            print(f"{name:26} skipped: no {', '.join('conf/' + m for m in missing)}")
            results.append({"case": name, "skipped": missing})
            continue
        case_dir = workdir / re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        case_dir.mkdir(parents=True, exist_ok=True)
        try:
            r = run_case(name, case_dir, args.seed)
        except Exception as err:  # a crashed run is a failed case, reported in the table
            failed += 1
            print(f"{name:26} FAILED: {str(err).splitlines()[0]}")
            results.append({"case": name, "error": str(err)})
            continue
        c = r["compare"]
        diff = max(v for k, v in c.items() if k.endswith("diff"))
        verdict = "same" if not r["problems"] else "; ".join(r["problems"])
        failed += bool(r["problems"])
        print(
            f"{name:26} {'step ' + str(r['logged_step_at_kill']):>9} {str(r['resumed_from']):>12} "
            f"{c['selection_rounds']:>6} {c['proportion_records']:>5} {diff:>10.2g}  {verdict}"
        )
        results.append(r)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"{sum('compare' in r for r in results)} killed and resumed, {failed} failed; runs in {workdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
