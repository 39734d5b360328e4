"""dataflex-cli: original DataFlex / LLaMA-Factory YAML translated into dataflex-run overrides and run."""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from dataflex.cli import legacy
from dataflex.cli.legacy import (
    compose,
    conf_file,
    read_legacy,
    translate,
    translate_file,
)
from dataflex.config import ConfigError
from dataflex.data.assets import asset_path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if p.name != "components.yaml")
BIN = Path(sys.executable).parent

# The trainer keys of the shipped sft_lora option that a legacy YAML without them deletes, so that
# LLaMA-Factory's own defaults apply (as under llamafactory-cli).
SFT_LORA_DELETED = [
    "~trainer.lora_alpha",
    "~trainer.lora_target",
    "~trainer.lr_scheduler_type",
    "~trainer.warmup_steps",
    "~trainer.logging_steps",
    "~trainer.save_steps",
    "~trainer.save_total_limit",
    "~trainer.bf16",
    "~trainer.dataloader_num_workers",
]


def sft(**keys):
    """A legacy LoRA SFT YAML on the offline tiny model and two offline_sft domains."""
    return {
        "model_name_or_path": str(asset_path("tiny")),
        "template": "chatml",
        "stage": "sft",
        "finetuning_type": "lora",
        "lora_rank": 8,
        "dataset": "offline_sft_definitions,offline_sft_facts",
        "cutoff_len": 128,
        "max_samples": 32,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1.0e-3,
        **keys,
    }


def plain(cfg, group):
    return OmegaConf.to_container(cfg[group], resolve=True)


# -- the translation ---------------------------------------------------------------------------------


def test_selector_yaml_translates_to_hand_written_overrides():
    t = translate(
        sft(
            seed=7,
            output_dir="/tmp/x",
            report_to="wandb",
            train_type="dynamic_select",
            component_name="loss",
            warmup_step=3,
            update_step=5,
            update_times=2,
        ),
        name="demo",
        env={},
    )
    assert t.overrides == [
        "model=tiny",
        "data=offline_sft",
        "trainer=sft_lora",
        "selector=loss",
        "logger=wandb",
        "run_name=demo",
        "seed=7",
        "data.domains=[offline_sft_definitions,offline_sft_facts]",
        "data.cutoff_len=128",
        "data.max_samples=32",
        "trainer.per_device_train_batch_size=4",
        "trainer.gradient_accumulation_steps=2",
        "trainer.learning_rate=0.001",
        # num_train_epochs (LLaMA-Factory's default 3.0) x the Flex epoch warmup_step + update_step * update_times
        "trainer.max_steps=39",
        *SFT_LORA_DELETED,
        "selector.budget=40",  # update_step global batches: 4 per device x 2 accumulation x 5
        "selector.rule=tercile",
        "selector.warmup_steps=3",
        "selector.update_every=5",
        "selector.num_updates=2",
        "+selector.restart_every=13",  # the schedule repeats every Flex epoch, as the original's
    ]
    assert t.run_dir == "/tmp/x" and t.run_name == "demo" and t.notes == []
    cfg = compose(t.overrides)
    # the trainer holds exactly the YAML's LLaMA-Factory keys (and the run length)
    assert plain(cfg, "trainer") == {
        "stage": "sft",
        "finetuning_type": "lora",
        "lora_rank": 8,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.001,
        "max_steps": 39,
    }
    assert cfg.seed == 7 and cfg.logger.kind == "wandb" and cfg.selector.seed == 7


def test_static_train_type_is_plain_llamafactory_training():
    t = translate(sft(train_type="static", warmup_step=4, max_steps=6), name="plain", env={})
    assert t.overrides == [
        "model=tiny",
        "data=offline_sft",
        "trainer=sft_lora",
        "run_name=plain",
        "data.domains=[offline_sft_definitions,offline_sft_facts]",
        "data.cutoff_len=128",
        "data.max_samples=32",
        "trainer.per_device_train_batch_size=4",
        "trainer.gradient_accumulation_steps=2",
        "trainer.learning_rate=0.001",
        "trainer.max_steps=6",
        *SFT_LORA_DELETED,
    ]
    assert t.notes == ["warmup_step: no effect with train_type: static (plain LLaMA-Factory training)"]
    cfg = compose(t.overrides)
    assert cfg.selector.name == cfg.mixer.name == cfg.weighter.name == "none"


def test_static_mix_sets_fixed_proportions_and_the_run_length():
    t = translate(
        sft(
            train_type="dynamic_mix",
            component_name="odm",
            static_mix=True,
            mixture_sample_rule="mixture",
            init_mixture_proportions=[0.7, 0.3],
            train_step=9,
        ),
        name="mix",
        env={},
    )
    assert t.overrides[3] == "mixer=static"
    values = [o for o in t.overrides if o.startswith(("mixer.", "trainer.max_steps"))]
    assert values == ["trainer.max_steps=9", "mixer.proportions=[0.7,0.3]"]
    assert t.notes == ["component_name: odm has no effect with static_mix: true (mixer=static)"]
    assert plain(compose(t.overrides), "mixer")["proportions"] == [0.7, 0.3]


@pytest.mark.parametrize("rule, expected", [("uniform", [1.0, 1.0]), ("stratified", None)])
def test_static_mix_rules(rule, expected):
    t = translate(sft(train_type="dynamic_mix", static_mix=True, mixture_sample_rule=rule), name="mix", env={})
    assert plain(compose(t.overrides), "mixer")["proportions"] == expected


def test_dynamic_mixer_with_original_params():
    params = {"alpha": 0.8, "warmup_steps": 20, "num_eval_samples": 500, "initial_proportions": [0.5, 0.5]}
    t = translate(
        sft(
            train_type="dynamic_mix",
            component_name="odm",
            component_overrides=params,
            warmup_step=2,
            update_step=1,
            update_times=-1,
            train_step=12,
        ),
        name="odm",
        env={},
    )
    values = [o for o in t.overrides if o.startswith(("mixer", "trainer.max_steps"))]
    # the original's ODM: an equal start is uniform, the loss x 15 and an exploration floor of 0.03 (its defaults)
    assert values == [
        "mixer=odm",
        "trainer.max_steps=12",
        "mixer.alpha=0.8",
        "mixer.warmup_steps=2",
        "mixer.num_updates=-1",
        "mixer.initial=uniform",
        "mixer.reward_scale=15.0",
        "mixer.min_exploration=0.03",
    ]
    assert t.notes == [
        "mixers.odm.num_eval_samples: not used (rewards come from the training batches' own losses)",
        "warmup_step: 2 overrides mixers.odm.warmup_steps: 20",
    ]


def test_dynamic_mixer_refuses_unequal_start_it_cannot_honour():
    with pytest.raises(ConfigError, match=r"mixer=doremi samples every domain uniformly"):
        translate(sft(train_type="dynamic_mix", component_name="doremi", init_mixture_proportions=[0.9, 0.1]), env={})
    with pytest.raises(ConfigError, match=r"mixture_sample_rule: 'mixtures'.*did you mean 'mixture'"):
        translate(sft(train_type="dynamic_mix", component_name="odm", mixture_sample_rule="mixtures"), env={})
    with pytest.raises(ConfigError, match=r"init_mixture_proportions has 3 entries but dataset names 2 domains"):
        translate(sft(train_type="dynamic_mix", static_mix=True, init_mixture_proportions=[1, 1, 1]), env={})


def test_components_cfg_file_params_renames_and_notes(tmp_path):
    (tmp_path / "components.yaml").write_text(
        yaml.safe_dump(
            {
                "selectors": {
                    "delta_loss": {
                        "name": "delta_loss",
                        "params": {"window_size": 0.3, "cache_dir": "../saves", "budget": 12},
                    }
                }
            }
        )
    )
    t = translate(
        sft(
            train_type="dynamic_select",
            component_name="delta_loss",
            components_cfg_file="components.yaml",
            component_overrides={"batch_size": 4},
            update_step=2,
            update_times=1,
        ),
        name="dl",
        base_dir=tmp_path,
        env={},
    )
    values = [o for o in t.overrides if o.startswith("selector.")]
    # the file's budget wins over the window-derived one; window_size is window here
    assert values == [
        "selector.budget=12",
        "selector.window=0.3",
        "selector.batch_size=4",
        "selector.update_every=2",
        "selector.num_updates=1",
    ]
    assert t.notes == ["selectors.delta_loss.cache_dir: not used (outputs live in the run directory)"]


def test_original_param_names_are_the_components_own_declarations():
    from dataflex.mixers.odm import ODMMixer
    from dataflex.selectors.delta_loss import DeltaLossSelector
    from dataflex.selectors.near import NearSelector

    assert DeltaLossSelector.legacy_keys == {"window_size": "window"} and "indices_path" in NearSelector.legacy_unused
    assert ODMMixer.legacy_keys["initial_proportions"] == "init_mixture_proportions"
    t = translate(
        sft(
            train_type="dynamic_select",
            component_name="near",
            component_overrides={"indices_path": "x.npy", "cache_dir": "../saves"},
        ),
        name="n",
        env={},
    )
    assert t.notes == [
        "selectors.near.indices_path: not used (neighbours are computed in the run)",
        "selectors.near.cache_dir: not used (outputs live in the run directory)",
    ]
    # another method's original param is not this one's: refused, naming the key
    with pytest.raises(ConfigError, match=r"unknown key 'window_size'"):
        translate(
            sft(train_type="dynamic_select", component_name="loss", component_overrides={"window_size": 0.3}), env={}
        )


def test_force_torchrun_sets_nproc_and_the_global_batch():
    t = translate(
        sft(train_type="dynamic_select", component_name="random", update_step=5),
        env={"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "2"},
    )
    assert "nproc=2" in t.overrides and "selector.budget=80" in t.overrides  # 4 x 2 x 2 processes x 5


def test_eval_keys_map_onto_dataflex_evaluation():
    t = translate(
        sft(
            eval_dataset="offline_sft_val_mcq",
            eval_strategy="steps",
            eval_steps=10,
            do_eval=False,
            per_device_eval_batch_size=2,
            load_best_model_at_end=True,
        ),
        env={},
    )
    # with an eval_dataset, also its loss (LLaMA-Factory's eval_loss) at that cadence
    assert t.overrides[-3:] == ["eval.every_n_steps=10", "eval.loss=true", "eval.batch_size=2"]
    assert len(t.notes) == 1 and t.notes[0].startswith("load_best_model_at_end: not used")


def test_custom_model_and_data_replace_the_shipped_options(tmp_path):
    t = translate(
        {
            "model_name_or_path": "org/some-model",
            "template": "llama3",
            "dataset": "a,b",
            "dataset_dir": str(tmp_path),
            "stage": "pt",
            "finetuning_type": "full",
        },
        name="c",
        env={},
    )
    cfg = compose(t.overrides)
    assert plain(cfg, "model") == {
        "name": "some-model",
        "asset": None,
        "name_or_path": "org/some-model",
        "template": "llama3",
    }
    assert plain(cfg, "data") == {
        "name": "custom",
        "asset": None,
        "stage": "pt",
        "dataset_dir": str(tmp_path),
        "validation": None,
        "domains": ["a", "b"],
        "cutoff_len": 2048,
        "max_samples": None,
        "eval": None,
    }
    assert plain(cfg, "trainer") == {"stage": "pt", "finetuning_type": "full"}


# -- errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, hint",
    [("learning_rat", "learning_rate"), ("warmup_stpe", "warmup_step"), ("component_nam", "component_name")],
)
def test_unknown_key_is_named_with_the_closest_valid_key(key, hint):
    with pytest.raises(ConfigError, match=rf"unknown key '{key}' \(did you mean '{hint}'\?\)"):
        translate(sft(**{key: 1}), env={})


def test_component_without_a_config_is_refused_naming_the_file():
    with pytest.raises(ConfigError, match=r"no selector config dataflex/conf/selector/zeroth\.yaml"):
        translate(sft(train_type="dynamic_select", component_name="zeroth"), env={})
    with pytest.raises(ConfigError, match=r"dataflex/conf/selector/losss\.yaml.*did you mean 'loss'"):
        translate(sft(train_type="dynamic_select", component_name="losss"), env={})
    with pytest.raises(ConfigError, match=r"train_type: 'dynamic_selct'.*did you mean 'dynamic_select'"):
        translate(sft(train_type="dynamic_selct"), env={})


def test_misspelled_component_param_is_named():
    with pytest.raises(ConfigError, match=r"unknown key 'focuss' \(did you mean 'focus'\?\)"):
        translate(
            sft(train_type="dynamic_select", component_name="loss", component_overrides={"focuss": "low"}), env={}
        )


def test_unknown_key_through_the_console_script(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(sft(learning_rat=0.1)))
    result = subprocess.run(
        [str(BIN / "dataflex-cli"), "train", str(path)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"},
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("dataflex: error:")]
    assert len(errors) == 1 and "'learning_rat' (did you mean 'learning_rate'?)" in errors[0]
    assert "Traceback" not in result.stderr


def test_command_line_args_set_yaml_keys_or_pass_through(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(sft(learning_rate=0.1)))
    keys, passthrough = read_legacy(path, ["learning_rate=1e-3", "max_steps=4", "eval.max_samples=8", "nproc=2"])
    assert keys["learning_rate"] == 0.001 and keys["max_steps"] == 4
    assert passthrough == ["eval.max_samples=8", "nproc=2"]
    t = translate_file(path, ["max_samples=16", "data.max_samples=8"])
    assert compose(t.overrides).data.max_samples == 8  # a dataflex-run override wins over the translation


# -- version -----------------------------------------------------------------------------------------


def test_version_prints_the_stack():
    result = subprocess.run([str(BIN / "dataflex-cli"), "version"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines())
    for name in ("dataflex", "llamafactory", "torch", "transformers", "hydra-core"):
        assert rows[name] == version(name)
    assert rows["python"] == sys.version.split()[0]


# -- migrate -----------------------------------------------------------------------------------------


def migrated(capsys, path, *args) -> tuple[list[str], str | None]:
    """`dataflex-cli migrate` output as a dataflex-run argument list (without hydra.run.dir) and the run dir."""
    legacy.main(["migrate", str(path), *args])
    words = shlex.split(capsys.readouterr().out.replace("\\\n", " "))
    assert words[0] == "dataflex-run"
    parse = OverridesParser.create().parse_override
    run_dirs = [parse(w).value() for w in words if w.startswith("hydra.run.dir=")]
    return [w for w in words[1:] if not w.startswith("hydra.run.dir=")], (run_dirs or [None])[0]


def missing_conf(example: Path) -> Path | None:
    """The config file the example's component needs, when it is missing (None: nothing missing)."""
    keys = yaml.safe_load(example.read_text())
    kind = legacy.TRAIN_TYPES[keys.get("train_type", "static")]
    if kind is None:
        return None
    name = "static" if kind == "mixer" and keys.get("static_mix") else keys["component_name"]
    path = conf_file(kind, name)
    return None if path.is_file() else path


def skip_missing(example: Path) -> None:
    missing = missing_conf(example)
    if missing is not None:
        pytest.skip(f"{missing.relative_to(ROOT)} does not exist yet")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT / "examples")))
def test_migrate_output_composes_to_the_config_train_uses(example, capsys):
    skip_missing(example)
    printed, run_dir = migrated(capsys, example)
    t = translate_file(example)
    assert OmegaConf.to_container(compose(printed)) == OmegaConf.to_container(compose(t.overrides))
    assert run_dir == t.run_dir == yaml.safe_load(example.read_text())["output_dir"]


def test_migrate_round_trips_values_that_need_quoting(tmp_path, capsys):
    odd = 'it\'s a "run", 50% $HOME ${x} [1]'
    path = tmp_path / "odd.yaml"
    path.write_text(yaml.safe_dump(sft(run_name="placeholder", output_dir=str(tmp_path / "my run"))))
    printed, run_dir = migrated(capsys, path, "lr_scheduler_type=cosine_with_restarts", "+trainer.optim=adamw_torch")
    assert run_dir == str(tmp_path / "my run")
    t = translate_file(path, ["lr_scheduler_type=cosine_with_restarts", "+trainer.optim=adamw_torch"])
    assert OmegaConf.to_container(compose(printed)) == OmegaConf.to_container(compose(t.overrides))
    # a value with quotes, commas, brackets and interpolation-like text survives the printed command
    printed = [f"run_name={legacy.render_value(odd)}" if w.startswith("run_name=") else w for w in printed]
    words = shlex.split(shlex.join(printed))
    assert compose(words).run_name == odd


# -- the examples run --------------------------------------------------------------------------------

# Two steps on the tiny model: a component update after step 1 (warmup 1, then every 2 steps).
FEW_STEPS = [
    "max_steps=2",
    "warmup_step=1",
    "update_step=2",
    "max_samples=16",
    "cutoff_len=64",
    "per_device_train_batch_size=4",
    "save_steps=100",
    "eval.before=false",
    "eval.after=false",
]


# DoReMi's reference model is step 1's output; the untrained tiny model stands in for it here.
EXTRA = {"doremi": lambda: [f"mixer.reference_dir={asset_path('tiny')}"]}


@pytest.mark.parametrize(
    "example",
    [  # plain training stays in the fast set; the others take longer
        pytest.param(
            p,
            marks=() if p.name == "static.yaml" and p.parent.name == "examples" else pytest.mark.slow,
            id=str(p.relative_to(ROOT / "examples")),
        )
        for p in EXAMPLES
    ],
)
def test_example_trains_a_few_steps_on_tiny(example, tmp_path):
    skip_missing(example)
    extra = EXTRA.get(example.stem, list)()
    t = translate_file(example, [*FEW_STEPS, f"output_dir={tmp_path / 'run'}", *extra])
    metrics = legacy.run_translation(t)
    assert metrics["global_step"] == 2 and math.isfinite(metrics["final_train_loss"])
    saved = yaml.safe_load((tmp_path / "run" / "dataflex_config.yaml").read_text())
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2]
    assert saved["model"]["name"] == "tiny"
    keys = yaml.safe_load(example.read_text())
    kind = legacy.TRAIN_TYPES[keys["train_type"]]
    if kind is None:
        return
    option = "static" if keys.get("static_mix") else keys["component_name"]
    assert saved[kind]["name"] == option
    logged = {k for r in records for k in r}
    if kind == "selector" and option != "static":
        # the round after step 1 selects update_step global batches: 4 per device x 2 steps
        assert 8 in [r["selector/selected"] for r in records if r["step"] == 1 and "selector/selected" in r]
    elif kind != "selector":
        assert any(k.startswith(f"{kind}/") for k in logged), sorted(logged)
