"""Builders of the offline data sets: a multi-domain pretraining corpus and an SFT + eval suite.

Both builders read only the local sources of :mod:`dataflex.data.sources`, write only inside their
``out_dir`` and are deterministic: fixed file lists, sorted iteration, seeded ``random.Random``
and no timestamps, so building twice gives byte-identical files.

* :func:`build_offline_domains` -> ``offline_domains/<domain>/{train,heldout}.jsonl`` (``{"text"}``
  rows of about ``doc_chars`` characters) and ``offline_domains/domains.json``.
* :func:`build_offline_sft` -> ``offline_sft/train.jsonl`` (alpaca rows with a ``task`` tag),
  ``train_<task>.jsonl``, ``val_mcq.jsonl`` and ``eval/{mcq,arithmetic,facts}.jsonl``.

Both return LLaMA-Factory ``dataset_info.json`` entries whose ``file_name`` is relative to the
parent of ``out_dir`` (where the registry lives).
"""

from dataflex.data.corpora.chunking import chunk_documents
from dataflex.data.corpora.domains import DOMAINS, build_offline_domains
from dataflex.data.corpora.mcq import format_mcq
from dataflex.data.corpora.sft import SFT_TASKS, build_offline_sft

__all__ = [
    "DOMAINS",
    "SFT_TASKS",
    "build_offline_domains",
    "build_offline_sft",
    "chunk_documents",
    "format_mcq",
]
