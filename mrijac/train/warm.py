"""Warm-start store: each sample's singular vectors and last σ, kept between its visits."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..jacobian import WarmStart

LIMIT_BYTES = 1 << 30


class WarmStore:
    """Vectors ``u_*``/``v_*`` and the last σ per sample key (``mode="sample"``), or one set
    for the whole batch (``mode="batch"``, also used when a loader gives no keys).

    Per-sample storage falls back to one batch-shaped set once it passes ``limit_bytes``.
    ``data`` maps key -> ``{name: tensor, "sigma": tensor}`` (the checkpoint holds it).
    """

    def __init__(self, mode: str = "sample", limit_bytes: int = LIMIT_BYTES):
        self.mode, self.limit = mode, int(limit_bytes)
        self.data: dict = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.data)

    def items(self):
        return self.data.items()

    def get(self, keys, batch_size: int, device, partial_ok: bool = False) -> WarmStart | None:
        """``v0`` for :class:`~mrijac.jacobian.JacobianPenalty`: a :class:`WarmStart` with
        names -> ``(B, …)`` on ``device`` and ``cold`` ``(B,)`` marking samples without stored
        vectors (those get random ones).  ``None`` when nothing is known, or when some samples are unknown and
        ``partial_ok`` is False (the penalty then starts every sample cold)."""
        if self.mode == "batch" or keys is None:
            v = self.data.get("batch")
            ok = v is not None and all(t.shape[0] == batch_size for t in v.values())
            return WarmStart({k: t.to(device) for k, t in v.items()}) if ok else None
        vs = [self.data.get(k) for k in keys]
        known = [v for v in vs if v is not None]
        if not known or (len(known) < len(vs) and not partial_ok):
            return None
        names = sorted({n for v in known for n in v if n.startswith(("u_", "v_"))})
        like = {n: next(v[n] for v in known if n in v) for n in names}
        pick = lambda v, n: v[n] if v is not None and n in v else torch.randn_like(like[n])  # noqa: E731
        out = {n: torch.stack([pick(v, n) for v in vs]).to(device) for n in names}
        cold = torch.tensor([v is None or any(n not in v for n in names) for v in vs], device=device)
        return WarmStart(out, cold)

    def priority(self, keys) -> torch.Tensor:
        """Last σ per sample, ``inf`` for samples not seen yet (they go first)."""
        return torch.tensor([float(self.data[k]["sigma"]) if k in self.data else float("inf") for k in keys])

    def put(self, keys, stats: dict) -> None:
        """Store the vectors and σ of ``stats`` (rows ``stats["index"]`` of the batch, or all)."""
        vec = {k: v.detach() for k, v in stats.items() if k.startswith(("u_", "v_"))}
        if not vec:
            return
        if self.mode == "batch" or keys is None:
            if "index" in stats:  # vectors of part of the batch: no batch-shaped warm start
                return
            self.data["batch"] = {**self.data.get("batch", {}), **{k: v.cpu() for k, v in vec.items()}}
            return
        sig = torch.stack([stats[k] for k in ("sigma_ja", "sigma_j") if k in stats]).amax(0)
        index = stats.get("index", torch.arange(len(keys)))
        for i, b in enumerate(index.tolist()):
            old = self.data.get(keys[b], {})
            entry = dict(old)  # alternate: one term at a time
            entry.update({k: v[i].cpu() for k, v in vec.items()})
            entry["sigma"] = sig[i].cpu()
            self.nbytes += _size(entry) - _size(old)
            self.data[keys[b]] = entry
        if self.nbytes > self.limit:
            tqdm.write(
                f"warm-start vectors exceed {self.limit >> 20} MiB: switching to one "
                "vector per batch (reg.warm_start=batch)"
            )
            self.data, self.mode, self.nbytes = {}, "batch", 0

    def state_dict(self) -> dict:
        return {str(k): {n: t.cpu() for n, t in v.items()} for k, v in self.data.items()}

    def load_state_dict(self, state: dict) -> None:
        self.data = {(int(k) if k.isdigit() else k): v for k, v in state.items()}
        self.nbytes = sum(_size(v) for v in self.data.values())


def _size(entry: dict) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())
