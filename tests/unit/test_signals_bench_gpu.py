"""benchmarks/gpu.py (``make bench-gpu``) runs end to end on the CPU with a tiny random-weight config."""

import importlib.util
import json
import math
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_on_cpu_and_writes_its_table(tmp_path):
    bench = load_bench()
    rows = bench.main(["--device", "cpu", "--config", "tiny", "--batch", "3", "--seq", "16", "--dim", "64",
                       "--pool", "4", "--val", "2", "--repeat", "1", "--out", str(tmp_path)])
    names = [r["row"] for r in rows]
    assert names[0].startswith("train step") and any(n.startswith("reference shape") for n in names)
    assert {"dataflex sjlt", "dataflex rademacher"} <= set(names) and names[-1].startswith("less round")
    for r in rows:
        assert r["s"] > 0 and math.isfinite(r["vs_step"]) and math.isfinite(r["vs_ref"])
        if "cos_err" in r:  # a JL projection of 3 samples to d = 64 keeps their cosines roughly
            assert 0 <= r["cos_err"] < 0.75
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "| dataflex sjlt |" in table and "device cpu" in table
    assert json.loads((tmp_path / "gpu_bench.json").read_text())["rows"][0]["row"] == names[0]


def test_reference_shape_is_the_dense_projection_of_the_loop_gradients():
    bench = load_bench()
    model, config = bench.build("tiny", torch.float32, "cpu", None)
    batch = bench.collate(bench.make_rows(config.vocab_size, 3, 12, 0))
    from dataflex.signals.gradients import per_sample_gradients, trainable_parameters

    exact = per_sample_gradients(model, batch)
    flat = torch.cat([exact[n].reshape(3, -1) for n in trainable_parameters(model)], 1)
    feats = bench.reference_shape(model, batch, 200, seed=0, block=128)
    # the same matrix, generated as the reference does (blocks of 128 columns, seed + 1000 k)
    gen, cols = torch.Generator(), []
    for k, start in enumerate(range(0, 200, 128)):
        gen.manual_seed(1000 * k)
        cols.append(torch.empty(flat.shape[1], 128).bernoulli_(0.5, generator=gen).mul_(2).sub_(1)[:, : min(128, 200 - start)])
    expected = flat @ torch.cat(cols, 1) / 200**0.5
    torch.testing.assert_close(feats, expected, rtol=1e-4, atol=1e-6)
