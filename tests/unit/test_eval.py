"""Tests for dataflex.eval against naive, unbatched reference computations on a tiny deterministic model
(the model, tokenizer and template fixtures of tests/unit/conftest.py)."""

from __future__ import annotations

import copy
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from support.tiny import WORDS, sentences

from dataflex.eval import format_table, run_eval_suite
from dataflex.eval.exact_match import answer_nll, exact_match, generate_answers, normalize_answer
from dataflex.eval.mcq import mcq_accuracy
from dataflex.eval.perplexity import domain_perplexity, perplexity
from dataflex.signals.generation import generation_prompt_ids


def _mcq_rows(n: int = 12) -> list[dict]:
    rng = random.Random(1)
    rows = []
    for i in range(n):
        stem = " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 3, 40, 90])))  # very different lengths
        choices = [rng.choice(WORDS) for _ in range(4)]
        options = "\n".join(f"{L}. {c}" for L, c in zip("ABCD", choices))
        rows.append({"instruction": f"Q{i}: {stem}?\n{options}\nAnswer:", "choices": choices})
    return rows


def _naive_mcq_preds(model, tokenizer, template, rows) -> list[int]:
    """One unpadded forward per question, letters scored at the last prompt position."""
    letter_ids = []
    for L in "ABCD":
        msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "content": L}]
        letter_ids.append(template.encode_oneturn(tokenizer, msgs)[1][0])
    assert len(set(letter_ids)) == 4
    preds = []
    with torch.no_grad():
        for r in rows:
            msgs = [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": "A"}]
            prompt = template.encode_oneturn(tokenizer, msgs)[0]
            logits = model(torch.tensor([prompt])).logits[0, -1]
            preds.append(int(logits[letter_ids].argmax()))
    return preds


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_mcq_matches_naive_loop(model, tokenizer, template, padding_side, batch_size):
    rows = _mcq_rows()
    lengths = {len(r["instruction"]) for r in rows}
    assert max(lengths) > 10 * min(lengths)
    preds = _naive_mcq_preds(model, tokenizer, template, rows)
    # Gold = naive prediction on even rows, a different letter on odd rows: the batched accuracy is exactly 0.5
    # iff every batched prediction equals the naive one.
    for i, (r, p) in enumerate(zip(rows, preds)):
        r["answer_index"] = p if i % 2 == 0 else (p + 1) % 4
        r["output"] = "ABCD"[r["answer_index"]]
    res = mcq_accuracy(model, tokenizer, template, rows, batch_size=batch_size, padding_side=padding_side)
    assert res == {"accuracy": 0.5, "n": 12}


def test_mcq_gold_from_output_letter(model, tokenizer, template):
    rows = _mcq_rows(4)
    preds = _naive_mcq_preds(model, tokenizer, template, rows)
    for r, p in zip(rows, preds):
        r["output"] = "ABCD"[p]
    assert mcq_accuracy(model, tokenizer, template, rows)["accuracy"] == 1.0


def _naive_greedy(model, tokenizer, template, instruction, max_new_tokens) -> str:
    ids = generation_prompt_ids(tokenizer, template, instruction)
    stop = set(template.get_stop_token_ids(tokenizer))
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt in stop:
                break
            new.append(nxt)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_generation_matches_unbatched_greedy(model, tokenizer, template):
    instructions = ["Hi", "What is 12 + 30?", " ".join(["the red cat sat on the mat"] * 12), "Capital of rome", "code"]
    naive = [_naive_greedy(model, tokenizer, template, x, 8) for x in instructions]
    assert any(naive)  # the model does produce text
    assert generate_answers(model, tokenizer, template, instructions, 8, batch_size=1) == naive
    assert generate_answers(model, tokenizer, template, instructions, 8, batch_size=4) == naive
    rows = [{"instruction": x, "output": a + "."} for x, a in zip(instructions, naive)]
    assert exact_match(model, tokenizer, template, rows, max_new_tokens=8, batch_size=3) == {"exact_match": 1.0, "n": 5}


def test_normalize_answer():
    assert normalize_answer(" 85.\n") == "85"
    assert normalize_answer("Paris.\nIt is the capital") == "paris"
    assert normalize_answer("\n  Blue  ") == "blue"
    assert normalize_answer("") == ""


class ScriptedLM(torch.nn.Module):
    """`generate` answers each prompt with a fixed text, then eos, then junk (to check the cut at eos)."""

    def __init__(self, tokenizer, replies: dict[tuple[int, ...], str]):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.tokenizer, self.replies, self.calls = tokenizer, replies, []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.calls.append({"mask": attention_mask.clone(), **kwargs})
        tok = self.tokenizer
        outs = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = tuple(t for t, m in zip(ids, mask) if m)
            outs.append(tok.encode(self.replies[prompt], add_special_tokens=False) + [tok.eos_token_id] + [7, 8])
        width = max(map(len, outs))
        outs = [o + [tok.pad_token_id] * (width - len(o)) for o in outs]
        return torch.cat([input_ids, torch.tensor(outs)], dim=1)


def test_exact_match_normalisation_with_scripted_model(tokenizer, template):
    cases = [  # (instruction, reference, generated)
        ("What is 80 + 5?", "85.", "85"),
        ("Capital of France?", "Paris", " paris.\nThe capital of France"),
        ("What is 6 + 6?", "12", "13"),
        ("Sky colour?", "blue", "blue sky"),
    ]
    replies = {tuple(generation_prompt_ids(tokenizer, template, q)): gen for q, _, gen in cases}
    lm = ScriptedLM(tokenizer, replies)
    rows = [{"instruction": q, "output": ref} for q, ref, _ in cases]
    assert exact_match(lm, tokenizer, template, rows, batch_size=4) == {"exact_match": 0.5, "n": 4}
    call = lm.calls[0]
    assert call["do_sample"] is False
    assert bool(call["mask"][:, -1].all()) and not bool(call["mask"][:, 0].all())  # left padded
    assert tokenizer.eos_token_id in call["eos_token_id"]


def _naive_perplexity(model, tokenizer, texts, block_size):
    stream = []
    for t in texts:
        stream += tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    nll, n = 0.0, 0
    with torch.no_grad():
        for b in blocks:
            if len(b) < 2:
                continue
            logits = model(torch.tensor([b])).logits[0]
            nll += float(F.cross_entropy(logits[:-1], torch.tensor(b[1:]), reduction="sum"))
            n += len(b) - 1
    return nll / n, n, len(stream)


def test_perplexity_matches_naive(model, tokenizer):
    texts = sentences(25, seed=3)
    loss, n, stream_len = _naive_perplexity(model, tokenizer, texts, 32)
    assert stream_len % 32 > 1  # there is a partial final block, padded in its batch
    res = perplexity(model, tokenizer, texts, block_size=32, batch_size=3)
    assert res["tokens"] == n
    assert res["loss"] == pytest.approx(loss, rel=1e-5)
    assert res["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_domain_perplexity(model, tokenizer):
    by_domain = {"math": sentences(8, seed=4), "prose": ["the cat sat on the mat."] * 5}
    res = domain_perplexity(model, tokenizer, by_domain, block_size=16, batch_size=2)
    assert set(res) == {"ppl/math", "ppl/prose", "loss/math", "loss/prose", "ppl/avg", "ppl/worst"}
    for d, texts in by_domain.items():
        loss, _, _ = _naive_perplexity(model, tokenizer, texts, 16)
        assert res[f"loss/{d}"] == pytest.approx(loss, rel=1e-5)
        assert res[f"ppl/{d}"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert res["ppl/avg"] == pytest.approx((res["ppl/math"] + res["ppl/prose"]) / 2)
    assert res["ppl/worst"] == max(res["ppl/math"], res["ppl/prose"])


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture()
def spec(tmp_path, model, tokenizer, template):
    mcq = _mcq_rows(6)
    for r, p in zip(mcq, _naive_mcq_preds(model, tokenizer, template, mcq)):
        r["answer_index"] = p
    em = [{"instruction": "What is 1 + 2?", "output": "3"}, {"instruction": "Hi", "output": "hello"}] * 3
    return {
        "max_samples": 4,
        "batch_size": 3,
        "max_new_tokens": 4,
        "block_size": 16,
        "mcq": {"target": _write_jsonl(tmp_path / "mcq.jsonl", mcq)},
        "exact_match": {"arithmetic": _write_jsonl(tmp_path / "em.jsonl", em)},
        "perplexity": {
            "code": _write_jsonl(tmp_path / "code.jsonl", [{"text": t} for t in sentences(6, seed=5)]),
            "web": _write_jsonl(tmp_path / "web.jsonl", [{"text": t} for t in sentences(6, seed=6)]),
        },
    }


def test_suite_keys_values_and_modes(model, tokenizer, template, spec):
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly
    try:
        res = run_eval_suite(model, tokenizer, template, spec, prefix="eval_before/", progress=False)
        assert model.training and model.model.layers[1].training and not model.model.layers[0].training
    finally:
        model.eval()
    expected_keys = [
        "mcq/target/accuracy",
        "em/arithmetic",
        "nll/arithmetic",
        "ppl/code",
        "loss/code",
        "ppl/web",
        "loss/web",
    ]
    assert set(res) == {f"eval_before/{k}" for k in expected_keys + ["ppl/avg", "ppl/worst"]}
    assert all(isinstance(v, float) for v in res.values())
    assert res["eval_before/mcq/target/accuracy"] == 1.0  # only the first 4 rows, gold = naive prediction
    with open(spec["perplexity"]["code"]) as f:
        code = [json.loads(line)["text"] for line in f][:4]
    loss, _, _ = _naive_perplexity(model, tokenizer, code, 16)
    assert res["eval_before/loss/code"] == pytest.approx(loss, rel=1e-5)


def test_suite_on_peft_model_and_dictconfig(model, tokenizer, template, spec):
    from omegaconf import OmegaConf
    from peft import LoraConfig, get_peft_model

    base = run_eval_suite(model, tokenizer, template, spec, progress=False)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft_model.train()
    res = run_eval_suite(peft_model, tokenizer, template, OmegaConf.create(spec), prefix="p/", progress=False)
    assert peft_model.training
    assert set(res) == {f"p/{k}" for k in base}
    for k, v in base.items():  # LoRA B starts at zero: same function as the base model
        assert res[f"p/{k}"] == pytest.approx(v, rel=1e-5)


def test_suite_sections_optional_and_missing_file(model, tokenizer, template, tmp_path):
    assert run_eval_suite(model, tokenizer, template, {}, progress=False) == {}
    missing = tmp_path / "nope.jsonl"
    model.train()
    try:
        with pytest.raises(FileNotFoundError, match="nope.jsonl"):
            run_eval_suite(model, tokenizer, template, {"perplexity": {"x": str(missing)}}, progress=False)
        assert model.training
    finally:
        model.eval()


def test_format_table():
    before = {"mcq/target/accuracy": 0.25, "ppl/code": 12.5}
    after = {"mcq/target/accuracy": 0.5, "ppl/code": 10.0, "em/facts": 1.0}
    expected = (
        "metric              |  before |   after |   delta\n"
        "--------------------+---------+---------+--------\n"
        "mcq/target/accuracy |  0.2500 |  0.5000 | +0.2500\n"
        "ppl/code            | 12.5000 | 10.0000 | -2.5000\n"
        "em/facts            |       - |  1.0000 |       -"
    )
    table = format_table(before, after)
    assert table == expected
    # Run prefixes are dropped so before/after line up.
    prefixed_before = {f"eval_before/{k}": v for k, v in before.items()}
    prefixed_after = {f"eval_after/{k}": v for k, v in after.items()}
    assert format_table(prefixed_before, prefixed_after) == table


@pytest.mark.parametrize("batch_size", [1, 3])
def test_answer_nll_is_the_token_mean_over_reference_answers(model, tokenizer, template, batch_size):
    rows = [
        {"instruction": "What is 1 + 2?", "output": "3"},
        {"instruction": "Say hello", "output": "hello there my friend"},
        {"instruction": "Hi", "output": "hello"},
    ]
    model.eval()
    total, count = 0.0, 0
    for row in rows:  # one row at a time, no padding: sum of -log p(answer token | everything before it)
        messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
        prompt, answer = template.encode_oneturn(tokenizer, messages)
        ids = torch.tensor([list(prompt) + list(answer)])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        for j, tok in enumerate(answer):
            total -= float(logp[len(prompt) + j - 1, tok])
            count += 1
    res = answer_nll(model, tokenizer, template, rows, batch_size=batch_size)
    assert res["tokens"] == count
    assert res["nll"] == pytest.approx(total / count, rel=1e-5)
