"""The multi-domain pretraining corpus (``offline_domains``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from dataflex.data import sources as src
from dataflex.data.corpora.chunking import _heldout_mask, _select, chunk_documents
from dataflex.data.corpora.common import _chain, _inputs_digest, _write_json, _write_jsonl

#: Domains of the pretraining corpus, in order: name -> (source names, document generator).
DOMAINS: dict[str, tuple[tuple[str, ...], Callable[[], Iterator[str]]]] = {
    "code": (("code",), lambda: src.code_documents()),
    "techdocs": (("techdocs",), lambda: src.techdocs_documents()),
    "drama": (("drama",), lambda: src.drama_documents()),
    "scripture": (("scripture",), lambda: src.scripture_documents()),
    "dictionary": (("gcide",), lambda: src.gcide_documents()),
    "computing": (("foldoc", "jargon"), lambda: _chain(src.foldoc_documents(), src.jargon_documents())),
    "quotes": (("fortunes",), lambda: src.fortune_documents()),
}

#: Tasks of the SFT set, in order.


# --- the multi-domain corpus ------------------------------------------------------------------


def build_offline_domains(
    out_dir: Path,
    *,
    max_bytes_per_domain: int = 1_000_000,
    heldout_fraction: float = 0.05,
    doc_chars: int = 2000,
) -> dict[str, dict]:
    """Builds the multi-domain pretraining corpus from the offline sources.

    For each domain of :data:`DOMAINS` (code, techdocs, drama, scripture, dictionary, computing,
    quotes), the source documents are cleaned, packed into chunks of about ``doc_chars`` characters,
    de-duplicated, sampled evenly over the whole source down to ``max_bytes_per_domain`` bytes of
    text (train and held-out together), and split: every ``1/heldout_fraction``-th chunk is held
    out. Writes ``out_dir/<domain>/train.jsonl``, ``out_dir/<domain>/heldout.jsonl`` (rows
    ``{"text": ...}``) and ``out_dir/domains.json`` (domains in order, with sample and byte counts
    and a sha256 per raw source).

    Args:
        out_dir: Output directory (named ``offline_domains``; created if needed).
        max_bytes_per_domain: Cap on the UTF-8 bytes of text per domain.
        heldout_fraction: Fraction of each domain's chunks held out (0 <= f < 1).
        doc_chars: Target chunk length in characters.

    Returns:
        LLaMA-Factory dataset_info entries ``offline_domains_<domain>`` and
        ``offline_domains_<domain>_heldout``, file names relative to ``out_dir.parent``.

    Raises:
        MissingSourceError: If a source is not installed (all missing ones are named at once).
    """
    out_dir = Path(out_dir)
    if not 0 <= heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
    if max_bytes_per_domain <= 0:
        raise ValueError(f"max_bytes_per_domain must be > 0, got {max_bytes_per_domain}")
    src.require(s for names, _ in DOMAINS.values() for s in names)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir.name
    entries: dict[str, dict] = {}
    summary = []
    for domain, (source_names, documents) in DOMAINS.items():
        seen: set[str] = set()
        chunks = []
        for chunk in chunk_documents(documents(), doc_chars):
            if chunk not in seen:
                seen.add(chunk)
                chunks.append(chunk)
        available = sum(len(c.encode("utf-8")) for c in chunks)
        chosen = _select(chunks, max_bytes_per_domain)
        mask = _heldout_mask(len(chosen), heldout_fraction)
        train = [c for c, h in zip(chosen, mask) if not h]
        heldout = [c for c, h in zip(chosen, mask) if h]
        n_train = _write_jsonl(out_dir / domain / "train.jsonl", ({"text": t} for t in train))
        n_heldout = _write_jsonl(out_dir / domain / "heldout.jsonl", ({"text": t} for t in heldout))
        summary.append(
            {
                "name": domain,
                "train_samples": n_train,
                "heldout_samples": n_heldout,
                "train_bytes": sum(len(t.encode("utf-8")) for t in train),
                "heldout_bytes": sum(len(t.encode("utf-8")) for t in heldout),
                "available_bytes": available,
                "sources": [
                    {"name": s, "package": src.SOURCES[s].package, "registry": src.SOURCES[s].registry}
                    for s in source_names
                ],
                "inputs_sha256": _inputs_digest(source_names),
            }
        )
        for suffix, split in (("", "train"), ("_heldout", "heldout")):
            entries[f"{prefix}_{domain}{suffix}"] = {
                "file_name": f"{prefix}/{domain}/{split}.jsonl",
                "columns": {"prompt": "text"},
            }
    _write_json(
        out_dir / "domains.json",
        {
            "domains": summary,
            "doc_chars": doc_chars,
            "max_bytes_per_domain": max_bytes_per_domain,
            "heldout_fraction": heldout_fraction,
        },
    )
    return entries
