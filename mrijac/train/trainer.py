"""The training loop: data loss + regularizer, validation, logs, checkpoints, resume, DDP."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..atomic import remove_stale
from ..checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import Config, config_from_dict, flatten, save_config
from ..inference import reconstruct, score
from ..jacobian import JacobianPenalty, PenaltySchedule
from ..metrics import generalization_gap
from ..models import plain_instance_norms
from ..regularizers import WeightSpectralPenalty
from ..runtime import progress, resolve_device, seed_everything
from ..tasks import build_reconstructor, fixed_raw, make_task, resolve_workers, seeded_indices
from . import distributed as dist
from .history import EpochStats, HistoryLog, postfix
from .losses import DataLoss
from .monitor import ReferenceMonitor
from .pool import TrackedPool
from .step import PenaltyStep
from .warm import WarmStore

JAC_REGS = {
    "sj": ("spectral", False, True),
    "sja": ("spectral", True, False),
    "sja+sj": ("spectral", True, True),
    "fj": ("frobenius", False, True),
    "fja": ("frobenius", True, False),
    "fja+fj": ("frobenius", True, True),
}


class NonFiniteError(RuntimeError):
    """The loss or the penalty became NaN or Inf."""


class Interrupted(RuntimeError):
    """SIGTERM/SIGINT (or repeated out-of-memory) stopped training after a checkpoint."""

    def __init__(self, msg, signum=None):
        super().__init__(msg)
        self.signum = signum


def prepare_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to write over a run unless ``overwrite``; ``resume`` needs a checkpoint.  Temporary
    files of a killed checkpoint write are removed."""
    ck = out / "checkpoints" / "last.pt"
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: names an existing file; the run folder must be a directory")
    for d in (out, out / "checkpoints"):
        remove_stale(d)
    if resume:
        if not ck.exists():
            raise FileNotFoundError(
                f"{ck}: nothing to resume — the run in {out} stopped before its first checkpoint; "
                "start it again with --overwrite"
            )
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} already holds files (a run?); use --overwrite to replace it"
                + (" or --resume to continue it" if ck.exists() else " (it has no checkpoint to resume)")
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def build_optimizer(o, model):
    """``(optimizer, scheduler or None)`` of config section ``optim``."""
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.RMSprop
    opt = cls(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.schedule == "step":
        return opt, torch.optim.lr_scheduler.StepLR(opt, o.step_size, o.lr_gamma)
    if o.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, o.epochs)
    return opt, None


def build_penalty_step(cfg, model, reduce=None, log=None) -> PenaltyStep:
    """The :class:`PenaltyStep` of config section ``reg`` for ``model``."""
    r = cfg.reg
    jac = None
    if r.name in JAC_REGS:
        kind, use_ja, use_j = JAC_REGS[r.name]
        spectral = kind == "spectral"
        jac = JacobianPenalty(
            kind,
            lambda_ja=r.lambda_ja if use_ja else 0.0,
            lambda_j=r.lambda_j if use_j else 0.0,
            n_iter=r.n_iter,
            n_proj=r.n_proj,
            method=r.method,
            gamma=r.gamma,
            schedule=PenaltySchedule(r.every, r.alternate, r.every_mode == "hold" and r.every > 1),
            warm_start_vectors=r.warm_start != "none" and spectral,
            samples=(r.samples or None) if spectral else None,
            fd_step=r.fd_step or None,
            recompute=r.fd_recompute,
            tie=r.tie_terms,
            lanczos_jvp=r.lanczos_jvp,
            fd_kinks=r.fd_kinks,
            first_visits=r.first_visits,
            rank=r.rank,
        )
        if jac.method in ("forward", "double_vjp"):
            # they differentiate a JVP: the fused InstanceNorm's second derivative is wrong
            # (forward) or missing (double_vjp), its plain-op form's is not (mrijac.models.norms)
            n = plain_instance_norms(model)
            if n and log is not None:
                log(f"reg.method={jac.method}: {n} InstanceNorm layers computed from plain ops (exact 2nd derivatives)")
    pool = TrackedPool(r.pool, r.pool_refresh, r.pool_iters, cfg.train.seed) if jac is not None and r.pool else None
    warm = (
        WarmStore(r.warm_start, cold=r.cold_start)
        if jac is not None and pool is None and jac.kind == "spectral" and r.warm_start != "none"
        else None
    )
    sw = WeightSpectralPenalty(model, r.lambda_w, seed=cfg.train.seed) if r.name == "sw" else None
    return PenaltyStep(
        jac,
        warm=warm,
        pool=pool,
        sw=sw,
        wd=r.lambda_w if r.name == "wd" else 0.0,
        reduce=reduce,
        log=log,
        auto_steps=r.auto_steps,
    )


class Trainer:
    """Trains a reconstructor as ``cfg`` says, writing into ``out``.

    ``out/config.yaml`` (resolved config), ``out/history.csv`` and ``out/tb/`` (TensorBoard)
    per epoch, ``out/checkpoints/last.pt`` every epoch and ``final.pt`` at the end.  Under
    ``torchrun`` (``WORLD_SIZE > 1``) every process trains on its share of the data and the
    gradients are averaged across processes after each backward pass (gloo on CPU, NCCL on
    CUDA); rank 0 validates, logs and writes checkpoints.
    """

    def __init__(self, cfg: Config, out, resume: bool = False, overwrite: bool = False):
        self.out = Path(out)
        self.world, self.rank = dist.world()
        if self.rank == 0:
            prepare_out_dir(self.out, resume, overwrite)
        self.ck = None
        if resume:
            self.ck = load_checkpoint(self.out / "checkpoints" / "last.pt")
            saved = config_from_dict(self.ck["config"])
            diff = [
                k
                for k, v in flatten(cfg.to_dict()).items()
                if flatten(saved.to_dict()).get(k) != v
                and k not in ("optim.epochs", "train.progress", "data.num_workers", "train.device")
            ]
            if diff:
                raise ValueError(
                    f"--resume with a different config ({', '.join(diff)}); "
                    f"the run in {self.out} was made with {self.out / 'config.yaml'}"
                )
            saved.optim.epochs, saved.train.progress = cfg.optim.epochs, cfg.train.progress
            saved.data.num_workers, saved.train.device = cfg.data.num_workers, cfg.train.device
            cfg = saved
        cfg.data.num_workers = resolve_workers(cfg.data.num_workers)  # saved resolved: config.yaml says what ran
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        if self.world > 1:
            self.device = dist.init(self.device)
        seed_everything(cfg.train.seed)
        self.task = make_task(cfg)
        self.model = build_reconstructor(cfg, self.task.meta).to(self.device)
        if self.world > 1:
            dist.broadcast_module(self.model)
        self.opt, self.sched = build_optimizer(cfg.optim, self.model)
        self.loss_fn = (
            DataLoss(cfg.loss.name, cfg.loss.weights or None)
            if cfg.loss.name != "weighted"
            else DataLoss(weights=cfg.loss.weights)
        )
        self.penalty = build_penalty_step(
            cfg, self.model, reduce=self._all_mean, log=tqdm.write if self.rank == 0 else None
        )
        self.jac = self.penalty.jac
        # the reference σ on fixed probes and the estimate/reference ratio; the fixed
        # training subset of the per-epoch GE
        t = cfg.train
        self.monitor = ReferenceMonitor(t.ref_slices, t.ref_tol, t.ref_max_iter, t.seed, chunk=self.task.batch_size)
        self.steps_left = None  # steps left in the epoch (the monitor copies the weights of the last ones)
        self.ge_subset = None
        prec = str(cfg.train.precision)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec)
        self.scaler = torch.amp.GradScaler("cuda") if prec == "fp16" and self.device.type == "cuda" else None
        self.epoch, self.step, self.history = 0, 0, []
        self.resume_batch, self.partial = 0, None
        if self.ck is not None:
            self._restore(self.ck)
        if self.rank == 0:
            save_config(self.cfg, self.out / "config.yaml")

    # --- state -----------------------------------------------------------------------------
    def _payload(self, final=False, train_l2=None) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "model_meta": dict(self.task.meta, task=self.cfg.task),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched else {},
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
            **self.penalty.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "history": self.history,
            "final": final,
            "train_loss_eval": float("nan") if train_l2 is None else float(train_l2),
        }

    def _restore(self, ck):
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        if self.sched and ck["scheduler"]:
            self.sched.load_state_dict(ck["scheduler"])
        if self.scaler and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.penalty.load_state_dict(ck, self.device)
        self.epoch, self.step, self.history = ck["epoch"], ck["step"], list(ck["history"])
        self.resume_batch = int(ck.get("batch_in_epoch", 0))
        self.partial = ck.get("partial")
        self.resume_rng = ck["rng"]
        set_rng_state(ck["rng"])

    @property
    def warm(self):
        """The per-sample warm-start store (``None`` without one)."""
        return self.penalty.warm

    @property
    def pool(self):
        """The tracked pool (``reg.pool``), or ``None``."""
        return self.penalty.pool

    @property
    def held(self):
        """Hold mode: the last penalised step's penalty gradient."""
        return self.penalty.held

    # --- steps ------------------------------------------------------------------------------
    def _all_mean(self, t: torch.Tensor) -> torch.Tensor:
        return dist.all_mean(t, self.world)

    def train_step(self, y, A, target, info) -> dict:
        """One optimizer step on a batch: data loss + regularizer (:class:`PenaltyStep`)."""
        self.model.train()
        ps = self.penalty
        # mixed precision: network passes (tangents included) under autocast, losses in float32
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            out, pen, stats, seen = ps.penalty(self.model, y, A, info, self.step, self.task)
        out, pen = out.float(), pen.float()
        loss = self.loss_fn(out, target, info.get("max"))
        pen = ps.calibrate(loss, stats, pen)
        wpen = ps.weight_penalty(self.model)
        self._check_finite(loss, pen, wpen)
        self.opt.zero_grad(set_to_none=True)
        ps.backward(self.model, loss, pen, wpen, stats, self.scaler)
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        ps.after_backward(info, stats)  # method=fd: the vectors came with that backward
        self.monitor.record(*seen, stats, model=self.model, steps_left=self.steps_left)
        dist.average_gradients(self.model, self.world)
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.step += 1
        return {
            "loss": loss.item(),
            "penalty": float(pen.detach()) + float(wpen.detach()),
            "sigma_ja": float(stats["sigma_ja"].mean()) if "sigma_ja" in stats else math.nan,
            "sigma_j": float(stats["sigma_j"].mean()) if "sigma_j" in stats else math.nan,
            "first_visit": float(stats["first_visit"]) if "first_visit" in stats else math.nan,
        }

    def _check_finite(self, loss, pen, wpen):
        total = loss + pen + wpen
        if torch.isfinite(total):
            return
        last = self.out / "checkpoints" / "last.pt"
        keep = (
            f"last good checkpoint: {last} (epoch {self.epoch})" if last.exists() else "no checkpoint was written yet"
        )
        raise NonFiniteError(
            f"step {self.step} (epoch {self.epoch + 1}): the training loss "
            f"is {total.item()} (data loss {loss.item():.4g}, penalty "
            f"{float(pen):.4g}, weight penalty {float(wpen):.4g}); stopped, "
            f"{keep}"
        )

    def _loader(self, epoch):
        g = torch.Generator().manual_seed(self.cfg.train.seed * 1009 + epoch)
        ds = self.task.datasets["train"]
        if hasattr(ds, "set_epoch"):  # per-sample randomness from (seed, epoch, index): any worker count
            ds.set_epoch(epoch)
        sampler = None
        if self.world > 1:
            sampler = torch.utils.data.distributed.DistributedSampler(
                self.task.datasets["train"], self.world, self.rank, shuffle=True, seed=self.cfg.train.seed
            )
            sampler.set_epoch(epoch)
        return self.task.loader("train", shuffle=True, generator=g, sampler=sampler)

    def validate(self) -> dict:
        c = self.cfg.train
        rec = reconstruct(self.model, self.task, self.task.loader("val", False), self.device, loss_fn=self.loss_fn)
        s = score(rec, self.task)
        if self.ge_subset is None:  # the same training samples (and masks) every epoch
            n = c.ge_batches * self.task.batch_size
            self.ge_subset = fixed_raw(
                self.task, "train", seeded_indices(self.task, "train", n, c.seed + 2), c.seed + 2
            )
        tr = reconstruct(self.model, self.task, self.ge_subset, self.device)
        ge = generalization_gap(rec["l2_values"], tr["l2_values"], seed=c.seed)
        rge = generalization_gap(rec["rel_values"], tr["rel_values"], seed=c.seed)
        if not getattr(self.task, "ge_comparable", True):  # e.g. whole SR images vs training patches
            ge = {"ge": math.nan, "ci95": (math.nan, math.nan)}
        out = {
            "val_loss": rec["loss"],
            "val_l2": rec["l2"],
            "train_l2": tr["l2"],
            "ge": ge["ge"],
            "ge_lo": ge["ci95"][0],
            "ge_hi": ge["ci95"][1],
            "rel_ge": rge["ge"],
            "rel_ge_lo": rge["ci95"][0],
            "rel_ge_hi": rge["ci95"][1],
        }
        for m, v in s["aggregate"].items():
            out[m] = v["mean"]
        if "zero_filled" in s:
            for m, v in s["zero_filled"]["aggregate"].items():
                out[f"zf_{m}"] = v["mean"]
        out.update(self.monitor.rows(self.model, self.task, self.device))
        return out

    def fit(self) -> dict:
        """Train to ``optim.epochs``; returns the last history row.

        SIGTERM/SIGINT finish the current step, write ``last.pt`` (mid-epoch: ``--resume``
        skips the batches already done and restores the RNG, so the run ends as if never
        stopped) and raise :class:`Interrupted`.  CUDA out-of-memory skips the batch with a
        warning; three in a row write a checkpoint and stop.
        """
        stop = _StopSignals()
        log = HistoryLog(self.out, self.cfg.train.progress, self.epoch) if self.rank == 0 else None
        if log is not None and self.ck is not None:
            log.rewrite(self.history)  # epochs logged after the checkpoint are done again
        try:
            while self.epoch < self.cfg.optim.epochs:
                t0 = time.time()
                stats = self._train_epoch(stop)
                if self.sched:
                    self.sched.step()
                self.epoch += 1
                row = {"epoch": self.epoch, "step": self.step, "lr": self.opt.param_groups[0]["lr"], **stats.row()}
                if self.jac:
                    row["lambda_ja"], row["lambda_j"] = _num(self.jac.lambda_ja), _num(self.jac.lambda_j)
                if self.rank == 0:
                    row.update(self.validate())
                    row["epoch_time"] = time.time() - t0
                    self.history.append(row)
                    log.write(row)
                    save_checkpoint(self.out / "checkpoints" / "last.pt", self._payload())
                if self.world > 1:
                    torch.distributed.barrier()
            self._finish()
        finally:
            if log is not None:
                log.close()
            stop.restore()
        return self.history[-1] if self.history else {}

    def _train_epoch(self, stop) -> EpochStats:
        """One pass over the training loader (resumed mid-epoch: the same batches are skipped
        and the saved RNG restored); returns the epoch's running sums."""
        seed_everything(self.cfg.train.seed * 100_003 + self.epoch)
        skip, self.resume_batch = self.resume_batch, 0
        sums = EpochStats.from_dict(self.partial if skip else None)
        oom = 0
        bar = progress(
            self._loader(self.epoch),
            desc=f"epoch {self.epoch + 1}/{self.cfg.optim.epochs}",
            disable=not (self.cfg.train.progress and self.rank == 0),
            leave=False,
        )
        t_mark = time.perf_counter()
        n_batches = getattr(bar, "total", None)
        for bi, batch in enumerate(bar):
            self.steps_left = None if n_batches is None else n_batches - bi - 1
            if bi < skip:
                if bi == skip - 1:
                    set_rng_state(self.resume_rng)
                t_mark = time.perf_counter()
                continue
            t_got = time.perf_counter()
            sums.wait += t_got - t_mark
            y, A, target, info = self.task.unpack(batch, self.device)
            c0 = self.monitor.copy_time
            try:
                r, oom = self.train_step(y, A, target, info), 0
            except torch.cuda.OutOfMemoryError:
                oom, r = oom + 1, None
                self.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                tqdm.write(f"warning: CUDA out of memory at step {self.step}; batch skipped")
                if oom >= 3:
                    stop.sig = "oom"
            t_mark = time.perf_counter()
            sums.busy += t_mark - t_got - (self.monitor.copy_time - c0)  # the monitor's copies: its ref_time
            if r is not None:
                sums.add(r)
                bar.set_postfix(postfix(r))
            if stop.sig is not None:
                self._interrupt(bi + 1, sums, stop.sig)
        return sums

    def _finish(self) -> None:
        """After the replicas' check every rank of a distributed run leaves the process group;
        then rank 0 writes the final checkpoint with the per-sample training losses (for GE
        intervals)."""
        ddp = dist.check_replicas(self.model, self.world)
        # the last collective: leave now, so no rank waits in a barrier (gloo's 30-min timeout)
        # while rank 0 reconstructs a large training set below, which needs no process group
        dist.leave(self.world)
        if self.rank != 0:
            return
        tr = reconstruct(self.model, self.task, self._loader(20_000), self.device)
        payload = self._payload(final=True, train_l2=tr["l2"])
        payload.update(train_l2_values=tr["l2_values"], train_rel_values=tr["rel_values"], ddp=ddp)
        save_checkpoint(self.out / "checkpoints" / "final.pt", payload)
        save_checkpoint(self.out / "checkpoints" / "last.pt", payload)

    def _interrupt(self, batch_in_epoch, sums: EpochStats, sig):
        """Write a mid-epoch checkpoint and raise :class:`Interrupted`."""
        path = self.out / "checkpoints" / "last.pt"
        if self.rank == 0:
            payload = self._payload()
            payload["batch_in_epoch"] = batch_in_epoch
            payload["partial"] = sums.to_dict()
            save_checkpoint(path, payload)
        why = "three CUDA out-of-memory errors in a row" if sig == "oom" else f"signal {sig}"
        raise Interrupted(
            f"stopped by {why} at step {self.step} (epoch {self.epoch + 1}, "
            f"batch {batch_in_epoch}); checkpoint {path}; continue with --resume",
            None if sig == "oom" else sig,
        )


class _StopSignals:
    """SIGTERM/SIGINT set ``sig`` instead of killing the process (main thread only)."""

    def __init__(self):
        import signal
        import threading

        self.sig, self.old = None, {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self.old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.sig = signum

    def restore(self) -> None:
        import signal

        for s, h in self.old.items():
            signal.signal(s, h)


def _num(v):
    return v if isinstance(v, (int, float)) else math.nan


def train(cfg: Config, out, resume: bool = False, overwrite: bool = False) -> dict:
    """Python entry point: train as ``cfg`` says into ``out``; returns the last history row."""
    return Trainer(cfg, out, resume, overwrite).fit()
