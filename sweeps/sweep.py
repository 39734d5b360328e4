"""The engine behind the sweeps/compare_*.sh scripts: one method comparison as ONE Hydra multirun.

A script names the sweep, the config group it compares (the *axis*: selector, mixer or weighter),
the methods, the settings every job shares and the default seeds; the user adds the launcher and
any override:

    sweeps/compare_mixers.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]

What this adds to ``dataflex-run -m``:

- methods whose config file does not exist (yet) are skipped with a note; ``AXIS=a,b`` or
  ``seed=1,2`` on the command line replace the script's method list or seeds;
- a fixed sweep directory, ``<paths.output_root>/sweeps/<name>`` (``hydra.sweep.dir=...`` to
  choose), with one directory per arm named from its swept overrides and one per seed below it:
  ``<sweep>/<arm>/seed=<seed>``. A rerun of the same command lands in the same directories, so an
  interrupted job resumes from its newest checkpoint (dataflex/run.py) and so does a SLURM job that
  submitit requeues;
- trackers: W&B group = the sweep name, run name = the job's overrides (``logger=wandb`` by
  default, offline without an API key; ``logger=jsonl`` to leave W&B out);
- ``manifest.json`` in the sweep directory: the commit, the command, the launcher and the job list;
- every job counts its training tokens (``trainer.include_num_input_tokens_seen=non_padding``), which
  the report shows;
- the local launcher runs ``--parallel`` jobs at once, each with its share of the cores
  (``OMP_NUM_THREADS``);
- every arm's config is composed (and its components checked) before anything is launched, so a
  typo fails in seconds, not after a SLURM queue wait;
- ``--dry-run`` prints the jobs and the ``dataflex-run`` command and launches nothing;
- after the sweep, ``dataflex-report`` writes ``report.md`` and the plots into the sweep directory.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

LAUNCHERS = ("local", "slurm")
# keys that never name an arm (besides the settings all jobs share)
ALWAYS_EXCLUDED = [
    "seed",
    "nproc",
    "run_name",
    "paths.output_root",
    "logger",
    "logger.group",
    "logger.project",
    "logger.entity",
    "logger.mode",
    "trainer.include_num_input_tokens_seen",
]
USAGE = "usage: {script} [local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]"


class SweepError(Exception):
    """A bad sweep command; the message is one line saying what to change."""


def conf_dir() -> Path:
    """dataflex's Hydra config root, found without importing the package."""
    spec = importlib.util.find_spec("dataflex")
    if spec is None or not spec.submodule_search_locations:
        raise SweepError(
            "the dataflex package is not importable by this Python; run `make setup` or set DATAFLEX_PYTHON"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "conf"


def available(axis: str) -> list[str]:
    """The options of a config group (its YAML file names)."""
    return sorted(p.stem for p in (conf_dir() / axis).glob("*.yaml"))


def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except Exception as err:  # hydra's OverrideParseException: one line is enough
        raise SweepError(f"cannot parse the overrides: {str(err).splitlines()[0]}") from None


def split_user_args(argv: list[str], script: str) -> argparse.Namespace:
    """``[local|slurm] [--dry-run] [--parallel N] [--no-report] [override ...]`` (options anywhere)."""
    usage = USAGE.format(script=script)
    args = argparse.Namespace(dry_run=False, parallel=None, no_report=False, launcher="local", overrides=[])
    rest: list[str] = []
    items = iter(argv)
    for item in items:
        if item in ("-h", "--help"):
            print(usage)
            print(__doc__)
            sys.exit(0)
        elif item == "--dry-run":
            args.dry_run = True
        elif item == "--no-report":
            args.no_report = True
        elif item == "--parallel" or item.startswith("--parallel="):
            value = item.split("=", 1)[1] if "=" in item else next(items, "")
            if not value.isdigit() or int(value) < 1:
                raise SweepError(f"--parallel takes a number of jobs >= 1, got {value!r}")
            args.parallel = int(value)
        elif item in ("-m", "--multirun"):
            continue  # a sweep always is one
        elif item.startswith("-"):
            raise SweepError(f"unknown option {item}; {usage}")
        else:
            rest.append(item)
    if rest and "=" not in rest[0]:
        if rest[0] not in LAUNCHERS:
            raise SweepError(f"unknown launcher {rest[0]!r}: use local (this machine) or slurm (a SLURM cluster)")
        args.launcher = rest.pop(0)
    stray = [r for r in rest if "=" not in r]
    if stray:
        raise SweepError(f"{stray[0]!r} is neither a launcher nor an override (KEY=VALUE); {usage}")
    args.overrides = rest
    return args


class Sweep:
    """One method comparison: what the script fixed plus what the user passed.

    Args:
        name: the sweep's name (its directory, the W&B group, the SLURM job name).
        axis: the config group compared (``selector``, ``mixer`` or ``weighter``).
        methods: the methods to compare, in order (those without a config file are skipped).
        base: overrides every job shares (``data=...``, ``trainer=...``).
        seeds: the default seeds (``seed=...`` on the command line replaces them).
        user: the user's arguments (launcher, options, overrides).
        script: the script's name, for messages and the manifest.
    """

    def __init__(
        self,
        name: str,
        axis: str,
        methods: list[str],
        base: list[str],
        seeds: str,
        user: list[str],
        script: str | None = None,
    ):
        self.name, self.axis, self.script = name, axis, script or name
        self.args = split_user_args(user, self.script)
        self.user_argv = list(user)
        user_keys = {o.key_or_group for o in _parse(self.args.overrides)} if self.args.overrides else set()
        options = available(axis)
        self.skipped: list[str] = []
        if axis in user_keys:
            self.methods = None  # the user's AXIS=... override stands
        else:
            self.methods = [m for m in methods if m in options]
            self.skipped = [m for m in methods if m not in options]
            if not self.methods:
                raise SweepError(
                    f"none of the {axis}s {methods} has a config in {conf_dir() / axis}; "
                    f"available: {', '.join(options)}"
                )
        task: list[str] = [o for o in base if o.split("=", 1)[0].lstrip("+~") not in user_keys]
        if self.methods is not None:
            task.append(f"{axis}={','.join(self.methods)}")
        if "seed" not in user_keys:
            task.append(f"seed={seeds}")
        if "logger" not in user_keys:
            task.append("logger=wandb")
        task.append(f"++logger.group={name}")
        task.append("++trainer.include_num_input_tokens_seen=non_padding")
        hydra_user = [o for o in self.args.overrides if o.startswith(("hydra.", "hydra/"))]
        task += [o for o in self.args.overrides if o not in hydra_user]
        self.task_overrides = task
        self.hydra_user = hydra_user
        self.sweep_dir = self._sweep_dir()

    @property
    def uses_wandb(self) -> bool:
        return "logger=wandb" in self.task_overrides

    @property
    def parallel(self) -> int:
        """Local launcher: jobs run at once (--parallel; default half the CPU cores, at least 1)."""
        return self.args.parallel or max(1, (os.cpu_count() or 2) // 2)

    # -- layout ----------------------------------------------------------------------------------
    def _sweep_dir(self) -> Path:
        for o in self.hydra_user:
            if o.startswith("hydra.sweep.dir="):
                return Path(o.split("=", 1)[1]).expanduser().resolve()
        root = os.environ.get("DATAFLEX_OUTPUTS", "outputs")
        for o in self.task_overrides:
            if o.startswith("paths.output_root="):
                root = o.split("=", 1)[1]
        return (Path(root).expanduser() / "sweeps" / self.name).resolve()

    def exclude_keys(self) -> list[str]:
        """Keys left out of the arm's directory name: everything every job shares, and the seed."""
        parsed = _parse(self.task_overrides)
        shared = [o.key_or_group for o in parsed if not o.is_sweep_override() and o.key_or_group != self.axis]
        return sorted(set(ALWAYS_EXCLUDED + shared))

    def jobs(self) -> list[dict]:
        """The jobs Hydra's basic sweeper will launch, in its order, with their directories."""
        from hydra._internal.config_loader_impl import get_overrides_dirname
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        exclude = self.exclude_keys()
        jobs = []
        for index, overrides in enumerate(BasicSweeper.split_arguments(_parse(self.task_overrides), None)[0]):
            parsed = _parse(overrides)
            arm = get_overrides_dirname(parsed, exclude, item_sep=",", kv_sep="=")
            seed = next((o.get_value_element_as_str() for o in parsed if o.key_or_group == "seed"), "42")
            jobs.append({"index": index, "arm": arm, "seed": seed, "dir": f"{arm}/seed={seed}", "overrides": overrides})
        return jobs

    def hydra_overrides(self) -> list[str]:
        keys = ",".join(k if re.fullmatch(r"[\w./-]+", k) else f'"{k}"' for k in self.exclude_keys())
        mine = [
            f"hydra/launcher={self.args.launcher}",
            f"hydra.sweep.dir={self.sweep_dir}",
            'hydra.sweep.subdir="${hydra.job.override_dirname}/seed=${seed}"',
            f"hydra.job.config.override_dirname.exclude_keys=[{keys}]",
            f"hydra.job.name={self.name}",
        ]
        if self.args.launcher == "local":
            mine.append(f"hydra.sweeper.max_batch_size={self.parallel}")
        given = {o.split("=", 1)[0] for o in self.hydra_user}
        return [o for o in mine if o.split("=", 1)[0] not in given] + self.hydra_user

    def command(self) -> list[str]:
        # the tracker's run name: the job's overrides (a run_name=... of the user's stands)
        given = any(o.split("=", 1)[0].lstrip("+") == "run_name" for o in self.task_overrides)
        run_name = [] if given else ['run_name="${hydra:job.override_dirname},seed=${seed}"']
        return [
            sys.executable,
            "-m",
            "dataflex.cli.run",
            "--multirun",
            *self.task_overrides,
            *run_name,
            *self.hydra_overrides(),
        ]

    # -- checks, manifest, launch ----------------------------------------------------------------
    def validate(self, jobs: list[dict]) -> None:
        """Compose each arm's config and check its components' keys (no model is loaded)."""
        from hydra import compose, initialize_config_module
        from hydra.errors import HydraException

        from dataflex.config import ConfigError, register_resolvers, to_dict
        from dataflex.preflight import preflight

        register_resolvers()
        # Hydra composes the sweep's own config from the overrides that are not swept: a key inside a
        # swept group (mixer.update_every with mixer=a,b) must then be added with ++
        parsed = _parse(self.task_overrides)
        swept = {o.key_or_group for o in parsed if o.is_sweep_override()}
        shared = [o.input_line for o in parsed if not o.is_sweep_override()]
        try:
            with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
                compose(config_name="train", overrides=shared)
        except HydraException as err:
            inside = [
                o.input_line
                for o in parsed
                if not o.is_sweep_override()
                and not o.input_line.startswith("+")
                and o.key_or_group.split(".", 1)[0] in swept
                and "." in o.key_or_group
            ]
            hint = f"; write {inside[0]} as ++{inside[0]} (a key of a swept group)" if inside else ""
            raise SweepError(f"{str(err).splitlines()[0]}{hint}") from None
        seen = set()
        for job in jobs:
            if job["arm"] in seen:
                continue
            seen.add(job["arm"])
            try:
                with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
                    cfg = compose(config_name="train", overrides=job["overrides"])
                # the config checks of a run, no model loaded; a dry run of a chained study does not
                # look for the inputs an earlier phase has not written yet (DoReMi's reference model)
                preflight(to_dict(cfg), check_inputs=not self.args.dry_run)
            except (HydraException, ConfigError) as err:
                raise SweepError(f"job {job['dir']}: {str(err).splitlines()[0]}") from None

    def manifest(self, jobs: list[dict]) -> dict:
        repo = Path(__file__).resolve().parent.parent
        commit = _git(repo, "rev-parse", "HEAD")
        status = _git(repo, "status", "--porcelain", "--untracked-files=no")
        return {
            "sweep": self.name,
            "axis": self.axis,
            "launcher": self.args.launcher,
            "created": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "commit": commit,
            "dirty": bool(status) if commit else None,
            "command": shlex.join([self.script, *self.user_argv]),
            "dataflex_run": shlex.join(["dataflex-run", *self.command()[3:]]),
            "methods": self.methods,
            "skipped": self.skipped,
            "jobs": jobs,
        }

    def write_manifest(self, manifest: dict) -> Path:
        from dataflex.utils import atomic_write_json

        path = self.sweep_dir / "manifest.json"
        if path.is_file():  # a rerun: keep what earlier launches were
            try:
                old = json.loads(path.read_text())
                earlier = old.pop("earlier_launches", [])
                manifest["earlier_launches"] = [*earlier, {k: old.get(k) for k in ("created", "commit", "command")}]
            except (json.JSONDecodeError, AttributeError):
                pass
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
        return path

    def print_plan(self, jobs: list[dict]) -> None:
        if self.skipped:
            print(f"[sweep] skipped (no config yet): {', '.join(f'{self.axis}={m}' for m in self.skipped)}")
        print(f"[sweep] {self.name}: {len(jobs)} job(s) on the {self.args.launcher} launcher -> {self.sweep_dir}")
        for job in jobs:
            print(f"  #{job['index']:<3d} {job['dir']:<48s} {' '.join(job['overrides'])}")
        print(f"[sweep] command: {shlex.join(['dataflex-run', *self.command()[3:]])}", flush=True)

    def run(self) -> int:
        if self.args.launcher == "slurm" and not self.args.dry_run and shutil.which("sbatch") is None:
            raise SweepError(
                "the slurm launcher needs sbatch on PATH: run on a SLURM login node, or start the local "
                'test cluster (make slurm-up; eval "$(bash scripts/slurm.sh env)")'
            )
        jobs = self.jobs()
        self.print_plan(jobs)
        self.validate(jobs)
        if self.args.dry_run:
            print("[sweep] dry run: nothing launched")
            return 0
        path = self.write_manifest(self.manifest(jobs))
        print(f"[sweep] manifest: {path}", flush=True)
        env = dict(os.environ)
        if self.args.launcher == "local" and "OMP_NUM_THREADS" not in env:
            # jobs of a batch share this machine's cores: no job starts more threads than its share
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        code = subprocess.call(self.command(), env=env)
        if code != 0:
            print(
                f"[sweep] dataflex-run exited with {code}; rerun the same command to resume the unfinished jobs",
                file=sys.stderr,
            )
            return code
        if not self.args.no_report:
            report = [sys.executable, "-m", "dataflex.cli.report", str(self.sweep_dir)]
            if self.uses_wandb:  # the table joins the sweep's runs in their W&B group
                report += ["--wandb", self.name]
            code = subprocess.call(report)
        offline = sorted([*self.sweep_dir.glob("*/*/wandb/offline-run-*"), *self.sweep_dir.glob("wandb/offline-run-*")])
        if offline:
            where = shlex.quote(str(self.sweep_dir))
            print(
                f"[sweep] W&B runs are offline ({len(offline)}); to upload: "
                f"wandb sync {where}/*/*/wandb/offline-run-* {where}/wandb/offline-run-*"
            )
        return code


def _git(repo: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one method-comparison sweep (used by sweeps/*.sh)")
    parser.add_argument("name")
    parser.add_argument("--axis", required=True, choices=["selector", "mixer", "weighter"])
    parser.add_argument("--methods", required=True, help="comma-separated methods, in order")
    parser.add_argument("--base", action="append", default=[], help="an override every job shares (repeatable)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--script", default=None)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    spec, user = parser.parse_args(argv[:split]), argv[split + 1 :]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        sweep = Sweep(spec.name, spec.axis, spec.methods.split(","), spec.base, spec.seeds, user, spec.script)
        return sweep.run()
    except SweepError as err:
        print(f"{spec.script or spec.name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
