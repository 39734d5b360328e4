"""Every key the original DataFlex's examples and components.yaml use, and every key LLaMA-Factory's
train_lora / train_full examples use, is in the fixtures (tests/e2e/fixtures/legacy/), is accepted by
`dataflex-cli`'s translation and lands where the README's mapping table says, and the table lists it.

The key sets are literals, read from the originals (``git show`` of OpenDCAI/DataFlex at ``3c13e37``:
``examples/{test,train_full,train_lora}/**.yaml`` and ``src/dataflex/configs/components.yaml``; of
hiyouga/LLaMA-Factory at ``v0.9.5``, the installed version: ``examples/{train_lora,train_full}/*.yaml``).
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import pytest
import yaml
from support.legacy import COMPONENTS, DATAFLEX, LLAMAFACTORY, offline_args

from dataflex.config import ConfigError, to_dict
from dataflex.legacy import compose, read_legacy, translate_file
from dataflex.legacy.components import component_class
from dataflex.legacy.keys import (
    DATA_KEYS,
    DATAFLEX_KEYS,
    EVAL_KEYS,
    MODEL_KEYS,
    ORIGINAL_METHODS,
    OWNED_KEYS,
    SCHEDULE,
    SECTIONS,
    TRAIN_TYPES,
    UNUSED_EVERYWHERE,
    UNUSED_KEYS,
    llamafactory_default,
)
from dataflex.legacy.overrides import conf_file

# -- the originals' keys --------------------------------------------------------------------------------------

DATAFLEX_EXAMPLE_KEYS = {
    "bf16", "component_name", "components_cfg_file", "cutoff_len", "dataloader_num_workers", "dataset",
    "ddp_timeout", "deepspeed", "do_train", "eval_dataset", "eval_steps", "eval_strategy", "finetuning_type",
    "flash_attn", "freeze_gate", "gradient_accumulation_steps", "greater_is_better", "init_mixture_proportions",
    "learning_rate", "load_best_model_at_end", "logging_steps", "lora_alpha", "lora_rank", "lora_target",
    "lr_scheduler_type", "max_steps", "metric_for_best_model", "mixer_eval_dataset", "mixture_sample_rule",
    "model_name_or_path", "num_train_epochs", "output_dir", "overwrite_cache", "overwrite_output_dir",
    "per_device_eval_batch_size", "per_device_train_batch_size", "plot_loss", "preprocessing_num_workers",
    "report_to", "save_only_model", "save_steps", "seed", "stage", "static_mix", "template", "train_from_scratch",
    "train_step", "train_type", "trust_remote_code", "update_step", "update_times", "warmup_ratio", "warmup_step",
}  # fmt: skip
LLAMAFACTORY_EXAMPLE_KEYS = {
    "bf16", "cutoff_len", "dataloader_num_workers", "dataset", "dataset_dir", "ddp_timeout", "deepspeed",
    "do_train", "finetuning_type", "freeze_language_model", "freeze_multi_modal_projector", "freeze_vision_tower",
    "gradient_accumulation_steps", "image_max_pixels", "learning_rate", "logging_steps", "lora_rank",
    "lora_target", "lr_scheduler_type", "max_samples", "model_name_or_path", "num_train_epochs", "output_dir",
    "overwrite_output_dir", "per_device_train_batch_size", "plot_loss", "pref_beta", "pref_loss",
    "preprocessing_num_workers", "ray_num_workers", "report_to", "resume_from_checkpoint", "save_only_model",
    "save_steps", "stage", "template", "tokenized_path", "trust_remote_code", "video_max_pixels", "warmup_ratio",
}  # fmt: skip
# components.yaml: section -> method -> its params (every entry also has `name`, the method's name)
COMPONENTS_PARAMS = {
    "selectors": {
        "nice": (
            "cache_dir", "gradient_type", "proj_dim", "seed", "save_interval", "reward_model_backend",
            "reward_backend_params", "mc_samples", "max_new_tokens", "generation_temperature", "max_prompt_length",
        ),
        "less": ("cache_dir", "gradient_type", "proj_dim", "seed", "save_interval"),
        "cluster_less": (
            "cache_dir", "gradient_type", "proj_dim", "seed", "save_interval", "cluster_size", "samples_per_cluster",
            "clustering_batch_size", "clustering_max_iter", "clustering_method", "representative_strategy",
            "embedding_model_name_or_path", "embedding_model_dtype", "embedding_layer",
        ),
        "loss": ("cache_dir", "focus"),
        "delta_loss": ("cache_dir", "window_size"),
        "tsds": ("probs_path", "cache_dir"),
        "near": ("indices_path", "cache_dir"),
        "random": ("cache_dir", "seed", "replacement"),
        "custom": ("cache_dir",),
    },
    "mixers": {
        "random": ("seed",),
        "doremi": ("reference_model_path", "reweight_eta", "reweight_eps"),
        "static": ("proportions",),
        "odm": ("alpha", "warmup_steps", "reward_scale", "min_exploration_rate", "initial_proportions"),
        "dynamic_moe": ("eta", "c", "collect_steps", "eval_samples", "eval_batch_size"),
    },
    "weighters": {
        "loss": ("strategy", "delta"),
        "adapt": ("tau", "refresh_interval", "anchor_batch_size", "clip"),
        "custom": ("strategy",),
    },
}  # fmt: skip
# NICE's reward_backend_params: backend -> its keys
NICE_BACKEND_PARAMS = {
    "local_vllm": (
        "hf_model_name_or_path", "vllm_tensor_parallel_size", "vllm_temperature", "vllm_top_p", "vllm_max_tokens",
        "vllm_top_k", "vllm_seed", "vllm_max_model_len", "vllm_gpu_memory_utilization",
    ),
    "api": ("api_url", "api_key", "model_name", "temperature"),
}  # fmt: skip
KIND = {section: kind for kind, section in SECTIONS.items()}
OURS = yaml.safe_load(COMPONENTS.read_text())


def _examples(repo: Path) -> list[Path]:
    return sorted((repo / "examples").rglob("*.yaml"))


def _keys(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _missing_method(path: Path) -> bool:
    keys = _keys(path)
    kind = TRAIN_TYPES.get(keys.get("train_type", "static"))
    return kind is not None and not keys.get("static_mix") and not conf_file(kind, keys["component_name"]).is_file()


# -- 1. in the fixtures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "repo, original", [(DATAFLEX, DATAFLEX_EXAMPLE_KEYS), (LLAMAFACTORY, LLAMAFACTORY_EXAMPLE_KEYS)], ids=["df", "lf"]
)
def test_every_original_example_key_is_in_a_fixture(repo, original):
    ours = set().union(*(_keys(p) for p in _examples(repo)))
    assert original - ours == set()


def test_the_components_yaml_has_every_original_key():
    for section, methods in COMPONENTS_PARAMS.items():
        for method, params in methods.items():
            entry = OURS[section][method]
            assert entry["name"] == method
            assert set(params) <= set(entry["params"]), (section, method)
    backends = OURS["selectors"]["nice"]["params"]["reward_backend_params"]
    for backend, keys in NICE_BACKEND_PARAMS.items():
        assert set(keys) <= set(backends[backend]), backend
    assert set(COMPONENTS_PARAMS) == set(OURS) and all(set(COMPONENTS_PARAMS[s]) == set(OURS[s]) for s in OURS)


def test_the_original_methods_are_those_of_the_components_yaml():
    assert {KIND[s]: set(m) for s, m in COMPONENTS_PARAMS.items()} == {k: set(v) for k, v in ORIGINAL_METHODS.items()}


# -- 2. accepted by the translation, and where each lands ------------------------------------------------------

HOSTS = [p for p in [*_examples(DATAFLEX), *_examples(LLAMAFACTORY)] if not _missing_method(p)]
STAND_IN = DATAFLEX / "examples/test/quick_mix_random.yaml"  # for a key only a missing method's example has


def _host(key: str) -> tuple[Path, tuple[str, ...]]:
    """A fixture of a method dataflex has that holds ``key``; else the stand-in with the key's value from the
    fixture that has it (the original's dynamic_moe keys), given on the command line."""
    for path in HOSTS:
        if key in _keys(path):
            return path, ()
    holder = next(p for p in _examples(DATAFLEX) if key in _keys(p))
    value = _keys(holder)[key]
    return STAND_IN, (f"{key}={str(value).lower() if isinstance(value, bool) else value}",)


@functools.cache
def _translated(path: Path, extra: tuple[str, ...]):
    """(the YAML's keys with the test's substitutions, its translation, the composed config or None)."""
    repo = DATAFLEX if DATAFLEX in path.parents else LLAMAFACTORY
    args = [*offline_args(path, dataset_dir=_pairwise() if _is_pairwise(path) else None), *extra]
    with contextlib.chdir(repo):  # the examples name components_cfg_file from the repository's root
        legacy, _ = read_legacy(path, args)
        t = translate_file(path.relative_to(repo), args)
        cfg = None if t.llamafactory_args is not None else to_dict(compose(t.overrides))
    return legacy, t, cfg


def _is_pairwise(path: Path) -> bool:
    return any(n in path.read_text() for n in ("dpo_en_demo", "kto_en_demo"))


@functools.cache
def _pairwise() -> Path:
    import tempfile

    from support.legacy import write_pairwise

    return write_pairwise(Path(tempfile.mkdtemp(prefix="dataflex-pairwise-")))


def _same_path(a, b) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def _lands(key: str, legacy: dict, t, cfg: dict) -> bool:
    """Whether ``key`` reached its place in the composed config (the README's mapping table)."""
    value, notes = legacy[key], t.notes
    kind = TRAIN_TYPES[legacy.get("train_type", "static")]
    if key in MODEL_KEYS:
        return (
            _same_path(cfg["model"]["name_or_path"], value)
            if key == "model_name_or_path"
            else cfg["model"][key] == value
        )
    if key in DATA_KEYS:
        data = cfg["data"]
        return {
            "dataset": lambda: data["domains"] == value.split(","),
            "dataset_dir": lambda: _same_path(data["dataset_dir"], value),
            "eval_dataset": lambda: data["validation"] == value,
        }.get(key, lambda: data[key] == value)()
    if key in OWNED_KEYS:
        return {
            "seed": lambda: cfg["seed"] == value,
            "output_dir": lambda: t.run_dir == value,
            "do_train": lambda: value is True,  # always trains (false: refused in one line)
            "report_to": lambda: value == "none" and "logger=wandb" not in t.overrides,
            "plot_loss": lambda: "plot_loss: the loss curve is in metrics.jsonl" in notes,
            "resume_from_checkpoint": lambda: value is None,  # a run resumes by itself
        }[key]()
    if key in EVAL_KEYS:
        if key in ("eval_strategy", "eval_steps"):  # LLaMA-Factory's cadence: dataflex's evaluation's
            return legacy["eval_strategy"] == "steps" and cfg["eval"]["every_n_steps"] == legacy["eval_steps"]
        if key == "per_device_eval_batch_size":
            return cfg["eval"]["batch_size"] == value
        return value == llamafactory_default(key) or any(n.startswith(key) or f", {key}" in n for n in notes)
    if key in UNUSED_KEYS:
        return any(n.startswith(f"{key}: not used (") for n in notes)
    if key in SCHEDULE:
        return cfg[kind][SCHEDULE[key]] == value
    if key == "train_type":
        return kind is not None and kind in cfg and cfg[kind]["name"]
    if key == "component_name":
        return cfg[kind]["name"] == value
    if key == "static_mix":
        return value is True and cfg["mixer"]["name"] == "static"
    if key == "train_step":
        return cfg["trainer"]["max_steps"] == value
    if key == "mixture_sample_rule":
        return value == "mixture" and cfg["mixer"]["name"] == legacy["component_name"]  # the mixer moves it
    if key == "init_mixture_proportions":
        return cfg["mixer"]["initial"] == value
    if key == "components_cfg_file":
        return _component_params_land(kind, legacy["component_name"], t, cfg)
    assert key not in DATAFLEX_KEYS, key
    return cfg["trainer"].get(key) == value  # LLaMA-Factory's own keys: the trainer, as they are


def _component_params_land(kind: str, method: str, t, cfg: dict) -> bool:
    cls = component_class(kind, method)
    renamed = getattr(cls, "legacy_keys", {})
    unused = {**UNUSED_EVERYWHERE, **getattr(cls, "legacy_unused", {})}
    for key, value in OURS[SECTIONS[kind]][method]["params"].items():
        if key in unused:
            assert any(n.startswith(f"{SECTIONS[kind]}.{method}.{key}: not used (") for n in t.notes), key
        elif renamed.get(key) not in DATAFLEX_KEYS:
            group = cfg[kind]
            for part in renamed.get(key, key).split("."):
                group = group[part]
            assert group == value, (key, group, value)
    return True


@pytest.mark.parametrize("key", sorted(DATAFLEX_EXAMPLE_KEYS | LLAMAFACTORY_EXAMPLE_KEYS))
def test_every_original_example_key_is_accepted_and_lands(key):
    path, extra = _host(key)
    legacy, t, cfg = _translated(path, extra)
    if t.llamafactory_args is not None:  # another stage: LLaMA-Factory's own workflow, the key as it is
        assert t.llamafactory_args[key] == legacy[key]
        return
    assert _lands(key, legacy, t, cfg), (key, path.name)


def test_every_nice_backend_key_reaches_the_judge():
    path = DATAFLEX / "examples/train_lora/selectors/nice_sft_lora.yaml"
    _, t, cfg = _translated(path, ())
    given = OURS["selectors"]["nice"]["params"]["reward_backend_params"]
    assert cfg["selector"]["reward_kwargs"]["backend_params"] == given
    assert cfg["selector"]["reward_kwargs"]["backend"] == "local_vllm"


@pytest.mark.parametrize(
    "section, method",
    [(s, m) for s, ms in COMPONENTS_PARAMS.items() for m in ms if not conf_file(KIND[s], m).is_file()],
)
def test_a_missing_method_is_refused_before_its_params_are_read(section, method):
    keys = {
        "model_name_or_path": "tiny",
        "dataset": "offline_sft_facts",
        "train_type": {"selectors": "dynamic_select", "mixers": "dynamic_mix", "weighters": "dynamic_weight"}[section],
        "component_name": method,
        "components_cfg_file": str(COMPONENTS),
    }
    from dataflex.legacy import translate

    with pytest.raises(ConfigError, match=rf"^{method}: the original DataFlex's {method} {KIND[section]} "):
        translate(keys, name="m", env={})


# -- 3. the README's mapping table lists every original key ------------------------------------------------------


def _legacy_section() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("## Coming from DataFlex / LLaMA-Factory YAML")
    return readme[start : readme.index("\n## ", start + 1)]


def test_the_readme_mapping_table_lists_every_original_example_key():
    section = _legacy_section()
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    listed = {k for row in rows for k in re.findall(r"`([a-z_0-9]+)(?::[^`]*)?`", row.split(" | ")[0])}
    assert sorted((DATAFLEX_EXAMPLE_KEYS | LLAMAFACTORY_EXAMPLE_KEYS) - listed) == []


def test_the_readme_mapping_table_lists_every_components_param():
    rows = [line for line in _legacy_section().splitlines() if line.startswith("| ")]
    for section, methods in COMPONENTS_PARAMS.items():
        for method, params in methods.items():
            head = f"{KIND[section]} `{method}`"
            mine = " ".join(r for r in rows if r.startswith(f"| {head}") or r.startswith("| every method"))
            assert mine, head
            named = set(re.findall(r"`([a-z_0-9]+)`", mine))
            assert set(params) - named == set(), (method, set(params) - named)
    nice = " ".join(r for r in rows if r.startswith("| selector `nice`"))
    for keys in NICE_BACKEND_PARAMS.values():
        assert set(keys) - set(re.findall(r"`([a-z_0-9]+)`", nice)) == set()
