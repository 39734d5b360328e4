"""Datasets for LLaMA-Factory: the run's dataset registry (with column-defined domain splits), the
checks of the registered files, and tokenising the pool and the validation sets through LLaMA-Factory."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

from dataflex.config import ConfigError
from dataflex.utils import atomic_write_json

STAGES = ("sft", "pt")
DOMAIN_SPLIT_FILE = "dataflex_domain_split.json"  # beside dataset_info.json: a column-defined split to make


def write_registry(data_cfg: dict, out_dir: Path) -> str:
    """Write the run's LLaMA-Factory ``dataset_info.json`` and return its directory.

    It merges the offline asset registry (when the data config names an asset) with the data
    config's own ``registry`` entries (the paper's public sets, by hub name), with local file
    names made absolute so one registry serves files from anywhere.
    """
    registry: dict[str, Any] = {}
    source_dir = data_cfg.get("dataset_dir")
    if source_dir:
        path = Path(source_dir) / "dataset_info.json"
        if not path.is_file():
            raise ConfigError(f"data={data_cfg.get('name')}: no {path}; build the offline assets with `dataflex-data build`")
        for name, entry in json.loads(path.read_text()).items():
            entry = dict(entry)
            if "file_name" in entry:
                entry["file_name"] = str((Path(source_dir) / entry["file_name"]).resolve())
            registry[name] = entry
    registry.update(data_cfg.get("registry") or {})
    atomic_write_json(out_dir / "dataset_info.json", registry)
    split = out_dir / DOMAIN_SPLIT_FILE
    if data_cfg.get("domain_column"):  # made when the data is built (build()), not here: no data is read here
        atomic_write_json(split, {"source": data_cfg["source"], "column": data_cfg["domain_column"],
                                  "domains": list(data_cfg.get("domains") or []), "what": f"data={data_cfg.get('name')}"})
    else:
        split.unlink(missing_ok=True)
    return str(out_dir)


def _column_value(row: dict, column: str):
    """``row``'s value at a dotted ``column`` path (``meta.pile_set_name``), or None when absent."""
    value: Any = row
    for key in column.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _load_raw(name: str, entry: dict):
    """The rows of a registry entry as stored (every column kept), through ``datasets``."""
    from datasets import load_dataset
    from llamafactory.extras.constants import FILEEXT2TYPE

    if "file_name" in entry:
        path = Path(entry["file_name"])
        files = sorted(str(f) for f in path.iterdir() if f.is_file()) if path.is_dir() else [str(path)]
        kind = FILEEXT2TYPE.get(Path(files[0]).suffix.lstrip(".")) if files else None
        if kind is None:
            raise ConfigError(f"dataset '{name}': cannot split {path} by a column (file types: {', '.join(FILEEXT2TYPE)})")
        return load_dataset(kind, data_files=files, split="train")
    if "hf_hub_url" in entry:
        try:
            return load_dataset(entry["hf_hub_url"], name=entry.get("subset"), data_dir=entry.get("folder"),
                                split=entry.get("split", "train"))
        except Exception as err:  # noqa: BLE001 - offline without a cached copy, a wrong id, ...: one clear line
            raise ConfigError(
                f"dataset '{name}': cannot load {entry['hf_hub_url']} to split it by column ({str(err).splitlines()[0]}); "
                "set HF_HUB_OFFLINE=0 where the hub is reachable, or point the entry at a local file"
            ) from None
    raise ConfigError(f"dataset '{name}': only local files and hf_hub_url entries can be split by a column")


def split_by_column(spec: dict, registry: dict[str, Any], out_dir: Path) -> list[str]:
    """Column-defined domains: split the dataset ``spec["source"]`` into one local dataset per value
    of ``spec["column"]`` and register each under its value's name.

    ``spec["domains"]`` lists the values to keep, in order (each becomes one domain); empty: every
    value found, sorted. Rows keep all their fields (the entry's ``columns`` mapping still applies);
    rows without the column are dropped. The split is written once, streamed row by row, to
    ``<out_dir>/domains/`` (each file atomically; a rerun with the same source and column reuses
    it). On several processes rank 0 writes and the others wait.

    Returns:
        The registry names of the domains (the column values), also added to ``registry``.
    """
    import contextlib
    import hashlib
    import tempfile

    from dataflex.signals.distributed import main_process_first

    source, column, what = spec["source"], spec["column"], spec.get("what", "data")
    if source not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise ConfigError(f"{what}: source '{source}' (the dataset to split by {column}) is not registered; known: {known}")
    wanted = [str(v) for v in (spec.get("domains") or [])]
    folder = out_dir / "domains"
    index_path = folder / "index.json"
    key = {"source": registry[source], "column": column}
    with main_process_first():
        index = json.loads(index_path.read_text()) if index_path.is_file() else None
        if index is None or index.get("key") != key:
            folder.mkdir(parents=True, exist_ok=True)
            handles: dict[str, Any] = {}
            with contextlib.ExitStack() as stack:  # every temp file closed on the way out
                try:
                    for row in _load_raw(source, registry[source]):
                        value = _column_value(row, column)
                        if value is None:
                            continue
                        value = str(value)
                        if value not in handles:
                            handles[value] = stack.enter_context(
                                tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False, encoding="utf-8"))
                        handles[value].write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                except BaseException:
                    for handle in handles.values():
                        Path(handle.name).unlink(missing_ok=True)
                    raise
            files = {}
            for value, handle in handles.items():
                slug = re.sub(r"[^\w.-]", "_", value)[:40]
                path = folder / f"{slug}-{hashlib.sha1(value.encode()).hexdigest()[:8]}.jsonl"
                os.replace(handle.name, path)
                files[value] = str(path)
            index = {"key": key, "files": files}
            atomic_write_json(index_path, index)
    files = index["files"]
    if not files:
        raise ConfigError(f"{what}: no row of '{source}' has a value in column {column}; check data.domain_column")
    names = wanted or sorted(files)
    missing = [v for v in names if v not in files]
    if missing:
        raise ConfigError(f"{what}: no row of '{source}' has {column} = {missing[0]!r}; values found: {', '.join(sorted(files)) or 'none'}")
    commas = [v for v in names if "," in v]
    if commas:
        raise ConfigError(f"{what}: domain {commas[0]!r} contains a comma (LLaMA-Factory splits dataset names at commas); "
                          "list the other values in data.domains to leave it out")
    entry = {k: v for k, v in registry[source].items() if k not in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url",
                                                                       "cloud_file_name", "subset", "split", "folder")}
    for value in names:
        if value in registry and registry[value].get("file_name") != files[value]:
            raise ConfigError(f"{what}: domain {value!r} clashes with a registered dataset of that name")
        registry[value] = {**entry, "file_name": files[value]}
    return names


def resolve_column_domains(hparams: dict[str, Any]) -> dict[str, Any]:
    """``hparams`` with a column-defined split made (:func:`split_by_column`): ``dataset`` becomes
    the domains' names and the registry gains their entries. Unchanged without a split."""
    spec_path = Path(hparams["dataset_dir"]) / DOMAIN_SPLIT_FILE
    if not spec_path.is_file():
        return hparams
    registry_path = Path(hparams["dataset_dir"]) / "dataset_info.json"
    registry = json.loads(registry_path.read_text())
    names = split_by_column(json.loads(spec_path.read_text()), registry, Path(hparams["dataset_dir"]))
    atomic_write_json(registry_path, registry)
    return {**hparams, "dataset": ",".join(names)}


def required_columns(entry: dict) -> list[str]:
    """The fields every row of a local alpaca/sharegpt file must have, as LLaMA-Factory reads them
    (a ``columns`` mapping replaces the defaults; unmapped columns are then unused)."""
    columns = entry.get("columns")
    if entry.get("formatting", "alpaca") == "sharegpt":
        return [(columns or {}).get("messages") or "conversations"]
    if columns is None:
        return ["instruction", "output"]
    return [columns[k] for k in ("prompt", "response") if columns.get(k)]


def check_dataset_file(name: str, entry: dict) -> None:
    """Refuse a local dataset file LLaMA-Factory would choke on, naming the file, line and fix.

    Checks: the file exists, every line of a ``.jsonl`` (or the array of a ``.json``) parses, every
    row has the fields the registry entry maps, and there is at least one row. Hub datasets and
    other file types are left to LLaMA-Factory.
    """
    if "file_name" not in entry:
        return
    path = Path(entry["file_name"])
    if not path.exists():
        from dataflex.data.assets import dataflex_home

        if path.resolve().is_relative_to(dataflex_home().resolve()):  # one of the offline assets
            fix = "build the offline assets (`dataflex-data build`)"
        else:
            fix = "fix the path (file_name) in its registry entry or data config"
        raise ConfigError(f"dataset '{name}': file {path} not found; {fix}")
    if path.suffix not in (".jsonl", ".json") or path.is_dir():
        return
    required = required_columns(entry)

    def check_row(row, where: str) -> None:
        if not isinstance(row, dict):
            raise ConfigError(f"dataset '{name}': {path} {where} is not a JSON object; each row must be one")
        missing = [c for c in required if c not in row]
        if missing:
            raise ConfigError(
                f"dataset '{name}': {path} {where} has no field {missing[0]!r} (the registry maps {required}); "
                "add the field or fix the entry's `columns`"
            )

    try:
        rows = _check_rows(name, path, check_row)
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"dataset '{name}': {path} is not UTF-8 (it holds byte {err.object[err.start]:#x}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {path} > {path.stem}.utf8{path.suffix}`"
        ) from None
    if rows == 0:
        raise ConfigError(f"dataset '{name}': {path} holds no rows; an empty domain cannot be trained on")


def _check_rows(name: str, path: Path, check_row) -> int:
    """Parse every row of a ``.json``/``.jsonl`` file through ``check_row``; the number of rows."""
    rows = 0
    with path.open(encoding="utf-8") as f:
        if path.suffix == ".json":
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ConfigError(f"dataset '{name}': {path} is not valid JSON (line {err.lineno}: {err.msg})") from None
            for i, row in enumerate(data if isinstance(data, list) else [data]):
                check_row(row, f"row {i}")
                rows += 1
        else:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(
                        f"dataset '{name}': {path} line {lineno} is not valid JSON ({err.msg}); fix or remove that line"
                    ) from None
                check_row(row, f"line {lineno}")
                rows += 1
    return rows


def check_datasets(names: list[str], dataset_dir: str) -> None:
    """Every dataset the run reads is registered, and its local file is sound (:func:`check_dataset_file`)."""
    registry = json.loads((Path(dataset_dir) / "dataset_info.json").read_text())
    for name in names:
        if name not in registry:
            raise ConfigError(f"dataset '{name}' is not registered; known: {', '.join(sorted(registry)) or 'none'}")
        check_dataset_file(name, registry[name])


def tokenise(names, template, model_args, data_args, training_args, stage: str, tokenizer_module: dict, what="dataset"):
    """Tokenise every dataset of ``names`` through LLaMA-Factory's ``get_dataset`` and concatenate them.

    Each dataset is processed on its own so that packing (pt) never crosses datasets and every row
    knows where it came from; rows get ``domain_id`` (the position of their dataset in ``names``)
    and ``sample_index`` (their row in the result).
    """
    from datasets import concatenate_datasets
    from llamafactory.data import get_dataset

    parts = []
    for domain_id, name in enumerate(names):
        domain_args = copy.copy(data_args)
        domain_args.dataset = [name]
        try:
            part = get_dataset(template, model_args, domain_args, training_args, stage=stage, **tokenizer_module)
        except RuntimeError as err:  # LLaMA-Factory's "Cannot find valid samples"
            raise ConfigError(f"{what} '{name}' has no usable sample after tokenisation ({err})") from None
        part = part["train_dataset"]
        if len(part) == 0:
            raise ConfigError(f"{what} '{name}' has no usable sample after tokenisation; check its file and cutoff_len")
        if stage == "sft" and not has_labelled_row(part):
            raise ConfigError(
                f"{what} '{name}' has no usable sample after tokenisation: no row keeps a response token within "
                f"cutoff_len={data_args.cutoff_len}; raise data.cutoff_len or check the responses"
            )
        parts.append(part.add_column("domain_id", [domain_id] * len(part)))
    pool = concatenate_datasets(parts)
    return pool.add_column("sample_index", list(range(len(pool))))


def has_labelled_row(dataset) -> bool:
    """True when some row has a label token (not -100); stops at the first one, so a sound
    dataset costs one row."""
    from llamafactory.extras.constants import IGNORE_INDEX

    if "labels" not in dataset.column_names:
        return True
    return any(any(t != IGNORE_INDEX for t in row["labels"]) for row in dataset.select_columns(["labels"]))


def build_pool(template, model_args, data_args, training_args, stage: str, tokenizer_module: dict):
    """The training pool: every domain of ``data_args.dataset`` (see :func:`tokenise`)."""
    return tokenise(data_args.dataset, template, model_args, data_args, training_args, stage, tokenizer_module)


def build_validation(names, template, model_args, data_args, training_args, stage: str, tokenizer_module: dict):
    """The selectors' target/validation set: ``domain_id`` is the subtask (position in ``names``).

    Not truncated by ``max_samples`` (a per-domain cap of the training pool).
    """
    if not names:
        return None
    val_args = copy.copy(data_args)
    val_args.max_samples = None
    return tokenise(names, template, model_args, val_args, training_args, stage, tokenizer_module, what="validation set")


def validation_names(data_cfg: dict) -> list[str]:
    """``data.validation`` as a list of registry names (a name, a comma-separated string or a list)."""
    value = data_cfg.get("validation")
    if not value:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def resolve_validation_column(hparams: dict[str, Any], names: list[str], column: str | None) -> list[str]:
    """The validation names with subtasks from a column: the one set ``names`` holds, split by
    ``column`` (:func:`split_by_column`, under ``<dataset_dir>/validation_subtasks``), one registered
    set per value, sorted (e.g. MMLU's ``subject``: 57 subtasks). ``names`` unchanged without a column."""
    if not column:
        return names
    if len(names) != 1:
        raise ConfigError(f"selector.subtask_column={column} splits ONE validation set into subtasks, but data.validation "
                          f"names {len(names)} ({', '.join(names) or 'none'}); name one set, or set selector.subtask_column=null")
    registry_path = Path(hparams["dataset_dir"]) / "dataset_info.json"
    registry = json.loads(registry_path.read_text())
    subtasks = split_by_column({"source": names[0], "column": column, "what": f"selector.subtask_column={column}"},
                               registry, Path(hparams["dataset_dir"]) / "validation_subtasks")
    atomic_write_json(registry_path, registry)
    return subtasks
