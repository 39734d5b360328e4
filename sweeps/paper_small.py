"""The small-scale reproduction study behind docs/results.md (sweeps/paper_small_*.sh).

    sweeps/paper_small_mixture.sh   [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]
    sweeps/paper_small_selection.sh [local|slurm] [--dry-run] [--parallel N] [--no-report] [--arms A,B] [override ...]

A study is a list of *phases*, each one Hydra multirun through the sweep engine (sweeps/sweep.py,
with the config group ``experiment`` as its axis), run in order; a phase starts after the previous
one has finished, because it reads what that one wrote (DoReMi: the proxy needs the reference model,
the final model the proxy's weights). Every arm is one experiment file,
``dataflex/conf/experiment/paper_small_<study>_<arm>.yaml``, on top of the study's shared settings
(``paper_small_<study>.yaml``), so one job reruns alone as ``dataflex-run experiment=... seed=N``.

Every phase writes into the same study directory, ``<output_root>/paper_small/<study>`` (or
``hydra.sweep.dir=...``), one ``experiment=<arm>/seed=<seed>`` directory per job, so rerunning the
same command resumes unfinished jobs and ``dataflex-report`` over the study directory merges
whatever has finished (the study may be run in parts: ``--arms`` and ``seed=...``). Each phase
writes ``manifest_<phase>.json`` (the commit, the command, the jobs); the report goes to
``report.md`` and ``report_*.png`` in the study directory at the end.

    python sweeps/paper_small.py results     # docs/results.md: dataflex-report over both study
                                             # directories into docs/results/<study>/, the tables and
                                             # plots spliced between the page's markers (prose kept)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("dataflex_sweep_engine", HERE / "sweep.py")
engine = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("dataflex_sweep_engine", engine)
_spec.loader.exec_module(engine)


@dataclass(frozen=True)
class Phase:
    """One multirun of a study: its name and the arms (experiment-file suffixes) it runs."""

    name: str
    arms: tuple[str, ...]


@dataclass(frozen=True)
class Study:
    """A study: its name (``paper_small_<name>`` is the experiment prefix), phases, seeds and the
    metrics its report shows (``primary`` picks the best row)."""

    name: str
    phases: tuple[Phase, ...]
    seeds: str
    primary: str
    metrics: tuple[str, ...]
    target: str | None = None  # a planted target domain: the report's selection precision
    baseline: str | None = None  # the arm every other is compared with seed by seed (paired differences)

    @property
    def report_args(self) -> list[str]:
        """``dataflex-report`` options: the best row's metric, the metrics shown, the target, the baseline."""
        return (
            ["--metric", self.primary, "--metrics", ",".join(self.metrics)]
            + (["--target", self.target] if self.target else [])
            + (["--baseline", self.experiment(self.baseline)] if self.baseline else [])
        )

    @property
    def prefix(self) -> str:
        return f"paper_small_{self.name}"

    def experiment(self, arm: str) -> str:
        return f"{self.prefix}_{arm}"

    @property
    def arms(self) -> list[str]:
        return [arm for phase in self.phases for arm in phase.arms]


DOMAINS = ("code", "techdocs", "drama", "scripture", "dictionary", "computing", "quotes")

STUDIES = {
    "mixture": Study(
        name="mixture",
        phases=(
            # natural = DoReMi's step 1 (experiment=doremi_reference's settings): its model is the reference
            Phase("mixers", ("uniform", "natural", "random", "odm")),
            Phase("doremi_proxy", ("doremi_proxy",)),  # step 2, beside the natural arm of the same seed
            Phase("doremi", ("doremi",)),  # step 3, on the proxy's averaged weights
        ),
        seeds="1,2,3",
        primary="ppl/avg",
        metrics=("ppl/avg", "ppl/worst", *(f"ppl/{d}" for d in DOMAINS)),
        baseline="uniform",
    ),
    "selection": Study(
        name="selection",
        phases=(
            Phase(
                "selection", ("static", "random", "loss", "delta_loss", "less", "nice", "near", "tsds", "loss_weighter")
            ),
        ),
        seeds="1,2,3",
        primary="mcq/definitions/accuracy",
        metrics=("mcq/definitions/accuracy", "em/arithmetic", "em/facts"),
        baseline="random",
    ),
    # issue 18: problems where the right answer is known (data=planted_target / planted_noisy)
    "target": Study(
        name="target",
        phases=(Phase("target", ("static", "oracle", "random", "loss", "delta_loss", "less", "nice", "near", "tsds")),),
        seeds="1,2,3",
        primary="em/facts",
        metrics=("em/facts", "nll/facts", "em/arithmetic", "nll/arithmetic", "mcq/definitions/accuracy"),
        target="planted_target_facts",
        baseline="random",  # the same number of rows per round, chosen blindly
    ),
    "planted": Study(
        name="planted",
        phases=(
            Phase("mixers", ("uniform", "natural", "random", "odm", "odm_exp_loss")),
            Phase("doremi_proxy", ("doremi_proxy",)),  # step 2, beside the natural arm of the same seed
            Phase("doremi", ("doremi",)),  # step 3, on the proxy's averaged weights
        ),
        seeds="1,2,3",
        primary="ppl/avg",
        metrics=("ppl/avg", "ppl/worst", *(f"ppl/{d}" for d in DOMAINS)),
        baseline="uniform",
    ),
    "noise": Study(
        name="noise",
        phases=(Phase("noise", ("uniform", "loss_linupper", "loss_quadratic", "loss_extremes")),),
        seeds="1,2,3",
        primary="em/facts",
        metrics=("mcq/definitions/accuracy", "em/arithmetic", "nll/arithmetic", "em/facts", "nll/facts"),
        baseline="uniform",
    ),
}


class PhaseSweep(engine.Sweep):
    """The engine's sweep with one manifest per phase (the phases share the study directory)."""

    phase = "arms"
    study_argv: list[str] | None = None

    def write_manifest(self, manifest: dict) -> Path:
        from dataflex.utils import atomic_write_json

        manifest["phase"] = self.phase
        if self.study_argv is not None:  # the study's command as typed, not the engine's expanded one
            manifest["command"] = shlex.join([self.script, *self.study_argv])
        path = self.sweep_dir / f"manifest_{self.phase}.json"
        if path.is_file():  # a rerun or another part of the study: keep what earlier launches were
            try:
                old = json.loads(path.read_text())
                earlier = old.pop("earlier_launches", [])
                keep = ("created", "commit", "dirty", "command", "jobs")
                manifest["earlier_launches"] = [*earlier, {k: old.get(k) for k in keep}]
            except (json.JSONDecodeError, AttributeError):
                pass
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, manifest)
        return path


def split_args(argv: list[str], study: Study) -> tuple[list[str] | None, list[str]]:
    """Take ``--arms A,B`` (a subset of the study's arms) out of the arguments; the rest go to the
    engine (launcher, --dry-run, --parallel, --no-report, overrides)."""
    arms, rest = None, []
    items = iter(argv)
    for item in items:
        if item == "--arms" or item.startswith("--arms="):
            value = item.split("=", 1)[1] if "=" in item else next(items, "")
            arms = [a for a in value.split(",") if a]
            unknown = [a for a in arms if a not in study.arms]
            if not arms or unknown:
                raise engine.SweepError(f"--arms {value!r}: the {study.name} study's arms are {','.join(study.arms)}")
        else:
            rest.append(item)
    if any(o.split("=", 1)[0].lstrip("+~") == "experiment" for o in rest):
        raise engine.SweepError(
            "the study chooses the experiments itself; pick arms with --arms A,B instead of experiment=..."
        )
    return arms, rest


def study_dir(study: Study, user: list[str]) -> Path:
    """``hydra.sweep.dir=...`` if given, else ``<paths.output_root or $DATAFLEX_OUTPUTS or outputs>/paper_small/<study>``."""
    root = os.environ.get("DATAFLEX_OUTPUTS", "outputs")
    for item in user:
        if item.startswith("hydra.sweep.dir="):
            return Path(item.split("=", 1)[1]).expanduser().resolve()
        if item.startswith("paths.output_root="):
            root = item.split("=", 1)[1]
    return (Path(root).expanduser() / "paper_small" / study.name).resolve()


def plan(study: Study, argv: list[str], script: str | None = None) -> list[PhaseSweep]:
    """The study's phases as engine sweeps (nothing runs): arms filtered by ``--arms``, every job in
    the study directory, ``paper_small.root`` pointing there (the DoReMi steps find each other)."""
    arms, rest = split_args(argv, study)
    root = study_dir(study, rest)
    user = list(rest)
    overrides = [u for u in user if "=" in u and not u.startswith("-")]
    if not any(o.split("=", 1)[0] == "logger" for o in overrides):
        user.append("logger=jsonl")  # the report reads metrics.jsonl; logger=wandb adds W&B
    if not any(o.startswith("hydra.sweep.dir=") for o in overrides):
        user.append(f"hydra.sweep.dir={root}")
    user.append(f"++paper_small.root={root}")
    if "--no-report" not in user:
        user.append("--no-report")  # one report over the whole study directory at the end
    sweeps = []
    for phase in study.phases:
        chosen = [a for a in phase.arms if arms is None or a in arms]
        if not chosen:
            continue
        sweep = PhaseSweep(
            f"paper_small_{study.name}",
            "experiment",
            [study.experiment(a) for a in chosen],
            [],
            study.seeds,
            user,
            script or f"paper_small_{study.name}.sh",
        )
        sweep.phase, sweep.study_argv = phase.name, list(argv)
        sweeps.append(sweep)
    return sweeps


def report(study: Study, root: Path) -> int:
    """``dataflex-report`` over the study directory: report.md and the plots, in the study directory."""
    command = [
        sys.executable,
        "-m",
        "dataflex.cli.report",
        str(root),
        *study.report_args,
    ]
    print(f"[paper_small] {' '.join(command[2:])}", flush=True)
    return subprocess.call(command)


# -- docs/results.md ---------------------------------------------------------------------------------
BEGIN, END = "<!-- BEGIN generated: {} -->", "<!-- END generated: {} -->"


def _manifests(root: Path) -> list[dict]:
    """Every launch recorded in the study directory's phase manifests (earlier launches included)."""
    launches = []
    for path in sorted(root.glob("manifest_*.json")):
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        for launch in [*manifest.get("earlier_launches", []), manifest]:
            launches.append({"phase": manifest.get("phase", path.stem[len("manifest_") :]), **launch})
    return launches


def producing_launches(root: Path, launches: list[dict]) -> list[dict]:
    """The launches that produced the finished runs now in the study directory: for each run, the
    latest launch listing its job that was created before its metrics.json was written (a later
    rerun of a finished run writes nothing, so it never counts)."""
    from datetime import datetime

    created = [
        datetime.fromisoformat(launch["created"]).timestamp() if launch.get("created") else None for launch in launches
    ]
    produced = set()
    for final in sorted(root.glob("experiment=*/seed=*/metrics.json")):
        job, written = final.parent.relative_to(root).as_posix(), final.stat().st_mtime
        before = [
            (created[index], index)
            for index, launch in enumerate(launches)
            if created[index] is not None
            and created[index] <= written
            and any(j.get("dir") == job for j in launch.get("jobs") or [])
        ]
        if before:
            produced.add(max(before)[1])
    return [launches[index] for index in sorted(produced)]


def _doremi_weights(root: Path, study: Study) -> list[str]:
    """A table of the DoReMi proxies' averaged domain weights (one row per seed), if any were written."""
    rows = []
    for path in sorted(root.glob(f"experiment={study.experiment('doremi_proxy')}/seed=*/doremi_weights.json")):
        weights = json.loads(path.read_text())
        short = {k.rsplit("_", 1)[-1]: float(v) for k, v in weights.items()}
        rows.append((path.parent.name, short))
    if not rows:
        return []
    domains = list(rows[0][1])
    lines = [
        "DoReMi step 2's averaged domain weights (`doremi_weights.json`, the final arm's static mixture):",
        "",
        "| proxy | " + " | ".join(domains) + " |",
        "|---" * (len(domains) + 1) + "|",
    ]
    lines += [f"| {seed} | " + " | ".join(f"{w[d]:.3f}" for d in domains) + " |" for seed, w in rows]
    return lines + [""]


def plot_mixture(study: Study, root: Path, path: Path) -> Path | None:
    """One panel per mixture arm: the sampling proportions over training (for the DoReMi proxy, the
    domain weights alpha of its loss; it samples uniformly), the mean over the arm's finished seeds,
    each decision held until the next one and the last one to the end of training."""
    from dataflex.report import _pyplot, _save, held_by_step, proportions_by_step, read_metrics

    panels = []
    for arm in study.arms:
        prefix = "mixer/doremi/alpha/" if arm == "doremi_proxy" else "mixer/proportion/"
        runs = []
        for run_dir in sorted(root.glob(f"experiment={study.experiment(arm)}/seed=*")):
            final = run_dir / "metrics.json"
            if final.is_file():
                steps = int(json.loads(final.read_text()).get("global_step") or 0)
                series = held_by_step(proportions_by_step(read_metrics(run_dir), prefix), steps)
                if series:  # short domain names for the legend: offline_domains_code -> code
                    runs.append({domain.rsplit("_", 1)[-1]: values for domain, values in series.items()})
        if runs:
            domains, length = list(runs[0]), min(len(next(iter(r.values()))) for r in runs)
            mean = {d: [sum(r[d][i] for r in runs) / len(runs) for i in range(length)] for d in domains}
            panels.append((arm, len(runs), mean))
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    height = 2.3 * rows + 0.8  # inches: the panels, plus 0.8 for the legend below them
    figure, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, height), squeeze=False, sharey=True)
    for index, (arm, seeds, mean) in enumerate(panels):
        ax = axes[index // cols][index % cols]
        steps = list(range(len(next(iter(mean.values())))))
        ax.stackplot(steps, list(mean.values()), labels=list(mean), step="post")
        what = "loss weights alpha" if arm == "doremi_proxy" else "proportions"
        ax.set(title=f"{arm} ({what}, {seeds} seed{'s' if seeds > 1 else ''})", xlim=(0, steps[-1]), ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.tick_params(labelsize=8)
    for index in range(len(panels), rows * cols):
        axes[index // cols][index % cols].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    for index, _ in enumerate(panels):
        if index + cols >= len(panels):  # the lowest panel of its column
            axes[index // cols][index % cols].set_xlabel("optimizer step", fontsize=8)
    return _save(figure, path, rect=(0, 0.5 / height, 1, 1), dpi=90)  # room for the legend below the panels


def compute_line(root: Path) -> str:
    """The study's compute: the finished runs' summed wall time (each job's own, from metrics.json)."""
    walls = []
    for final in sorted(root.glob("experiment=*/seed=*/metrics.json")):
        wall = json.loads(final.read_text()).get("wall_time_s")
        if wall is not None:
            walls.append(float(wall))
    if not walls:
        return ""
    total = sum(walls) / 60
    return (
        f"Compute: {len(walls)} finished runs, {total:.0f} minutes of job wall time in all "
        f"(about {total / 2:.0f} minutes on 2 cores at two jobs at a time)."
    )


def generated_block(study: Study, root: Path, out_dir: Path, docs: Path, repo: Path, level: int = 2) -> str:
    """Run ``dataflex-report`` over the study directory into ``out_dir`` and return the markdown that
    goes between the study's markers in docs/results.md (the table, the plots, the provenance).
    ``level``: the heading level of the section holding the block; the report's ``##`` sections
    become one level below it."""
    if not root.is_dir():
        return f"Not run yet: no `{root}`.\n"
    command = [
        sys.executable,
        "-m",
        "dataflex.cli.report",
        str(root),
        "--out",
        str(out_dir),
        *study.report_args,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:  # e.g. no run has finished yet: the plain report lists the unfinished ones
        command = command[: command.index("--metric")]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return f"`dataflex-report` failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}\n"
    text = (out_dir / "report.md").read_text()
    rel = out_dir.relative_to(docs.parent) if out_dir.is_relative_to(docs.parent) else out_dir
    if study.name in ("mixture", "planted"):
        # the page uses plot_mixture instead of the report's proportions plot: a compact grid that
        # also shows the DoReMi proxy's loss weights alpha (it samples uniformly, so the report has no panel).
        (out_dir / "report_proportions.png").unlink(missing_ok=True)
        text = "\n".join(line for line in text.splitlines() if not line.startswith("![proportions]"))
        if plot_mixture(study, root, out_dir / "proportions.png"):
            text += "\n![proportions](proportions.png)\n"
    text = text.replace("](report_", f"]({rel.as_posix()}/report_").replace(
        "](proportions.png", f"]({rel.as_posix()}/proportions.png"
    )
    text = text.replace(str(repo) + "/", "")
    # arms are named by their experiment file: show the arm's own name (paper_small_<study>_<arm> -> <arm>)
    lines = [
        _demote(line.replace(f"experiment={study.prefix}_", ""), level - 1)
        for line in text.splitlines()
        if not line.startswith("# Comparison")
    ]
    launches = _manifests(root)
    produced = producing_launches(root, launches)
    commits = sorted(
        {(launch.get("commit") or "?")[:10] + (" (dirty tree)" if launch.get("dirty") else "") for launch in produced}
    )
    seeds = sorted({str(job["seed"]) for launch in launches for job in launch.get("jobs") or []})
    provenance = [
        "",
        f"Generated by `dataflex-report {root.relative_to(repo) if root.is_relative_to(repo) else root} "
        f"{' '.join(study.report_args)}` "
        f"(through `python sweeps/paper_small.py results`).",
        f"Launches recorded: {len(launches)}, of which {len(produced)} produced the finished runs here, "
        f"at commits {', '.join(commits) or 'none recorded'}; seeds launched: {','.join(seeds) or 'none'}. "
        f"{compute_line(root)} The commands of those launches:",
        "",
    ]
    provenance += sorted({f"    {launch.get('command')}" for launch in produced if launch.get("command")})
    return (
        "\n".join(
            [*lines, "", *(_doremi_weights(root, study) if study.name in ("mixture", "planted") else []), *provenance]
        )
        + "\n"
    )


def _demote(line: str, by: int) -> str:
    """A markdown heading ``by`` levels deeper; any other line as it is."""
    return "#" * by + line if line.startswith("#") and by > 0 else line


def _enclosing_level(text: str) -> int:
    """The level of the last markdown heading in ``text`` (2 when there is none)."""
    headings = [line for line in text.splitlines() if line.startswith("#")]
    return len(headings[-1]) - len(headings[-1].lstrip("#")) if headings else 2


def results(argv: list[str]) -> int:
    """Regenerate the generated blocks of docs/results.md (tables, plots, provenance) from the study
    directories; the prose around the markers is kept. A study without outputs on this machine keeps
    its block as it is (its runs may live elsewhere); one never run gets a "Not run yet" block."""
    parser = argparse.ArgumentParser(prog="paper_small.py results", description=results.__doc__)
    parser.add_argument("studies", nargs="*", help=f"the studies to regenerate, of {', '.join(STUDIES)} (default: all)")
    parser.add_argument("--doc", default=str(HERE.parent / "docs" / "results.md"))
    parser.add_argument(
        "--outputs",
        default=os.environ.get("DATAFLEX_OUTPUTS", "outputs"),
        help="the output root holding paper_small/<study> (default: $DATAFLEX_OUTPUTS or outputs)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.studies if name not in STUDIES]
    if unknown:
        parser.error(f"unknown study {', '.join(unknown)}: choose from {', '.join(STUDIES)}")
    doc, repo = Path(args.doc).resolve(), HERE.parent
    text = doc.read_text() if doc.is_file() else ""
    for study in (STUDIES[name] for name in args.studies or STUDIES):
        begin, end = BEGIN.format(study.name), END.format(study.name)
        root = (Path(args.outputs).expanduser() / "paper_small" / study.name).resolve()
        present = begin in text and end in text
        if present and not root.is_dir() and "Not run yet" not in text.split(begin, 1)[1].split(end, 1)[0]:
            print(f"[paper_small] {study.name}: no {root} here; its block is kept as it is", flush=True)
            continue
        head = text.split(begin, 1)[0] if present else text
        block = generated_block(study, root, doc.parent / "results" / study.name, doc, repo, _enclosing_level(head))
        if present:
            text = head + begin + "\n" + block + end + text.split(begin, 1)[1].split(end, 1)[1]
        else:
            text += f"\n{begin}\n{block}{end}\n"
        print(f"[paper_small] {study.name}: {root}", flush=True)
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"[paper_small] wrote {doc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["results"]:
        return results(argv[1:])
    parser = argparse.ArgumentParser(
        description="run one study of the small-scale reproduction (docs/results.md); "
        "`results` regenerates the tables of docs/results.md"
    )
    parser.add_argument("study", choices=sorted(STUDIES))
    parser.add_argument("--script", default=None)
    split = argv.index("--") if "--" in argv else len(argv)
    spec, user = parser.parse_args(argv[:split]), argv[split + 1 :]
    study = STUDIES[spec.study]
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    try:
        sweeps = plan(study, user, spec.script)
    except engine.SweepError as err:
        print(f"{spec.script or study.prefix}: error: {err}", file=sys.stderr)
        return 2
    for index, sweep in enumerate(sweeps, 1):
        print(f"[paper_small] {study.name}: phase {index}/{len(sweeps)} ({sweep.phase})", flush=True)
        try:
            code = sweep.run()
        except engine.SweepError as err:
            print(f"{spec.script or study.prefix}: error: {err}", file=sys.stderr)
            return 2
        if code != 0:
            print(
                f"[paper_small] phase {sweep.phase} failed (exit {code}); later phases not started. Rerun the same "
                f"command to resume.",
                file=sys.stderr,
            )
            return code
    if sweeps and not sweeps[0].args.dry_run and "--no-report" not in user:
        return report(study, sweeps[0].sweep_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
