"""map_pool: a whole-pool pass equals the signal on one batch, in the caller's order."""

import torch
from support.tiny import tiny_llama

from dataflex.signals.losses import per_sample_losses
from dataflex.signals.pool import map_pool


def rows(n=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = 5 + i % 4
        ids = torch.randint(1, 60, (length,), generator=g).tolist()
        out.append(
            {"input_ids": ids, "attention_mask": [1] * length, "labels": [-100, -100] + ids[2:], "sample_index": i}
        )
    return out


def collate(features):
    width = max(len(f["input_ids"]) for f in features)

    def pad(seq, v):
        return seq + [v] * (width - len(seq))

    return {
        "input_ids": torch.tensor([pad(f["input_ids"], 0) for f in features]),
        "attention_mask": torch.tensor([pad(f["attention_mask"], 0) for f in features]),
        "labels": torch.tensor([pad(f["labels"], -100) for f in features]),
    }


def model():
    return tiny_llama().train()  # train mode on purpose: the pass must use eval mode


def test_whole_pool_equals_one_batch_and_restores_mode():
    data, m = rows(), model()
    expected = per_sample_losses(m.eval(), collate(data))
    m.train()
    got = map_pool(per_sample_losses, m, data, collate, batch_size=3)
    assert m.training
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_result_follows_the_requested_order():
    data, m = rows(), model()
    indices = [7, 2, 9, 0]
    full = map_pool(per_sample_losses, m, data, collate, batch_size=4)
    torch.testing.assert_close(
        map_pool(per_sample_losses, m, data, collate, indices=indices, batch_size=2), full[indices]
    )


def test_duplicate_indices_are_refused():
    import pytest

    with pytest.raises(ValueError, match="unique"):
        map_pool(per_sample_losses, model(), rows(), collate, indices=[1, 1])


def test_length_sorted_batches_give_the_unsorted_result():
    """Batching by length (the default) changes only which rows share a batch, not any row's value."""
    data, m = rows(n=37), model()
    seen = []

    def recording(model, batch):
        seen.append(batch["attention_mask"].sum(1).tolist())
        return per_sample_losses(model, batch)

    sorted_run = map_pool(recording, m, data, collate, batch_size=4, sort_window=8)
    first_window = [n for lengths in seen[:8] for n in lengths]  # 8 batches of 4 rows
    assert (
        first_window == sorted(first_window) and len(set(first_window)) == 4
    )  # in length order (unsorted: 5,6,7,8,5,..)
    plain = map_pool(per_sample_losses, m, data, collate, batch_size=4, sort_window=1)
    torch.testing.assert_close(sorted_run, plain)


def test_a_failing_signal_closes_the_bar_and_restores_the_mode(monkeypatch):
    import pytest

    import dataflex.signals.pool as pool

    closed = []

    class Bar:
        def update(self, n):
            pass

        def close(self):
            closed.append(True)

    monkeypatch.setattr(pool, "progress", lambda *a, **k: Bar())

    def broken(model, batch):
        raise RuntimeError("signal failed")

    m = model()
    with pytest.raises(RuntimeError, match="signal failed"):
        map_pool(broken, m, rows(), collate, batch_size=3)
    assert closed == [True] and m.training
