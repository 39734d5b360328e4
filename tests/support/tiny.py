"""In-memory tiny models for unit tests: a BPE tokenizer trained in-process on seeded sentences with a random
Llama over its vocabulary (the eval and signal tests), and a fixed-vocabulary Llama, its LoRA and padded batches
(the per-sample gradient tests). Seeded: the same call builds the same weights."""

from __future__ import annotations

import copy
import random

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "table",
    "red",
    "blue",
    "green",
    "code",
    "print",
    "def",
    "return",
    "python",
    "paris",
    "rome",
    "capital",
    "of",
]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.3:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            out.append(f"What is {a} + {b}? {a + b}.")
        else:
            out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))).capitalize() + ".")
    return out


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (400 tokens) trained on ``sentences(300)``, EOS as the pad token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(sentences(300), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)


def llama_for(tokenizer) -> LlamaForCausalLM:
    """A seeded random 2-layer Llama over ``tokenizer``'s vocabulary, in eval mode."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).eval()


def tiny_llama(tie: bool = False):
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).float()
    # Non-trivial norm weights, so their gradients test the per-sample formula properly.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def with_lora(model):
    lora = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:  # B = 0 at init would make every gradient of A zero
                p.normal_(0, 0.1)
    return lora.eval()


def padded_batch(lengths=(11, 7, 16, 4), prompt=(3, 2, 5, 4), pad_side="right", seed=0):
    """Padded batch; labels -100 on each prompt (the last sample is all prompt: no label token)."""
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    b = len(lengths)
    ids = torch.zeros(b, t, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, (n, p) in enumerate(zip(lengths, prompt, strict=True)):
        seq = torch.randint(1, 96, (n,), generator=g)
        sl = slice(0, n) if pad_side == "right" else slice(t - n, t)
        ids[i, sl] = seq
        mask[i, sl] = 1
        lab = seq.clone()
        lab[:p] = -100
        labels[i, sl] = lab
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "sample_index": torch.arange(b),
        "domain_id": torch.zeros(b),
    }
