"""The local cache of offline assets (data sets and models) with sha256 manifests.

Layout under :func:`dataflex_home` (``$DATAFLEX_HOME``, else the user cache dir)::

    data/offline_domains/   <domain>/train.jsonl, dataset_info.part.json, MANIFEST.json
    data/offline_sft/       train.jsonl, dataset_info.part.json, MANIFEST.json
    data/planted/           planted-signal sets built from the two above (data/corpora/planted.py)
    data/dataset_info.json  LLaMA-Factory's registry, merged from the parts
    models/tiny/            a ~1.6M-parameter Llama + BPE tokenizer, MANIFEST.json
    models/smollm2_135m/    SmolLM2-135M-Instruct in fp32 safetensors, MANIFEST.json

Each asset is built into a temporary directory beside its final place and renamed into place only
when complete, so a crash leaves the old asset or nothing, never a half-written one. An asset is up
to date when its ``MANIFEST.json`` exists, records the current builder version (see
:data:`VERSIONS`) and, for assets built from others, the current manifests of those inputs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from dataflex.errors import AssetError  # noqa: F401  (re-exported)
from dataflex.logs import get_logger
from dataflex.utils import atomic_write_json

#: Asset names, in dependency (build) order.
log = get_logger(__name__)  # [dataflex-data] lines on stderr
ASSETS = ("offline_domains", "offline_sft", "planted", "tiny", "smollm2_135m")

#: Builder versions: bump one to make ``build``/``ensure`` rebuild that asset.
VERSIONS = {"offline_domains": "1", "offline_sft": "1", "planted": "1", "tiny": "1", "smollm2_135m": "1"}

#: Assets whose build reads other assets (their manifests are recorded as inputs).
DEPENDS = {"planted": ("offline_domains", "offline_sft"), "tiny": ("offline_domains", "offline_sft")}

_SUBDIR = {
    "offline_domains": "data",
    "offline_sft": "data",
    "planted": "data",
    "tiny": "models",
    "smollm2_135m": "models",
}

MANIFEST = "MANIFEST.json"
PART = "dataset_info.part.json"
REGISTRY = "dataset_info.json"


def dataflex_home() -> Path:
    """Returns the cache root: ``$DATAFLEX_HOME`` if set, else ``platformdirs.user_cache_dir("dataflex")``."""
    env = os.environ.get("DATAFLEX_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("dataflex"))


def dataset_dir() -> Path:
    """Returns ``<home>/data``, the ``dataset_dir`` to give LLaMA-Factory (holds ``dataset_info.json``)."""
    return dataflex_home() / "data"


def asset_path(name: str) -> Path:
    """Returns the directory of asset ``name`` (whether built or not).

    Raises:
        ValueError: If ``name`` is not one of :data:`ASSETS`.
    """
    if name not in ASSETS:
        raise ValueError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    return dataflex_home() / _SUBDIR[name] / name


# --- builders -------------------------------------------------------------------------------


def _build_offline_domains(out_dir: Path) -> dict:
    from dataflex.data.corpora import build_offline_domains

    return build_offline_domains(out_dir)


def _build_offline_sft(out_dir: Path) -> dict:
    from dataflex.data.corpora import build_offline_sft

    return build_offline_sft(out_dir)


def _build_planted(out_dir: Path) -> dict:
    from dataflex.data.corpora.planted import build_planted

    return build_planted(out_dir, asset_path("offline_sft"), asset_path("offline_domains"))


def tiny_text_files() -> list[Path]:
    """Returns the tiny tokenizer's training files, in a fixed order: domain train files, then SFT."""
    files = sorted(asset_path("offline_domains").glob("*/train.jsonl"))
    files.append(asset_path("offline_sft") / "train.jsonl")
    missing = [str(f) for f in files if not f.is_file()]
    if missing or len(files) < 2:
        raise AssetError(f"tiny needs the offline data built first (missing: {missing or 'domain files'})")
    return files


def _build_tiny(out_dir: Path) -> None:
    from dataflex.data.models import build_tiny

    build_tiny(out_dir, tiny_text_files())


def _build_smollm2_135m(out_dir: Path) -> None:
    from dataflex.data.models import build_smollm2_135m

    build_smollm2_135m(out_dir)


#: name -> builder(out_dir) returning the dataset_info entries (data assets) or None (models).
BUILDERS: dict[str, Callable[[Path], dict | None]] = {
    "offline_domains": _build_offline_domains,
    "offline_sft": _build_offline_sft,
    "planted": _build_planted,
    "tiny": _build_tiny,
    "smollm2_135m": _build_smollm2_135m,
}


# --- manifests and status -------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path) -> dict[str, Path]:
    """Maps posix relative path -> path for every file under ``root`` except the manifest."""
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


def _read_manifest(name: str) -> dict | None:
    try:
        return json.loads((asset_path(name) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _inputs(name: str) -> dict[str, str]:
    """sha256 of the manifests of the built inputs of ``name``."""
    paths = {dep: asset_path(dep) / MANIFEST for dep in DEPENDS.get(name, ())}
    return {dep: _sha256(p) for dep, p in paths.items() if p.is_file()}


def _stale_reason(name: str, manifest: dict) -> str | None:
    if manifest.get("version") != VERSIONS[name]:
        return f"out of date: built by version {manifest.get('version')!r}, current is {VERSIONS[name]!r}"
    recorded = manifest.get("inputs", {})
    changed = [dep for dep, digest in _inputs(name).items() if recorded.get(dep) != digest]
    if changed:
        return f"out of date: built from a different {', '.join(changed)}"
    return None


def status(name: str) -> str:
    """Returns ``"missing"``, ``"stale"`` or ``"ok"`` for asset ``name`` (no file hashing)."""
    manifest = _read_manifest(name)
    if manifest is None:
        return "missing"
    return "stale" if _stale_reason(name, manifest) else "ok"


def verify(names: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Recomputes every file hash of the given assets and compares with their manifests.

    Args:
        names: Assets to check; ``None`` checks every asset that is built.

    Returns:
        Asset name -> list of problems (empty when the asset is intact and up to date).
    """
    names = [n for n in ASSETS if asset_path(n).exists()] if names is None else _check_names(names)
    report: dict[str, list[str]] = {}
    for name in names:
        root, manifest = asset_path(name), _read_manifest(name)
        if manifest is None:
            what = "not built" if not root.exists() else f"{MANIFEST} missing or unreadable"
            report[name] = [f"{what} (run `dataflex-data build {name}`)"]
            continue
        problems = []
        if reason := _stale_reason(name, manifest):
            problems.append(f"{reason} (run `dataflex-data build --force {name}`)")
        expected, actual = manifest.get("files", {}), _files(root)
        for rel, digest in expected.items():
            if rel not in actual:
                problems.append(f"missing file: {rel}")
            elif _sha256(actual[rel]) != digest:
                problems.append(f"modified file: {rel} (sha256 mismatch)")
        problems += [f"unexpected file: {rel}" for rel in actual if rel not in expected]
        report[name] = problems
    return report


# --- building -------------------------------------------------------------------------------


def _check_names(names: Iterable[str] | str) -> list[str]:
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        asset_path(name)  # raises ValueError on unknown names
    return [n for n in ASSETS if n in names]


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialises builds (e.g. several ranks calling :func:`ensure`) with a file lock in the home."""
    home = dataflex_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _log(progress: bool, message: str) -> None:
    if progress:
        log.info("%s", message)


def write_registry() -> Path:
    """(Re)writes ``<home>/data/dataset_info.json`` atomically from the built data assets' parts.

    Returns:
        Path of the registry.

    Raises:
        AssetError: If two data assets define the same dataset name differently.
    """
    merged: dict = {}
    for name in ASSETS:
        part = asset_path(name) / PART
        if not part.is_file():
            continue
        for key, entry in json.loads(part.read_text()).items():
            if key in merged and merged[key] != entry:
                raise AssetError(f"dataset {key!r} is defined differently by two assets (second: {name})")
            merged[key] = entry
    path = dataset_dir() / REGISTRY
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, merged)
    return path


def _build_one(name: str, progress: bool) -> None:
    final = asset_path(name)
    final.parent.mkdir(parents=True, exist_ok=True)
    _log(progress, f"{name}: building (version {VERSIONS[name]}) ...")
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=final.parent))
    try:
        work = tmp / name  # builders see their final directory name
        work.mkdir()
        entries = BUILDERS[name](work)
        if _SUBDIR[name] == "data":
            if not isinstance(entries, dict):
                raise AssetError(f"builder of {name} returned {type(entries).__name__}, expected a dict")
            (work / PART).write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        files = _files(work)
        size = sum(p.stat().st_size for p in files.values())
        manifest = {
            "asset": name,
            "version": VERSIONS[name],
            "inputs": _inputs(name),
            "files": {rel: _sha256(p) for rel, p in files.items()},
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if final.exists():
            old = tmp / f"{name}.old"
            final.rename(old)
        work.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(progress, f"{name}: built in {time.perf_counter() - start:.1f}s ({len(files)} files, {size / 1e6:.1f} MB)")


def build(names: Iterable[str] | str | None = None, force: bool = False, progress: bool = True) -> list[str]:
    """Builds missing or stale assets (or all the named ones with ``force``) in dependency order.

    Inputs of a named asset (``tiny`` needs the data assets) are built too when missing or stale.
    After each data asset, the registry ``<home>/data/dataset_info.json`` is rewritten.

    Args:
        names: Assets to build; ``None`` means all of :data:`ASSETS`.
        force: Rebuild the named assets even when up to date.
        progress: Print one line per step, with timings, to stderr.

    Returns:
        The names of the assets that were built.

    Raises:
        ValueError: On an unknown asset name.
        RuntimeError: From a builder, e.g. ``MissingSourceError`` when a source is not installed.
    """
    targets = list(ASSETS) if names is None else _check_names(names)
    wanted = set(targets) | {dep for n in targets for dep in DEPENDS.get(n, ())}
    built = []
    with _lock():
        for name in (n for n in ASSETS if n in wanted):
            for leftover in asset_path(name).parent.glob(f".{name}.tmp-*"):  # from a killed build
                shutil.rmtree(leftover, ignore_errors=True)
            state = status(name)
            if state == "ok" and not (force and name in targets):
                _log(progress, f"{name}: up to date")
                continue
            if state == "stale":
                _log(progress, f"{name}: {_stale_reason(name, _read_manifest(name))}")
            _build_one(name, progress)
            built.append(name)
            if _SUBDIR[name] == "data":
                write_registry()
        if any(_SUBDIR[n] == "data" for n in wanted) and not (dataset_dir() / REGISTRY).is_file():
            write_registry()
    return built


def ensure(names: Iterable[str] | str, allow_build: bool = True, progress: bool = True) -> dict[str, Path]:
    """Makes sure assets are built and up to date before a run; builds them if needed and allowed.

    The check is cheap (manifest present, versions match), with no file hashing; use
    :func:`verify` for that.

    Args:
        names: Asset name(s) the run needs.
        allow_build: Build what is missing or stale; if False, raise instead.
        progress: Print build progress to stderr.

    Returns:
        Asset name -> directory.

    Raises:
        AssetError: When an asset is missing or stale and cannot (or may not) be built; the
            message names the ``dataflex-data build`` command to run.
    """
    names = _check_names(names)
    todo = [n for n in names if status(n) != "ok"]
    needs_registry = any(_SUBDIR[n] == "data" for n in names) and not (dataset_dir() / REGISTRY).is_file()
    if todo or needs_registry:
        command = f"dataflex-data build {' '.join(todo or names)}"
        if todo and not allow_build:
            raise AssetError(f"assets not built or out of date: {', '.join(todo)}; run `{command}`")
        try:
            if todo:
                build(todo, progress=progress)
            else:
                write_registry()
        except (RuntimeError, ImportError, OSError) as e:
            raise AssetError(
                f"assets {', '.join(todo or names)} are needed but could not be built: {e} "
                f"(fix that, then run `{command}`)"
            ) from e
    return {n: asset_path(n) for n in names}
