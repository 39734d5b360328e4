"""End to end on the tiny model: real LLaMA-Factory training through the DataFlex Run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.config import compose_config
from support.runs import fit, kill_at_step, losses, same_state

from dataflex.data.assets import asset_path
from dataflex.run import Run

PT = ["data=offline_domains", "trainer=pt_full", "data.max_samples=16"]


def test_sft_lora_trains_adapters_and_evaluates(tmp_path):
    metrics, run_dir = fit(tmp_path, "lora", ["eval.every_n_steps=3"])
    steps = losses(run_dir)
    assert len(steps) == 6 and all(math.isfinite(x) for x in steps)
    adapter = load_file(run_dir / "model" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: training moved it
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["global_step"] == 6 and saved["stage"] == "sft"
    for key in ("mcq/definitions/accuracy", "em/arithmetic", "em/facts"):
        assert 0.0 <= saved["eval_after"][key] <= 1.0 and key in saved["eval_before"]
    assert len(saved["domains"]) == 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    periodic = [r["step"] for r in records if "eval/em/arithmetic" in r]
    assert periodic == [3]  # every 3 steps, the last one being eval_after


def test_sft_full_changes_every_trained_weight(tmp_path):
    _, run_dir = fit(tmp_path, "full", ["trainer=sft_full"])
    before = load_file(asset_path("tiny") / "model.safetensors")
    after = load_file(run_dir / "model" / "model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) == len(before)


def test_pt_writes_per_domain_perplexity(tmp_path):
    metrics, run_dir = fit(tmp_path, "pt", PT)
    assert metrics["stage"] == "pt" and len(metrics["domains"]) >= 6
    after = metrics["eval_after"]
    domains = [k for k in after if k.startswith("ppl/") and k not in ("ppl/avg", "ppl/worst")]
    assert len(domains) >= 6 and all(math.isfinite(after[k]) for k in domains)
    assert after["ppl/worst"] == max(after[k] for k in domains)
    # Random init to a few steps of training: held-out perplexity must go down on average.
    assert after["ppl/avg"] < metrics["eval_before"]["ppl/avg"]


def test_dataflex_none_equals_plain_llamafactory(tmp_path):
    """selector/mixer/weighter `none` gives plain LLaMA-Factory's loss trajectory, same seed."""
    from llamafactory.train.tuner import run_exp

    from dataflex.backend.llamafactory import build_hparams
    from dataflex.config import to_dict

    overrides = ["eval.before=false", "eval.after=false"]
    _, run_dir = fit(tmp_path, "dataflex", overrides)
    plain_dir = tmp_path / "plain"
    hparams = build_hparams(to_dict(compose_config(overrides)), plain_dir, resume_from=None)
    run_exp(args=hparams)
    history = json.loads((plain_dir / "checkpoints" / "trainer_state.json").read_text())["log_history"]
    plain = [r["loss"] for r in history if "loss" in r]
    assert len(plain) == 6
    assert losses(run_dir) == pytest.approx(plain, abs=1e-6)


DYNAMIC = [
    "+selector._target_=support.components.HalfPoolSelector",
    "+mixer._target_=support.components.RotatingMixer",
]


LOSS_SELECTOR = ["selector=loss", "selector.budget=16", "selector.warmup_steps=2", "selector.update_every=2"]


ODM = [*PT, "mixer=odm"]


@pytest.mark.parametrize(
    "components", [[], DYNAMIC, LOSS_SELECTOR, ODM], ids=["plain", "selector+mixer", "loss-selector", "odm-mixer"]
)
def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, monkeypatch, components):
    overrides = ["eval.before=false", "eval.after=false", "trainer.max_steps=8", "trainer.save_steps=2", *components]
    _, straight = fit(tmp_path, "straight", overrides)

    with monkeypatch.context() as patch:
        kill_at_step(patch, 5)  # after checkpoint-4, before checkpoint-6
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path, "resumed", overrides)
    assert not (tmp_path / "resumed" / "metrics.json").exists()  # no partial output mistaken for a result
    _, resumed = fit(tmp_path, "resumed", overrides)

    full_losses = losses(straight)
    assert len(full_losses) == 8 and losses(resumed) == pytest.approx(full_losses, abs=1e-6)

    def state(d):
        return torch.load(d / "checkpoints" / "checkpoint-8" / "dataflex_state.pt", weights_only=False)

    a, b = state(straight), state(resumed)
    assert a["updates_done"] == b["updates_done"]
    assert same_state(a["components"], b["components"])
    if components:  # plain training keeps LLaMA-Factory's own sampler (and its own resume)
        # the whole sampler state (streams, cursors, the plan in force) is the same after a resume
        assert a["sampler"]["history"] and same_state(a["sampler"], b["sampler"])
    else:
        assert a["sampler"] is None and b["sampler"] is None


def test_dynamic_selection_reaches_the_batches(tmp_path, monkeypatch):
    """After an update, every trained sample comes from the selected indices."""
    seen: list[tuple[int, list[int]]] = []
    from dataflex.train.trainer import DataFlexTrainerMixin

    original = DataFlexTrainerMixin.compute_loss

    def spy(self, model, inputs, *args, **kwargs):
        seen.append((self.state.global_step, inputs["sample_index"].tolist()))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DataFlexTrainerMixin, "compute_loss", spy)
    overrides = [
        "eval.before=false",
        "eval.after=false",
        "trainer.max_steps=8",
        "+selector._target_=support.components.HalfPoolSelector",
        "+selector.update_every=100",
    ]
    fit(tmp_path, "dyn", overrides)
    state = torch.load(tmp_path / "dyn" / "checkpoints" / "checkpoint-6" / "dataflex_state.pt", weights_only=False)
    selected = set(state["components"]["selector"]["history"][0])
    # The selection happens at the end of step 2; one prefetched batch may still come from before it.
    late = [i for step, idx in seen if step >= 4 for i in idx]
    assert late and set(late) <= selected


def test_output_dir_of_another_run_is_refused(tmp_path):
    from dataflex.config import ConfigError

    overrides = ["eval.before=false", "eval.after=false", "trainer.max_steps=2"]
    fit(tmp_path, "run", overrides)
    with pytest.raises(ConfigError, match="holds another run.*learning_rate"):
        fit(tmp_path, "run", [*overrides, "trainer.learning_rate=0.1"])


def test_rerun_of_a_finished_run_keeps_its_figures(tmp_path, capsys):
    """Rerunning a finished run (e.g. a whole sweep again, to resume its unfinished jobs) trains and
    evaluates nothing: metrics.json (wall time included) and metrics.jsonl stay as they were."""
    overrides = ["eval.before=false", "eval.after=false", "trainer.max_steps=2", "trainer.save_steps=2"]
    first, run_dir = fit(tmp_path, "run", overrides)
    saved, lines = (run_dir / "metrics.json").read_text(), (run_dir / "metrics.jsonl").read_text()
    again, _ = fit(tmp_path, "run", overrides)
    assert again == first and "run already finished" in capsys.readouterr().out
    assert (run_dir / "metrics.json").read_text() == saved and (run_dir / "metrics.jsonl").read_text() == lines
    # the documented way to evaluate again; also a job killed after its last checkpoint but before
    # metrics.json: resumed at max_steps, it trains no further (transformers alone trains one step more)
    (run_dir / "metrics.json").unlink()
    third, _ = fit(tmp_path, "run", overrides)
    assert third["global_step"] == 2 and (run_dir / "metrics.json").is_file()


def test_wandb_logger_runs_offline_with_the_overrides_as_name(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = compose_config(["logger=wandb", "eval.before=false", "trainer.max_steps=2"])
    Run(cfg, tmp_path / "wb", run_name="model=tiny,logger=wandb").fit()
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    assert (tmp_path / "wb" / "metrics.jsonl").stat().st_size > 0  # the JSONL is written whatever the logger


@pytest.mark.slow
def test_two_processes_deepspeed_zero3(tmp_path):
    """`nproc=2` launches torchrun; ZeRO-3 partitions the model over 2 gloo processes on CPU."""
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "z3"
    command = [
        str(Path(sys.executable).parent / "dataflex-run"),
        "model=tiny",
        "trainer=deepspeed_z3",
        "nproc=2",
        "trainer.max_steps=4",
        "trainer.save_steps=2",
        "trainer.per_device_train_batch_size=2",
        "data.max_samples=32",
        "eval.max_samples=8",
        "eval.max_new_tokens=4",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])
    assert "world size: 2" in result.stdout + result.stderr
    # one global stream of batches: 4 steps x 2 per device x 2 processes = 16 samples of the pool
    assert metrics["train"]["train_samples_per_second"] > 0
    assert metrics["train"]["epoch"] == pytest.approx(4 / math.ceil(metrics["pool_size"] / 4), rel=1e-3)


def test_an_interrupted_save_is_never_resumed_from(tmp_path):
    """A checkpoint without DataFlex state (killed mid-save) is removed; the run starts clean."""
    overrides = ["eval.before=false", "eval.after=false", "trainer.max_steps=2", "trainer.save_steps=2"]
    _, run_dir = fit(tmp_path, "run", overrides)
    (run_dir / "checkpoints" / "checkpoint-2" / "dataflex_state.pt").unlink()  # as if killed before it was written
    (run_dir / "metrics.jsonl").unlink()
    fit(tmp_path, "run", overrides)
    assert len(losses(run_dir)) == 2  # trained from step 1 again, not resumed from the broken checkpoint
    assert (run_dir / "checkpoints" / "checkpoint-2" / "dataflex_state.pt").is_file()


def test_signals_on_the_runs_own_pool_and_collator(tmp_path):
    """Per-sample losses over LLaMA-Factory batches (padded to 8, with sample_index/domain_id keys)
    equal each sample run alone."""
    from dataflex.backend.llamafactory import build, build_hparams
    from dataflex.config import to_dict
    from dataflex.signals.losses import per_sample_losses
    from dataflex.signals.pool import map_pool
    from dataflex.train.trainer import MetaCollator

    built = build(build_hparams(to_dict(compose_config()), tmp_path, resume_from=None))
    collator = MetaCollator(built.collator)
    indices = [0, 5, 17, 40, 63, 100]
    batched = map_pool(per_sample_losses, built.model, built.pool, collator, indices=indices, batch_size=4)
    alone = torch.cat([per_sample_losses(built.model.eval(), collator([built.pool[i]])) for i in indices])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    assert built.pool["domain_id"][100] > built.pool["domain_id"][0]  # rows know their domain


def test_batch_observers_see_every_micro_batch_without_changing_training(tmp_path):
    from support.components import BatchRecorder

    overrides = ["eval.before=false", "eval.after=false", "trainer.gradient_accumulation_steps=2"]
    _, plain_dir = fit(tmp_path, "plain", overrides)
    run = Run(compose_config(overrides), tmp_path / "observed")
    recorder = run.components["recorder"] = BatchRecorder()
    run.fit()
    assert losses(tmp_path / "observed") == losses(plain_dir)  # observing changes nothing
    assert len(recorder.seen) == 6 * 2  # every micro-batch of every step
    for per_sample, indices, domains in recorder.seen:
        assert len(per_sample) == len(indices) == len(domains) == 4
        assert all(math.isfinite(x) and x > 0 for x in per_sample)
        assert all(0 <= d < 4 for d in domains)


def test_mixer_runs_log_named_proportions_and_plot_them(tmp_path):
    _, run_dir = fit(
        tmp_path,
        "mix",
        [*PT, "mixer=random", "mixer.update_every=2", "eval.before=false", "eval.after=false", "trainer.max_steps=6"],
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "mixer/proportion/offline_domains_code" in r]
    assert [r["step"] for r in logged] == [0, 2, 4, 6]
    for r in logged:
        assert sum(v for k, v in r.items() if k.startswith("mixer/proportion/")) == pytest.approx(1.0)
    png = (run_dir / "proportions.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_selection_rounds_are_logged_and_saved_per_run(tmp_path):
    overrides = ["eval.before=false", "eval.after=false", *LOSS_SELECTOR]
    run = Run(compose_config(overrides), tmp_path / "sel")
    run.fit()
    run_dir = tmp_path / "sel"
    rounds = sorted((run_dir / "selections").glob("round_*.json"))
    # warm-up, steps 2 and 4; none at step 6 = max_steps (nothing would train on it)
    assert [p.name for p in rounds] == ["round_000.json", "round_001.json", "round_002.json"]
    history = torch.load(run_dir / "checkpoints" / "checkpoint-6" / "dataflex_state.pt", weights_only=False)
    records = [json.loads(p.read_text()) for p in rounds]
    assert [record["step"] for record in records] == [0, 2, 4]
    # the checkpoint keeps the plan in force (the sampler resumes in O(1)): the last round's
    assert history["sampler"]["history"][-1]["indices"].tolist() == records[-1]["indices"]
    for record in records:
        assert record["run_id"] == run.run_id
        assert record["selected"] == 16
        assert sum(record["domains"].values()) == 16
    for previous, record in zip(records, records[1:]):
        expected = len(set(previous["indices"]) & set(record["indices"])) / len(set(record["indices"]))
        assert record["overlap"] == pytest.approx(expected)
    assert "overlap" not in records[0]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "selector/selected" in r] == [0, 2, 4]
    assert sum(1 for r in logged if "selector/overlap" in r) == 2


def test_selectors_see_the_validation_set_with_subtasks(tmp_path):
    from dataflex.backend.llamafactory import build, build_hparams, validation_names
    from dataflex.config import to_dict
    from dataflex.signals.text import prompt_response_texts

    cfg = to_dict(compose_config(["data.validation=[offline_sft_val_mcq,offline_sft_eval_facts]"]))
    names = validation_names(cfg["data"])
    built = build(build_hparams(cfg, tmp_path, resume_from=None), names)
    val = built.validation
    assert built.validation_names == names == ["offline_sft_val_mcq", "offline_sft_eval_facts"]
    counts = torch.bincount(torch.tensor(val["domain_id"]))
    assert counts.tolist()[0] == 100 and counts.tolist()[1] > 0  # not cut by data.max_samples=64
    prompts, responses = prompt_response_texts(val, built.tokenizer, indices=[0])
    assert prompts[0].startswith("user\nWhich is the definition") and prompts[0].endswith("assistant")
    assert responses[0] in ("A", "B", "C", "D")  # the MCQ answer letter is the labelled part
