"""Run a function in N fresh processes joined in one gloo process group, as torchrun would start them.

``run_distributed(fn, 2, *args)`` spawns two interpreters (torch.multiprocessing, "spawn"), sets the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT on a free port),
initialises the gloo group, calls ``fn(*args)`` on every rank and returns the ranks' results in rank
order. A rank that raises makes the call raise that exception (its type and message) with the rank's
traceback as its cause; the other ranks get a few seconds to report, then are stopped. ``fn`` and its
arguments are pickled: ``fn`` must be defined at the top level of a module (a test module is fine: the
children get the parent's ``sys.path``).
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

import torch.multiprocessing as mp


class RemoteTraceback(Exception):
    """The traceback of the exception a rank raised, attached as the re-raised exception's cause."""

    def __str__(self) -> str:
        return self.args[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, nprocs, port, backend, fn, args, conn):
    """Child side: torchrun's environment, the process group, ``fn(*args)``; the outcome goes to ``conn``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nprocs),
        LOCAL_WORLD_SIZE=str(nprocs),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    code = 0
    try:
        import torch
        import torch.distributed as dist

        torch.set_num_threads(1)  # N ranks share the machine's cores
        if backend is not None:
            dist.init_process_group(backend, rank=rank, world_size=nprocs)
        result = fn(*args)
        if backend is not None and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        conn.send(("ok", result))
    except BaseException as err:  # noqa: BLE001 - everything a rank raises goes back to the caller
        code = 1
        text = "".join(traceback.format_exception(err))
        try:
            payload = pickle.dumps(err)
        except Exception:  # noqa: BLE001 - an exception that does not pickle is reported by its text
            payload = None
        conn.send(("error", (payload, type(err).__name__, str(err), text)))
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave without the interpreter's teardown: DeepSpeed's and gloo's comm threads can abort it
        # ("terminate called without an active exception") after all work is done and reported.
        os._exit(code)


def _outcome(proc, reader) -> tuple[str, Any]:
    """What a finished (or reporting) rank sent: ("ok", result), ("error", details) or ("died", exit code)."""
    if reader.poll():
        try:
            return reader.recv()
        except EOFError:
            pass
    proc.join(5)
    return "died", proc.exitcode


def _raise_from_rank(rank: int, nprocs: int, detail, others: list[str]) -> None:
    payload, name, message, text = detail
    try:
        err = pickle.loads(payload) if payload is not None else None
    except Exception:  # noqa: BLE001 - unpicklable here: fall back to the text
        err = None
    if not isinstance(err, BaseException):
        err = RuntimeError(f"{name}: {message}")
    err.__cause__ = RemoteTraceback("\n".join(["", f"rank {rank} of {nprocs} raised:", text.rstrip(), *others]))
    raise err


def run_distributed(
    fn: Callable[..., Any], nprocs: int, *args: Any, backend: str | None = "gloo", timeout: float = 300.0
) -> list[Any]:
    """``fn(*args)`` on ``nprocs`` spawned ranks of one ``backend`` process group; the results in rank order.

    Args:
        fn: A top-level (picklable) function; it runs after ``init_process_group`` and may use
            torch.distributed freely. Its result must pickle.
        nprocs: Number of ranks.
        *args: Passed to ``fn`` on every rank (``torch.distributed.get_rank()`` tells them apart).
        backend: Process-group backend; ``None`` starts the processes without a group (fresh
            interpreters, e.g. to compare results across interpreter starts).
        timeout: Seconds for the whole call; past it every rank is killed and TimeoutError raised.

    Raises:
        The exception of the first rank that raised (the others typically fail after it, in a
        collective), with that rank's traceback and the others' errors as its cause;
        RuntimeError when a rank died without reporting (killed, or a crash in native code).
    """
    ctx = mp.get_context("spawn")
    port = free_port()
    procs, readers = [], []
    for rank in range(nprocs):
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_rank_main, args=(rank, nprocs, port, backend, fn, args, writer), daemon=True)
        proc.start()
        writer.close()
        procs.append(proc)
        readers.append(reader)
    outcomes: dict[int, tuple[str, Any]] = {}
    deadline, grace_until = time.monotonic() + timeout, None
    try:
        while len(outcomes) < nprocs:
            now = time.monotonic()
            if grace_until is not None and now >= grace_until:
                break  # a rank failed; the others may wait in a collective forever
            if now >= deadline:
                missing = sorted(set(range(nprocs)) - set(outcomes))
                raise TimeoutError(f"run_distributed: ranks {missing} of {nprocs} still running after {timeout:g} s")
            limit = deadline if grace_until is None else min(deadline, grace_until)
            pending = [r for r in range(nprocs) if r not in outcomes]
            ready = wait([readers[r] for r in pending] + [procs[r].sentinel for r in pending], timeout=limit - now)
            for r in pending:
                if readers[r] in ready or procs[r].sentinel in ready:
                    outcomes[r] = _outcome(procs[r], readers[r])
            if grace_until is None and any(kind != "ok" for kind, _ in outcomes.values()):
                grace_until = time.monotonic() + 10.0  # time for the others to report their own error
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join(5)
        for reader in readers:
            reader.close()
    failed = [r for r in outcomes if outcomes[r][0] == "error"]  # in the order they reported
    if failed:
        others = [f"rank {r} also raised {outcomes[r][1][1]}: {outcomes[r][1][2]}" for r in failed[1:]]
        _raise_from_rank(failed[0], nprocs, outcomes[failed[0]][1], others)
    for rank in sorted(outcomes):
        kind, detail = outcomes[rank]
        if kind == "died":
            raise RuntimeError(f"run_distributed: rank {rank} of {nprocs} exited with code {detail} without a result")
    return [outcomes[r][1] for r in range(nprocs)]
