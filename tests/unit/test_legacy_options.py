"""The original DataFlex's options that are new semantics here: ODM's reward_scale and min_exploration_rate,
ODM's and the random mixer's start from init_mixture_proportions, and NICE's reward-model block (the judge
reward, dataflex.selectors.nice_judge)."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest
import torch

from dataflex.config import ConfigError
from dataflex.data.assets import asset_path
from dataflex.mixers.odm import ODMMixer, exp3_epsilon, exp3_probabilities
from dataflex.mixers.random import RandomMixer
from dataflex.selectors.nice_judge import JudgeReward, parse_score

# -- ODM -----------------------------------------------------------------------------------------------


def test_min_exploration_floors_epsilon_up_to_the_uniform_policy():
    decayed = math.sqrt(math.log(2) / (2 * 1000))
    assert exp3_epsilon(1000, 2) == pytest.approx(decayed) and decayed < 0.03
    assert exp3_epsilon(1000, 2, floor=0.03) == 0.03
    assert exp3_epsilon(1000, 2, floor=0.9) == 0.5  # at most 1/K: the uniform policy
    assert exp3_epsilon(0, 4, floor=0.03) == 0.25
    pi = exp3_probabilities(torch.tensor([1000.0, 0.0], dtype=torch.float64), 1000, floor=0.03)
    assert pi[1].item() == pytest.approx(0.03)  # the losing domain keeps the floor


def test_reward_scale_multiplies_the_loss_before_the_reward():
    def update(scale):
        mixer = ODMMixer(initial="uniform", reward_scale=scale)
        mixer.initial_proportions(SimpleNamespace(domain_ids=torch.tensor([0, 1])))
        mixer.observe_batch(torch.tensor([3.0, 1.0]), {"domain_id": torch.tensor([0, 1])})
        got = mixer.update(SimpleNamespace(global_step=5))
        return mixer, got

    plain, p1 = update(1.0)
    scaled, p15 = update(15.0)
    assert scaled.rewards.tolist() == pytest.approx([15 * r for r in plain.rewards.tolist()])
    assert scaled.history[-1]["domain_losses"] == [3.0, 1.0]  # the logged losses stay the losses
    e5, e4 = math.sqrt(math.log(2) / 10), math.sqrt(math.log(2) / 8)
    r = scaled.rewards.tolist()
    soft0 = math.exp(e4 * r[0]) / (math.exp(e4 * r[0]) + math.exp(e4 * r[1]))
    assert p15[0].item() == pytest.approx((1 - 2 * e5) * soft0 + e5, rel=1e-12)
    assert p15[0] > p1[0] > 0.5  # the scale sharpens the move toward the higher-loss domain


def test_odm_and_random_start_from_given_weights():
    ctx = SimpleNamespace(domain_ids=torch.tensor([0, 0, 0, 1]), update_index=-1, global_step=0)
    assert ODMMixer(initial=[3, 1]).initial_proportions(ctx).tolist() == [0.75, 0.25]
    assert RandomMixer(initial=[0.7, 0.3]).initial_proportions(ctx).tolist() == pytest.approx([0.7, 0.3])
    assert RandomMixer().initial_proportions(ctx).tolist() == [0.5, 0.5]
    with pytest.raises(ConfigError, match="initial has 3 weights for 2 domains"):
        ODMMixer(initial=[1, 1, 1]).initial_proportions(ctx)
    with pytest.raises(ConfigError, match="initial must be one of natural, uniform or one weight"):
        ODMMixer(initial=[-1, 2])


# -- the judge reward ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, score",
    [("0.8", 0.8), ("Score: 1", 1.0), ("7/10", 1.0), ("-2", 0.0), ("no idea", 0.0), ("", 0.0), (".25 overall", 0.25)],
)
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_judge_settings_are_checked_when_built_and_nothing_loads():
    with pytest.raises(ConfigError, match="reward backend 'vllm' is not one of local_vllm, api"):
        JudgeReward(backend="vllm")
    with pytest.raises(ConfigError, match="needs hf_model_name_or_path"):
        JudgeReward(backend_params={"local_vllm": {"vllm_top_p": 0.9}})
    with pytest.raises(ConfigError, match="needs api_url and api_key"):
        JudgeReward(backend="api", backend_params={"model_name": "x"})
    with pytest.raises(ConfigError, match="unknown setting.*vllm_topp"):
        JudgeReward(backend_params={"hf_model_name_or_path": "x", "vllm_topp": 1})
    judge = JudgeReward(backend_params={"local_vllm": {"hf_model_name_or_path": "/nowhere"}, "api": {"api_url": "u"}})
    assert judge._local is None and judge.settings["vllm_max_tokens"] == 512


class _Judge(BaseHTTPRequestHandler):
    seen: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen.append((self.headers["Authorization"], body))
        answer = (
            "0.9"
            if "Reference:\n4" in body["messages"][1]["content"] and "Candidate:\n4" in body["messages"][1]["content"]
            else "score 0.1"
        )
        payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_api_backend_posts_chat_completions_and_reads_the_score(monkeypatch):
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-value")
    try:
        judge = JudgeReward(
            backend="api",
            backend_params={
                "api": {
                    "api_url": f"http://127.0.0.1:{server.server_port}/v1/chat/completions",
                    "api_key": "MY_JUDGE_KEY",
                    "model_name": "judge-1",
                    "max_workers": 2,
                }
            },
        )
        scores = judge(["2 + 2?", "2 + 2?", "name a colour"], ["4", "5", "red"], ["4", "4", ""])
    finally:
        server.shutdown()
    assert scores == [0.9, 0.1, 0.1]
    auth, body = _Judge.seen[0]
    assert auth == "Bearer secret-value"  # api_key names an environment variable: its value is sent
    assert body["model"] == "judge-1" and body["temperature"] == 0.0 and body["messages"][0]["role"] == "system"
    assert any(
        "Instruction:\nname a colour" in b["messages"][1]["content"] and "Reference" not in b["messages"][1]["content"]
        for _, b in _Judge.seen
    )


def test_api_backend_failure_is_reward_zero():
    judge = JudgeReward(
        backend="api",
        backend_params={"api_url": "http://127.0.0.1:9/none", "api_key": "k", "max_retries": 1, "request_timeout": 2},
    )
    assert judge(["q"], ["a"], ["a"]) == [0.0]


def test_local_backend_generates_with_the_judge_model_without_vllm():
    judge = JudgeReward(
        backend_params={
            "local_vllm": {
                "hf_model_name_or_path": str(asset_path("tiny")),
                "vllm_max_tokens": 6,
                "vllm_temperature": 0.0,
            }
        }
    )
    first = judge(["2 + 2?", "colour?"], ["4", "red"], ["4", ""])
    assert judge._local[0] == "transformers" and len(first) == 2 and all(0.0 <= s <= 1.0 for s in first)
    assert judge(["2 + 2?", "colour?"], ["4", "red"], ["4", ""]) == first  # greedy: the same answers


def test_mixed_precision_needs_a_gpu_that_computes_in_it():
    from dataflex.cli.legacy import check_precision

    check_precision({"bf16": False, "fp16": False}, accelerators=(False, False))  # float32: any machine
    check_precision({"bf16": True}, accelerators=(True, True))
    check_precision({"fp16": True}, accelerators=(True, False))  # fp16 on a GPU without bf16
    with pytest.raises(ConfigError, match=r"^bf16: true needs a GPU and this machine has none; set bf16: false"):
        check_precision({"bf16": True}, accelerators=(False, False))
    with pytest.raises(ConfigError, match=r"^pure_bf16: true needs a GPU that supports bf16 .*fp16: true"):
        check_precision({"pure_bf16": True}, accelerators=(True, False))
    with pytest.raises(ConfigError, match=r"^fp16: true needs a GPU .* add fp16=false to the dataflex-cli command"):
        check_precision({"fp16": True}, accelerators=(False, False))


def test_classifier_reward_scores_as_the_original_reward_model():
    from transformers import AutoTokenizer

    from dataflex.selectors.nice_classifier import ClassifierReward

    tiny = str(asset_path("tiny"))
    reward = ClassifierReward(model_path=tiny, batch_size=2)
    prompts, responses, refs = ["What is 2+2?", "Name a colour."] * 2, ["4", "blue", "", "red"], ["4", "", "4", ""]
    scores = reward(prompts, responses, refs)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    # by hand: the probability of the last class of the classifier's logits on the same text
    model, tokenizer = reward._loaded
    assert type(model).__name__.endswith("ForSequenceClassification")
    text = reward.text(prompts[0], responses[0], refs[0])
    assert "What is 2+2?" in text and "4" in text and "Reference" in text
    assert "Reference" not in reward.text(prompts[1], responses[1], refs[1])  # no reference: the other prompt
    with torch.no_grad():
        logits = model(**AutoTokenizer.from_pretrained(tiny)(text, return_tensors="pt")).logits.float()
    assert scores[0] == pytest.approx(float(torch.softmax(logits, -1)[0, -1]), rel=1e-4)
    with pytest.raises(ConfigError, match="needs model_path"):
        ClassifierReward()


def test_nice_policy_model_samples_instead_of_the_current_model():
    from dataflex.selectors.nice.online import NiceSelector

    tiny = str(asset_path("tiny"))
    current = torch.nn.Linear(2, 2)
    selector = NiceSelector(budget=4, policy_model=tiny)
    ctx = SimpleNamespace(model=current, tokenizer=[0] * 10)
    policy = selector.policy(ctx)
    assert policy is not current and policy is selector.policy(ctx)  # loaded once
    assert not any(p.requires_grad for p in policy.parameters())
    assert NiceSelector(budget=4).policy(ctx) is current  # by default: the current model
    with pytest.raises(ConfigError, match="smaller vocabulary than the training tokenizer"):
        NiceSelector(budget=4, policy_model=tiny).policy(SimpleNamespace(model=current, tokenizer=[0] * 10**7))
