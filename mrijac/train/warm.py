"""Warm-start store: each sample's singular vectors and last σ, kept between its visits."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..jacobian import WarmStart

LIMIT_BYTES = 1 << 30


COLD_STARTS = ("recent", "random")
RECENT = "__recent__"  # checkpoint key of the most recent vectors


class WarmStore:
    """Vectors ``u_*``/``v_*`` and the last σ per sample key (``mode="sample"``), or one set
    for the whole batch (``mode="batch"``, also used when a loader gives no keys).

    A sample without stored vectors starts (``cold="recent"``) from the vector stored last for
    any sample, else from a random one.  The top singular vectors of different slices are
    nearly orthogonal (median |cos| 2e-4 on real chest slices), but another slice's vector is
    made of the directions the network amplifies, so a power step from it lands closer to the
    top than from noise: est/ref 0.75 vs 0.64 after one step, 0.80 vs 0.69 after two
    (``experiments/results/cold_start.md``: 8 real 256² chest slices, U-Net trained 12 epochs
    with the default penalty, converged reference).  At fastMRI size most visits are first
    visits, so this is the start that matters.

    Per-sample storage falls back to one batch-shaped set once it passes ``limit_bytes``.
    ``data`` maps key -> ``{name: tensor, "sigma": tensor}`` (the checkpoint holds it).
    """

    def __init__(self, mode: str = "sample", limit_bytes: int = LIMIT_BYTES, cold: str = "recent"):
        if cold not in COLD_STARTS:
            raise ValueError(f"cold start must be one of {COLD_STARTS}, got {cold!r}")
        self.mode, self.limit, self.cold = mode, int(limit_bytes), cold
        self.data: dict = {}
        self.recent: dict = {}  # name -> the vector stored last (any sample)
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
        if len(known) < len(vs) and not partial_ok:
            return None
        if not known and not (partial_ok and self.cold == "recent" and self.recent):
            return None
        names = sorted({n for v in known for n in v if n.startswith(("u_", "v_"))} or self.recent)
        like = {n: next((v[n] for v in known if n in v), self.recent.get(n)) for n in names}

        def pick(v, n):
            if v is not None and n in v:
                return v[n]
            r = self.recent.get(n) if self.cold == "recent" else None
            return r if r is not None and r.shape == like[n].shape else torch.randn_like(like[n])

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
            self.recent.update({k: entry[k] for k in vec})
            entry["sigma"] = sig[i].cpu()
            self.nbytes += _size(entry) - _size(old)
            self.data[keys[b]] = entry
        if self.nbytes > self.limit:
            tqdm.write(
                f"warm-start vectors exceed {self.limit >> 20} MiB: switching to one "
                "vector per batch (reg.warm_start=batch)"
            )
            self.data, self.mode, self.nbytes, self.recent = {}, "batch", 0, {}

    def state_dict(self) -> dict:
        out = {str(k): {n: t.cpu() for n, t in v.items()} for k, v in self.data.items()}
        if self.recent:
            out[RECENT] = dict(self.recent)
        return out

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.recent = dict(state.pop(RECENT, {}))
        self.data = {(int(k) if k.isdigit() else k): v for k, v in state.items()}
        self.nbytes = sum(_size(v) for v in self.data.values())


def _size(entry: dict) -> int:
    return sum(t.numel() * t.element_size() for t in entry.values())
