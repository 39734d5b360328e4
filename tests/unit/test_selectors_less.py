"""LESS: the pure cores against hand-computed values and every ALGORITHMS.md invariant, the feature
passes against an independent per-sample computation (LoRA, full fine-tuning with tied weights),
online LESS end to end on the tiny model with resume equivalence, and the offline recipe end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dataflex.selectors import less as L
from dataflex.selectors.less import offline as LO
from dataflex.signals import adam as A
from dataflex.signals import features as SF
from dataflex.signals.gradients import per_sample_gradients_loop, trainable_parameters
from dataflex.signals.projection import Projector
from dataflex.train import checkpoints as CK


# -- adam_feature ----------------------------------------------------------------------------------
def test_adam_feature_with_empty_state_is_the_pinned_formula():
    g = torch.tensor([1.0, -2.0, 0.0, 1e-3, 50.0], dtype=torch.float64)
    got = A.adam_feature(g, torch.zeros_like(g), torch.zeros_like(g))
    expected = 0.1 * g / torch.sqrt(0.001 * g**2 + 1e-8)  # ALGORITHMS.md invariant, elementwise
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=0)
    # by hand: g = 1 -> 0.1 / sqrt(0.00100001); g = 0 -> 0 (ε inside the root: never NaN)
    assert got[0].item() == pytest.approx(3.1622618, rel=1e-7)
    assert got[2].item() == 0.0
    assert got[3].item() == pytest.approx(1e-4 / math.sqrt(1e-9 + 1e-8), rel=1e-12)


def test_adam_feature_with_state_by_hand_and_no_bias_correction():
    # m = 0.5, v = 0.25, g = 1: m' = 0.45 + 0.1 = 0.55, v' = 0.24975 + 0.001 = 0.25075
    got = A.adam_feature(
        torch.tensor(1.0, dtype=torch.float64),
        torch.tensor(0.5, dtype=torch.float64),
        torch.tensor(0.25, dtype=torch.float64),
    )
    assert got.item() == pytest.approx(0.55 / math.sqrt(0.25075 + 1e-8), rel=1e-12)
    # other betas / eps are honoured
    got = A.adam_feature(torch.tensor(2.0), torch.tensor(0.0), torch.tensor(0.0), beta1=0.5, beta2=0.5, eps=0.0)
    assert got.item() == pytest.approx(1.0 / math.sqrt(2.0), rel=1e-6)  # m' = 1, v' = 2


def test_adam_feature_broadcasts_a_batch_over_the_state():
    g = torch.randn(3, 4, 5, dtype=torch.float64)
    m, v = torch.randn(4, 5, dtype=torch.float64), torch.rand(4, 5, dtype=torch.float64)
    batched = A.adam_feature(g, m, v)
    for i in range(3):
        torch.testing.assert_close(batched[i], A.adam_feature(g[i], m, v))


# -- less_scores -----------------------------------------------------------------------------------
TRAIN = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
VAL = torch.tensor([[1.0, 0.0], [0.0, 2.0]])


def test_less_scores_one_subtask_by_hand():
    # centroid of the normalised validation rows: (1/2, 1/2)
    s = L.less_scores(TRAIN, VAL)
    expected = [0.5, 0.5, 1 / math.sqrt(2), -0.5, 0.0]  # the zero row: cosine 0, not NaN
    assert s.dtype == torch.float64 and s.tolist() == pytest.approx(expected, abs=1e-12)
    # one checkpoint, one subtask: one matrix product
    direct = (F.normalize(TRAIN.double(), dim=-1) @ F.normalize(VAL.double(), dim=-1).T).mean(1)
    torch.testing.assert_close(s, direct)


def test_less_scores_max_over_subtasks_of_the_mean_within_by_hand():
    val = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 3.0]])
    groups = [7, 3, 3]  # subtask 3 = rows 1, 2 (both (0, 1)); subtask 7 = row 0
    s = L.less_scores(TRAIN, val, groups)
    assert s.tolist() == pytest.approx([1.0, 1.0, 1 / math.sqrt(2), 0.0, 0.0], abs=1e-12)
    # the mean is WITHIN a subtask: a subtask of two opposite rows averages to 0
    s = L.less_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), [0, 0, 1])
    assert s.tolist() == pytest.approx([0.0], abs=1e-12)


def test_less_scores_checkpoints_weighted_sum_before_the_max_by_hand():
    # two checkpoints, two subtasks (one validation row each)
    train = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [C=2, N=1, d=2]
    val = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])  # [C=2, M=2, d=2]
    # sims: c0 -> (1, 0), c1 -> (0, 1); w = (3, 1)/4 -> (0.75, 0.25): max = 0.75
    s = L.less_scores(train, val, [0, 1], checkpoint_weights=[3.0, 1.0])
    assert s.tolist() == pytest.approx([0.75])
    # max-then-sum would give 0.75 * 1 + 0.25 * 1 = 1.0: the order matters and is the pinned one
    assert L.less_scores(train, val, [0, 1]).tolist() == pytest.approx([0.5])  # uniform weights
    torch.testing.assert_close(L.less_scores(train, val, [0, 1], [2.0, 2.0]), L.less_scores(train, val, [0, 1]))
    # the same checkpoint twice equals it once (weights normalised to sum 1)
    one = L.less_scores(TRAIN, VAL, [0, 1])
    twice = L.less_scores(torch.stack([TRAIN, TRAIN]), torch.stack([VAL, VAL]), [0, 1], [0.3, 0.9])
    torch.testing.assert_close(twice, one)


def test_less_scores_are_unchanged_by_positive_rescaling():
    g = torch.Generator().manual_seed(0)
    train, val = torch.randn(6, 16, generator=g), torch.randn(5, 16, generator=g)
    groups = [0, 1, 1, 2, 0]
    base = L.less_scores(train, val, groups)
    scale = torch.rand(6, 1, generator=g) * 100 + 0.01  # a sample's loss times c > 0 scales its gradient by c
    torch.testing.assert_close(L.less_scores(train * scale, val * 3.0, groups), base)
    assert ((base >= -1 - 1e-12) & (base <= 1 + 1e-12)).all()
    # a negative factor is not a positive rescaling: the score flips sign for that row
    flipped = L.less_scores(train * torch.tensor([[-1.0]] + [[1.0]] * 5), val, [0, 0, 0, 0, 0])
    assert flipped[0].item() == pytest.approx(-L.less_scores(train, val, [0] * 5)[0].item())


def test_less_scores_errors():
    with pytest.raises(ValueError, match="disagree"):
        L.less_scores(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="disagree"):
        L.less_scores(torch.randn(2, 3, 4), torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="val_groups"):
        L.less_scores(torch.randn(3, 4), torch.randn(2, 4), [0, 1, 2])
    with pytest.raises(ValueError, match="checkpoint weights"):
        L.less_scores(torch.randn(2, 3, 4), torch.randn(2, 2, 4), checkpoint_weights=[1.0])
    with pytest.raises(ValueError, match="checkpoint weights"):
        L.less_scores(torch.randn(2, 3, 4), torch.randn(2, 2, 4), checkpoint_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match=r"\[N, d\]"):
        L.less_scores(torch.randn(4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="no validation"):
        L.less_scores(torch.randn(3, 4), torch.randn(0, 4))


def test_top_k_is_stable_and_checked():
    assert SF.top_k_indices(torch.tensor([0.1, 0.5, 0.5, -1.0, 0.7]), 3).tolist() == [4, 1, 2]
    with pytest.raises(ValueError):
        SF.top_k_indices(torch.tensor([1.0, 2.0]), 3)


def test_epoch_learning_rates_by_hand():
    log = [
        {"step": s, "learning_rate": lr, "loss": 1.0}
        for s, lr in [(1, 1.0), (2, 3.0), (3, 2.0), (4, 2.0), (5, 0.5), (6, 0.5)]
    ]
    log.append({"step": 6, "train_runtime": 1.0})  # a record without a learning rate is ignored
    assert L.epoch_learning_rates(log, [2, 4, 6]) == pytest.approx([2.0, 2.0, 0.5])
    assert L.epoch_learning_rates(log, [3, 6]) == pytest.approx([2.0, 1.0])
    with pytest.raises(ValueError, match="logging_steps=1"):
        L.epoch_learning_rates(log, [6, 8])
    with pytest.raises(ValueError, match="increasing"):
        L.epoch_learning_rates(log, [4, 2])


# -- the feature passes against an independent computation ------------------------------------------
def _rows(batch):
    """A padded batch as a list of unpadded rows (a pool), and a collator padding them back."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        keep = batch["attention_mask"][i].bool()
        rows.append({k: batch[k][i][keep].tolist() for k in ("input_ids", "attention_mask", "labels")})

    def collate(rs):
        t = max(len(r["input_ids"]) for r in rs)
        out = {
            k: torch.full((len(rs), t), pad, dtype=torch.long)
            for k, pad in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))
        }
        for i, r in enumerate(rs):
            for k in out:
                out[k][i, : len(r[k])] = torch.tensor(r[k])
        return out

    return rows, collate


def _stepped_trainer(model, rows, collate):
    """A trainer-like object whose Adam optimizer has taken two steps (non-trivial moments)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):
        batch = collate(rows)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    return SimpleNamespace(model=model.eval(), optimizer=opt, train_dataset=rows, data_collator=collate)


def _expected(trainer, rows, collate, projector, gradient_type):
    """Γ (or g) of each sample's whole gradient, each sample alone, projected and normalised."""
    from dataflex.signals.optimizer import adam_state

    grads = per_sample_gradients_loop(trainer.model, collate(rows))
    if gradient_type == "adam":
        state = adam_state(trainer.optimizer, trainer.model)
        grads = {n: A.adam_feature(g, *state[n]) for n, g in grads.items()}
    return F.normalize(projector.project(grads), dim=-1)


@pytest.mark.parametrize("kind", ["lora", "full_tied", "full_untied"])
@pytest.mark.parametrize("gradient_type", ["adam", "sgd"])
def test_training_features_equal_the_per_sample_definition(kind, gradient_type, monkeypatch):
    from support.tiny import padded_batch, tiny_llama, with_lora

    model = with_lora(tiny_llama()) if kind == "lora" else tiny_llama(tie=kind == "full_tied")
    if kind == "full_untied":
        # chunks of 2 embedding rows: the engine skips the chunks no sample of a batch uses, whose
        # Adam feature is Γ(0) = β1·m/sqrt(β2·v + ε) ≠ 0 for every sample
        monkeypatch.setattr(SF, "CHUNK_SIZE", 64)
    rows, collate = _rows(padded_batch(lengths=(11, 7, 16, 9, 5), prompt=(3, 2, 5, 4, 1)))
    trainer = _stepped_trainer(model, rows, collate)
    if kind == "full_tied":
        assert A.shared_trainable_parameters(model) == {"model.embed_tokens.weight"}
    projector = Projector(64, seed=3)
    expected = _expected(trainer, rows, collate, projector, gradient_type)
    # batched with padding (batch of 3 then 2), in a chosen order
    order = [4, 0, 2, 1, 3]
    got = SF.training_features(
        trainer.model, rows, collate, order, projector, gradient_type, batch_size=3, optimizer=trainer.optimizer
    )
    assert got.shape == (5, 64)
    torch.testing.assert_close(got, expected[order], rtol=1e-4, atol=1e-5)
    if gradient_type == "adam":  # the preconditioning matters: Adam and SGD features differ
        sgd = SF.training_features(trainer.model, rows, collate, order, projector, "sgd", batch_size=3)
        assert (got - sgd).abs().max() > 1e-2


def test_gaps_of_covered_ranges():
    assert A.AdamProjector.gaps([(4, 6), (0, 2), (5, 8)], 10) == [(2, 4), (8, 10)]
    assert A.AdamProjector.gaps([], 3) == [(0, 3)] and A.AdamProjector.gaps([(0, 3)], 3) == []


def test_tied_weights_are_preconditioned_whole():
    """Γ is nonlinear: applied to the two pieces of a tied weight's gradient separately (embedding
    and lm_head) it gives another feature; the pass must transform their sum."""
    from support.tiny import padded_batch, tiny_llama

    from dataflex.signals.gradients import project_per_sample_gradients
    from dataflex.signals.optimizer import adam_state

    model = tiny_llama(tie=True)
    rows, collate = _rows(padded_batch())
    trainer = _stepped_trainer(model, rows, collate)
    projector = Projector(32, seed=0)
    right = SF.training_features(
        model, rows, collate, None, projector, "adam", batch_size=4, optimizer=trainer.optimizer
    )
    naive = F.normalize(
        project_per_sample_gradients(
            model, collate(rows), projector, transform=A.adam_transform(adam_state(trainer.optimizer, model))
        ),
        dim=-1,
    )
    assert (right - naive).abs().max() > 1e-3


def test_validation_features_and_similarities_match_less_scores():
    from support.tiny import padded_batch, tiny_llama, with_lora

    model = with_lora(tiny_llama())
    rows, collate = _rows(padded_batch(lengths=(11, 7, 16, 9, 5, 12), prompt=(3, 2, 5, 4, 1, 6)))
    pool, val = rows[:4], rows[4:] + rows[:1]
    trainer = _stepped_trainer(model, pool, collate)
    projector = Projector(48, seed=1)
    v = SF.validation_features(trainer.model, val, collate, projector, batch_size=2)
    torch.testing.assert_close(v, _expected(trainer, val, collate, projector, "sgd"), rtol=1e-4, atol=1e-5)

    class Val(list):  # a dataset with a domain_id column (the subtask), as the run's validation set
        column_names = ["input_ids", "attention_mask", "labels", "domain_id"]

        def __getitem__(self, key):
            return [r["domain_id"] for r in self] if key == "domain_id" else list.__getitem__(self, key)

    groups = [0, 1, 1]
    validation = Val({**r, "domain_id": d} for r, d in zip(val, groups))
    sims = L.checkpoint_similarities(
        trainer.model,
        pool,
        collate,
        torch.arange(4),
        projector,
        "adam",
        2,
        validation=validation,
        optimizer=trainer.optimizer,
    )
    assert sims.shape == (4, 2)
    t = SF.training_features(trainer.model, pool, collate, None, projector, "adam", optimizer=trainer.optimizer)
    torch.testing.assert_close(L.combine_subtask_similarities(sims), L.less_scores(t, v, groups), rtol=1e-5, atol=1e-6)


def test_constructors_reject_bad_settings():
    with pytest.raises(ValueError, match="gradient_type"):
        L.LessSelector(budget=8, gradient_type="rmsprop")
    with pytest.raises(ValueError, match="proj_dim"):
        L.LessSelector(budget=8, proj_dim=0)
    with pytest.raises(ValueError, match="proj_kind"):
        L.LessSelector(budget=8, proj_kind="fourier")
    with pytest.raises(ValueError, match="projection_cache_mb"):
        L.LessSelector(budget=8, projection_cache_mb=-1)
    with pytest.raises(ValueError, match="checkpoint weights"):
        LO.LessOfflineSelector(budget=8, checkpoint_weights=[0.0, 0.0])
    with pytest.raises(ValueError, match="checkpoints"):
        LO.LessOfflineSelector(budget=8, checkpoints=[0])
    with pytest.raises(ValueError, match="checkpoint_weights for"):
        LO.LessOfflineSelector(budget=8, checkpoints=[1, 2], checkpoint_weights=[1.0])
    with pytest.raises(ValueError, match="gradient_type"):
        SF.training_features(None, None, None, None, None, "newton")


def test_checkpoint_adam_state_maps_saved_positions_to_names(tmp_path):
    from support.tiny import padded_batch, tiny_llama, with_lora

    from dataflex.config import ConfigError
    from dataflex.signals.optimizer import adam_state

    model = with_lora(tiny_llama())
    rows, collate = _rows(padded_batch())
    trainer = _stepped_trainer(model, rows, collate)
    torch.save(trainer.optimizer.state_dict(), tmp_path / "optimizer.pt")
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)  # no state yet
    got = CK.checkpoint_adam_state(tmp_path, fresh, model)
    want = adam_state(trainer.optimizer, model)
    assert got.keys() == want.keys() == trainable_parameters(model).keys()
    for n in want:
        torch.testing.assert_close(got[n][0], want[n][0])
        torch.testing.assert_close(got[n][1], want[n][1])
    other = torch.optim.AdamW([next(p for p in model.parameters() if p.requires_grad)], lr=1e-2)
    with pytest.raises(ConfigError, match="optimizer groups"):
        CK.checkpoint_adam_state(tmp_path, other, model)
    with pytest.raises(ConfigError, match="optimizer.pt"):
        CK.checkpoint_adam_state(tmp_path / "nowhere", fresh, model)


def test_validation_subset_per_subtask_is_seeded_and_fixed():
    groups = torch.tensor([0, 1, 0, 1, 1, 2, 0, 1])
    rows = L.validation_subset(groups, 8, 2, seed=5)
    assert rows.tolist() == sorted(rows.tolist())
    assert torch.bincount(groups[rows]).tolist() == [2, 2, 1]  # subtask 2 has only one row
    assert torch.equal(rows, L.validation_subset(groups, 8, 2, seed=5))  # the same every round
    assert any(not torch.equal(rows, L.validation_subset(groups, 8, 2, seed=s)) for s in range(6, 12))
    assert L.validation_subset(groups, 8, None, seed=5) is None
    assert L.validation_subset(None, 8, 3, seed=0).numel() == 3  # no subtasks: one
    with pytest.raises(ValueError, match="validation_per_subtask"):
        L.LessSelector(budget=8, validation_per_subtask=0)


# -- end to end on the tiny model ------------------------------------------------------------------
# Small enough for seconds: 32 candidates and 8 validation rows per round, d = 128 with the
# projection kept between batches.
LESS = [
    "selector=less",
    "selector.budget=16",
    "selector.warmup_steps=2",
    "selector.update_every=2",
    "selector.candidates=32",
    "selector.validation_per_subtask=8",
    "selector.proj_dim=128",
    "selector.projection_cache_mb=64",
    "selector.batch_size=8",
]
QUIET = ["eval.before=false", "eval.after=false"]


def test_e2e_less_online(tmp_path):
    from support.config import compose_config
    from support.runs import check_rounds, losses, run_selection

    # 7 steps so that step 6 has a round (none runs at the last step); checkpoint-6 is written after it
    steps = [*QUIET, "trainer.max_steps=7", "trainer.save_steps=6"]
    _, state = run_selection(tmp_path, [*LESS, *steps])
    assert all(math.isfinite(x) for x in losses(tmp_path / "x"))
    # warm-up, then steps 2, 4, 6, each reaching the sampler
    rounds = check_rounds(state, tmp_path / "x", steps=(0, 2, 4, 6))
    scores = state["components"]["selector"]["last_scores"]
    cand, s = scores["candidates"], scores["scores"]
    assert scores["update_index"] == 2 and cand.numel() == 32 and torch.equal(cand, cand.unique())
    assert s.shape == (32,) and torch.isfinite(s).all() and (s.abs() <= 1 + 1e-6).all() and s.std() > 0
    assert rounds[-1]["indices"] == cand[SF.top_k_indices(s, 16)].tolist()
    logged = [json.loads(line) for line in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "selector/selected" in r] == [0, 2, 4, 6]
    saved = sorted(p.name for p in (tmp_path / "x" / "selections").glob("round_*.json"))
    assert saved == ["round_000.json", "round_001.json", "round_002.json", "round_003.json"]

    # The last round scored with the model AND the Adam moments of step 6 (both saved in checkpoint-6,
    # written after that round): recompute it from the checkpoint with the pure core.
    from dataflex.backend.llamafactory import build, build_hparams, validation_names
    from dataflex.config import to_dict
    from dataflex.train.trainer import MetaCollator

    cfg = to_dict(compose_config([*LESS, *steps]))
    built = build(build_hparams(cfg, tmp_path / "re", resume_from=None), validation_names(cfg["data"]))
    ckpt = tmp_path / "x" / "checkpoints" / "checkpoint-6"
    CK.load_trainable_weights(built.model, ckpt)
    params = list(trainable_parameters(built.model).values())
    optimizer = torch.optim.AdamW(
        [{"params": params}, {"params": []}]
    )  # HF's groups: decay (all LoRA weights), no decay
    adam = CK.checkpoint_adam_state(ckpt, optimizer, built.model)
    trainer = SimpleNamespace(model=built.model, train_dataset=built.pool, data_collator=MetaCollator(built.collator))
    projector = SF.make_projector(128, cfg["seed"], cfg["selector"]["proj_kind"])  # the selector's own kind
    groups = L.subtask_ids(built.validation)
    rows = L.validation_subset(groups, len(built.validation), 8, cfg["seed"])
    val = SF.validation_features(trainer.model, built.validation, trainer.data_collator, projector, rows)
    train = SF.training_features(
        trainer.model, trainer.train_dataset, trainer.data_collator, cand, projector, "adam", adam=adam
    )
    torch.testing.assert_close(L.less_scores(train, val, groups[rows]).float(), s, rtol=1e-4, atol=1e-5)
    stale = {n: (torch.zeros_like(m), torch.zeros_like(v)) for n, (m, v) in adam.items()}
    without_moments = L.less_scores(
        SF.training_features(
            trainer.model, trainer.train_dataset, trainer.data_collator, cand, projector, "adam", adam=stale
        ),
        val,
        groups[rows],
    )
    assert (without_moments.float() - s).abs().max() > 1e-3  # the optimizer state mattered


def test_resume_less_selects_what_an_uninterrupted_run_selects(tmp_path, monkeypatch):
    from support.runs import fit, kill_at_step, losses, same_state

    overrides = [*QUIET, "trainer.max_steps=8", "trainer.save_steps=2", *LESS]
    _, straight = fit(tmp_path, "straight", overrides)
    with monkeypatch.context() as patch:
        kill_at_step(patch, 5)  # after checkpoint-4 (and the selection of step 4), before step 6's
        with pytest.raises(KeyboardInterrupt):
            fit(tmp_path, "resumed", overrides)
    _, resumed = fit(tmp_path, "resumed", overrides)
    assert losses(resumed) == pytest.approx(losses(straight), abs=1e-6) and len(losses(straight)) == 8

    def state(d):
        return torch.load(d / "checkpoints" / "checkpoint-8" / "dataflex_state.pt", weights_only=False)

    a, b = state(straight), state(resumed)
    assert a["updates_done"] == b["updates_done"] == {"selector": 3}  # steps 2, 4, 6 (none at 8 = max_steps)
    assert same_state(a["components"], b["components"])  # every round's indices and the last scores
    assert [p["start"] for p in a["sampler"]["history"]] == [p["start"] for p in b["sampler"]["history"]]


def test_less_without_a_validation_set_is_a_config_error(tmp_path):
    from support.config import compose_config

    from dataflex.config import ConfigError
    from dataflex.run import Run

    cfg = compose_config(
        [
            *LESS,
            *QUIET,
            "trainer.max_steps=2",
            "selector.warmup_steps=1",
            "selector.update_every=1",
            "data.validation=null",
        ]
    )
    with pytest.raises(ConfigError, match="selector=less needs a target/validation set: set data.validation"):
        Run(cfg, tmp_path / "r").fit()


# -- the offline recipe ----------------------------------------------------------------------------
from dataflex.train.components import Selector  # noqa: E402


class FixedSelector(Selector):
    """Test-only: trains on the given pool indices from the start (never updates)."""

    def __init__(self, indices):
        super().__init__()
        self.indices = list(indices)

    def initial_indices(self, ctx):
        return torch.tensor(self.indices)


# 256 pool rows, warm-up on 5% = 12 of them, global batch 4: 3 steps an epoch, 2 epochs = checkpoints
# 3 and 6; then the top 16 of 48 candidates for 1 epoch over them (4 steps).
OFFLINE = [
    "experiment=less_offline",
    "less_offline.warmup_epochs=2",
    "less_offline.train_epochs=1",
    "selector.budget=16",
    "selector.candidates=48",
    "selector.validation_per_subtask=8",
    "selector.proj_dim=128",
    "selector.projection_cache_mb=64",
    "selector.batch_size=8",
    "trainer.warmup_steps=0",
    *QUIET,
]


def test_offline_recipe_end_to_end(tmp_path):
    from support.config import compose_config
    from support.runs import fit, losses

    from dataflex.cli.less_offline import run_recipe

    run_dir = tmp_path / "less"
    metrics = run_recipe(compose_config(OFFLINE), run_dir)
    assert metrics["global_step"] == 4 and math.isfinite(metrics["final_train_loss"])

    warm = run_dir / "warmup"
    warm_round = json.loads((warm / "selections" / "round_000.json").read_text())
    assert warm_round["selected"] == 12 and len(losses(warm)) == 6
    for step in (3, 6):
        ckpt = warm / "checkpoints" / f"checkpoint-{step}"
        assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / "optimizer.pt").is_file()

    record = json.loads((run_dir / LO.OFFLINE_RECORD).read_text())
    assert record["checkpoint_steps"] == [3, 6] and record["candidates"] == 48 and record["k"] == 16
    # w_c: the mean learning rate the warm-up logged over each epoch's steps, normalised, by hand
    log = json.loads((warm / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    lr = {r["step"]: r["learning_rate"] for r in log if "learning_rate" in r}
    means = [(lr[1] + lr[2] + lr[3]) / 3, (lr[4] + lr[5] + lr[6]) / 3]
    assert record["checkpoint_weights"] == pytest.approx([m / sum(means) for m in means])
    assert means[0] > 2 * means[1]  # cosine decay: the first epoch weighs more (not a uniform fallback)

    state = torch.load(run_dir / "checkpoints" / "checkpoint-3" / "dataflex_state.pt", weights_only=False)
    sel = state["components"]["selector"]
    chosen = record["indices"]
    assert len(set(chosen)) == 16 and state["sampler"]["history"][-1]["indices"].tolist() == chosen
    assert json.loads((run_dir / "selections" / "round_000.json").read_text())["indices"] == chosen
    scores, cand = sel["last_scores"]["scores"], sel["last_scores"]["candidates"]
    assert cand[SF.top_k_indices(scores, 16)].tolist() == chosen and torch.isfinite(scores).all()
    assert record["scores"] == pytest.approx(sorted(record["scores"], reverse=True))

    # the final model trained from where it was built (the warm-up weights were put back): the same
    # losses as a run that trains on the same indices without any scoring
    _, plain = fit(
        tmp_path,
        "fixed",
        [
            *QUIET,
            "trainer.max_steps=4",
            "trainer.warmup_steps=0",
            "+selector._target_=test_selectors_less.FixedSelector",
            f"+selector.indices=[{','.join(map(str, chosen))}]",
        ],
    )
    assert losses(run_dir) == pytest.approx(losses(plain), abs=1e-6)


def test_offline_selector_needs_a_warmup_dir(tmp_path):
    from support.config import compose_config

    from dataflex.config import ConfigError
    from dataflex.run import Run

    with pytest.raises(ConfigError, match="needs selector.warmup_dir=.*python -m dataflex.cli.less_offline"):
        Run(compose_config([*OFFLINE, "trainer.max_steps=1"]), tmp_path / "r").fit()
    with pytest.raises(ConfigError, match="not a directory"):
        CK.warmup_checkpoints(tmp_path / "missing")
    (tmp_path / "w" / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # no dataflex_state.pt: incomplete
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        CK.warmup_checkpoints(tmp_path / "w")


def test_recipe_settings_and_run_configs():
    from support.config import compose_config

    from dataflex.cli.less_offline import final_config, recipe_settings, run_recipe, warmup_config
    from dataflex.config import ConfigError, to_dict

    cfg = to_dict(compose_config(OFFLINE))
    warm = warmup_config(cfg, 256)
    assert warm["selector"]["budget"] == 12 and warm["selector"]["_target_"].endswith("RandomSelector")
    assert (warm["trainer"]["max_steps"], warm["trainer"]["save_steps"], warm["trainer"]["logging_steps"]) == (6, 3, 1)
    assert warm["trainer"]["save_total_limit"] is None and warm["eval"]["before"] is False
    final = final_config(cfg, "somewhere", 256)
    assert final["trainer"]["max_steps"] == 4 and final["selector"]["warmup_dir"].endswith("somewhere")
    assert cfg["selector"]["warmup_dir"] is None  # the composed config is left alone
    with pytest.raises(ConfigError, match="unknown key"):
        recipe_settings({"less_offline": {"warmup_epoch": 2}})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        recipe_settings({"less_offline": {"warmup_epochs": 0}})
    with pytest.raises(ConfigError, match="selector=less_offline"):
        run_recipe(compose_config(["selector=loss"]), "unused")


def test_command_implies_the_experiment():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "dataflex.cli.less_offline", "--cfg", "job", "model=tiny"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "_target_: dataflex.selectors.less.LessOfflineSelector" in out and "warmup_fraction: 0.05" in out


# -- subtasks from a column; validation rows without labels ---------------------------------------
def test_subtasks_from_a_column_of_one_validation_set(tmp_path):
    """selector.subtask_column=subject: the one validation set is split by its subject values (sorted),
    each a registered set, so its rows' domain_id is their subtask; max over the subtask means."""
    from support.config import compose_config

    from dataflex.backend.llamafactory import resolve_validation_column
    from dataflex.config import ConfigError

    rows = [
        {"instruction": f"q{i}", "output": "a", "subject": s}
        for i, s in enumerate(["law", "algebra", "law", "virology"])
    ]
    (tmp_path / "mmlu_val.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(
        json.dumps({"mmlu_val": {"file_name": str(tmp_path / "mmlu_val.json")}})
    )
    hparams = {"dataset_dir": str(tmp_path)}
    names = resolve_validation_column(hparams, ["mmlu_val"], "subject")
    assert names == ["algebra", "law", "virology"]
    registry = json.loads((tmp_path / "dataset_info.json").read_text())
    law = [json.loads(line) for line in open(registry["law"]["file_name"])]
    assert [r["instruction"] for r in law] == ["q0", "q2"]
    assert resolve_validation_column(hparams, ["a", "b"], None) == ["a", "b"]  # no column: unchanged
    with pytest.raises(ConfigError, match="splits ONE validation set into subtasks, but data.validation names 2"):
        resolve_validation_column(hparams, ["mmlu_val", "other"], "subject")
    # the score: max over subtask means (3 subtasks of cosines, hand-computed)
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    val = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8]])
    groups = torch.tensor([1, 0, 1, 2])  # law, algebra, law, virology
    # sample 0: algebra 0, law 1, virology 0.6 -> 1; sample 1: algebra 1, law 0, virology 0.8 -> 1
    torch.testing.assert_close(L.less_scores(train, val, groups), torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert compose_config(["experiment=less_mistral7b"], tiny=False).selector.subtask_column == "subject"
    assert L.LessSelector(budget=2).subtask_column is None
    with pytest.raises(ConfigError, match="subtask_column must be a column name"):
        L.LessSelector(budget=2, subtask_column="")


def test_a_validation_row_without_labels_is_an_error_naming_it():
    from datasets import Dataset

    from dataflex.config import ConfigError

    validation = Dataset.from_dict(
        {
            "input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
            "labels": [[-100, 2, 3], [-100, -100, -100], [-100, -100, 9]],
            "domain_id": [0, 1, 1],
        }
    )
    selector = L.LessSelector(budget=1)
    ctx = SimpleNamespace(require_validation=lambda who: validation)
    with pytest.raises(ConfigError, match=r"selector=less: validation row 1 \(subtask 1\) has no label token"):
        selector.validation(ctx)
    L.check_labelled_rows(validation, torch.tensor([0, 2]))  # the rows scored against are all labelled
    L.check_labelled_rows(Dataset.from_dict({"input_ids": [[1, 2]]}), None)  # pt: no labels column
