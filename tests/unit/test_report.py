"""dataflex-report on synthetic run directories with hand-computed means and standard deviations."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dataflex.config import ConfigError
from dataflex.report import (
    arm_and_seed,
    build_report,
    find_runs,
    load_run,
    lower_is_better,
    mean_std,
    write_report,
)

PNG = b"\x89PNG\r\n\x1a\n"
DOMAINS = ["code", "drama"]


def make_run(
    run_dir: Path,
    *,
    seed=1,
    evals=None,
    losses=(3.0, 2.5, 2.0),
    kind=None,
    name=None,
    tokens=None,
    wall=10.0,
    finished=True,
    proportions=None,
    overlaps=None,
    cutoff_len=64,
):
    """A run directory as a Run writes it: config, JSONL records and (when finished) metrics.json."""
    run_dir.mkdir(parents=True)
    config = {
        "seed": seed,
        "nproc": 1,
        "model": {"name": "tiny"},
        "data": {"name": "synthetic", "cutoff_len": cutoff_len},
        "trainer": {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
        "selector": {"name": "none"},
        "mixer": {"name": "none"},
        "weighter": {"name": "none"},
    }
    if kind:
        config[kind] = {"_target_": f"x.{name}", "name": name}
    (run_dir / "dataflex_config.yaml").write_text(yaml.safe_dump(config))
    records = []
    for step, loss in enumerate(losses, start=1):
        record = {"step": step, "time": 0.0, "train/loss": loss}
        if tokens is not None:
            record["train/num_input_tokens_seen"] = tokens * step // len(losses)
        records.append(record)
    for step, values in (proportions or {}).items():
        records.append({"step": step, **{f"mixer/proportion/{d}": p for d, p in values.items()}})
    for step, overlap in (overlaps or {}).items():
        records.append({"step": step, "selector/selected": 8, "selector/overlap": overlap})
    lines = [json.dumps(r) for r in records]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + ('{"step": 9, "torn' if not finished else ""))
    if finished:
        metrics = {
            "global_step": len(losses),
            "eval_after": evals or {},
            "wall_time_s": wall,
            "final_train_loss": losses[-1],
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def mixer_sweep(tmp_path):
    """Two arms: odm with seeds 1,2,3 (ppl 10, 12, 14) and random with seeds 1,2 (ppl 8, 9)."""
    sweep = tmp_path / "compare_mixers"
    for seed, ppl, acc in [(1, 10.0, 0.5), (2, 12.0, 0.7), (3, 14.0, 0.9)]:
        make_run(
            sweep / "mixer=odm" / f"seed={seed}",
            seed=seed,
            evals={"ppl/avg": ppl, "em/x": acc},
            kind="mixer",
            name="odm",
            tokens=1000 * seed,
            wall=10.0 * seed,
            proportions={0: {"code": 0.5, "drama": 0.5}, 2: {"code": 0.2 * seed, "drama": 1 - 0.2 * seed}},
        )
    for seed, ppl in [(1, 8.0), (2, 9.0)]:
        make_run(
            sweep / "mixer=random" / f"seed={seed}",
            seed=seed,
            evals={"ppl/avg": ppl, "em/x": 0.1},
            kind="mixer",
            name="random",
            tokens=2000,
            wall=4.0,
            losses=(3.0, 2.0, 1.0),
        )
    make_run(sweep / "mixer=static" / "seed=1", finished=False, kind="mixer", name="static")
    (sweep / ".submitit" / "123").mkdir(parents=True)  # never mistaken for a run
    return sweep


def test_mean_and_sample_std_by_hand():
    assert mean_std([10.0, 12.0, 14.0]) == (12.0, 2.0)  # sqrt((4 + 0 + 4) / 2)
    mean, std = mean_std([8.0, 9.0])
    assert mean == 8.5 and std == pytest.approx(math.sqrt(0.5))
    assert mean_std([5.0]) == (5.0, None)


def test_sweep_table_rows_per_arm_with_hand_values(mixer_sweep):
    report = build_report([mixer_sweep])
    arms = {a.name: a for a in report.arms}
    assert set(arms) == {"mixer=odm", "mixer=random"}  # the unfinished static run is not an arm
    odm, rnd = arms["mixer=odm"], arms["mixer=random"]
    assert odm.seeds == [1, 2, 3] and rnd.seeds == [1, 2]
    assert odm.stats["ppl/avg"] == (12.0, 2.0)
    assert rnd.stats["ppl/avg"][0] == 8.5 and rnd.stats["ppl/avg"][1] == pytest.approx(0.70710678)
    assert odm.stats["em/x"][0] == pytest.approx(0.7) and odm.stats["em/x"][1] == pytest.approx(0.2)
    assert odm.tokens == pytest.approx(2000) and odm.tokens_exact  # (1000 + 2000 + 3000) / 3, counted
    assert odm.wall_time_s == pytest.approx(20.0) and rnd.wall_time_s == pytest.approx(4.0)
    assert odm.method == "mixer=odm"
    assert report.metric == "ppl/avg"  # lower is better: random (8.5) beats odm (12)
    rows = {line.split(" | ")[0]: line for line in report.table.splitlines() if line.startswith("| ")}
    assert rows["| **mixer=random** ★"].split(" | ")[3:5] == ["0.1000 ± 0.0000", "8.5000 ± 0.7071"]
    assert rows["| mixer=odm"].split(" | ")[1:5] == ["mixer=odm", "1,2,3", "0.7000 ± 0.2000", "12.0000 ± 2.0000"]
    assert rows["| mixer=odm"].rstrip(" |").split(" | ")[-2:] == ["2,000", "20 s"]


def test_best_row_follows_the_metric_direction(mixer_sweep):
    report = build_report([mixer_sweep], metric="em/x")  # accuracy-like: higher is better
    assert "| **mixer=odm** ★ |" in report.table and "| mixer=random |" in report.table
    assert lower_is_better("ppl/avg") and lower_is_better("loss/code") and not lower_is_better("em/arithmetic")
    assert lower_is_better("nll/facts") and lower_is_better("eval_after/nll/facts")
    with pytest.raises(ConfigError, match="was not evaluated"):
        build_report([mixer_sweep], metric="bogus")


def test_report_files_and_plots(mixer_sweep):
    report = write_report([mixer_sweep])
    text = (mixer_sweep / "report.md").read_text()
    assert report.path == mixer_sweep / "report.md"
    assert report.table in text and "Unfinished runs (1" in text and "mixer=static" in text
    assert set(report.plots) == {"metric", "loss", "proportions"}  # no selector ran: no overlap plot
    for path in report.plots.values():
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
        assert f"]({path.name})" in text


def test_selection_overlap_plot_for_selectors(tmp_path):
    sweep = tmp_path / "compare_selectors"
    for arm in ("loss", "random"):
        make_run(
            sweep / f"selector={arm}" / "seed=1",
            kind="selector",
            name=arm,
            evals={"em/a": 0.2},
            overlaps={2: 0.5, 4: 0.75},
        )
    report = write_report([sweep], out_dir=tmp_path / "out")
    assert set(report.plots) == {"metric", "loss", "selection_overlap"}
    assert (tmp_path / "out" / "report.md").is_file()
    assert report.plots["selection_overlap"].read_bytes()[:8] == PNG
    assert "tokens" in report.table and "≤" in report.table  # not counted: the upper bound 3 x 8 x 64


def test_single_run_directory(tmp_path):
    run = make_run(tmp_path / "2026-01-01_00-00-00", evals={"mcq/definitions/accuracy": 0.25})
    report = write_report([run])
    assert [a.name for a in report.arms] == ["2026-01-01_00-00-00"] and report.arms[0].method == "plain"
    assert report.arms[0].stats["mcq/definitions/accuracy"] == (0.25, None)
    assert "| 0.2500 |" in report.table and (run / "report.md").is_file()
    assert report.arms[0].tokens == 3 * 4 * 2 * 64 and not report.arms[0].tokens_exact


def test_resumed_steps_count_once_and_torn_lines_are_skipped(tmp_path):
    run = make_run(tmp_path / "r", losses=(3.0, 2.0))
    with (run / "metrics.jsonl").open("a") as f:  # a resumed run logs step 2 again; the later record wins
        f.write("\n" + json.dumps({"step": 2, "train/loss": 1.5}) + "\n")
    assert load_run(run).losses == {1: 3.0, 2: 1.5}


def test_arms_never_split_by_seed():
    assert arm_and_seed(Path("/s/mixer=odm/seed=3"), {}) == ("mixer=odm", "3")
    assert arm_and_seed(Path("/m/0/model=tiny,seed=2"), {"seed": 2}) == ("model=tiny", 2)
    assert arm_and_seed(Path("/runs/2026-01-01"), {"seed": 42}) == ("2026-01-01", 42)


def test_find_runs_skips_internal_directories(mixer_sweep):
    (mixer_sweep / "mixer=odm" / "seed=1" / "wandb" / "x").mkdir(parents=True)
    (mixer_sweep / "mixer=odm" / "seed=1" / "wandb" / "x" / "metrics.jsonl").write_text("{}\n")
    runs = find_runs([mixer_sweep])
    assert len(runs) == 6 and all("wandb" not in r.parts for r in runs)


def test_cli_prints_the_table_and_fails_in_one_line(mixer_sweep, tmp_path):
    cli = Path(sys.executable).parent / "dataflex-report"
    result = subprocess.run([str(cli), str(mixer_sweep), "--metrics", "ppl/avg"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "| arm | method | seeds | ppl/avg | tokens | wall time |" in result.stdout
    assert "**mixer=random** ★" in result.stdout and "report.md" in result.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([str(cli), str(empty)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("dataflex-report: error: no run directories")
    assert "Traceback" not in result.stderr


def test_notebook_runs_top_to_bottom_offline(mixer_sweep, monkeypatch):
    """notebooks/compare_methods.ipynb on a sweep directory, executed with nbclient."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "compare_methods.ipynb"
    monkeypatch.setenv("DATAFLEX_SWEEP_DIR", str(mixer_sweep))
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    shown = "".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", "")) for o in outputs)
    assert "**mixer=random** ★" in shown and "6 run(s), 2 arm(s)" in shown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # training loss and domain proportions (no selector in this sweep)


def test_report_table_logged_to_wandb_offline(mixer_sweep, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from dataflex.report import log_to_wandb

    report = write_report([mixer_sweep])
    run_dir = log_to_wandb(report, group="compare_mixers")
    assert run_dir.parent == mixer_sweep / "wandb" and run_dir.name.startswith("offline-run-")
    assert any(run_dir.rglob("*.wandb"))
    tables = list(run_dir.rglob("report/table*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"][:3] == ["arm", "method", "seeds"] and len(table["data"]) == 2
    best = [row for row in table["data"] if row[-1]]
    assert [row[0] for row in best] == ["mixer=random"]


def test_arms_tied_for_best_are_all_marked(tmp_path):
    for arm in ("a", "b", "c"):
        make_run(
            tmp_path / "s" / f"selector={arm}" / "seed=1",
            kind="selector",
            name=arm,
            evals={"em/x": 0.5 if arm != "c" else 0.25},
        )
    table = build_report([tmp_path / "s"]).table
    assert "| **selector=a** ★ |" in table and "| **selector=b** ★ |" in table and "| selector=c |" in table


def test_a_single_mixer_decision_is_drawn_to_the_end_of_the_run():
    """A static mixer logs its proportions once (step 0): the plot holds them until the last step."""
    from dataflex.report import _stackplot

    class Axes:
        def stackplot(self, x, ys, **kwargs):
            self.x, self.ys = list(x), [list(y) for y in ys]

        def set(self, **kwargs):
            self.xlim = kwargs["xlim"]

        def legend(self, **kwargs):
            pass

    axes = Axes()
    _stackplot(axes, {0: {"code": 0.25, "drama": 0.75}}, "static", end=100)
    assert axes.x == [0, 100] and axes.ys == [[0.25, 0.25], [0.75, 0.75]] and axes.xlim == (0, 100)


def test_decisions_held_step_by_step_with_another_prefix():
    from dataflex.report import held_by_step, proportions_by_step

    records = [
        {"step": 0, "mixer/doremi/alpha/code": 0.5, "mixer/doremi/alpha/drama": 0.5, "mixer/proportion/code": 1.0},
        {"step": 1, "train/loss": 3.0},
        {"step": 2, "mixer/doremi/alpha/code": 0.9, "mixer/doremi/alpha/drama": 0.1},
        {"step": 2, "mixer/doremi/alpha/code": 0.8},  # the later record of a step wins; drama absent -> 0
    ]
    by_step = proportions_by_step(records, "mixer/doremi/alpha/")
    assert by_step == {0: {"code": 0.5, "drama": 0.5}, 2: {"code": 0.8}}
    assert held_by_step(by_step, 3) == {"code": [0.5, 0.5, 0.8, 0.8], "drama": [0.5, 0.5, 0.0, 0.0]}
    assert proportions_by_step(records) == {0: {"code": 1.0}}
    assert held_by_step({}, 3) == {}


def test_metric_plot_shows_every_seed_and_the_best_arm_on_top(mixer_sweep, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    from dataflex.report import plot_metric

    dots, bars = [], []
    monkeypatch.setattr(Axes, "scatter", lambda self, x, y, **kw: dots.append((list(x), list(y))))
    monkeypatch.setattr(Axes, "errorbar", lambda self, x, y, xerr=None, **kw: bars.append((x[0], y[0], xerr[0][0])))
    report = build_report([mixer_sweep])
    path = plot_metric(report.arms, "ppl/avg", mixer_sweep / "m.png")
    assert path.read_bytes()[:8] == PNG
    # lower perplexity is better: random (8.5) on top (the highest y), odm (12) below it
    assert [x for x, _ in dots] == [[10.0, 12.0, 14.0], [8.0, 9.0]]
    assert dots[0][1] == pytest.approx([-0.15, 0.0, 0.15]) and dots[1][1] == pytest.approx([0.85, 1.15])
    assert bars[0] == (12.0, 0, 2.0) and bars[1][:2] == (8.5, 1) and bars[1][2] == pytest.approx(math.sqrt(0.5))
    assert plot_metric(report.arms, None, mixer_sweep / "none.png") is None


def test_short_names_drop_the_shared_prefix_at_a_boundary():
    from dataflex.report import _short_names

    assert _short_names(["experiment=paper_small_selection_less", "experiment=paper_small_selection_loss"]) == [
        "less",
        "loss",
    ]
    assert _short_names(["mixer=odm", "mixer=random"]) == ["odm", "random"]
    assert _short_names(["mixer=odm,seed", "mixer=odm"]) == ["odm,seed", "odm"]  # a name that is the prefix stays whole
    assert _short_names(["a", "b"]) == ["a", "b"] and _short_names(["only=one"]) == ["only=one"]


def test_paired_differences_to_a_baseline_by_hand(mixer_sweep):
    """odm (ppl 10, 12 on seeds 1, 2; seed 3 has no partner) minus random (8, 9): +2, +3 -> 2.5 ± 0.7071,
    worse on both seeds (lower is better); em/x 0.5-0.1, 0.7-0.1 -> 0.5 ± 0.1414, better on both."""
    report = build_report([mixer_sweep], baseline="random")  # the end of `mixer=random`
    assert "## Paired differences to mixer=random" in report.markdown
    paired = report.markdown.split("## Paired")[1]
    row = next(line for line in paired.splitlines() if line.startswith("| mixer=odm"))
    cells = row.strip("| ").split(" | ")
    assert cells[1] == "1,2"  # the seeds both arms finished
    assert cells[2] == "+0.5000 ± 0.1414 (2/2 better)"  # em/x
    assert cells[3] == "+2.5000 ± 0.7071 (0/2 better)"  # ppl/avg
    assert not any(line.startswith("| mixer=random") for line in paired.splitlines())


def test_an_unknown_or_ambiguous_baseline_is_one_clear_error(mixer_sweep):
    with pytest.raises(ConfigError, match="'uniform' matches no finished arm; arms: mixer=odm, mixer=random"):
        build_report([mixer_sweep], baseline="uniform")
    with pytest.raises(ConfigError, match="'m' is ambiguous"):
        build_report([mixer_sweep], baseline="m")


def test_weights_by_domain_average_the_steps_after_the_warm_up(tmp_path):
    """Seed 1: corrupted 1.0 (warm-up step 2, left out), 1.2, 1.4 -> 1.3; seed 2: 1.1 -> mean 1.2 ± 0.1414."""
    sweep = tmp_path / "noise"
    for seed, series in ((1, [(2, 1.0, 1.0), (3, 1.2, 0.9), (4, 1.4, 0.8)]), (2, [(3, 1.1, 0.95)])):
        run = make_run(sweep / "weighter=loss" / f"seed={seed}", seed=seed, evals={"em/x": 0.1}, kind="weighter")
        config = yaml.safe_load((run / "dataflex_config.yaml").read_text())
        config["weighter"]["warmup_steps"] = 2
        (run / "dataflex_config.yaml").write_text(yaml.safe_dump(config))
        with (run / "metrics.jsonl").open("a") as f:
            for step, bad, good in series:
                record = {"step": step, "weighter/domain_weight/corrupted": bad, "weighter/domain_weight/clean": good}
                f.write(json.dumps(record) + "\n")
    make_run(sweep / "plain" / "seed=1", evals={"em/x": 0.1})  # no weighter: no row
    report = build_report([sweep])
    table = report.markdown.split("## Weights by domain")[1]
    assert "| arm | seeds | clean | corrupted |" in table
    assert "| weighter=loss | 1,2 | 0.9000 ± 0.0707 | 1.2000 ± 0.1414 |" in table
    assert "| plain |" not in table
    png = write_report([sweep], tmp_path / "out").plots["domain_weights"]
    assert png.name == "report_domain_weights.png" and png.read_bytes()[:8] == PNG


def test_float_noise_of_a_zero_std_prints_as_zero():
    from dataflex.report.tables import _fmt_stat

    assert _fmt_stat((0.18, 3.399e-17)) == "0.1800 ± 0.0000"
    assert _fmt_stat((2.5e-5, None)) == "2.500e-05"  # a real small value keeps its digits
