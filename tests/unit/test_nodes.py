"""Several nodes (issue 20): torchrun's rendezvous arguments and a SLURM task's rank environment."""

from __future__ import annotations

import socket

import pytest
from omegaconf import OmegaConf

from dataflex.errors import ConfigError
from dataflex.launch import needs_torchrun
from dataflex.nodes import rendezvous_args, slurm_rank_env


def cfg(**keys):
    return OmegaConf.create(
        {
            "nproc": 1,
            "nnodes": 1,
            "node_rank": 0,
            "master_addr": None,
            "master_port": 29500,
            "rdzv_timeout": 300,
            "trainer": {},
            **keys,
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_node_stays_standalone_and_two_nodes_meet_at_a_c10d_rendezvous(tmp_path):
    assert rendezvous_args(cfg(nproc=4), tmp_path) == ["--standalone", "--nproc_per_node=4"]
    assert not needs_torchrun(cfg()) and needs_torchrun(cfg(nnodes=2))
    args = rendezvous_args(cfg(nproc=8, nnodes=2, master_addr="127.0.0.1", master_port=29511), tmp_path)
    assert args[:5] == [
        "--nnodes=2",
        "--nproc_per_node=8",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:29511",
        args[4],
    ] and args[4].startswith("--rdzv-id=")
    # the id is the run directory's: every node of one run meets under the same id, another run under another
    assert args == rendezvous_args(cfg(nproc=8, nnodes=2, master_addr="127.0.0.1", master_port=29511), tmp_path)
    other = rendezvous_args(cfg(nproc=8, nnodes=2, master_addr="127.0.0.1", master_port=29511), tmp_path / "x")
    assert other[4] != args[4]


@pytest.mark.parametrize(
    "keys, match",
    [
        ({"nnodes": 2}, "needs master_addr="),
        ({"nnodes": 2, "master_addr": "no-such-host.invalid"}, "does not resolve"),
        ({"nnodes": 2, "master_addr": "127.0.0.1", "node_rank": 2}, r"node_rank must lie in \[0, 2\)"),
        ({"nnodes": 0}, "nnodes must be >= 1"),
    ],
)
def test_bad_node_settings_are_one_line(tmp_path, keys, match):
    with pytest.raises(ConfigError, match=match):
        rendezvous_args(cfg(**keys), tmp_path)


def test_a_node_whose_master_does_not_answer_stops_with_one_line(tmp_path):
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=rf"cannot reach the master 127.0.0.1:{port} within 1 s"):
        rendezvous_args(cfg(nnodes=2, node_rank=1, master_addr="127.0.0.1", master_port=port, rdzv_timeout=1), tmp_path)
    with socket.socket() as server:  # once it listens, the node goes on
        server.bind(("127.0.0.1", port))
        server.listen()
        assert (
            rendezvous_args(
                cfg(nnodes=2, node_rank=1, master_addr="127.0.0.1", master_port=port, rdzv_timeout=5), tmp_path
            )[0]
            == "--nnodes=2"
        )


SLURM = {
    "SLURM_NTASKS": "4",
    "SLURM_NNODES": "2",
    "SLURM_PROCID": "3",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_ID": "1234",
}


def test_a_slurm_task_is_one_rank_with_the_first_host_as_master(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: the node list is read directly
    env = slurm_rank_env(cfg(nproc=2), SLURM)
    assert env == {
        "MASTER_ADDR": "gpu07",
        "MASTER_PORT": str(29500 + 234),
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
    }
    assert slurm_rank_env(cfg(nproc=2), {**SLURM, "SLURM_NTASKS": "1"}) is None  # one task: torchrun or one process
    assert slurm_rank_env(cfg(nproc=2), {**SLURM, "TORCHELASTIC_RUN_ID": "x"}) is None  # torchrun's own ranks
    assert slurm_rank_env(cfg(), {}) is None


def test_the_master_is_the_first_nodes_address_where_scontrol_knows_it(monkeypatch, tmp_path):
    """Node names need not resolve (a cluster with NodeAddr set, like scripts/slurm.sh's): the master is
    the NodeAddr ``scontrol show node`` gives for the first host; without one, the host name."""
    scontrol = tmp_path / "scontrol"
    scontrol.write_text("""#!/bin/sh
case "$1 $2" in
  "show hostnames") case "$3" in *07*) echo gpu07; echo gpu08 ;; *) echo gpu08; echo gpu09 ;; esac ;;
  "show node") [ "$4" = gpu07 ] && echo "NodeName=gpu07 Arch=x86_64 NodeAddr=10.1.2.7 NodeHostName=gpu07 State=IDLE" ;;
esac
""")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert slurm_rank_env(cfg(nproc=2), SLURM)["MASTER_ADDR"] == "10.1.2.7"
    # gpu08 has no NodeAddr: its name
    assert slurm_rank_env(cfg(nproc=2), {**SLURM, "SLURM_JOB_NODELIST": "gpu[08-09]"})["MASTER_ADDR"] == "gpu08"


def test_tasks_per_node_must_match_nproc():
    with pytest.raises(ConfigError, match="runs 2 task\\(s\\) per node .* but nproc=8; .* set nproc=2"):
        slurm_rank_env(cfg(nproc=8), SLURM)


def test_the_master_host_expansion_of_a_node_range():
    from dataflex.nodes import first_host

    assert first_host("gpu[07-08]") == "gpu07"
    assert first_host("a01,b[3,5]") == "a01"
    assert first_host("node[1-4],other") == "node1"
    assert first_host("solo") == "solo"
