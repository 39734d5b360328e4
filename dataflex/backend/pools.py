"""Large pools: domains from a column without a copy of the corpus, and pools tokenized ahead of time.

A column-defined split (``data.domain_column``: SlimPajama's ``meta.redpajama_set_name``) reads the
column once, as Arrow (no Python list of rows), and caches the domain id of every row under
:func:`domain_cache_dir`, keyed by the dataset's fingerprint and the column: every run over the same
source shares it. The source itself stays where ``datasets`` keeps it (its memory-mapped Arrow cache);
each domain is a view of its rows (``Dataset.select``) that LLaMA-Factory aligns and tokenises, its
results cached by ``datasets`` as usual, not a file per run.

A pool tokenized ahead of time (``data.tokenized_path``: a ``datasets.save_to_disk`` directory, as
LLaMA-Factory's own ``tokenized_path`` loads it) is opened memory-mapped; its domains come from a
column of the saved rows, and the pool gets its ``domain_id`` and ``sample_index`` columns as Arrow
arrays beside the mapped ones.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dataflex.errors import ConfigError
from dataflex.logs import get_logger
from dataflex.utils import atomic_write

log = get_logger(__name__)

DOMAIN_SPLIT_FILE = "dataflex_domain_split.json"  # beside dataset_info.json: the column-defined split of the run
CACHE_VERSION = "1"


def domain_cache_dir() -> Path:
    """Where the domain ids read from columns are cached: ``<$DATAFLEX_HOME>/cache/domain_ids``."""
    from dataflex.data.assets import dataflex_home

    return dataflex_home() / "cache" / "domain_ids"


@dataclass
class PoolDomains:
    """The pool's domains, as the run's data config defines them.

    Attributes:
        names: the domain names, in domain-id order.
        kind: ``registered`` (one registered dataset per domain), ``column`` (one source dataset's rows
            split by a column) or ``tokenized`` (a saved tokenized pool, split by a column or one domain).
        dataset: the source rows (``column``) or the tokenized pool (``tokenized``), memory-mapped.
        ids: the domain id of every row of ``dataset`` (int64; -1: the row is not in the pool).
        source: the registered name of the source (``column``).
        column: the column naming each row's domain (``column``, and ``tokenized`` when split).
    """

    names: list[str]
    kind: str = "registered"
    dataset: Any = None
    ids: np.ndarray | None = None
    source: str | None = None
    column: str | None = None


def tokenized_path(data: dict) -> str | None:
    """The data config's pool tokenized ahead of time (``data.tokenized_path``, or LLaMA-Factory's own
    key under ``data.args``), or None."""
    return data.get("tokenized_path") or (data.get("args") or {}).get("tokenized_path") or None


def check_tokenized_domains(data: dict) -> None:
    """A tokenized pool is one saved dataset: several domains come from a column of it."""
    if tokenized_path(data) and not data.get("domain_column") and len(data.get("domains") or []) > 1:
        raise ConfigError(
            f"data.tokenized_path={tokenized_path(data)}: a tokenized pool is one saved dataset; its "
            "domains come from a column of its rows (set data.domain_column), not from several "
            "data.domains"
        )


def check_tokenized_pool(data: dict) -> None:
    """Before anything starts (no model, nothing written): the data config's tokenized pool, if any, is
    a saved dataset and has the domain column. Opening it maps the files; no row is read."""
    path = tokenized_path(data)
    if not path:
        return
    check_tokenized_domains(data)
    what = f"data.tokenized_path={path}"
    dataset = open_tokenized(path, what)
    column = data.get("domain_column")
    if column and not has_column(dataset, column):
        raise missing_column(dataset, column, what)


def has_column(dataset, column: str) -> bool:
    """True when the rows have the dotted ``column`` path (a field of a struct column for ``a.b``)."""
    feature: Any = dataset.features
    for key in column.split("."):
        if not isinstance(feature, dict) or key not in feature:
            return False
        feature = feature[key]
    return True


def missing_column(dataset, column: str, what: str) -> ConfigError:
    return ConfigError(
        f"{what}: the rows have no column {column} (data.domain_column); their columns: "
        f"{', '.join(dataset.column_names)}; add the column naming each row's domain, or set "
        "data.domain_column to one of these"
    )


def column_values(dataset, column: str):
    """The values at the dotted ``column`` path of every row (``meta.pile_set_name``), as an Arrow
    array (nulls where a row lacks it), or None when the dataset has no such column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    top, *rest = column.split(".")
    if top not in dataset.column_names:
        return None
    values = dataset.select_columns([top]).with_format("arrow")[:][top]  # the rows in order (a select's view too)
    for key in rest:
        if not pa.types.is_struct(values.type) or values.type.get_field_index(key) < 0:
            return None
        values = pc.struct_field(values, key)
    return values


def read_domain_ids(dataset, column: str, what: str) -> tuple[np.ndarray, list[str]]:
    """Every row's value of ``column`` as an index into the sorted distinct values (int32; -1 where a
    row has none) and those values, read once per dataset fingerprint and column, then cached.

    Raises:
        ConfigError: when the dataset has no such column.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from dataflex.signals.distributed import main_process_first

    key = hashlib.sha1(f"{CACHE_VERSION}\0{column}".encode()).hexdigest()[:12]
    path = domain_cache_dir() / f"{dataset._fingerprint}-{key}.npz"
    with main_process_first():  # rank 0 reads the column; the others find its cache
        if path.is_file():
            with np.load(path, allow_pickle=False) as cached:
                return cached["ids"], [str(v) for v in cached["values"]]
        if not has_column(dataset, column):
            raise missing_column(dataset, column, what)
        values = column_values(dataset, column)
        values = pc.cast(values, pa.string())
        distinct = sorted(str(v) for v in pc.unique(values).drop_null().to_pylist())
        ids = pc.fill_null(pc.index_in(values, value_set=pa.array(distinct, pa.string())), -1).to_numpy()
        ids = np.ascontiguousarray(ids, dtype=np.int32)
        atomic_write(path, lambda f: np.savez(f, ids=ids, values=np.array(distinct, dtype=np.str_)))
        log.info("%s: domain ids of %d rows read from column %s, cached at %s", what, len(ids), column, path)
    return ids, distinct


def domains_from_column(
    dataset, column: str, wanted: list[str], what: str, source: str
) -> tuple[np.ndarray, list[str]]:
    """The domain id of every row (int64, position in the domain list; -1: left out) and the domain
    names: ``wanted`` in order, or every value found, sorted."""
    codes, values = read_domain_ids(dataset, column, what)
    if not values:
        raise ConfigError(f"{what}: no row of '{source}' has a value in column {column}; check data.domain_column")
    names = wanted or values
    missing = [v for v in names if v not in values]
    if missing:
        raise ConfigError(
            f"{what}: no row of '{source}' has {column} = {missing[0]!r}; values found: {', '.join(values)}"
        )
    position = {name: i for i, name in enumerate(names)}
    lookup = np.array([position.get(v, -1) for v in values] + [-1], dtype=np.int64)  # code -1 -> the last: left out
    return lookup[codes], list(names)


def open_tokenized(path: str, what: str):
    """The train split of a tokenized pool saved with ``datasets.save_to_disk`` (memory-mapped), as
    LLaMA-Factory loads its ``tokenized_path``."""
    from datasets import load_from_disk
    from llamafactory.data.data_utils import get_dataset_module
    from llamafactory.extras.misc import has_tokenized_data

    if not has_tokenized_data(path):
        raise ConfigError(
            f"{what}: {path} holds no saved dataset; save the tokenized pool there with "
            "datasets' save_to_disk (input_ids, attention_mask and the domain column), or fix the path"
        )
    try:
        module = get_dataset_module(load_from_disk(path))
    except (FileNotFoundError, ValueError) as err:
        first = str(err).splitlines()[0]
        raise ConfigError(f"{what}: {path} is not a dataset saved by save_to_disk ({first})") from None
    if "train_dataset" not in module:
        raise ConfigError(f"{what}: {path} is a DatasetDict without a 'train' split; save the pool as 'train'")
    return module["train_dataset"]


def load_raw(name: str, entry: dict):
    """The rows of a registry entry as stored (every column kept), through ``datasets``."""
    from datasets import load_dataset
    from llamafactory.extras.constants import FILEEXT2TYPE

    if "file_name" in entry:
        path = Path(entry["file_name"])
        files = sorted(str(f) for f in path.iterdir() if f.is_file()) if path.is_dir() else [str(path)]
        kind = FILEEXT2TYPE.get(Path(files[0]).suffix.lstrip(".")) if files else None
        if kind is None:
            raise ConfigError(
                f"dataset '{name}': cannot split {path} by a column (file types: {', '.join(FILEEXT2TYPE)})"
            )
        return load_dataset(kind, data_files=files, split="train")
    if "hf_hub_url" in entry:
        try:
            return load_dataset(
                entry["hf_hub_url"],
                name=entry.get("subset"),
                data_dir=entry.get("folder"),
                split=entry.get("split", "train"),
            )
        except Exception as err:  # noqa: BLE001 - offline without a cached copy, a wrong id, ...: one clear line
            raise ConfigError(
                f"dataset '{name}': cannot load {entry['hf_hub_url']} to split it by column "
                f"({str(err).splitlines()[0]}); "
                "set HF_HUB_OFFLINE=0 where the hub is reachable, or point the entry at a local file"
            ) from None
    raise ConfigError(f"dataset '{name}': only local files and hf_hub_url entries can be split by a column")


def read_split_spec(dataset_dir: str | Path) -> dict | None:
    """The run's column-defined split (written with its registry), or None."""
    path = Path(dataset_dir) / DOMAIN_SPLIT_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_pool_domains(dataset_dir: str, names: list[str], tokenized_path: str | None = None) -> PoolDomains:
    """The pool's domains: the registered datasets ``names``, a column-defined split of one source
    (the run's :data:`DOMAIN_SPLIT_FILE`), or the rows of a tokenized pool (split by the column, if any).

    Reads the domain column once (cached, :func:`read_domain_ids`); nothing is tokenised here, no model
    is needed: a missing column is refused before the model loads.
    """
    spec = read_split_spec(dataset_dir)
    if tokenized_path:
        what = f"data.tokenized_path={tokenized_path}"
        dataset = open_tokenized(tokenized_path, what)
        if spec is None:
            return PoolDomains(
                names=list(names), kind="tokenized", dataset=dataset, ids=np.zeros(len(dataset), dtype=np.int64)
            )
        ids, domain_names = domains_from_column(
            dataset, spec["column"], [str(v) for v in spec.get("domains") or []], what, source=tokenized_path
        )
        return PoolDomains(names=domain_names, kind="tokenized", dataset=dataset, ids=ids, column=spec["column"])
    if spec is None:
        return PoolDomains(names=list(names))
    source, what = spec["source"], spec.get("what", "data")
    registry = json.loads((Path(dataset_dir) / "dataset_info.json").read_text())
    if source not in registry:
        known = ", ".join(sorted(registry)) or "none"
        raise ConfigError(
            f"{what}: source '{source}' (the dataset to split by {spec['column']}) is not registered; known: {known}"
        )
    dataset = load_raw(source, registry[source])
    ids, domain_names = domains_from_column(
        dataset, spec["column"], [str(v) for v in spec.get("domains") or []], what, source=source
    )
    return PoolDomains(
        names=domain_names, kind="column", dataset=dataset, ids=ids, source=source, column=spec["column"]
    )


def cap_per_domain(ids: np.ndarray, cap: int | None) -> np.ndarray:
    """``ids`` with every row past the first ``cap`` of its domain left out (-1)."""
    if not cap:
        return ids
    ids = ids.copy()
    for domain in np.unique(ids[ids >= 0]):
        ids[np.flatnonzero(ids == domain)[cap:]] = -1
    return ids


def tokenized_pool(domains: PoolDomains, max_samples: int | None = None):
    """The training pool from a tokenized pool: the rows in a domain (the first ``max_samples`` of
    each), with ``domain_id`` and ``sample_index`` (their position in the pool) added as Arrow columns;
    the domain column itself is dropped (the collator reads only the model's columns)."""
    pool, ids = domains.dataset, cap_per_domain(domains.ids, max_samples)
    top = domains.column.split(".")[0] if domains.column else None
    drop = [c for c in pool.column_names if c in (top, "domain_id", "sample_index")]
    pool = pool.remove_columns(drop) if drop else pool
    keep = np.flatnonzero(ids >= 0)
    positions = np.full(len(ids), -1, dtype=np.int64)
    positions[keep] = np.arange(len(keep))
    pool = pool.add_column("domain_id", ids).add_column("sample_index", positions)  # before select: no copy of the rows
    return pool if len(keep) == len(ids) else pool.select(keep)


def pool_domain_ids(pool) -> np.ndarray:
    """The ``domain_id`` column of a pool as one int64 array (read as Arrow, not as Python ints)."""
    column = pool.select_columns(["domain_id"]).with_format("arrow")[:]["domain_id"]
    return column.to_numpy().astype(np.int64)  # a writable copy (torch shares it)
