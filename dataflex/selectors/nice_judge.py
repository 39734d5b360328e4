"""A judge-model reward for NICE: a language model (local, or an OpenAI-compatible chat API) reads the
target prompt, the reference answer and a sampled response, and answers with a score in [0, 1].

This is the original DataFlex's NICE reward-model block (``reward_model_backend: local_vllm | api`` with
``reward_backend_params``), usable from any config::

    selector.reward=dataflex.selectors.nice_judge:JudgeReward
    selector.reward_kwargs={backend: api, backend_params: {api_url: ..., api_key: MY_KEY_VAR, model_name: gpt-4o}}

Semantics (the original's): the judge gets a system prompt asking for a bare score and a prompt with
the instruction, the reference (when the row has one) and the candidate response; the first number in
its answer, clamped to [0, 1], is the reward; an answer without a number (or a failed request) is 0.
``backend_params`` may hold one block per backend (``{local_vllm: {...}, api: {...}}``, the chosen one is
used) or the chosen backend's keys directly.

- ``local_vllm``: ``hf_model_name_or_path`` (a local directory or a hub id), sampled with the ``vllm_*``
  settings (temperature 0: greedy). Uses vLLM when it is installed; otherwise the same model and the
  same sampling settings through transformers' ``generate`` (slower, same answers up to sampling).
- ``api``: ``api_url`` (a chat-completions endpoint), ``api_key`` (the NAME of an environment variable
  holding the key, or the key itself), ``model_name``, ``temperature``, ``max_workers`` parallel
  requests, ``max_retries`` with exponential back-off, ``request_timeout`` seconds.

Nothing loads or connects when the reward is built (the config is checked before any model loads);
the judge model loads at the first selection round.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dataflex.errors import ConfigError
from dataflex.logs import get_logger

log = get_logger(__name__)

BACKENDS = ("local_vllm", "api")
LOCAL_KEYS = {
    "hf_model_name_or_path": None,
    "hf_cache_dir": None,
    "hf_local_dir": None,
    "vllm_tensor_parallel_size": 1,
    "vllm_temperature": 0.0,
    "vllm_top_p": 0.9,
    "vllm_max_tokens": 512,
    "vllm_top_k": 40,
    "vllm_repetition_penalty": 1.0,
    "vllm_seed": None,
    "vllm_max_model_len": None,
    "vllm_gpu_memory_utilization": 0.9,
}
API_KEYS = {
    "api_url": None,
    "api_key": None,
    "model_name": "gpt-4o",
    "max_workers": 8,
    "max_retries": 5,
    "temperature": 0.0,
    "request_timeout": 60,
}
SYSTEM_PROMPT = "You judge answers. Reply with one number between 0 and 1 and nothing else."
PROMPT_WITH_REFERENCE = (
    "Rate the candidate answer to the instruction against the reference answer, from 0.0 (wrong, unhelpful "
    "or unrelated to the reference) to 1.0 (correct, helpful and in agreement with the reference).\n\n"
    "### Instruction:\n{instruction}\n### Reference:\n{reference}\n### Candidate:\n{prediction}\nScore:"
)
PROMPT_WITHOUT_REFERENCE = (
    "Rate the candidate answer to the instruction from 0.0 (wrong, unhelpful or unsafe) to 1.0 (correct, "
    "helpful and safe).\n\n### Instruction:\n{instruction}\n### Candidate:\n{prediction}\nScore:"
)
_NUMBER = re.compile(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?")


def fill_prompt(with_reference: str, without_reference: str, prompt: str, response: str, reference: str) -> str:
    """The judge's text for one response: ``with_reference`` when there is a reference answer, else
    ``without_reference``, filled with the original's fields."""
    fields = {
        "instruction": prompt.strip(),
        "input": "No additional input.",  # the original's {input}
        "prediction": response.strip() or "No response.",
        "reference": (reference or "").strip(),
    }
    return (with_reference if fields["reference"] else without_reference).format(**fields)


def judge_texts(fill, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[str]:
    """``fill(prompt, response, reference)`` for every response (the three lists must be aligned)."""
    if not len(prompts) == len(responses) == len(references):
        raise ValueError("prompts, responses and references differ in length")
    return [fill(p, y, r) for p, y, r in zip(prompts, responses, references)]


def parse_score(text: str) -> float:
    """The first number in ``text`` clamped to [0, 1]; 0.0 when there is none."""
    match = _NUMBER.search(text or "")
    if match is None:
        return 0.0
    try:
        return min(max(float(match.group()), 0.0), 1.0)
    except ValueError:
        return 0.0


def _settings(backend: str, params: dict[str, Any], known: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(
            f"reward backend {backend}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}"
        )
    settings = {**known, **params}
    missing = [k for k in required if not settings.get(k)]
    if missing:
        raise ConfigError(
            f"reward backend {backend} needs {' and '.join(missing)} in backend_params (reward_backend_params)"
        )
    return settings


class JudgeReward:
    """``reward(prompts, responses, references)`` scored by a judge model (see the module).

    Args:
        backend: ``local_vllm`` or ``api``.
        backend_params: the backend's settings, or one block per backend.
        system_prompt, prompt_with_reference, prompt_without_reference: the judge's prompts (``{instruction}``,
            ``{reference}``, ``{prediction}`` are filled in).
        batch_size: prompts per local ``generate`` call (transformers only).
    """

    def __init__(
        self,
        backend: str = "local_vllm",
        backend_params: dict[str, Any] | None = None,
        system_prompt: str = SYSTEM_PROMPT,
        prompt_with_reference: str = PROMPT_WITH_REFERENCE,
        prompt_without_reference: str = PROMPT_WITHOUT_REFERENCE,
        batch_size: int = 16,
    ):
        backend = str(backend or "local_vllm").lower()
        if backend not in BACKENDS:
            raise ConfigError(f"reward backend '{backend}' is not one of {', '.join(BACKENDS)}")
        raw = dict(backend_params or {})
        params = (
            dict(raw[backend])
            if isinstance(raw.get(backend), dict)
            else {k: v for k, v in raw.items() if k not in BACKENDS}
        )
        if backend == "local_vllm":
            self.settings = _settings(backend, params, LOCAL_KEYS, ("hf_model_name_or_path",))
        else:
            self.settings = _settings(backend, params, API_KEYS, ("api_url", "api_key"))
        self.backend, self.batch_size = backend, int(batch_size)
        self.system_prompt, self.with_reference, self.without_reference = (
            system_prompt,
            prompt_with_reference,
            prompt_without_reference,
        )
        self._local: Any = None  # (kind, model, tokenizer or sampling params), loaded at the first call

    def judge_prompt(self, prompt: str, response: str, reference: str) -> str:
        return fill_prompt(self.with_reference, self.without_reference, prompt, response, reference)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], references: Sequence[str]) -> list[float]:
        texts = judge_texts(self.judge_prompt, prompts, responses, references)
        answers = self._ask_api(texts) if self.backend == "api" else self._ask_local(texts)
        return [parse_score(a) for a in answers]

    # -- api ---------------------------------------------------------------------------------------------
    def _api_key(self) -> str:
        key = str(self.settings["api_key"])
        return os.environ.get(key, key)  # the name of an environment variable, or the key itself

    def _post(self, text: str) -> str:
        s = self.settings
        body = json.dumps(
            {
                "model": s["model_name"],
                "temperature": s["temperature"],
                "messages": [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}],
            }
        ).encode()
        request = urllib.request.Request(
            s["api_url"],
            data=body,
            method="POST",
            headers={"Authorization": f"Bearer {self._api_key()}", "Content-Type": "application/json"},
        )
        for attempt in range(max(1, int(s["max_retries"]))):
            try:
                with urllib.request.urlopen(request, timeout=float(s["request_timeout"])) as reply:
                    return str(json.loads(reply.read())["choices"][0]["message"]["content"] or "")
            except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
                log.warning("reward API request %d failed: %s", attempt + 1, err)
                if attempt + 1 < int(s["max_retries"]):
                    time.sleep(min(2.0**attempt, 8.0))
        return ""  # no score: reward 0, as the original

    def _ask_api(self, texts: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=max(1, int(self.settings["max_workers"]))) as pool:
            return list(pool.map(self._post, texts))

    # -- local -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        s = self.settings
        path = s["hf_model_name_or_path"]
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            log.info("reward model %s: vLLM is not installed; generating with transformers", path)
            tokenizer = AutoTokenizer.from_pretrained(path, cache_dir=s["hf_cache_dir"], padding_side="left")
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            model = AutoModelForCausalLM.from_pretrained(path, cache_dir=s["hf_cache_dir"]).eval()
            self._local = ("transformers", model, tokenizer)
            return
        llm = LLM(
            model=path,
            tensor_parallel_size=s["vllm_tensor_parallel_size"],
            max_model_len=s["vllm_max_model_len"],
            gpu_memory_utilization=s["vllm_gpu_memory_utilization"],
            download_dir=s["hf_cache_dir"],
        )
        sampling = SamplingParams(
            temperature=s["vllm_temperature"],
            top_p=s["vllm_top_p"],
            max_tokens=s["vllm_max_tokens"],
            top_k=s["vllm_top_k"],
            repetition_penalty=s["vllm_repetition_penalty"],
            seed=s["vllm_seed"],
        )
        self._local = ("vllm", llm, sampling)

    def _ask_local(self, texts: list[str]) -> list[str]:
        if self._local is None:
            self._load()
        full = [f"{self.system_prompt}\n\n{t}" for t in texts]
        kind, model, extra = self._local
        if kind == "vllm":
            return [out.outputs[0].text if out.outputs else "" for out in model.generate(full, extra)]
        return self._generate(model, extra, full)

    def _generate(self, model, tokenizer, texts: list[str]) -> list[str]:
        import torch

        s = self.settings
        sample = float(s["vllm_temperature"]) > 0
        options: dict[str, Any] = {
            "max_new_tokens": int(s["vllm_max_tokens"]),
            "do_sample": sample,
            "repetition_penalty": float(s["vllm_repetition_penalty"]),
            "pad_token_id": tokenizer.pad_token_id,
        }
        if sample:
            options.update(
                temperature=float(s["vllm_temperature"]),
                top_p=float(s["vllm_top_p"]),
                top_k=max(int(s["vllm_top_k"]), 0),
            )
        limit = s["vllm_max_model_len"]
        out: list[str] = []
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            if s["vllm_seed"] is not None:
                torch.manual_seed(int(s["vllm_seed"]))
            for start in range(0, len(texts), self.batch_size):
                batch = tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=limit is not None,
                    max_length=limit,
                )
                ids = model.generate(**batch, **options)
                out += tokenizer.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        return out
