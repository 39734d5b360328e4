"""NICE selector: rewards by hand, the REINFORCE validation feature against an independent autograd
computation, the ALGORITHMS.md invariants (r ≡ 1 on the reference = LESS-SGD with a summed loss;
r ≡ 0 gives score 0, never NaN), seeded on-policy sampling, and one end-to-end run on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from dataflex.config import ConfigError
from dataflex.eval.exact_match import normalize_answer
from dataflex.selectors import nice as N
from dataflex.selectors.base import seeded_generator
from dataflex.selectors.nice import features as NF
from dataflex.selectors.nice import online as NO
from dataflex.signals import features as SF
from dataflex.signals.generation import sample_generations
from dataflex.signals.gradients import trainable_parameters
from dataflex.signals.losses import IGNORE_INDEX
from dataflex.signals.projection import Projector
from dataflex.signals.text import split_row


# -- rewards ---------------------------------------------------------------------------------------
def reward(fn, response, reference):
    return fn(["q"], [response], [reference])[0]


@pytest.mark.parametrize(
    "response, reference, exact, contains",
    [
        ("85", "85", 1.0, 1.0),
        (" 85.\nbecause 80 + 5", "85", 1.0, 1.0),  # first line, trailing period dropped
        ("B", "b", 1.0, 1.0),  # case
        ("The answer is 85.", "85", 0.0, 1.0),
        ("185", "85", 0.0, 0.0),  # whole words only
        ("an apple", "a", 0.0, 0.0),
        ("(A) the cat", "A", 0.0, 1.0),
        ("I like New   York a lot", "new york", 0.0, 1.0),  # whitespace collapsed
        ("New\nYork", "New York", 0.0, 1.0),  # contains reads the whole response
        ("", "85", 0.0, 0.0),
        ("anything", "", 0.0, 0.0),  # an empty reference matches nothing
        ("", "", 0.0, 0.0),
    ],
)
def test_rewards_by_hand(response, reference, exact, contains):
    assert reward(N.exact_match_reward, response, reference) == exact
    assert reward(N.contains_match_reward, response, reference) == contains


def test_reward_inputs_must_align():
    with pytest.raises(ValueError, match="length"):
        N.exact_match_reward(["q", "q"], ["a"], ["a"])


def constant_reward(value):
    """A reward factory (the reward-model path: ``reward_kwargs`` build the callable)."""
    return lambda prompts, responses, references: [value] * len(responses)


def always_one(prompts, responses, references):
    return [1.0] * len(responses)


def test_resolve_reward_by_name_path_and_factory():
    assert N.resolve_reward("exact_match") is N.exact_match_reward
    assert N.resolve_reward("contains") is N.contains_match_reward
    assert N.resolve_reward("dataflex.selectors.nice.contains_match_reward") is N.contains_match_reward
    assert N.resolve_reward("dataflex.selectors.nice:exact_match_reward") is N.exact_match_reward
    assert N.resolve_reward(always_one) is always_one
    built = N.resolve_reward("test_selectors_nice.constant_reward", {"value": 0.5})
    assert built(["p"] * 3, ["y"] * 3, ["r"] * 3) == [0.5, 0.5, 0.5]
    for bad in ("nope", "dataflex.selectors.nice.missing", "no_such_module.fn", "dataflex.selectors.nice.INITIAL"):
        with pytest.raises(ConfigError, match="reward"):
            N.resolve_reward(bad)


def test_compute_rewards_shape_and_checks():
    r = N.compute_rewards(N.exact_match_reward, ["p1", "p2"], [["7", "8"], ["x", "Paris."]], ["7", "paris"])
    assert r.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="values"):
        N.compute_rewards(lambda p, y, r: [1.0], ["p"], [["a", "b"]], ["a"])
    with pytest.raises(ValueError, match="non-finite"):
        N.compute_rewards(lambda p, y, r: [math.nan] * len(y), ["p"], [["a"]], ["a"])


# -- pure core -------------------------------------------------------------------------------------
def test_reinforce_features_by_hand():
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[3.0, 4.0], [math.nan, math.nan]]])
    r = torch.tensor([[1.0, 0.5], [2.0, 0.0]])
    n = torch.tensor([[2.0, 4.0], [1.0, 5.0]])
    g = N.reinforce_features(f, r, n)
    # prompt 0: (2·1·[1,0] + 0.5·4·[0,1]) / 2 = [1, 1]; prompt 1: (2·1·[3,4] + 0) / 2 = [3, 4] (NaN row ignored)
    assert torch.allclose(g, torch.tensor([[1.0, 1.0], [3.0, 4.0]]))
    assert torch.allclose(SF.normalize_features(g), torch.tensor([[2**-0.5, 2**-0.5], [0.6, 0.8]]))
    with pytest.raises(ValueError, match="shapes"):
        N.reinforce_features(f[0], r, n)


def test_zero_feature_normalises_to_zero_not_nan():
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 4.0], [1e-30, 0.0, 0.0]])
    y = SF.normalize_features(x)
    assert torch.equal(y[0], torch.zeros(3)) and torch.allclose(y[1], torch.tensor([0.0, 0.6, 0.8]))
    assert torch.allclose(y[2], torch.tensor([1.0, 0.0, 0.0])) and torch.isfinite(y).all()
    assert torch.equal(
        N.reinforce_features(torch.randn(2, 3, 4), torch.zeros(2, 3), torch.ones(2, 3)), torch.zeros(2, 4)
    )


def test_top_k_highest_first_ties_seeded():
    assert SF.top_k_indices(torch.tensor([0.1, 0.9, -0.3, 0.5]), 2).tolist() == [1, 3]

    def g(s):
        return torch.Generator().manual_seed(s)

    assert SF.top_k_indices(torch.tensor([0.1, 0.9, -0.3, 0.5]), 3, g(0)).tolist() == [1, 3, 0]
    flat = torch.zeros(50)
    a, b = SF.top_k_indices(flat, 10, g(1)), SF.top_k_indices(flat, 10, g(1))
    assert torch.equal(a, b) and a.unique().numel() == 10
    assert not torch.equal(a, SF.top_k_indices(flat, 10, g(2)))
    assert a.tolist() != list(range(10))  # no signal does not mean "the first k rows"
    with pytest.raises(ValueError):
        SF.top_k_indices(flat, 51)


# -- the validation feature on a real model --------------------------------------------------------
def encode(tokenizer, template, question, answer):
    """Prompt ids and the labelled response ids of a (question, answer) turn, as LLaMA-Factory tokenises it."""
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt, response = template.encode_oneturn(tokenizer, msgs)
    return list(prompt), list(response)


QA = [("What is 3 + 4?", "7."), ("Name the capital of paris", "rome"), ("the cat sat on the", "mat under the table")]


def projected_summed_nll_gradient(model, prompt_ids, responses, weights, projector):
    """Independent reference: autograd of Σ_m w_m · (summed NLL of y_m) / M, flattened and projected."""
    params = trainable_parameters(model)
    total = 0.0
    for y, w in zip(responses, weights):
        ids = torch.tensor([prompt_ids + y])
        out = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
        total = total + w * torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum")
    grads = torch.autograd.grad(total / len(responses), list(params.values()))
    return projector.project({n: g.unsqueeze(0) for n, g in zip(params, grads)})[0]


def test_validation_feature_equals_reward_weighted_summed_nll_gradient(model, tokenizer, template):
    projector = Projector(64, seed=3, block_size=512)
    encoded = [encode(tokenizer, template, q, a) for q, a in QA]
    prompts = [p for p, _ in encoded]
    # M = 2 responses per prompt of different lengths; rewards with a zero, a negative and a fraction
    responses = [[resp, resp[: max(1, len(resp) // 2)]] for _, resp in encoded]
    rewards = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-1.0, 1.0]])
    feats = N.nice_validation_features(
        model, prompts, responses, rewards, projector, batch_size=4, pad_id=tokenizer.pad_token_id
    )
    assert feats.shape == (3, 64)
    for x in range(3):
        ref = projected_summed_nll_gradient(model, prompts[x], responses[x], rewards[x].tolist(), projector)
        assert torch.allclose(feats[x], ref / ref.norm(), atol=1e-5)
        assert feats[x].norm() == pytest.approx(1.0, abs=1e-5)
    assert not any(p.grad is not None for p in model.parameters())


def test_zero_rewards_give_zero_features_without_any_backward(model, tokenizer, template, monkeypatch):
    projector = Projector(32, seed=0, block_size=512)
    p, y = encode(tokenizer, template, *QA[0])
    monkeypatch.setattr(
        NF, "project_per_sample_gradients", lambda *a, **k: pytest.fail("differentiated a zero-reward row")
    )
    feats = N.nice_validation_features(model, [p, p], [[y, y], [y, y]], torch.zeros(2, 2), projector)
    assert torch.equal(feats, torch.zeros(2, 32))


def test_reinforce_row_labels_only_the_response():
    row = N.reinforce_row([5, 6, 7], [8, 9])
    assert row == {"input_ids": [5, 6, 7, 8, 9], "attention_mask": [1] * 5, "labels": [IGNORE_INDEX] * 3 + [8, 9]}
    batch = N.RowCollator(pad_id=0)([row, N.reinforce_row([1], [2])])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [1, 2, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100] * 3 + [8, 9], [-100, 2, -100, -100, -100]]


# -- sampling --------------------------------------------------------------------------------------
def test_sampling_from_prompt_ids_equals_sampling_from_text(model, tokenizer, template):
    kw = {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 5, "seed": 4}
    text = sample_generations(model, tokenizer, template, [q for q, _ in QA], **kw)
    ids = sample_generations(model, tokenizer, template, [encode(tokenizer, template, q, "")[0] for q, _ in QA], **kw)
    assert [[r.response_ids for r in g] for g in text] == [[r.response_ids for r in g] for g in ids]


# -- the component on a hand-built trainer ---------------------------------------------------------
class TemplateCollator(N.RowCollator):
    """Collates pool rows and carries the template, as LLaMA-Factory's SFT collator does."""

    def __init__(self, template, pad_id):
        super().__init__(pad_id)
        self.template = template


def rows_of(tokenizer, template, pairs, domains):
    """A tokenised dataset of (question, answer) rows labelled on the answer, with ``domain_id``."""
    from datasets import Dataset

    rows = []
    for (q, a), d in zip(pairs, domains):
        p, r = encode(tokenizer, template, q, a)
        rows.append({**N.reinforce_row(p, r), "domain_id": d})
    return Dataset.from_list(rows)


POOL = [
    ("Add 2 and 2", "4"),
    ("Capital of France?", "Paris"),
    ("Say hi", "hi there"),
    ("Colour of the sky", "blue"),
    ("What is 10 - 3?", "7"),
    ("the cat sat on the", "mat"),
    ("Opposite of up", "down"),
    ("Count to three", "1 2 3"),
]


def make_ctx(model, tokenizer, template, validation, update_index=0):
    from types import SimpleNamespace

    from dataflex.train.components import UpdateContext

    pool = rows_of(tokenizer, template, POOL, [i % 2 for i in range(len(POOL))])
    sampler = SimpleNamespace(pool_size=len(pool), domain_ids=torch.tensor(pool["domain_id"]))
    return UpdateContext(
        model=model,
        optimizer=None,
        pool=pool,
        collator=TemplateCollator(template, tokenizer.pad_token_id),
        tokenizer=tokenizer,
        template=template,
        validation=validation,
        sampler=sampler,
        global_step=2,
        update_index=update_index,
        max_steps=10,
    )


SMALL = {"num_samples": 2, "max_new_tokens": 6, "proj_dim": 64, "gradient_type": "sgd", "batch_size": 4, "seed": 5}


def test_exact_match_reward_gives_nonzero_features_where_the_sample_is_the_reference(model, tokenizer, template):
    """The default reward end to end: the references are set to the model's own (seeded) samples, so
    exact match fires, and the matching prompts get non-zero validation features and the pool non-zero scores."""
    sel = N.NiceSelector(budget=3, **SMALL)
    probe = make_ctx(model, tokenizer, template, rows_of(tokenizer, template, QA, [0, 0, 1]))
    prompt_ids = [split_row(r["input_ids"], r["labels"])[0] for r in probe.validation]
    samples = sel.sample(probe, prompt_ids)
    own = [group[0].text for group in samples]  # what the model says to each prompt with this seed
    assert any(normalize_answer(t) for t in own)
    validation = rows_of(tokenizer, template, [(q, t) for (q, _), t in zip(QA, own)], [0, 0, 1])
    ctx = make_ctx(model, tokenizer, template, validation)

    chosen = sel.select(ctx)
    last = sel.last_scores
    # the samples of the round are the probe's (same seed, same prompts), so the rewards are known by hand
    expected = [
        [float(bool(normalize_answer(t)) and normalize_answer(s.text) == normalize_answer(t)) for s in g]
        for g, t in zip(samples, own)
    ]
    assert last["rewards"].tolist() == expected and sum(map(sum, expected)) >= 1
    assert [row[0] for row in expected] == [float(bool(normalize_answer(t))) for t in own]
    scores = last["scores"]
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    assert scores[chosen].tolist() == torch.topk(scores, 3).values.tolist()  # the top 3, best first


def test_no_reward_scores_zero_and_picks_a_seeded_random_subset(model, tokenizer, template, monkeypatch, caplog):
    monkeypatch.setattr(NO, "training_features", lambda *a, **k: pytest.fail("a zero-signal round ran the pool pass"))
    sel = N.NiceSelector(budget=4, reward="test_selectors_nice.constant_reward", reward_kwargs={"value": 0.0}, **SMALL)
    ctx = make_ctx(model, tokenizer, template, rows_of(tokenizer, template, QA, [0, 0, 1]), update_index=3)
    with caplog.at_level("WARNING", logger=NO.log.name):
        chosen = sel.select(ctx)
    assert "none of the 3 validation prompts earned a reward" in caplog.text  # the user is told why
    assert torch.equal(sel.last_scores["scores"], torch.zeros(len(POOL)))
    assert torch.equal(sel.last_scores["rewards"], torch.zeros(3, 2))
    expected = torch.randperm(len(POOL), generator=seeded_generator(5, 3))[:4]  # the tie-break order itself
    assert chosen.tolist() == expected.tolist()


def test_reference_samples_with_unit_reward_give_the_less_sgd_score(model, tokenizer, template, monkeypatch):
    """ALGORITHMS.md: every y_m the reference and r ≡ 1 gives the LESS-SGD score (subtask mean, max)."""
    from dataflex.selectors import less
    from dataflex.signals.generation import SampledResponse

    validation = rows_of(tokenizer, template, QA, [0, 1, 1])
    ctx = make_ctx(model, tokenizer, template, validation)
    sel = N.NiceSelector(budget=3, reward="test_selectors_nice.always_one", **SMALL)

    def references(ctx, prompt_ids):
        out = []
        for p, row in zip(prompt_ids, validation):
            ids = split_row(row["input_ids"], row["labels"])[1]
            out.append([SampledResponse(text="x", response_ids=ids, prompt_ids=p, finished=True)] * sel.num_samples)
        return out

    monkeypatch.setattr(sel, "sample", references)
    sel.select(ctx)
    train = SF.training_features(ctx.model, ctx.pool, ctx.collator, None, sel.projector, "sgd")
    val = SF.validation_features(ctx.model, ctx.validation, ctx.collator, sel.projector)
    expected = less.less_scores(train, val, val_groups=[0, 1, 1])
    assert torch.allclose(sel.last_scores["scores"].double(), expected, atol=1e-5)
    assert expected.abs().max() > 0.01


def test_subtask_centroids_give_less_scores():
    from dataflex.selectors.less import less_scores

    g = torch.Generator().manual_seed(0)
    train, val = torch.randn(7, 5, generator=g), torch.randn(6, 5, generator=g)
    val[2] = 0  # a prompt without reward signal
    groups = [3, 1, 3, 1, 1, 8]
    for grp in (groups, None):
        c = SF.subtask_centroids(val, grp)
        mine = (SF.normalize_features(train.double()) @ c.T).max(-1).values
        assert torch.allclose(mine, less_scores(train, val, grp), atol=1e-10)
    assert SF.subtask_centroids(val, groups).shape == (3, 5)


def test_selector_checks_its_settings_and_validation(model, tokenizer, template):
    from dataflex.config import ConfigError
    from dataflex.train.build import build_component

    for bad in (
        {"num_samples": 0},
        {"temperature": 0.0},
        {"max_new_tokens": 0},
        {"top_p": 1.5},
        {"val_prompts": 0},
        {"proj_dim": 0},
        {"proj_kind": "nope"},
        {"gradient_type": "adagrad"},
    ):
        with pytest.raises(ConfigError, match="selector=nice: "):
            build_component(
                "selector", {"_target_": "dataflex.selectors.nice.NiceSelector", "name": "nice", "budget": 2, **bad}
            )
    with pytest.raises(ConfigError, match="data.validation"):
        N.NiceSelector(budget=2, **SMALL).select(make_ctx(model, tokenizer, template, None))


def test_unknown_reward_is_a_config_error_before_any_model_loads():
    from support.config import compose_config

    from dataflex.config import ConfigError
    from dataflex.train.build import build_component

    cfg = compose_config(["selector=nice"])
    assert isinstance(build_component("selector", cfg.selector), N.NiceSelector)  # the shipped YAML builds
    with pytest.raises(ConfigError, match=r"reward='exact'.*exact_match"):
        build_component("selector", compose_config(["selector=nice", "selector.reward=exact"]).selector)
    with pytest.raises(ConfigError, match=r"reward='no_such_module.fn' cannot be imported"):
        build_component("selector", compose_config(["selector=nice", "selector.reward=no_such_module.fn"]).selector)
    with pytest.raises(ConfigError, match="reward_kwargs"):
        build_component(
            "selector",
            compose_config(
                [
                    "selector=nice",
                    "selector.reward=test_selectors_nice.constant_reward",
                    "+selector.reward_kwargs.nope=1",
                ]
            ).selector,
        )


def test_reward_errors_fail_the_round_with_the_reward_named(model, tokenizer, template):
    sel = N.NiceSelector(budget=2, reward=lambda p, y, r: [1.0], **SMALL)
    with pytest.raises(ValueError, match="reward=.*returned 1 values for 6"):
        sel.select(make_ctx(model, tokenizer, template, rows_of(tokenizer, template, QA, [0, 0, 1])))


# -- end to end on model=tiny ----------------------------------------------------------------------
# two update rounds (steps 2 and 4) after a 2-step warm-up; small sampling; the always-1 reward through
# the pluggable path, so the rounds carry signal (exact match on the untrained tiny model never fires)
E2E = [
    "selector=nice",
    "selector.budget=16",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "selector.num_updates=2",
    "selector.val_prompts=4",
    "selector.num_samples=2",
    "selector.max_new_tokens=6",
    "selector.proj_dim=64",
    "selector.candidates=32",
    "selector.batch_size=8",
    "selector.reward=test_selectors_nice.always_one",
    "eval.before=false",
    "eval.after=false",
]


def read_jsonl(path):
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    from support.config import compose_config

    from dataflex.run import Run

    run_dir = tmp_path_factory.mktemp("nice") / "run"
    run = Run(compose_config(E2E), run_dir)
    metrics = run.fit()
    return run, metrics, run_dir


def dataflex_state(run_dir, step=6):
    return torch.load(run_dir / "checkpoints" / f"checkpoint-{step}" / "dataflex_state.pt", weights_only=False)


def test_e2e_two_rounds_logged_and_saved(e2e_run):
    import json

    from support.runs import saved_rounds

    run, metrics, run_dir = e2e_run
    assert metrics["global_step"] == 6 and math.isfinite(metrics["final_train_loss"])
    state = dataflex_state(run_dir)
    assert state["updates_done"]["selector"] == 2
    sel = state["components"]["selector"]
    rounds = saved_rounds(run_dir)
    assert [r["update_index"] for r in rounds] == [-1, 0, 1] and [r["step"] for r in rounds] == [0, 2, 4]
    assert all(len(r["indices"]) == len(set(r["indices"])) == 16 for r in rounds)
    # the last decision is the sampler's plan in force (the checkpoint keeps that plan only)
    assert state["sampler"]["history"][-1]["indices"].tolist() == rounds[-1]["indices"]

    last = sel["last_scores"]
    assert last["update_index"] == 1 and last["rewards"].shape == (4, 2) and bool((last["rewards"] == 1).all())
    assert last["validation_indices"].numel() == 4 and last["candidates"].numel() == 32
    scores = last["scores"]
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    picked = last["candidates"][torch.topk(scores, 16).indices]
    assert sorted(rounds[-1]["indices"]) == sorted(picked.tolist())

    files = sorted((run_dir / "selections").glob("round_*.json"))
    assert [p.name for p in files] == ["round_000.json", "round_001.json", "round_002.json"]
    for record in rounds:
        assert record["run_id"] == run.run_id
        assert record["selected"] == 16 and sum(record["domains"].values()) == 16
    logged = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "selector/selected" in r]
    assert [r["step"] for r in logged] == [0, 2, 4] and sum("selector/overlap" in r for r in logged) == 2
    # the rounds' rewards (the test reward gives every sample 1) beside the selection statistics
    assert [(r.get("selector/nice/reward_mean"), r.get("selector/nice/rewarded_prompts")) for r in logged] == [
        (None, None),
        (1.0, 1.0),
        (1.0, 1.0),
    ]
    assert [json.loads(f.read_text()).get("stats") for f in files][1:] == [
        {"selector/nice/reward_mean": 1.0, "selector/nice/rewarded_prompts": 1.0}
    ] * 2
    assert "stats" not in json.loads(files[0].read_text())  # the warm-up subset has no rewards


def test_decision_stats_are_the_rounds_rewards():
    """Mean reward over all samples and the share of prompts with any reward, hand-computed."""
    from dataflex.selectors.nice import NiceSelector

    selector = NiceSelector.__new__(NiceSelector)
    selector.last_scores = None
    assert selector.decision_stats() == {}
    selector.last_scores = {"rewards": torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.5, 0.5], [0.0, 1.0]])}
    assert selector.decision_stats() == {
        "selector/nice/reward_mean": pytest.approx(3.0 / 8),
        "selector/nice/rewarded_prompts": pytest.approx(3.0 / 4),
    }


@pytest.mark.slow
def test_e2e_resume_selects_what_the_uninterrupted_run_selects(e2e_run, tmp_path, monkeypatch):
    """Killed at step 5 (after checkpoint-3, before the step-6 save), resumed: the round at step 4 is
    redone from the restored model and must pick the same samples; losses and state match."""
    from support.config import compose_config
    from support.runs import losses, same_state

    from dataflex.run import Run
    from dataflex.train.callback import DataFlexCallback

    _, _, straight = e2e_run

    def boom(self, args, state, control, **kwargs):
        if state.global_step == 5:
            raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as patch:
        patch.setattr(DataFlexCallback, "on_step_begin", boom)
        with pytest.raises(KeyboardInterrupt):
            Run(compose_config(E2E), tmp_path / "resumed").fit()
    Run(compose_config(E2E), tmp_path / "resumed").fit()
    assert losses(tmp_path / "resumed") == pytest.approx(losses(straight), abs=1e-6)
    a, b = dataflex_state(straight), dataflex_state(tmp_path / "resumed")
    assert a["updates_done"] == b["updates_done"] and same_state(a["components"], b["components"])


def test_reference_sampling_preset_and_top_k(monkeypatch):
    """selector=nice keeps this project's cheap sampling (M = 4, T = 0.7); selector=nice_reference is the
    reference code's (JTWang2000/NICE: M = 20, T = 1.0, top_k 50, top_p 0.95), and top_k reaches generate."""
    from types import SimpleNamespace

    from support.config import compose_config

    from dataflex.config import ConfigError
    from dataflex.train.build import build_component

    cheap = build_component("selector", compose_config(["selector=nice"]).selector)
    assert (cheap.num_samples, cheap.temperature, cheap.top_k, cheap.top_p) == (4, 0.7, 0, 1.0)
    ref = build_component("selector", compose_config(["selector=nice_reference"]).selector)
    assert (ref.num_samples, ref.temperature, ref.top_k, ref.top_p) == (20, 1.0, 50, 0.95)
    assert ref.reward_name == cheap.reward_name and ref.projector.dim == cheap.projector.dim
    seen = {}
    monkeypatch.setattr(NO, "sample_generations", lambda *a, **k: seen.update(k) or [[]])
    ctx = SimpleNamespace(model=None, tokenizer=None, template=None, update_index=0)
    ref.sample(ctx, [[1, 2]])
    assert (seen["num_samples"], seen["temperature"], seen["top_k"], seen["top_p"]) == (20, 1.0, 50, 0.95)
    with pytest.raises(ConfigError, match="top_k must be an int >= 0"):
        N.NiceSelector(budget=2, top_k=-1)
