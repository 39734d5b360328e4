"""Tests for the seeded blockwise random projection (dataflex.signals.projection)."""

from __future__ import annotations

import itertools

import pytest
import torch
from support.distributed import run_distributed

from dataflex.signals.projection import KINDS, Projector, block_seed

# Small blocks so that a few hundred elements already span several blocks.
BS = 64


def _grads(batch: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.0.weight": torch.randn(batch, 10, 20, generator=g),
        "layer.0.bias": torch.randn(batch, 7, generator=g),
        "lora_A": torch.randn(batch, 3, 33, generator=g),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_shape_dtype_and_determinism(kind: str) -> None:
    grads = _grads()
    p1 = Projector(32, seed=5, kind=kind, block_size=BS)
    p2 = Projector(32, seed=5, kind=kind, block_size=BS)
    a, b = p1.project(grads), p2.project(grads)
    assert a.shape == (3, 32) and a.dtype == torch.float32 and a.device == grads["lora_A"].device
    assert torch.equal(a, b)
    assert torch.equal(a, p1.project(grads))  # repeated calls on one instance


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_differ(kind: str) -> None:
    grads = _grads()
    a = Projector(32, seed=0, kind=kind, block_size=BS).project(grads)
    b = Projector(32, seed=1, kind=kind, block_size=BS).project(grads)
    assert not torch.allclose(a, b)


def test_block_seed_is_stable_and_distinct() -> None:
    # A fixed value: guards against anyone switching to the salted built-in hash().
    assert block_seed(0, "rademacher", "w", 0) == 1109041823687757249
    seeds = {block_seed(s, k, n, b) for s in (0, 1) for k in KINDS for n in ("w", "b") for b in (0, 1)}
    assert len(seeds) == 2 * len(KINDS) * 2 * 2
    assert all(0 <= s < 2**63 for s in seeds)


def _projections_as_text() -> str:
    g = torch.arange(2 * 300, dtype=torch.float32).reshape(2, 300).sin()
    lines = []
    for kind in ("rademacher", "gaussian", "sparse"):
        out = Projector(16, seed=3, kind=kind, block_size=64).project({"w": g, "v": g[:, :50]})
        lines.append(" ".join(f"{v:.8e}" for v in out.flatten().tolist()) + "\n")
    return "".join(lines)


def test_determinism_across_processes(monkeypatch) -> None:
    runs = []
    for i in (1, 2):  # two fresh interpreters with different string hashing
        monkeypatch.setenv("PYTHONHASHSEED", str(i))
        (text,) = run_distributed(_projections_as_text, 1, backend=None, timeout=60)
        runs.append(text)
    assert runs[0] == runs[1] and runs[0].count("\n") == 3
    g = torch.arange(2 * 300, dtype=torch.float32).reshape(2, 300).sin()
    here = Projector(16, seed=3, kind="rademacher", block_size=64).project({"w": g, "v": g[:, :50]})
    theirs = torch.tensor([float(v) for v in runs[0].splitlines()[0].split()]).reshape(2, 16)
    torch.testing.assert_close(here, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_linearity(kind: str) -> None:
    p = Projector(24, seed=2, kind=kind, block_size=BS)
    x, y = _grads(seed=1), _grads(seed=2)
    combo = {k: 2.5 * x[k] - 0.5 * y[k] for k in x}
    torch.testing.assert_close(p.project(combo), 2.5 * p.project(x) - 0.5 * p.project(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cuts", [(100,), (1, 64, 65, 200), (37, 150, 151, 299)])
def test_shard_sum_equals_whole(kind: str, cuts: tuple[int, ...]) -> None:
    # 300 elements over blocks of 64: cuts fall mid-block, on a block boundary, and give 1-element shards.
    p = Projector(16, seed=9, kind=kind, block_size=BS)
    full = torch.randn(4, 15, 20)
    flat = full.reshape(4, -1)
    whole = p.project({"w": full, "other": full[:, 0]})
    bounds = [0, *cuts, flat.shape[1]]
    total = p.project({"other": full[:, 0]})
    for lo, hi in itertools.pairwise(bounds):
        total = total + p.project({"w": flat[:, lo:hi]}, offsets={"w": lo})
    torch.testing.assert_close(total, whole, rtol=1e-5, atol=1e-5)


def test_offset_matches_matrix_rows() -> None:
    p = Projector(8, seed=4, block_size=BS)
    x = torch.randn(2, 90)
    rows = p.matrix_rows("w", 100, 190)
    torch.testing.assert_close(p.project({"w": x}, offsets={"w": 100}), x @ rows, rtol=1e-5, atol=1e-5)
    # An empty shard contributes nothing.
    assert torch.equal(p.project({"w": x[:, :0]}, offsets={"w": 5}), torch.zeros(2, 8))


def test_dict_order_independence() -> None:
    grads = _grads()
    p = Projector(16, seed=1, block_size=BS)
    rev = dict(reversed(list(grads.items())))
    assert torch.equal(p.project(grads), p.project(rev))


def test_per_parameter_independence() -> None:
    p = Projector(16, seed=1, block_size=BS)
    a, b = torch.randn(2, 150), torch.randn(2, 40)
    alone_a, alone_b = p.project({"a": a}), p.project({"b": b})
    torch.testing.assert_close(p.project({"a": a, "b": b}), alone_a + alone_b, rtol=1e-6, atol=1e-6)
    # A parameter's rows depend on its name, not on its position among the others.
    assert torch.equal(Projector(16, seed=1, block_size=BS).project({"a": a}), alone_a)
    assert not torch.allclose(p.project({"c": a}), alone_a)


@pytest.mark.parametrize("kind", KINDS)
def test_norm_preservation(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(50, 1000)
    y = Projector(2048, seed=0, kind=kind, block_size=256).project({"w": x})
    rel = (y.pow(2).sum(1) / x.pow(2).sum(1) - 1).abs()
    assert rel.max().item() < 0.2, rel.max()


@pytest.mark.parametrize("density", [0.05, 1 / 3, 1.0])
def test_sparse_density_and_values(density: float) -> None:
    p = Projector(512, seed=0, kind="sparse", block_size=BS, density=density)
    rows = p.matrix_rows("w", 0, 4 * BS) * (512**0.5)  # unscaled entries
    nz = rows != 0
    frac = nz.float().mean().item()
    assert abs(frac - density) < 0.01, frac
    mag = (1 / density) ** 0.5
    torch.testing.assert_close(rows[nz].abs(), torch.full_like(rows[nz], mag))
    pos = (rows[nz] > 0).float().mean().item()
    assert abs(pos - 0.5) < 0.02


def test_rademacher_and_gaussian_entries() -> None:
    r = Projector(256, kind="rademacher", block_size=BS).matrix_rows("w", 0, 200) * 16
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(r.mean().item()) < 0.02
    g = Projector(256, kind="gaussian", block_size=BS).matrix_rows("w", 0, 200) * 16
    assert abs(g.std().item() - 1) < 0.02


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input(dtype: torch.dtype) -> None:
    p = Projector(16, seed=0, block_size=BS)
    x = torch.randn(3, 200).to(dtype)
    out = p.project({"w": x})
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, p.project({"w": x.float()}))


def test_cache_gives_same_result() -> None:
    grads = _grads()
    plain = Projector(16, seed=1, block_size=BS).project(grads)
    cached = Projector(16, seed=1, block_size=BS, cache_bytes=3 * BS * 16 * 4)
    assert torch.equal(cached.project(grads), plain)
    assert torch.equal(cached.project(grads), plain)
    assert cached._cached <= 3 * BS * 16 * 4


def test_generator_device_cpu_matches_default_on_cpu() -> None:
    grads = _grads()
    a = Projector(16, seed=1, block_size=BS).project(grads)
    b = Projector(16, seed=1, block_size=BS, generator_device="cpu").project(grads)
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dim": 0},
        {"dim": -3},
        {"dim": 2.0},
        {"dim": 8, "kind": "orthogonal"},
        {"dim": 8, "block_size": 0},
        {"dim": 8, "kind": "sparse", "density": 0.0},
        {"dim": 8, "kind": "sparse", "density": 1.5},
    ],
)
def test_bad_constructor_args(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Projector(**kwargs)


def test_bad_project_inputs() -> None:
    p = Projector(8, block_size=BS)
    with pytest.raises(ValueError, match="batch"):
        p.project({"a": torch.randn(2, 5), "b": torch.randn(3, 5)})
    with pytest.raises(ValueError, match="at least one"):
        p.project({})
    with pytest.raises(ValueError, match="0-d"):
        p.project({"a": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="float"):
        p.project({"a": torch.ones(2, 5, dtype=torch.long)})
    with pytest.raises(ValueError, match="offset"):
        p.project({"a": torch.randn(2, 5)}, offsets={"a": -1})
    with pytest.raises(TypeError, match="not a tensor"):
        p.project({"a": [1.0, 2.0]})  # type: ignore[dict-item]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dim", [16, 7, 8192])
def test_partial_blocks_are_the_whole_blocks_rows(kind: str, dim: int) -> None:
    """Generating only the rows a call needs gives exactly those rows of the whole block (so
    features do not depend on which rows a call happened to need); the projection of a parameter
    smaller than a block equals its product with the whole block's leading rows."""
    p = Projector(dim, seed=3, kind=kind, block_size=BS)
    whole = p._generate("w", 1, torch.device("cpu"))
    for need in (1, 2, 5, 16, BS - 1, BS):
        part = p._block("w", 1, torch.device("cpu"), need)
        assert part.shape[0] >= need
        assert torch.equal(part[:need], whole[:need]), need
    x = torch.randn(4, BS + 9, generator=torch.Generator().manual_seed(0))
    first, second = p._dense(p._generate("w", 0, torch.device("cpu"))), p._dense(whole[:9])
    expected = (x[:, :BS] @ first + x[:, BS:] @ second) / dim**0.5
    torch.testing.assert_close(p.project({"w": x}), expected, rtol=1e-5, atol=1e-5)


def test_partial_blocks_generate_fewer_rows() -> None:
    """A 9-element parameter draws 9 rows of a 4,096-row block on the CPU (not all of them); a
    cached shorter prefix is extended when a later call needs more rows."""
    p = Projector(32, seed=0, cache_bytes=1 << 20)
    assert p._block("w", 0, torch.device("cpu"), 9).shape == (9, 32)
    assert p._block("w", 0, torch.device("cpu"), 100).shape == (100, 32)
    assert p._block("w", 0, torch.device("cpu"), 50).shape == (100, 32)  # served from the cache
    assert p._cached == 100 * 32 * 4


def test_sjlt_columns_have_nnz_signed_entries() -> None:
    """Every input coordinate maps to ``nnz`` output positions with value ±sqrt(dim/nnz) each
    (summed where two positions coincide): squared column norm ``dim`` before the 1/sqrt(dim) scale."""
    dim, nnz = 64, 4
    p = Projector(dim, seed=2, kind="sjlt", block_size=BS, nnz=nnz)
    rows = p.matrix_rows("w", 0, 3 * BS) * dim**0.5  # unscaled
    block = p._generate("w", 0, torch.device("cpu"))
    positions, values = block[:, :nnz].long(), block[:, nnz:]
    assert set(values.abs().unique().tolist()) == {(dim / nnz) ** 0.5}
    for j in range(BS):
        expected = torch.zeros(dim)
        for c in range(nnz):
            expected[positions[j, c]] += values[j, c]
        assert torch.equal(rows[j], expected)
    distinct = rows.ne(0).sum(1)
    assert distinct.max() <= nnz and distinct.float().mean() > nnz - 0.5


def test_sjlt_preserves_inner_products_within_jl_error() -> None:
    """Random unit vectors in 20,000 dimensions projected to d = 2,048: pairwise inner products and
    norms within a few d^-1/2 (JL), equal to the dense product with the same matrix."""
    n, dim = 20_000, 2048
    x = torch.nn.functional.normalize(torch.randn(6, n, generator=torch.Generator().manual_seed(0)), dim=1)
    p = Projector(dim, seed=5, kind="sjlt", nnz=4)
    y = p.project({"w": x})
    exact, approx = x @ x.T, y @ y.T
    assert (approx - exact).abs().max() < 6 / dim**0.5
    torch.testing.assert_close(y, x @ p.matrix_rows("w", 0, n), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nnz", [0, 65, 1.5, True])
def test_sjlt_bad_nnz(nnz) -> None:
    with pytest.raises(ValueError, match="nnz"):
        Projector(64, kind="sjlt", nnz=nnz)
