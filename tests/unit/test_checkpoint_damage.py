"""Damaged checkpoints (issue 22): a checkpoint whose files were truncated or emptied after its save
is named, set aside as ``checkpoint-N.damaged`` and the run resumes from the newest intact one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dataflex.train.checkpoints import STATE_FILE, checkpoint_damage, newest_complete_checkpoint


def make_checkpoint(root: Path, step: int) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    torch.save({"run_id": "abc", "sampler": {"draws": step}}, ckpt / STATE_FILE)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}}, ckpt / "optimizer.pt")
    torch.save({"python": 1}, ckpt / "rng_state.pth")
    save_file({"w": torch.arange(256, dtype=torch.float32)}, str(ckpt / "adapter_model.safetensors"))
    return ckpt


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_an_intact_checkpoint_has_no_damage(tmp_path):
    assert checkpoint_damage(make_checkpoint(tmp_path, 2)) is None


@pytest.mark.parametrize(
    ("name", "damage", "expected"),
    [
        (STATE_FILE, lambda p: p.write_bytes(b""), "dataflex_state.pt does not load"),
        ("trainer_state.json", truncate, "trainer_state.json is not valid JSON"),
        ("optimizer.pt", truncate, "optimizer.pt: not a complete torch file"),
        ("optimizer.pt", lambda p: p.write_bytes(b""), "optimizer.pt: not a complete torch file"),
        ("rng_state.pth", truncate, "rng_state.pth: not a complete torch file"),
        ("adapter_model.safetensors", lambda p: truncate(p, 0.9), "adapter_model.safetensors: truncated"),
        ("adapter_model.safetensors", lambda p: truncate(p, 0.01), "adapter_model.safetensors: "),
    ],
)
def test_each_damaged_file_is_named(tmp_path, name, damage, expected):
    ckpt = make_checkpoint(tmp_path, 2)
    damage(ckpt / name)
    assert expected in checkpoint_damage(ckpt)


def test_the_newest_damaged_checkpoint_is_set_aside_and_the_older_one_resumed(tmp_path, capsys):
    make_checkpoint(tmp_path, 2)
    newest = make_checkpoint(tmp_path, 4)
    truncate(newest / "optimizer.pt")
    assert newest_complete_checkpoint(tmp_path, remove_incomplete=True) == str(tmp_path / "checkpoint-2")
    assert not newest.exists() and (tmp_path / "checkpoint-4.damaged" / "optimizer.pt").is_file()
    out = capsys.readouterr().out
    assert "checkpoint-4 is damaged (optimizer.pt: not a complete torch file" in out
    assert "resuming from the newest intact checkpoint" in out
    # the set-aside copy is never listed again
    assert newest_complete_checkpoint(tmp_path, remove_incomplete=True) == str(tmp_path / "checkpoint-2")


def test_a_non_main_rank_picks_the_same_checkpoint_without_moving_anything(tmp_path):
    make_checkpoint(tmp_path, 2)
    truncate(make_checkpoint(tmp_path, 4) / "trainer_state.json")
    assert newest_complete_checkpoint(tmp_path, remove_incomplete=False) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4").is_dir()


def test_no_intact_checkpoint_says_so_and_starts_from_zero(tmp_path, capsys):
    (make_checkpoint(tmp_path, 2) / STATE_FILE).write_bytes(b"")
    (make_checkpoint(tmp_path, 4) / STATE_FILE).write_bytes(b"")
    assert newest_complete_checkpoint(tmp_path, remove_incomplete=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2.damaged", "checkpoint-4.damaged"]
    assert "no intact checkpoint" in capsys.readouterr().out


def test_a_second_damage_of_the_same_step_keeps_the_first_set_aside_copy(tmp_path):
    for _ in range(2):
        truncate(make_checkpoint(tmp_path, 2) / "optimizer.pt")
        assert newest_complete_checkpoint(tmp_path, remove_incomplete=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2.damaged", "checkpoint-2.damaged-2"]


# -- the run directory: one run at a time, a failed start does not claim it ---------------------


def test_a_second_run_into_a_directory_in_use_is_refused(tmp_path):
    from dataflex.config import ConfigError
    from dataflex.run import run_dir_lock

    with run_dir_lock(tmp_path):
        with pytest.raises(ConfigError, match=r"is in use by a run still going \(pid \d+\)"):
            with run_dir_lock(tmp_path):
                pass
    with run_dir_lock(tmp_path):  # released at the end of the first
        pass


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    from support.config import compose_config

    from dataflex.config import ConfigError
    from dataflex.run import Run

    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=r"cannot create the run directory .*file/run"):
        Run(compose_config(), tmp_path / "file" / "run").fit()
