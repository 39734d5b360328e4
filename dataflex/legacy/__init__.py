"""Original DataFlex / LLaMA-Factory training YAML -> `dataflex-run` Hydra overrides (`dataflex-cli`).

The YAML is translated into `dataflex-run` Hydra overrides, composed from the shipped conf with
Hydra's compose API, and run by the same `Run`, so a legacy YAML gets exactly the defaults and the
validation of `dataflex-run`:

- LLaMA-Factory keys: `model_name_or_path` picks the shipped `model` option with that name or path
  (otherwise the model group is set to the path), with `template`/`trust_remote_code`; `dataset`
  (comma-separated, one domain each), `dataset_dir`, `cutoff_len`, `max_samples` set `data` (the
  shipped option whose datasets they are, else a custom data config), `eval_dataset` the selectors'
  target set (`data.validation`); `seed`, `run_name`, `output_dir` (the run directory) and
  `report_to: wandb` (`logger=wandb`) are dataflex's own. Every other key goes to `trainer` as it
  is, and the trainer holds ONLY the YAML's keys, so LLaMA-Factory's defaults apply to the rest, as
  under `llamafactory-cli`: `train_type: static` is plain LLaMA-Factory training.
- DataFlex keys: `train_type` picks the axis (`dynamic_select` -> `selector=`, `dynamic_mix` ->
  `mixer=`, `dynamic_weight` -> `weighter=`) and `component_name` the option; the component's
  `params` in `components_cfg_file` (then `component_overrides`) set its keys;
  `warmup_step`/`update_step`/`update_times` -> `warmup_steps`/`update_every`/`num_updates`; a
  selector without a budget selects what one window trains (global batch x `update_step`), as the
  original; `static_mix`, `mixture_sample_rule` and `init_mixture_proportions` set the mixer's
  proportions. The run length follows the original (`train_step`, else
  `warmup_step + update_step * update_times`) unless the YAML sets `max_steps`.

A key that is neither is an error naming it, with the closest valid key (the original dropped it
silently); so is a component whose config (`dataflex/conf/<group>/<name>.yaml`) does not exist.

A component declares its own original param names as class attributes, read here through its
config's ``_target_``: ``legacy_keys`` (original name -> key here, or -> a DataFlex key such as
``init_mixture_proportions``), ``legacy_unused`` (original params with no counterpart, and why: a
note) and ``legacy_defaults`` (the original's default where this component's differs).

Modules: ``keys`` (the format; reading and checking a YAML), ``overrides`` (Hydra's override grammar,
the shipped conf), ``components`` (the component's params, schedule, mixture and run length),
``translate`` (the whole translation).
"""

from dataflex.legacy.keys import (
    DATAFLEX_KEYS,
    TRAIN_TYPES,
    check_keys,
    did_you_mean,
    read_legacy,
)
from dataflex.legacy.overrides import (
    compose,
    conf_file,
    diff_overrides,
    group_options,
    render_value,
)
from dataflex.legacy.translate import Translation, translate, translate_file, validate

__all__ = [
    "DATAFLEX_KEYS",
    "TRAIN_TYPES",
    "Translation",
    "check_keys",
    "compose",
    "conf_file",
    "did_you_mean",
    "diff_overrides",
    "group_options",
    "read_legacy",
    "render_value",
    "translate",
    "translate_file",
    "validate",
]
