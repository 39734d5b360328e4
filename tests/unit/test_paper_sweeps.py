"""sweeps/paper_small_*.sh (the study behind docs/results.md): job lists, phase order, equal token
budgets across arms, and the DoReMi steps finding each other. Dry runs only: nothing trains here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from dataflex.config import register_resolvers

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "sweeps"
_spec = importlib.util.spec_from_file_location("dataflex_paper_small", SWEEPS / "paper_small.py")
paper_small = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = paper_small  # dataclasses look their module up
_spec.loader.exec_module(paper_small)
MIXTURE, SELECTION = paper_small.STUDIES["mixture"], paper_small.STUDIES["selection"]
SweepError = paper_small.engine.SweepError

register_resolvers()


def compose_job(job: dict) -> dict:
    """The config a job of the plan runs (resolved, as a plain dict)."""
    with initialize_config_module(config_module="dataflex.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(job["overrides"]))
    return OmegaConf.to_container(cfg, resolve=True)


def token_budget(cfg: dict) -> int:
    """Training tokens per job, upper bound: steps x batch x accumulation x processes x cutoff_len."""
    t = cfg["trainer"]
    return (
        t["max_steps"]
        * t["per_device_train_batch_size"]
        * t["gradient_accumulation_steps"]
        * cfg["nproc"]
        * cfg["data"]["cutoff_len"]
    )


def test_mixture_plan_is_three_phases_in_the_doremi_order(tmp_path):
    sweeps = paper_small.plan(MIXTURE, ["local", f"hydra.sweep.dir={tmp_path}"])
    assert [s.phase for s in sweeps] == ["mixers", "doremi_proxy", "doremi"]
    dirs = [[j["dir"] for j in s.jobs()] for s in sweeps]
    assert dirs[0] == [
        f"experiment=paper_small_mixture_{arm}/seed={seed}"
        for arm in ("uniform", "natural", "random", "odm")
        for seed in (1, 2, 3)
    ]
    assert dirs[1] == [f"experiment=paper_small_mixture_doremi_proxy/seed={seed}" for seed in (1, 2, 3)]
    assert dirs[2] == [f"experiment=paper_small_mixture_doremi/seed={seed}" for seed in (1, 2, 3)]
    assert {s.sweep_dir for s in sweeps} == {tmp_path.resolve()}  # one study directory: one report merges all
    for s in sweeps:
        command = s.command()
        assert "hydra/launcher=local" in command and "logger=jsonl" in command
        assert f"++paper_small.root={tmp_path.resolve()}" in command


def test_doremi_steps_read_the_natural_arm_and_the_proxy_of_the_same_seed(tmp_path):
    root = tmp_path.resolve()
    sweeps = paper_small.plan(MIXTURE, ["local", f"hydra.sweep.dir={root}", "seed=2"])
    natural = next(j for j in sweeps[0].jobs() if "natural" in j["dir"])
    (proxy,) = sweeps[1].jobs()
    (final,) = sweeps[2].jobs()
    assert compose_job(proxy)["mixer"]["reference_dir"] == str(root / natural["dir"])
    assert compose_job(final)["mixer"]["proportions_file"] == str(root / proxy["dir"] / "doremi_weights.json")
    # step 1 is exactly experiment=doremi_reference's recipe: static by domain size on the same model/data
    reference = compose_job(natural)
    assert reference["mixer"]["_target_"].endswith("StaticMixer") and reference["mixer"]["proportions"] is None
    assert compose_job(proxy)["mixer"]["_target_"].endswith("DoReMiMixer")


@pytest.mark.parametrize("study", [MIXTURE, SELECTION], ids=lambda s: s.name)
def test_every_arm_has_the_same_token_budget_model_and_data(study, tmp_path):
    sweeps = paper_small.plan(study, ["local", f"hydra.sweep.dir={tmp_path}", "seed=1"])
    jobs = [j for s in sweeps for j in s.jobs()]
    assert [j["dir"].split("/")[0] for j in jobs] == [f"experiment={study.experiment(a)}" for a in study.arms]
    configs = [compose_job(j) for j in jobs]
    budgets = {token_budget(c) for c in configs}
    assert len(budgets) == 1, budgets
    shared = {
        (
            c["model"]["name"],
            c["data"]["name"],
            c["data"]["max_samples"],
            c["trainer"]["learning_rate"],
            c["trainer"]["lr_scheduler_type"],
            c["eval"]["max_samples"],
        )
        for c in configs
    }
    assert len(shared) == 1, shared
    if study is MIXTURE:
        # packed pretraining blocks: every sequence is cutoff_len tokens, so the budget is exact
        assert budgets == {100 * 8 * 256} and {c["trainer"]["stage"] for c in configs} == {"pt"}
        assert {c["model"]["name"] for c in configs} == {"tiny"}
    else:
        assert budgets == {24 * 8 * 256} and {c["model"]["name"] for c in configs} == {"smollm2_135m"}
        assert {c["trainer"]["finetuning_type"] for c in configs} == {"lora"}


def test_selection_arms_share_the_budget_and_the_target():
    configs = {a: compose_job(j) for a, j in zip(SELECTION.arms, paper_small.plan(SELECTION, ["seed=1"])[0].jobs())}
    selectors = {a: c["selector"] for a, c in configs.items()}
    assert selectors["static"]["name"] == "static" and "budget" not in selectors["static"]
    assert selectors["loss_weighter"]["name"] == "static" and configs["loss_weighter"]["weighter"]["name"] == "loss"
    assert all(c["weighter"]["name"] == "none" for a, c in configs.items() if a != "loss_weighter")
    dynamic = [a for a in SELECTION.arms if a not in ("static", "loss_weighter")]
    assert {selectors[a]["budget"] for a in dynamic} == {0.1}
    assert {a: selectors[a]["name"] for a in dynamic} == {a: a for a in dynamic}
    online = ("random", "loss", "delta_loss", "less", "nice")
    assert {(selectors[a]["warmup_steps"], selectors[a]["update_every"]) for a in online} == {(8, 8)}
    assert {(selectors[a]["warmup_steps"], selectors[a]["update_every"]) for a in ("near", "tsds")} == {(0, 0)}
    assert {c["data"]["validation"] for c in configs.values()} == {"offline_sft_val_mcq"}
    assert configs["static"]["eval"]["before"] is True  # the base model's numbers, once per seed


def test_arms_option_runs_a_part_and_skips_empty_phases(tmp_path):
    sweeps = paper_small.plan(MIXTURE, ["--arms", "odm,doremi", f"hydra.sweep.dir={tmp_path}", "seed=3"])
    assert [(s.phase, [j["dir"] for j in s.jobs()]) for s in sweeps] == [
        ("mixers", ["experiment=paper_small_mixture_odm/seed=3"]),
        ("doremi", ["experiment=paper_small_mixture_doremi/seed=3"]),
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arms", "odm,bogus"], "arms are uniform,natural,random,odm,doremi_proxy,doremi"),
        (["--arms="], "arms are"),
        (["experiment=paper_small_mixture_odm"], "pick arms with --arms"),
        (["slurmm"], "unknown launcher 'slurmm'"),
    ],
)
def test_bad_arguments_are_one_clear_error(args, message):
    with pytest.raises(SweepError, match=message):
        paper_small.plan(MIXTURE, args)


def test_default_study_directory_follows_the_output_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAFLEX_OUTPUTS", str(tmp_path))
    sweep = paper_small.plan(SELECTION, [])[0]
    assert sweep.sweep_dir == (tmp_path / "paper_small" / "selection").resolve()
    assert (
        paper_small.plan(SELECTION, [f"paths.output_root={tmp_path / 'o'}"])[0].sweep_dir
        == (tmp_path / "o" / "paper_small" / "selection").resolve()
    )


@pytest.mark.slow  # a subprocess that composes and checks three arms: 20-60 s on a busy 2-core machine
def test_script_dry_run_prints_every_phase_and_launches_nothing(tmp_path):
    env = {**os.environ, "DATAFLEX_PYTHON": sys.executable}
    out = subprocess.run(
        [
            str(SWEEPS / "paper_small_mixture.sh"),
            "--dry-run",
            "--arms",
            "natural,doremi_proxy,doremi",
            "seed=1",
            f"hydra.sweep.dir={tmp_path / 'study'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "phase 1/3 (mixers)" in out.stdout and "phase 3/3 (doremi)" in out.stdout
    assert out.stdout.count("dry run: nothing launched") == 3
    assert "experiment=paper_small_mixture_doremi_proxy/seed=1" in out.stdout
    assert not (tmp_path / "study").exists()  # no manifest, no job directory


def _fake_run(run_dir: Path, seed: int, ppl: float) -> None:
    """A finished run directory as dataflex-run leaves it (only the files the report reads)."""
    run_dir.mkdir(parents=True)
    (run_dir / "dataflex_config.yaml").write_text(
        f"seed: {seed}\nmixer:\n  _target_: dataflex.mixers.static.StaticMixer\n  name: static\n"
    )
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "train/loss": 5.0, "train/num_input_tokens_seen": 2048}\n')
    metrics = {
        "global_step": 1,
        "wall_time_s": 10.0,
        "eval_after": {"ppl/avg": ppl, "ppl/worst": ppl + 1, **{f"ppl/{d}": ppl for d in paper_small.DOMAINS}},
    }
    (run_dir / "metrics.json").write_text(__import__("json").dumps(metrics))


@pytest.mark.slow  # dataflex-report in a subprocess (matplotlib): 10-50 s on a busy 2-core machine
def test_results_page_splices_the_report_between_markers_and_keeps_the_prose(tmp_path):
    root = tmp_path / "out" / "paper_small" / "mixture"
    for seed, ppl in ((1, 10.0), (2, 14.0)):
        _fake_run(root / "experiment=paper_small_mixture_uniform" / f"seed={seed}", seed, ppl)
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    begin, end = paper_small.BEGIN.format("mixture"), paper_small.END.format("mixture")
    doc.write_text(f"# Results\n\nprose before\n\n{begin}\nstale table\n{end}\n\nprose after\n")
    assert paper_small.results(["--doc", str(doc), "--outputs", str(tmp_path / "out")]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nprose before\n")
    assert f"{end}\n\nprose after\n" in text  # the prose after the block stays where it was
    assert "stale table" not in text and text.count(begin) == 1
    assert "Compute: 2 finished runs, 0 minutes of job wall time in all" in text  # 2 x 10 s
    row = next(line for line in text.splitlines() if line.startswith("| **uniform**"))
    assert "| 12.0000 ± 2.8284 |" in row  # mean and sample std of 10 and 14, by the report
    assert (
        "](results/mixture/report_loss.png)" in text
        and (doc.parent / "results" / "mixture" / "report_loss.png").is_file()
    )
    assert "Not run yet" in text.split(paper_small.BEGIN.format("selection"))[1]  # the other study, appended


def test_mixture_plot_averages_the_finished_seeds(tmp_path, monkeypatch):
    """One panel per arm with finished runs: the seeds' mean of each decision held step by step
    (the proxy's alpha for doremi_proxy); an unfinished run (no metrics.json) is left out."""
    import json

    def make(arm, seed, records, finished=True):
        run_dir = tmp_path / f"experiment={MIXTURE.experiment(arm)}" / f"seed={seed}"
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        if finished:
            (run_dir / "metrics.json").write_text(json.dumps({"global_step": 4}))

    p = "mixer/proportion/offline_domains_"
    make("odm", 1, [{"step": 0, p + "code": 0.5, p + "drama": 0.5}, {"step": 2, p + "code": 0.7, p + "drama": 0.3}])
    make("odm", 2, [{"step": 0, p + "code": 0.3, p + "drama": 0.7}])
    make("odm", 3, [{"step": 0, p + "code": 1.0, p + "drama": 0.0}], finished=False)
    a = "mixer/doremi/alpha/offline_domains_"
    make("doremi_proxy", 1, [{"step": 0, a + "code": 0.2, a + "drama": 0.8, p + "code": 0.5, p + "drama": 0.5}])
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    panels = []
    original = Axes.stackplot

    def spy(self, x, *ys, labels=(), **kwargs):
        panels.append((list(x), [list(y) for y in ys[0]], list(labels)))
        return original(self, x, *ys, labels=labels, **kwargs)

    monkeypatch.setattr(Axes, "stackplot", spy)
    png = paper_small.plot_mixture(MIXTURE, tmp_path, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(panels) == 2 and all(x == [0, 1, 2, 3, 4] and labels == ["code", "drama"] for x, _, labels in panels)
    proxy, odm = sorted((ys for _, ys, _ in panels), key=lambda ys: ys[0][0])  # alpha(code) 0.2 < odm's 0.4
    assert proxy == [[0.2] * 5, [0.8] * 5]
    assert odm == [pytest.approx([0.4, 0.4, 0.5, 0.5, 0.5]), pytest.approx([0.6, 0.6, 0.5, 0.5, 0.5])]


def test_provenance_names_the_launches_that_produced_the_runs(tmp_path):
    """A run's producer is the latest launch listing its job created before its metrics.json; a later
    rerun (a finished run writes nothing) and a launch of other jobs do not count."""
    from datetime import datetime

    def run(job, written):
        final = tmp_path / job / "metrics.json"
        final.parent.mkdir(parents=True)
        final.write_text("{}")
        os.utime(final, (written, written))

    t0 = 1_800_000_000  # seconds since the epoch

    def iso(t):
        return datetime.fromtimestamp(t, UTC).isoformat()  # as the manifests write "created"

    run("experiment=a/seed=1", t0 + 100)
    run("experiment=b/seed=1", t0 + 300)

    def job(d):
        return {"dir": d}

    launches = [
        {"created": iso(t0), "commit": "old", "jobs": [job("experiment=a/seed=1"), job("experiment=b/seed=1")]},
        {"created": iso(t0 + 200), "commit": "new", "jobs": [job("experiment=b/seed=1")]},
        {"created": iso(t0 + 400), "commit": "rerun", "jobs": [job("experiment=a/seed=1"), job("experiment=b/seed=1")]},
        {"created": iso(t0 + 50), "commit": "other", "jobs": [job("experiment=c/seed=1")]},
    ]
    produced = paper_small.producing_launches(tmp_path, launches)
    assert [launch["commit"] for launch in produced] == ["old", "new"]  # a from the first, b from the second


def test_results_keeps_the_block_of_a_study_without_outputs_here(tmp_path, capsys):
    """A study whose runs are not on this machine keeps its numbers; only the named studies are touched."""
    doc = tmp_path / "results.md"
    begin, end = paper_small.BEGIN, paper_small.END
    blocks = [f"{begin.format(name)}\n{name} numbers\n{end.format(name)}" for name in paper_small.STUDIES]
    doc.write_text("# Results\n\n" + "\n\n".join(blocks) + "\n")
    assert paper_small.results(["mixture", "--doc", str(doc), "--outputs", str(tmp_path / "none")]) == 0
    assert doc.read_text() == "# Results\n\n" + "\n\n".join(blocks) + "\n"
    out = capsys.readouterr().out
    assert "mixture: no " in out and "its block is kept" in out and "selection" not in out


def test_report_headings_go_one_level_below_the_enclosing_section():
    assert paper_small._enclosing_level("# Results\n\n### Planted target\n\ntext\n") == 3
    assert paper_small._enclosing_level("no heading") == 2
    assert paper_small._demote("## Selection composition", 2) == "#### Selection composition"
    assert paper_small._demote("| ## not a heading |", 2) == "| ## not a heading |"
    assert paper_small._demote("## kept", 0) == "## kept"


def test_odm_replay_reproduces_a_log_written_by_the_pinned_update(tmp_path):
    """sweeps/probe_odm_replay.py: a log whose proportions follow ALGORITHMS.md's update (drawn under the
    previous step's proportions) replays with zero error; a tampered proportion shows as the error."""
    import json

    import torch

    from dataflex.mixers.odm import exp3_probabilities, odm_update_rewards

    spec = importlib.util.spec_from_file_location("probe_odm_replay", SWEEPS / "probe_odm_replay.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    names = ["a", "b", "noise"]
    rewards, pi = torch.zeros(3, dtype=torch.float64), torch.full((3,), 1 / 3, dtype=torch.float64)
    lines = [{"step": 0, **{f"mixer/proportion/{n}": 1 / 3 for n in names}}]
    for step in range(1, 60):
        losses = {"a": 5.0, "noise": 7.0} if step % 2 else {"b": 4.0, "noise": 7.5}  # `a` and `b` take turns
        loss = torch.tensor([losses.get(n, float("nan")) for n in names], dtype=torch.float64)
        rewards = odm_update_rewards(rewards, loss, pi, ~loss.isnan())
        pi = exp3_probabilities(rewards, step)
        lines.append({"step": step, **{f"train/domain_loss/{n}": v for n, v in losses.items()}})
        lines.append({"step": step, **{f"mixer/proportion/{n}": p for n, p in zip(names, pi.tolist())}})
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(map(json.dumps, lines)))
    replayed, final, worst, last = probe.replay(*probe.logged_series(path))
    assert last == 59 and worst < 1e-12 and torch.allclose(final, pi) and torch.allclose(replayed, rewards)
    assert final[2] == final.max()  # the highest-loss domain gains probability
    lines[-1]["mixer/proportion/noise"] += 0.01
    path.write_text("\n".join(map(json.dumps, lines)))
    assert probe.replay(*probe.logged_series(path))[2] == pytest.approx(0.01)
