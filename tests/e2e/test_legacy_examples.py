"""Example YAMLs in the original DataFlex's and LLaMA-Factory's formats (tests/e2e/fixtures/legacy/, written for
these tests) train end to end on the tiny model through `dataflex-cli train`, the files unchanged: only the
substitutions of ``support.legacy.offline_args`` (model path, dataset names, CPU-only switches, the run's size)
are given, as command-line args."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from support.legacy import (
    DATAFLEX,
    LLAMAFACTORY,
    copy_tree,
    offline_args,
    write_pairwise,
)

from dataflex.cli import legacy
from dataflex.data.assets import asset_path


def train(tmp_path, monkeypatch, repo: Path, example: str, *extra: str, dataset_dir=None) -> tuple[dict, Path]:
    """``dataflex-cli train <example> <substitutions> <extra>`` from the copied repository's root:
    (the run's metrics.json, its run directory)."""
    root = copy_tree(tmp_path, repo) if not (tmp_path / repo.name).exists() else tmp_path / repo.name
    monkeypatch.chdir(root)
    args = [*offline_args(root / example, dataset_dir=dataset_dir, scale=True), *extra]
    legacy.main(["train", example, *args])
    run_dir = root / yaml.safe_load((root / example).read_text())["output_dir"]
    return json.loads((run_dir / "metrics.json").read_text()), run_dir


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_llamafactory_full_sft_example_trains(tmp_path, monkeypatch):
    metrics, run_dir = train(tmp_path, monkeypatch, LLAMAFACTORY, "examples/train_full/smollm2_full_sft.yaml")
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())
    assert saved["trainer"]["finetuning_type"] == "full"
    assert (run_dir / "model" / "model.safetensors").is_file()  # the full model, not an adapter
    assert [r["step"] for r in logged(run_dir) if "train/loss" in r] == [1, 2, 3, 4]


# -- 2. DataFlex-format examples of the methods dataflex has, with a components.yaml in the original's format --


@pytest.mark.slow
def test_doremi_step1_then_step2_with_the_original_components_yaml(tmp_path, monkeypatch):
    step1, ref_dir = train(
        tmp_path, monkeypatch, DATAFLEX, "examples/train_full/mixers/doremi_step1_reference_pt_full.yaml"
    )
    assert step1["global_step"] == 4
    # the migrating user's one edit: step 2's reference_model_path is step 1's model (a path, as the original's)
    metrics, run_dir = train(
        tmp_path,
        monkeypatch,
        DATAFLEX,
        "examples/train_full/mixers/doremi_step2_proxy_pt_full.yaml",
        f"component_overrides={{reference_model_path: {ref_dir / 'model'}}}",
    )
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())["mixer"]
    assert (saved["name"], saved["eta"], saved["smoothing"], saved["clip"]) == ("doremi", 1.0, 0.001, 5.0)
    assert saved["reference_dir"] == str(ref_dir / "model")
    assert any(k.startswith("mixer/") for r in logged(run_dir) for k in r)
    assert metrics["global_step"] == 4


def test_odm_example_with_the_original_components_yaml(tmp_path, monkeypatch):
    metrics, run_dir = train(tmp_path, monkeypatch, DATAFLEX, "examples/train_full/mixers/odm_pt_full.yaml")
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())["mixer"]
    assert (saved["reward_scale"], saved["min_exploration"], saved["initial"]) == (10.0, 0.05, [0.4, 0.6])
    weights = [r for r in logged(run_dir) if any(k.startswith("mixer/") for k in r)]
    assert weights and metrics["global_step"] >= 3


@pytest.mark.slow
def test_nice_example_with_its_reward_model_block(tmp_path, monkeypatch):
    # the migrating user's edit: the reward model's path (the tiny model stands in for Llama-3.1-8B as the judge)
    judge = f"selector.reward_kwargs.backend_params.local_vllm.hf_model_name_or_path={asset_path('tiny')}"
    metrics, run_dir = train(
        tmp_path,
        monkeypatch,
        DATAFLEX,
        "examples/train_lora/selectors/nice_sft_lora.yaml",
        judge,
        "selector.reward_kwargs.backend_params.local_vllm.vllm_max_tokens=4",
        "selector.max_new_tokens=8",
        "selector.val_prompts=2",
        "selector.proj_dim=64",
    )
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())["selector"]
    assert saved["reward"] == "dataflex.selectors.nice_judge:JudgeReward"
    rounds = [r for r in logged(run_dir) if "selector/nice/reward_mean" in r]
    assert rounds and all(0.0 <= r["selector/nice/reward_mean"] <= 1.0 for r in rounds)
    assert metrics["global_step"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "example", ["examples/train_lora/weighters/loss_sft_lora.yaml", "examples/test/quick_mix_random.yaml"]
)
def test_weighter_and_mixer_examples(tmp_path, monkeypatch, example):
    metrics, run_dir = train(tmp_path, monkeypatch, DATAFLEX, example)
    kind = "weighter" if "weighters" in example else "mixer"
    assert any(k.startswith(f"{kind}/") for r in logged(run_dir) for k in r)
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])


# -- 3. eval_strategy: steps + eval_dataset: LLaMA-Factory's eval loss at the YAML's cadence -----------------


@pytest.mark.slow
def test_eval_dataset_loss_is_logged_at_the_yaml_cadence(tmp_path, monkeypatch):
    # the loss selector example: eval_dataset alpaca_zh_demo (here offline_sft_facts), eval_strategy steps
    _, run_dir = train(
        tmp_path,
        monkeypatch,
        DATAFLEX,
        "examples/train_lora/selectors/loss_sft_lora.yaml",
        "eval_steps=2",
        "per_device_eval_batch_size=8",
        "max_samples=24",
    )
    saved = yaml.safe_load((run_dir / "dataflex_config.yaml").read_text())
    assert saved["eval"]["loss"] is True and saved["eval"]["every_n_steps"] == 2
    assert saved["data"]["validation"] == "offline_sft_facts"
    periodic = {r["step"]: r["eval/loss"] for r in logged(run_dir) if "eval/loss" in r}
    assert sorted(periodic) == [2] and math.isfinite(periodic[2]) and periodic[2] > 0  # step 4, the last: eval_after
    assert any(r.get("selector/selected") for r in logged(run_dir))  # still the selector's target set


# -- 4. other stages: LLaMA-Factory's own workflow, unchanged ---------------------------------------------


@pytest.mark.parametrize(
    "example", ["smollm2_lora_dpo.yaml", pytest.param("smollm2_lora_reward.yaml", marks=pytest.mark.slow)]
)
def test_pairwise_stage_runs_llamafactorys_own_workflow(tmp_path, monkeypatch, example):
    data = write_pairwise(tmp_path / "pairwise")  # an offline pairwise set in LLaMA-Factory's ranking format
    root = copy_tree(tmp_path, LLAMAFACTORY)
    monkeypatch.chdir(root)
    rel = f"examples/train_lora/{example}"
    args = [a for a in offline_args(root / rel, dataset_dir=data, scale=True) if not a.startswith("eval.")]
    legacy.main(["train", rel, *args])
    out = root / yaml.safe_load((root / rel).read_text())["output_dir"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert (out / "adapter_model.safetensors").is_file()  # LLaMA-Factory's own output layout, not a dataflex run
    assert not (out / "dataflex_config.yaml").exists()
    losses = [r["loss"] for r in state["log_history"] if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)


# -- 5. output directories ----------------------------------------------------------------------------------


def test_overwrite_output_dir_starts_afresh_as_llamafactory_does(tmp_path, monkeypatch, capsys):
    example = "examples/train_lora/smollm2_lora_sft.yaml"  # overwrite_output_dir: true
    first, run_dir = train(tmp_path, monkeypatch, LLAMAFACTORY, example)
    assert first["global_step"] == 4 and (run_dir / "checkpoints" / "checkpoint-4").is_dir()
    # other settings into the same output_dir: trained afresh (not refused, not resumed)
    second, _ = train(tmp_path, monkeypatch, LLAMAFACTORY, example, "max_steps=3", "learning_rate=2e-4")
    assert second["global_step"] == 3
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint-3"]
    assert [r["step"] for r in logged(run_dir) if "train/loss" in r] == [1, 2, 3]
    # without it, the directory holding another run is refused, naming the legacy YAML's output_dir
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train(tmp_path, monkeypatch, LLAMAFACTORY, example, "overwrite_output_dir=false", "learning_rate=3e-4")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "holds another run" in err
    assert "output_dir=..." in err and "hydra.run.dir" not in err


def test_a_refused_attempt_does_not_claim_the_directory(tmp_path, monkeypatch, capsys):
    example = "examples/train_full/smollm2_full_sft.yaml"
    # refused by LLaMA-Factory's own argument check, after the run directory exists
    with pytest.raises(SystemExit):
        train(tmp_path, monkeypatch, LLAMAFACTORY, example, "lr_scheduler_type=no_such_schedule")
    assert "no_such_schedule" in capsys.readouterr().err
    capsys.readouterr()
    # the corrected command, logging every 10 steps (more than the run's 4): the last step's loss is logged
    metrics, run_dir = train(
        tmp_path, monkeypatch, LLAMAFACTORY, example, "overwrite_output_dir=false", "logging_steps=10"
    )
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])
    assert [r["step"] for r in logged(run_dir) if "train/loss" in r] == [4]
    assert f"(4 steps, final train loss {metrics['final_train_loss']})" in capsys.readouterr().out  # the banner


# -- every example: the measured fraction that trains (README) ----------------------------------------------

# methods the original has and dataflex does not: refused in one line naming the missing config
MISSING_METHODS = {
    "dataflex/examples/test/quick_weight_custom.yaml",
    "dataflex/examples/train_full/mixers/dynamic_moe_sft_full.yaml",
    "dataflex/examples/train_lora/selectors/custom_sft_lora.yaml",
    "dataflex/examples/train_lora/weighters/adapt_sft_lora.yaml",
    "dataflex/examples/train_lora/weighters/custom_sft_lora.yaml",
}
# the substitutions beside offline_args: a model path the example names in its components.yaml
EXTRA = {
    "doremi_step2": lambda: [f"component_overrides={{reference_model_path: {asset_path('tiny')}}}"],
    "nice": lambda: [
        f"selector.reward_kwargs.backend_params.local_vllm.hf_model_name_or_path={asset_path('tiny')}",
        "selector.reward_kwargs.backend_params.local_vllm.vllm_max_tokens=4",
        "selector.max_new_tokens=8",
        "selector.val_prompts=2",
        "selector.proj_dim=64",
    ],
    "less": lambda: ["selector.proj_dim=64"],
}
ALL = [(DATAFLEX, p) for p in sorted((DATAFLEX / "examples").rglob("*.yaml"))] + [
    (LLAMAFACTORY, p) for p in sorted((LLAMAFACTORY / "examples").rglob("*.yaml"))
]


@pytest.mark.slow
@pytest.mark.parametrize("repo, path", ALL, ids=[f"{r.name}/{p.relative_to(r / 'examples')}" for r, p in ALL])
def test_every_original_example_trains_or_names_the_missing_method(tmp_path, monkeypatch, capsys, repo, path):
    rel = str(path.relative_to(repo))
    extra = next((f() for key, f in EXTRA.items() if key in path.stem), [])
    pairwise = any(name in path.read_text() for name in ("dpo_en_demo", "kto_en_demo"))
    if f"{repo.name}/{rel}" in MISSING_METHODS:
        with pytest.raises(SystemExit) as exit_:
            train(tmp_path, monkeypatch, repo, rel, *extra)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("dataflex: error:") == 1 and "Traceback" not in err
        method = yaml.safe_load(path.read_text())["component_name"]
        assert f"dataflex: error: {method}: the original DataFlex's {method} " in err  # the missing method first
        return
    if pairwise or "tokenized_path" in path.read_text():  # LLaMA-Factory's own workflow: its outputs
        root = copy_tree(tmp_path, repo)
        monkeypatch.chdir(root)
        args = [
            a
            for a in offline_args(
                root / rel, dataset_dir=write_pairwise(tmp_path / "pw") if pairwise else None, scale=True
            )
            if not a.startswith("eval.")
        ]
        legacy.main(["train", rel, *args])
        keys = yaml.safe_load(path.read_text())
        out = root / keys["output_dir"]
        assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4
        if keys.get("tokenized_path"):  # LLaMA-Factory saved the tokenized data for the next run
            assert (root / keys["tokenized_path"] / "dataset_dict.json").is_file()
        return
    metrics, _ = train(tmp_path, monkeypatch, repo, rel, *extra)
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])
