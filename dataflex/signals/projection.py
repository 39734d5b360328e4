"""Seeded, blockwise random projection of (per-sample) gradients.

``Projector(dim, seed, kind)`` maps a dict of per-sample gradient tensors ``{name: [B, ...]}`` to
``[B, dim]`` features: ``sum_p flat(g_p) @ R_p / sqrt(dim)``, where ``R_p`` is a random
``numel(p) x dim`` matrix with i.i.d. unit-variance entries (so ``E|Rx|^2 = |x|^2``).

The matrix is never materialised. Its rows are produced in blocks of ``block_size`` rows; block
``k`` of parameter ``name`` comes from a ``torch.Generator`` seeded with a SHA-256 digest of
``(seed, kind, name, k)``. Row ``j`` of ``R_name`` is therefore a pure function of
``(seed, kind, name, j)`` (for a fixed ``dim`` and ``block_size``), which gives:

* determinism across processes (``hashlib`` is used, never the per-process-salted ``hash()``);
* independence from dict order and from which other parameters are present;
* shard additivity: a tensor holding elements ``[o, o + n)`` of a flattened parameter, projected
  with ``offsets={name: o}``, uses exactly rows ``[o, o + n)``, so projecting ZeRO-3 shards
  separately and summing equals projecting the gathered parameter.

Cost per ``project`` call: every covering block is generated once, up to the last row the call
needs (on the CPU only those rows are drawn: the same values as the whole block, see
``Projector._prefix_rows``; a parameter smaller than a block costs ``numel * dim`` draws, not
``block_size * dim``), and multiplied by all ``B`` rows at once, i.e. ``~numel * dim`` RNG draws plus
``2 * B * numel * dim`` FLOPs. For small ``B`` the RNG dominates: measured with ``B=16``, one million
parameters, ``dim=8192`` on a shared 2-core CPU: rademacher ~23 s, gaussian ~35 s, sparse ~60-80 s
(the sparse kind is generated densely, so it is no faster than the others). Peak extra memory is one
``block_size x dim`` fp32 block (128 MiB at the defaults) plus a ``B x block_size`` fp32 slice of
the input.

The ``sjlt`` kind is a sparse Johnson-Lindenstrauss transform (Kane and Nelson; the ``sjlt`` kernels
of GraSS and dattri): each input coordinate has ``nnz`` non-zeros, at seeded uniform output positions
with seeded signs, so a call costs ``B * numel * nnz`` multiply-adds and ``numel * nnz`` random
draws instead of ``B * numel * dim`` and ``numel * dim`` (a scatter-add, not a matrix product). Its
matrix has the same second moments (every column has squared norm ``dim`` before the
``1 / sqrt(dim)`` scale), so inner products are preserved in expectation as for the dense kinds.
On the CPU the scatter-add is sequential, hence deterministic; on CUDA it uses atomics, so the
last bits may vary from run to run.

Random streams are those of ``torch.Generator`` on the generating device: values are identical
across processes and runs for the same torch version and device type, but a CPU-generated and a
CUDA-generated matrix differ. Pass ``generator_device="cpu"`` to get device-independent features
(at the price of generating on the CPU and copying each block).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

KINDS = ("rademacher", "gaussian", "sparse", "sjlt")

_SEED_MASK = (1 << 63) - 1


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a CPU scatter single-threaded: torch parallelises ``index_add_`` per index (a tiny
    ``[B]`` row each), which costs far more than it saves; on a CPU shared with other jobs measured
    ~1 ms per 4,096-row block on one thread against 40-200 ms on two. No-op off the CPU."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def block_seed(seed: int, kind: str, name: str, block: int) -> int:
    """The generator seed of one block of one parameter's projection rows.

    Args:
        seed: The projector's seed.
        kind: The projection kind (part of the key, so kinds give unrelated matrices).
        name: The parameter name.
        block: The block index (rows ``[block * block_size, (block + 1) * block_size)``).

    Returns:
        A non-negative 63-bit integer, stable across processes, platforms and Python versions.
    """
    key = f"dataflex.projection\0{int(seed)}\0{kind}\0{name}\0{int(block)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & _SEED_MASK


class Projector:
    """A seeded Johnson-Lindenstrauss projection generated blockwise, shard-additive by design.

    Args:
        dim: Output dimension ``d`` (> 0).
        seed: Seed of the projection; the same seed gives the same matrix in any process.
        kind: ``"rademacher"`` (entries ±1), ``"gaussian"`` (N(0, 1)) or ``"sparse"``
            (Achlioptas / Li et al.: ±sqrt(1/density) with probability density/2 each, else 0).
        block_size: Rows generated per block. Part of the projection's identity: a different
            block size gives a different (equally valid) matrix.
        density: Fraction of non-zero entries for ``kind="sparse"`` (0 < density <= 1; the default
            1/3 is Achlioptas' choice, ``1/sqrt(n)`` is Li et al.'s "very sparse"). Ignored otherwise.
        nnz: Non-zeros per input coordinate for ``kind="sjlt"`` (1 <= nnz <= dim; 1 is CountSketch).
            Ignored otherwise.
        generator_device: Device on which random blocks are generated. ``None`` (default) uses the
            gradients' device (fast; values depend on the device type); ``"cpu"`` makes features
            identical on every device.
        cache_bytes: Optional LRU cache of generated blocks, in bytes (default 0 = no cache). A full
            matrix is ``numel * dim * 4`` bytes (32 GiB per million parameters at d = 8192), far
            too large to keep in general, so caching is off by default; it only pays off when the
            projected parameters are small (e.g. a few LoRA matrices) and ``project`` is called
            many times.

    Raises:
        ValueError: On a non-positive ``dim``/``block_size``, an unknown ``kind`` or a density
            outside (0, 1].
    """

    def __init__(
        self,
        dim: int,
        seed: int = 0,
        kind: str = "rademacher",
        block_size: int = 4096,
        *,
        density: float = 1.0 / 3.0,
        generator_device: str | torch.device | None = None,
        cache_bytes: int = 0,
        nnz: int = 4,
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"Projector dim must be a positive int, got {dim!r}")
        if kind not in KINDS:
            raise ValueError(
                f"unknown projection kind {kind!r}; expected one of {', '.join(KINDS)}"
            )
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, int)
            or block_size <= 0
        ):
            raise ValueError(
                f"Projector block_size must be a positive int, got {block_size!r}"
            )
        if not (0.0 < float(density) <= 1.0):
            raise ValueError(
                f"sparse projection density must be in (0, 1], got {density!r}"
            )
        if kind == "sjlt" and (isinstance(nnz, bool) or not isinstance(nnz, int) or not 1 <= nnz <= dim):
            raise ValueError(f"sjlt nnz must be an int in [1, dim={dim}], got {nnz!r}")
        if kind == "sjlt" and dim > 2**24:
            raise ValueError(f"sjlt supports dim <= 2**24, got {dim}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes!r}")
        self.dim = dim
        self.seed = int(seed)
        self.kind = kind
        self.block_size = block_size
        self.density = float(density)
        self.nnz = int(nnz)
        self.generator_device = (
            None if generator_device is None else torch.device(generator_device)
        )
        self.cache_bytes = int(cache_bytes)
        self._cache: OrderedDict[tuple[str, int, str], Tensor] = OrderedDict()
        self._cached = 0

    def __repr__(self) -> str:
        extra = f", density={self.density:g}" if self.kind == "sparse" else f", nnz={self.nnz}" if self.kind == "sjlt" else ""
        return (
            f"Projector(dim={self.dim}, seed={self.seed}, kind={self.kind!r}, "
            f"block_size={self.block_size}{extra})"
        )

    # ------------------------------------------------------------------ blocks
    def _prefix_rows(self, rows: int, device: torch.device) -> int:
        """How many leading rows of a block to generate when ``rows`` are needed.

        On the CPU, torch's generator fills a tensor serially, so the first ``r`` rows of a
        ``block_size``-row draw equal an ``r``-row draw bit for bit (uniform bytes and uniform
        floats always; normals in whole 16-value chunks, which ``randn`` fills independently, and
        not for a tensor under 16 values, filled otherwise). Elsewhere (CUDA's parallel
        generators split the stream by the tensor's size) whole blocks are generated.
        """
        if device.type != "cpu" or rows >= self.block_size:
            return self.block_size
        if self.kind == "gaussian" and (rows * self.dim % 16 or self.block_size * self.dim % 16 or rows * self.dim < 16):
            return self.block_size
        return rows

    def _generate(self, name: str, block: int, device: torch.device, rows: int | None = None) -> Tensor:
        """Unscaled fp32 rows of block ``block`` of parameter ``name``: the first ``rows`` of its
        ``block_size`` rows (all of them by default), identical to those rows of the whole block."""
        gen = torch.Generator(device=device)
        gen.manual_seed(block_seed(self.seed, self.kind, name, block))
        shape = (self.block_size if rows is None else rows, self.dim)
        if self.kind == "sjlt":
            # One draw in [0, 2 dim) per non-zero: the position (mod dim) and the sign (which half);
            # a single serial stream, so a prefix of rows is the whole block's prefix.
            draws = torch.randint(0, 2 * self.dim, (shape[0], self.nnz), generator=gen, device=device)
            signs = (draws >= self.dim).to(torch.float32).mul_(2.0).sub_(1.0)
            # Stored as one [rows, 2 nnz] fp32 block (positions, then values) so blocks slice and
            # cache by row like the dense kinds; positions < dim <= 2**24 are exact in fp32.
            return torch.cat([(draws % self.dim).to(torch.float32), signs.mul_(math.sqrt(self.dim / self.nnz))], dim=1)
        if self.kind == "gaussian":
            return torch.randn(shape, generator=gen, device=device, dtype=torch.float32)
        if self.kind == "rademacher":
            # One random byte gives 8 signs: ~2x faster than one randint draw per entry on CPU.
            n = shape[0] * self.dim
            nbytes = (n + 7) // 8
            words = torch.randint(
                0, 256, (nbytes,), generator=gen, device=device, dtype=torch.uint8
            )
            shifts = torch.arange(8, device=device, dtype=torch.uint8)
            bits = ((words.unsqueeze(-1) >> shifts) & 1).reshape(-1)[:n]
            return bits.to(torch.float32).mul_(2.0).sub_(1.0).reshape(shape)
        # sparse: ±sqrt(1/s) with probability s/2 each, else 0 (unit variance).
        u = torch.rand(shape, generator=gen, device=device, dtype=torch.float32)
        half = self.density / 2.0
        scale = math.sqrt(1.0 / self.density)
        pos = (u < half).to(torch.float32)
        neg = (u >= half).logical_and_(u < self.density).to(torch.float32)
        return pos.sub_(neg).mul_(scale)

    def _block(self, name: str, block: int, device: torch.device, need: int | None = None) -> Tensor:
        """Block ``block`` of parameter ``name`` on ``device``: at least its first ``need`` rows
        (default: all ``block_size``); only those are generated where that is bit-identical."""
        gen_device = self.generator_device or device
        need = self.block_size if need is None else need
        key = (name, block, str(device))
        if self.cache_bytes:
            hit = self._cache.get(key)
            if hit is not None and hit.shape[0] >= need:
                self._cache.move_to_end(key)
                return hit
            if hit is not None:  # a shorter prefix was cached: replaced below
                del self._cache[key]
                self._cached -= hit.numel() * hit.element_size()
        count = self._prefix_rows(need, gen_device)
        rows = self._generate(name, block, gen_device, None if count == self.block_size else count).to(device)
        if self.cache_bytes:
            size = rows.numel() * rows.element_size()
            if size <= self.cache_bytes:
                self._cache[key] = rows
                self._cached += size
                while self._cached > self.cache_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._cached -= old.numel() * old.element_size()
        return rows

    def matrix_rows(
        self, name: str, start: int, stop: int, device: str | torch.device = "cpu"
    ) -> Tensor:
        """Rows ``[start, stop)`` of parameter ``name``'s scaled projection matrix (for tests/debugging).

        Args:
            name: Parameter name.
            start: First flattened element index (>= 0).
            stop: One past the last element index.
            device: Device of the returned tensor.

        Returns:
            A ``[stop - start, dim]`` float32 tensor, already scaled by ``1 / sqrt(dim)``.
        """
        device = torch.device(device)
        if start < 0 or stop < start:
            raise ValueError(f"invalid row range [{start}, {stop})")
        if stop == start:
            return torch.zeros(0, self.dim, device=device)
        bs = self.block_size
        parts = []
        for k in range(start // bs, (stop - 1) // bs + 1):
            lo, hi = max(start, k * bs), min(stop, (k + 1) * bs)
            parts.append(self._dense(self._block(name, k, device, hi - k * bs)[lo - k * bs : hi - k * bs]))
        return torch.cat(parts) / math.sqrt(self.dim)

    def _dense(self, rows: Tensor) -> Tensor:
        """Unscaled dense rows of a block slice (an sjlt slice is scattered into its ``dim`` columns)."""
        if self.kind != "sjlt":
            return rows
        positions, values = rows[:, : self.nnz].long(), rows[:, self.nnz :]
        return torch.zeros(rows.shape[0], self.dim, device=rows.device).scatter_add_(1, positions, values)

    # ----------------------------------------------------------------- project
    def project(
        self, grads: Mapping[str, Tensor], offsets: Mapping[str, int] | None = None
    ) -> Tensor:
        """Project per-sample gradients to ``[B, dim]``.

        Args:
            grads: ``{parameter name: Tensor[B, ...]}``; each tensor is flattened to ``[B, n]``.
                Any float dtype (fp16/bf16 are upcast to fp32 block by block). All tensors must
                share the batch size and device.
            offsets: Optional ``{name: element offset}``: the flattened position of the tensor's
                first element within the full parameter (e.g. a ZeRO-3 shard's start). Missing
                names default to 0; names not in ``grads`` are ignored.

        Returns:
            A float32 ``[B, dim]`` tensor on the gradients' device, equal to
            ``sum_p flat(g_p) @ R_p[offset_p : offset_p + n_p] / sqrt(dim)``.

        Raises:
            ValueError: On an empty ``grads``, a 0-d tensor, mismatched batch sizes or devices,
                a non-float tensor, or a negative/non-integer offset.
            TypeError: When a value of ``grads`` is not a tensor.
        """
        if not grads:
            raise ValueError("project() needs at least one gradient tensor")
        offsets = dict(offsets or {})
        batch: int | None = None
        device: torch.device | None = None
        for name, g in grads.items():
            if not isinstance(g, Tensor):
                raise TypeError(
                    f"gradient {name!r} is not a tensor: {type(g).__name__}"
                )
            if g.dim() < 1:
                raise ValueError(
                    f"gradient {name!r} needs a leading batch dimension, got a 0-d tensor"
                )
            if not (g.is_floating_point()):
                raise ValueError(
                    f"gradient {name!r} must be a float tensor, got {g.dtype}"
                )
            if batch is None:
                batch, device = g.shape[0], g.device
            elif g.shape[0] != batch:
                raise ValueError(
                    f"mismatched batch sizes: {name!r} has {g.shape[0]} rows, expected {batch}"
                )
            elif g.device != device:
                raise ValueError(
                    f"gradients on different devices: {name!r} on {g.device}, expected {device}"
                )
            off = offsets.get(name, 0)
            if isinstance(off, bool) or not isinstance(off, int) or off < 0:
                raise ValueError(
                    f"offset of {name!r} must be a non-negative int, got {off!r}"
                )
        assert batch is not None and device is not None
        out = torch.zeros(batch, self.dim, dtype=torch.float32, device=device)
        # sjlt accumulates into out^T: each scattered source row is one contiguous [B] vector (same sums in
        # the same order as scattering into columns of out, and many times faster on a busy multi-thread CPU).
        out_t = torch.zeros(self.dim, batch, dtype=torch.float32, device=device) if self.kind == "sjlt" else None
        bs = self.block_size
        # Sorted names: the float summation order (hence the exact bits) does not depend on dict order.
        for name in sorted(grads):
            flat = grads[name].reshape(batch, -1)
            n = flat.shape[1]
            if n == 0 or batch == 0:
                continue
            start = offsets.get(name, 0)
            stop = start + n
            for k in range(start // bs, (stop - 1) // bs + 1):
                lo, hi = max(start, k * bs), min(stop, (k + 1) * bs)
                rows = self._block(name, k, device, hi - k * bs)[lo - k * bs : hi - k * bs]
                x = flat[:, lo - start : hi - start].to(torch.float32)
                if out_t is not None:  # out[:, pos[j, c]] += x[:, j] * val[j, c]
                    positions, values = rows[:, : self.nnz].long(), rows[:, self.nnz :]
                    with _one_cpu_thread(device):
                        src = (x.T.unsqueeze(1) * values.unsqueeze(-1)).reshape(-1, batch)  # [n * nnz, B]
                        out_t.index_add_(0, positions.reshape(-1), src)
                else:
                    out.addmm_(x, rows)
        if out_t is not None:
            out.copy_(out_t.T)
        return out.mul_(1.0 / math.sqrt(self.dim))

    __call__ = project
