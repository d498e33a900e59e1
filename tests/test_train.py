"""Training: config, regularizers, checkpoints, resume, NaN stop, tasks, DDP (2 CPU processes)."""

import math
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from mrijac.checkpoint import load_checkpoint, load_model, save_checkpoint
from mrijac.config import load_config, save_config, valid_keys
from mrijac.data import write_synthetic_dataset
from mrijac.train.trainer import NonFiniteError, Trainer, train

BASE = [
    "model.chans=4",
    "model.num_pool_layers=2",
    "data.batch_size=2",
    "optim.epochs=2",
    "data.num_workers=0",
    "train.progress=false",
    "train.ref_slices=2",
    "train.ref_max_iter=8",
    "train.ge_batches=1",
]


@pytest.fixture(scope="module")
def data(synthetic_knee):
    return synthetic_knee


def cfg_for(data, *over):
    return load_config(None, [f"data.root={data}", *BASE, *over])


def test_config_power_settings_auto_resolve_after_the_method(tmp_path):
    """``reg.n_iter`` / ``reg.lanczos_jvp`` ``auto`` (the defaults) resolve after
    ``reg.method``: ``fd`` → two Lanczos steps with finite-difference JVPs (``n_iter=3``,
    ``lanczos_jvp=fd``), three at ``data.batch_size=1`` (its default), ``forward`` (bf16,
    Frobenius, BatchNorm, dropout, asked) → one power iteration; explicit values are kept, a
    saved config holds the resolved ones, bad values name the key."""
    r = load_config(None, ["reg.name=sja+sj"]).reg
    assert (r.method, r.n_iter, r.lanczos_jvp) == ("fd", 4, "fd")
    for b in (2, 4):
        r = load_config(None, ["reg.name=sja+sj", f"data.batch_size={b}"]).reg
        assert (r.method, r.n_iter, r.lanczos_jvp) == ("fd", 3, "fd")
    for extra in (
        ["train.precision=bf16"],
        ["reg.method=forward"],
        ["model.name=dncnn", "model.batchnorm=true"],
        ["model.drop_prob=0.1"],  # a sample and its fd copy would get different dropout masks
    ):
        r = load_config(None, ["reg.name=sja+sj", *extra]).reg
        assert (r.method, r.n_iter, r.lanczos_jvp) == ("forward", 1, "forward"), extra
    assert load_config(None, ["reg.name=fja+fj"]).reg.n_iter == 1
    r = load_config(None, ["reg.name=sja+sj", "reg.n_iter=1", "reg.lanczos_jvp=forward"]).reg
    assert (r.n_iter, r.lanczos_jvp) == (1, "forward")
    assert load_config(None, ["reg.name=sja+sj", "reg.n_iter=5"]).reg.lanczos_jvp == "fd"
    cfg = load_config(None, ["reg.name=sja+sj"])
    save_config(cfg, tmp_path / "saved.yaml")
    saved = yaml.safe_load((tmp_path / "saved.yaml").read_text())["reg"]
    assert (saved["n_iter"], saved["lanczos_jvp"]) == (4, "fd")  # batch 1
    for bad in ("0", "1.5", "x", "true"):
        with pytest.raises(ValueError, match="config key reg.n_iter must be an integer >= 1 or 'auto'"):
            load_config(None, ["reg.name=sja+sj", f"reg.n_iter={bad}"])


def test_config_yaml_overrides_and_errors(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"task": "mri", "reg": {"name": "sja", "lambda_ja": 0.01}, "optim": {"lr": 3e-4}}))
    cfg = load_config(p, ["reg.n_iter=2", "data.accelerations=[4,8]", "data.center_fractions=[0.08,0.04]"])
    assert cfg.reg.name == "sja" and cfg.reg.lambda_ja == 0.01 and cfg.reg.n_iter == 2
    assert cfg.optim.lr == 3e-4 and cfg.data.accelerations == [4, 8]
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml").to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match=r"unknown config key 'reg.lamda_ja'; valid keys: reg.name"):
        load_config(None, ["reg.lamda_ja=1"])
    p.write_text("optim:\n  speed: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown config key 'optim.speed'"):
        load_config(p)
    for bad, msg in [
        ("reg.lambda_ja=-0.1", "reg.lambda_ja must be a number >= 0"),
        ("data.accelerations=[0.5]", "acceleration must be >= 1"),
        ("optim.epochs=two", "optim.epochs must be an integer"),
        ("reg.name=magic", "reg.name must be one of"),
        ("model.normalize=3", "must be true or false"),
        ("data.batch_size=0", "data.batch_size must be > 0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_config(None, [bad])
    assert "reg.lambda_j" in valid_keys()


@pytest.mark.parametrize("reg", ["none", "sja+sj", "fja+fj", "wd", "sw"])
def test_train_each_regularizer(data, tmp_path, reg):
    out = tmp_path / "run"
    row = train(cfg_for(data, f"reg.name={reg}", "optim.epochs=1"), out)
    assert (out / "config.yaml").exists() and (out / "history.csv").exists()
    assert (out / "checkpoints" / "final.pt").exists() and list((out / "tb").iterdir())
    assert all(
        k in row for k in ("train_loss", "val_loss", "ge", "ssim", "psnr", "val_sigma_ja_mean", "val_sigma_j_mean")
    )
    # the lower bound along the measurement is logged beside the reference, and is below it
    assert 0 < row["val_floor_ja_mean"] <= row["val_sigma_ja_mean"] * (1 + 1e-6)
    assert 0 < row["train_ref_floor_j_mean"] <= row["train_ref_sigma_j_mean"] * (1 + 1e-6)
    assert "val_floor_ja_mean" in (out / "history.csv").read_text().splitlines()[0]
    ck = load_checkpoint(out / "checkpoints" / "final.pt")
    assert ck["final"] and ck["train_loss_eval"] > 0
    if reg in ("sja+sj", "fja+fj"):
        assert isinstance(ck["jac"]["lambda_ja"], float)  # auto λ was calibrated and saved
        assert row["train_penalty"] > 0


@pytest.mark.parametrize(
    "extra",
    [
        ["reg.method=forward"],
        ["reg.method=fd", "reg.every=3", "reg.every_mode=hold"],
        ["reg.method=fd", "reg.pool=2", "reg.pool_refresh=2"],
    ],
)
def test_resume_gives_the_same_weights(data, tmp_path, extra):
    over = ["reg.name=sja+sj", "reg.warm_start=sample", "optim.schedule=step", "optim.step_size=1", *extra]
    train(cfg_for(data, *over), tmp_path / "full")
    train(cfg_for(data, *over, "optim.epochs=1"), tmp_path / "part")
    t = Trainer(cfg_for(data, *over), tmp_path / "part", resume=True)
    # state came back, warm-start vectors (or the tracked pool) included
    assert t.epoch == 1 and (t.warm or t.pool.entries)
    t.fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="--resume with a different config"):
        Trainer(cfg_for(data, *over, "optim.lr=0.1"), tmp_path / "part", resume=True)


def test_every_k_hold_reapplies_the_penalty_gradient(data, tmp_path):
    """reg.every_mode=hold: between penalised steps the gradient is the data gradient plus the
    held penalty gradient of the last penalised step (not scaled by k)."""
    t = Trainer(
        cfg_for(
            data,
            "reg.name=sja+sj",
            "reg.every=2",
            "reg.every_mode=hold",
            "reg.lambda_ja=0.1",
            "reg.lambda_j=0.1",
            "reg.alternate=false",
        ),
        tmp_path / "r",
    )
    assert t.jac.factor == 1
    it = iter(t._loader(0))
    y, A, target, info = t.task.unpack(next(it), t.device)
    t.train_step(y, A, target, info)  # step 0: penalised
    held = [g.clone() for g in t.held]
    assert sum(float(g.norm()) for g in held) > 0
    y, A, target, info = t.task.unpack(next(it), t.device)
    seen = {}
    real_step = t.opt.step

    def spy():
        seen["grad"] = [p.grad.clone() for p in t.model.parameters()]
        real_step()

    t.opt.step = spy
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train_step(y, A, target, info)  # step 1: not penalised, held gradient added
    t.model.load_state_dict(before)
    t.model.zero_grad()
    t.loss_fn(t.model(y, A), target, info.get("max")).backward()
    for p, g, h in zip(t.model.parameters(), seen["grad"], held):
        assert torch.allclose(g, p.grad + h, atol=1e-6)


def test_refuses_existing_run_and_nothing_to_resume(data, tmp_path):
    train(cfg_for(data, "optim.epochs=1"), tmp_path / "r")
    with pytest.raises(FileExistsError, match="already holds files"):
        train(cfg_for(data), tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="nothing to resume .* start it again with --overwrite"):
        Trainer(cfg_for(data), tmp_path / "empty", resume=True)
    # a run killed before its first checkpoint: the advice is --overwrite, not --resume
    (tmp_path / "early").mkdir()
    save_config(cfg_for(data), tmp_path / "early" / "config.yaml")
    with pytest.raises(FileExistsError, match="use --overwrite to replace it \\(it has no checkpoint to resume\\)"):
        train(cfg_for(data), tmp_path / "early")


def test_resume_after_a_kill_cleans_up_and_logs_each_epoch_once(data, tmp_path, capsys):
    """A kill between logging an epoch and checkpointing it, and a kill during a checkpoint
    write: the resumed run lists each epoch once and leaves no temporary file."""
    import csv

    from mrijac.cli import main

    run = tmp_path / "r"
    train(cfg_for(data, "optim.epochs=1"), run)
    hist = run / "history.csv"
    rows = list(csv.DictReader(hist.open()))
    with hist.open("a", newline="") as fh:  # epoch 2 logged, then killed before its checkpoint
        w = csv.DictWriter(fh, fieldnames=rows[0].keys())
        w.writerow({**rows[0], "epoch": "2"})
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    stale = run / "checkpoints" / f".last.pt.tmp{dead}"
    stale.write_bytes(b"half a checkpoint")
    # --resume without --config reads the run's own config.yaml
    assert main(["train", "--out", str(run), "--resume", "optim.epochs=2"]) == 0
    assert [r["epoch"] for r in csv.DictReader(hist.open())] == ["1", "2"]
    assert not stale.exists()


def test_nan_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    t = Trainer(cfg_for(data, "optim.epochs=3"), tmp_path / "r")
    real = t.loss_fn

    def loss(out, target, mx=None):
        val = real(out, target, mx)
        return val * float("nan") if t.step >= 5 else val

    monkeypatch.setattr(t, "loss_fn", loss)
    with pytest.raises(NonFiniteError, match=r"the training loss is nan.*last good checkpoint: .*last.pt \(epoch 1\)"):
        t.fit()
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_checkpoint_errors(data, tmp_path):
    train(cfg_for(data, "optim.epochs=1"), tmp_path / "r")
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "final.pt")
    ck["config"]["model"]["chans"] = 8  # another model's weights
    with pytest.raises(ValueError, match="do not fit model 'unet'"):
        load_model(ck)
    old = {k: v for k, v in ck.items() if k not in ("format", "version")}
    save_checkpoint(tmp_path / "old.pt", old)
    raw = torch.load(tmp_path / "old.pt", weights_only=True)
    raw["version"] = 0
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="format version 0; this mrijac reads version 1"):
        load_checkpoint(tmp_path / "old.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not an mrijac checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_dncnn_and_double_vjp_method(data, tmp_path):
    train(
        cfg_for(
            data,
            "model.name=dncnn",
            "model.depth=3",
            "model.features=8",
            "reg.name=sja",
            "reg.method=double_vjp",
            "optim.epochs=1",
        ),
        tmp_path / "d",
    )


def test_cs_and_sr_tasks(shared_data, tmp_path):
    cs = load_config(
        None,
        [
            "task=cs",
            f"data.mnist_dir={shared_data / 'mnist'}",
            "data.q=40",
            "data.n_train=32",
            "data.n_val=16",
            "data.batch_size=16",
            "model.name=fcnet",
            "reg.name=sja+sj",
            "optim.epochs=2",
            "train.progress=false",
            "data.eps=0.1",
        ],
    )
    row = train(cs, tmp_path / "cs")
    assert row["psnr"] > 0 and "val_sigma_ja_mean" in row
    sr = load_config(
        None,
        [
            "task=sr",
            f"data.train_dir={shared_data / 'sr/Set5'}",
            f"data.val_dir={shared_data / 'sr/Set5'}",
            "data.patch=24",
            "data.patches_per_image=2",
            "data.batch_size=5",
            "model.name=edsr",
            "model.n_resblocks=1",
            "model.features=8",
            "reg.name=sja",
            "optim.epochs=1",
            "train.progress=false",
            "train.ref_max_iter=8",
            "train.ref_slices=2",
        ],
    )
    row = train(sr, tmp_path / "sr")
    assert row["psnr"] > 0 and row["val_sigma_ja_mean"] > 0
    # whole validation images vs training patches: ‖f(y) − x‖₂ is on another scale, no GE
    assert math.isnan(row["ge"]) and math.isfinite(row["rel_ge"])
    sr.data.val_patches = 2  # fixed validation patches: GE compares like with like
    sr.data.eps = 3 / 255
    row = train(sr, tmp_path / "sr_patches")
    assert math.isfinite(row["ge"]) and row["ge_lo"] <= row["ge"] <= row["ge_hi"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_with_penalty(data, tmp_path):
    cfg = cfg_for(data, "reg.name=sja+sj", "optim.epochs=1")
    save_config(cfg, tmp_path / "c.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "mrijac.cli",
        "train",
        "--config",
        str(tmp_path / "c.yaml"),
        "--out",
        str(tmp_path / "ddp"),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    ck = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "final.pt")
    assert ck["ddp"] == {"world_size": 2, "max_param_diff": 0.0}
    assert ck["history"][-1]["train_penalty"] > 0


def test_leaving_the_process_group_at_the_end_of_a_run(tmp_path):
    """``dist.leave``: a no-op in one process; in a group it passes a barrier and leaves it, so
    no rank exits with the group's threads running (a finished DDP run once aborted that way)."""
    from mrijac.train import distributed as dist

    dist.leave(1)  # nothing joined, nothing to do
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        dist.leave(1)  # world 1: the group is not touched
        assert torch.distributed.is_initialized()
        dist.leave(2)
        assert not torch.distributed.is_initialized()
    finally:  # a failure leaves no group behind for the tests after this one
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_penalty_on_part_of_the_batch_with_priorities(data, tmp_path):
    t = Trainer(
        cfg_for(data, "reg.name=sja+sj", "reg.samples=1", "reg.rank=stored", "data.batch_size=4"), tmp_path / "r"
    )
    row = t.fit()
    assert row["train_penalty"] > 0 and 0 <= row["data_wait_frac"] < 1
    sig = [v["sigma"] for k, v in t.warm.items()]
    # one sample per step, unseen samples first: every step adds a new slice
    assert len(sig) == t.step == 4 and all(float(s) > 0 for s in sig)


def test_history_counts_first_visits_of_the_fd_penalty(data, tmp_path):
    # batch 1: every sample is penalised at every visit, so epoch 1 is all first visits and
    # epoch 2 none; batch 4 (one penalised sample per step, unseen first): each first visit adds
    # one sample to the store and no other step does
    t = Trainer(cfg_for(data, "reg.name=sja+sj", "data.batch_size=1", "train.ref_slices=0"), tmp_path / "b1")
    t.fit()
    assert [h["first_visit_frac"] for h in t.history] == [1.0, 0.0]
    t = Trainer(
        cfg_for(
            data, "reg.name=sja+sj", "reg.rank=stored", "data.batch_size=4", "optim.epochs=6", "train.ref_slices=0"
        ),
        tmp_path / "b4",
    )
    t.fit()
    fracs = [h["first_visit_frac"] for h in t.history]
    assert sum(round(f * 2) for f in fracs) == len(t.warm) == 8  # 2 steps per epoch, 8 slices
    assert fracs[0] == 1.0 and fracs[-1] == 0.0
    plain = Trainer(cfg_for(data, "train.ref_slices=0", "optim.epochs=1"), tmp_path / "plain")
    assert math.isnan(plain.fit()["first_visit_frac"])


def test_first_visits_all_visits_every_slice_in_the_first_epoch(data, tmp_path):
    """reg.first_visits=all at batch 4 (8 slices, one penalised sample per step): epoch 1
    penalises every slice (each has a vector afterwards), then one warm sample per step."""
    t = Trainer(
        cfg_for(data, "reg.name=sja+sj", "data.batch_size=4", "reg.first_visits=all", "train.ref_slices=0"),
        tmp_path / "all",
    )
    assert t.penalty.jac.first_visits == "all"
    t.fit()
    assert len(t.warm) == 8
    assert [h["first_visit_frac"] for h in t.history] == [1.0, 0.0]
    with pytest.raises(ValueError, match="reg.first_visits"):
        load_config(None, ["reg.first_visits=some"])
    # without per-sample stored vectors (or with the pool, or forward mode) it could not tell first visits
    for bad in (["reg.warm_start=batch"], ["reg.samples=0"], ["reg.pool=1"], ["reg.method=forward"]):
        with pytest.raises(
            ValueError, match=f"reg.first_visits=all needs reg.method=fd, reg.warm_start=sample.*got {bad[0]}"
        ):
            load_config(None, ["reg.name=sja+sj", "reg.first_visits=all", *bad])


def test_rank_probe_trains_and_picks_by_fresh_bounds(data, tmp_path):
    """reg.rank=probe at batch 4 (8 slices, one penalised sample per step): the penalty is built
    with it, each epoch's steps penalise one slice each (the probes pick among all four, so over
    two epochs of two steps up to four slices get vectors), and the options it cannot work with
    are refused by name."""
    t = Trainer(
        cfg_for(
            data, "reg.name=sja+sj", "data.batch_size=4", "reg.rank=probe", "reg.fd_kinks=freeze", "train.ref_slices=0"
        ),
        tmp_path / "probe",
    )
    assert t.penalty.jac.rank == "probe"
    t.fit()
    assert 2 <= len(t.warm) <= 4  # 4 penalised steps, the first ranked by priority (nothing stored yet)
    assert all(math.isfinite(h["train_sigma_ja"]) for h in t.history)
    with pytest.raises(ValueError, match="reg.rank"):
        load_config(None, ["reg.rank=fresh"])
    _assert_rank_refusals("probe", ["reg.warm_start=batch"])


# (overrides, the key=value the error names): what the fresh rankings cannot work with
RANK_REFUSALS = (
    (["reg.samples=0"], "reg.samples=0"),
    (["reg.pool=1"], "reg.pool=1"),
    (["reg.method=forward"], "reg.method=forward"),
    (["reg.first_visits=all"], "reg.first_visits=all"),
    (["reg.fd_recompute=true"], "reg.fd_recompute=True"),
)


def _assert_rank_refusals(rank: str, more: list) -> None:
    """Every combination of ``RANK_REFUSALS`` (and ``more``, each naming itself) is refused by a
    config error for ``reg.rank=<rank>`` that names the offending key and value."""
    for bad, named in RANK_REFUSALS + tuple(([m], m) for m in more):
        with pytest.raises(ValueError, match=f"reg.rank={rank} needs .*got {named}"):
            load_config(None, ["reg.name=sja+sj", f"reg.rank={rank}", *bad])


def test_rank_lanczos_trains_stores_every_row_and_monitors_the_penalised_one(data, tmp_path):
    """reg.rank=lanczos at batch 4 (8 slices): every row gets Lanczos steps, so after the first
    epoch every slice has a stored vector and σ, though one copy per step is penalised; the
    estimate/reference monitor follows the penalised row (``argmax_ja``); a batch-shaped store
    works too (all rows, no index); the options it cannot work with are refused by name."""
    t = Trainer(
        cfg_for(data, "reg.name=sja+sj", "data.batch_size=4", "reg.rank=lanczos", "reg.fd_kinks=freeze"),
        tmp_path / "lanczos",
    )
    assert t.penalty.jac.rank == "lanczos"
    row = t.fit()
    assert len(t.warm) == 8 and all(float(e["sigma"]) > 0 for _, e in t.warm.items())
    assert all(math.isfinite(h["train_sigma_ja"]) for h in t.history)
    assert 0.5 < row["est_ratio_ja"] < 1.05  # the penalised row's estimate against its converged σ
    tb = Trainer(
        cfg_for(data, "reg.name=sja", "data.batch_size=4", "reg.rank=lanczos", "reg.warm_start=batch"),
        tmp_path / "batch",
    )
    tb.fit()
    assert tb.warm.mode == "batch" and tb.warm.data["batch"]["v_ja"].shape[0] == 4
    _assert_rank_refusals("lanczos", [])


@pytest.mark.parametrize(
    "extra",
    [
        ["reg.tie_terms=false", "reg.samples=0"],
        ["reg.samples=1", "reg.fd_recompute=true"],
        ["reg.n_iter=3", "reg.lanczos_jvp=fd", "reg.rank=stored"],
        [],  # the default: Lanczos steps on every sample, each one's vector stored
    ],
)
def test_fd_method_trains_and_carries_right_singular_vectors(data, tmp_path, extra):
    """reg.method=fd with alternating terms: penalised, every sample's vectors stored after
    the backward pass (unit norm, in the spaces of J A and J), σ recorded for priorities.
    Tied terms (single coil, the default): only the J A vectors exist, σ(J) is σ(J A)."""
    t = Trainer(
        cfg_for(data, "reg.name=sja+sj", "reg.method=fd", "reg.alternate=true", "data.batch_size=4", *extra),
        tmp_path / "r",
    )
    row = t.fit()
    assert row["train_penalty"] > 0 and math.isfinite(row["train_sigma_ja"])
    assert math.isfinite(row["train_sigma_j"])  # both terms got their turn
    entries = [v for k, v in t.warm.items()]
    # full batch: every slice penalised; one sample per step: unseen slices first
    tied = "reg.tie_terms=false" not in extra
    every_row = not tied or t.penalty.jac.rank == "lanczos"
    assert len(entries) == (8 if every_row else min(8, t.step))
    for e in entries:
        for name in [n for n in e if n.startswith("v_")]:
            assert abs(float(torch.linalg.vector_norm(e[name])) - 1) < 1e-5
        assert float(e["sigma"]) > 0
    assert all(e["v_ja"].shape == (32, 32) for e in entries if "v_ja" in e)  # image space
    assert all(e["v_j"].shape[-1] == 32 for e in entries if "v_j" in e)  # k-space (f's input)
    assert any("v_ja" in e for e in entries) and any("v_j" in e for e in entries) != tied
    for bad, msg in [
        (["reg.name=fja+fj"], "spectral penalties"),
        (["train.precision=bf16"], "needs train.precision=32"),
        (["reg.fd_step=1.5"], "reg.fd_step"),
        (["reg.lanczos_jvp=exact"], "reg.lanczos_jvp must be one of"),
    ]:
        with pytest.raises(ValueError, match=msg):
            cfg_for(data, "reg.name=sja+sj", "reg.method=fd", *bad)
    with pytest.raises(ValueError, match="lanczos_jvp=fd is for reg.method=fd, but this run uses reg.method=forward"):
        cfg_for(data, "reg.name=sja+sj", "reg.method=forward", "reg.lanczos_jvp=fd")


@pytest.mark.parametrize("tie", ["true", "false"])
def test_pool_estimate_tracks_the_reference_sigma(data, tmp_path, tie):
    """reg.pool: the tracked samples' vectors advance every step, so the estimate the penalty
    uses agrees with the converged (Lanczos) σ of the same sample and weights."""
    from mrijac.jacobian import reference_sigma

    t = Trainer(
        cfg_for(
            data,
            "reg.name=sja+sj",
            "reg.method=fd",
            "reg.pool=1",
            "reg.pool_refresh=3",
            "reg.lambda_ja=0.1",
            "reg.lambda_j=0.1",
            "optim.epochs=4",
            "optim.lr=0.0003",
            "reg.alternate=false",
            f"reg.tie_terms={tie}",
        ),
        tmp_path / "r",
    )
    row = t.fit()
    assert len(t.pool.entries) == 1 and t.warm is None
    e = t.pool.entries[0]
    y, A = t.pool.sample(t.task, e.index, t.device)
    t.model.eval()
    f = t.model.as_function(A)
    ref = max(float(reference_sigma(f, y, op, tol=1e-6, max_iter=200).sigma[0]) for op in (A, None))
    # the tracked vectors, one fused step on the final weights (the entry's σ is from before the
    # last optimizer step): the estimate the penalty would use now
    _, _, stats = t.jac(t.model, y, A, v0=dict(e.vectors))
    est = max(float(s.max()) for s in stats.sigma.values())
    assert abs(est - ref) / ref < 0.05, (est, e.sigma, ref)
    for k in ("est_ratio_ja", "est_ratio_j"):
        assert 0.9 < row[k] < 1.1, row
    for name, v in e.vectors.items():
        assert abs(float(torch.linalg.vector_norm(v)) - 1) < 1e-5
    with pytest.raises(ValueError, match="reg.pool"):
        cfg_for(data, "reg.name=sja+sj", "reg.method=forward", "reg.pool=1")


def test_sigterm_mid_epoch_checkpoint_and_exact_resume(data, tmp_path, monkeypatch):
    import signal

    from mrijac.train.trainer import Interrupted

    over = ["reg.name=sja+sj", "data.batch_size=1"]  # 8 steps per epoch
    train(cfg_for(data, *over), tmp_path / "full")
    t = Trainer(cfg_for(data, *over), tmp_path / "cut")
    real = t.train_step

    def step(*a):
        r = real(*a)
        if t.step == 11:  # in the second epoch
            os.kill(os.getpid(), signal.SIGTERM)
        return r

    monkeypatch.setattr(t, "train_step", step)
    with pytest.raises(Interrupted, match="signal 15 at step 11 .*continue with --resume"):
        t.fit()
    ck = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert ck["epoch"] == 1 and ck["batch_in_epoch"] == 3 and ck["step"] == 11
    Trainer(cfg_for(data, *over), tmp_path / "cut", resume=True).fit()
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoints" / "final.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["history"][-1]["train_loss"] == pytest.approx(b["history"][-1]["train_loss"])


def test_bf16_autocast_training_and_penalty_accuracy(data, tmp_path):
    from mrijac.jacobian import spectral_norm

    row = train(cfg_for(data, "reg.name=sja+sj", "train.precision=bf16", "optim.epochs=1"), tmp_path / "bf16")
    assert math.isfinite(row["train_loss"]) and row["train_penalty"] > 0
    model, _, _ = load_model(tmp_path / "bf16" / "checkpoints" / "final.pt")
    from mrijac.data import MRISliceDataset, collate_mri

    b = collate_mri([MRISliceDataset(data / "val", "singlecoil", mode="val", crop_kspace=True)[i] for i in range(2)])
    f = model.as_function(b.A)
    ref = spectral_norm(f, b.y, b.A, n_iter=30, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = spectral_norm(f, b.y, b.A, n_iter=30, generator=torch.Generator().manual_seed(0))
    assert ((low.float() - ref).abs() / ref).max() < 0.05  # bf16 has 8 bits of mantissa
    with pytest.raises(ValueError, match="train.precision must be one of"):
        cfg_for(data, "train.precision=fp8")


def test_varnet_multicoil_training_with_penalty(tmp_path):
    root = tmp_path / "mc"
    write_synthetic_dataset(
        root,
        "brain",
        "multicoil",
        {"train": 1, "val": 1},
        n_slices=2,
        kspace_shape=(32, 32),
        recon_size=(24, 24),
        num_coils=4,
        progress=False,
    )
    cfg = load_config(
        None,
        [
            f"data.root={root}",
            "data.challenge=multicoil",
            "model.name=varnet",
            "model.cascades=2",
            "model.chans=4",
            "model.num_pool_layers=2",
            "data.mask_type=equispaced_fraction",
            "data.center_fractions=[0.125]",
            "reg.name=sja+sj",
            "optim.epochs=1",
            "train.progress=false",
            "data.batch_size=2",
            "data.coil_compression=3",
            "train.ref_max_iter=8",
        ],
    )
    # its U-Nets fold the coils into the batch: the kinks cannot be frozen by sample row
    assert (cfg.reg.method, cfg.reg.fd_kinks) == ("fd", "cross")
    row = train(cfg, tmp_path / "run")
    assert row["train_penalty"] > 0 and row["val_sigma_ja_mean"] > 0 and row["ssim"] > 0
    cfg.reg.fd_kinks = "freeze"
    with pytest.raises(RuntimeError, match="VarNet's coils"):
        train(cfg, tmp_path / "frozen")


def test_out_of_memory_batches_are_skipped_then_stop(data, tmp_path, monkeypatch, capsys):
    from mrijac.train.trainer import Interrupted

    t = Trainer(cfg_for(data, "data.batch_size=1", "optim.epochs=1"), tmp_path / "r")
    real, calls = t.train_step, {"n": 0}

    def step(*a):
        calls["n"] += 1
        if calls["n"] in (2, 4, 5, 6):  # one isolated OOM, then three in a row
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*a)

    monkeypatch.setattr(t, "train_step", step)
    with pytest.raises(Interrupted, match="three CUDA out-of-memory errors in a row"):
        t.fit()
    assert capsys.readouterr().out.count("batch skipped") == 4
    ck = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert ck["step"] == 2 and ck["batch_in_epoch"] == 6  # two real steps, six batches seen


@pytest.mark.parametrize("mask", ["poisson", "gaussian1d"])  # poisson hung in sigpy before
def test_training_with_variable_density_masks(data, tmp_path, mask):
    row = train(
        cfg_for(data, f"data.mask_type={mask}", "data.center_fractions=[0.16]", "reg.name=sja", "optim.epochs=1"),
        tmp_path / mask,
    )
    assert row["train_penalty"] > 0 and 0 < row["ssim"] <= 1


def test_warm_store_keeps_per_sample_vectors_and_falls_back_to_batch():
    from mrijac.train.warm import WarmStore

    store = WarmStore("sample", limit_bytes=3 * (4 * 4 + 4))  # three samples: v (4 floats) + σ
    v = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    store.put(["a", "b"], {"v_ja": v, "sigma_ja": torch.tensor([1.0, 3.0])})
    got = store.get(["b", "c"], 2, "cpu", partial_ok=True)
    assert torch.equal(got.vectors["v_ja"][0], v[1]) and got.cold.tolist() == [False, True]
    assert store.get(["b", "c"], 2, "cpu") is None  # unknown samples: all cold
    assert store.priority(["a", "b", "c"]).tolist() == [1.0, 3.0, float("inf")]
    store.put(["a"], {"v_ja": v[:1], "sigma_ja": torch.tensor([2.0])})  # replaces, no growth
    assert store.nbytes == 2 * (4 * 4 + 4) and store.mode == "sample"
    store.put(["c", "d"], {"v_ja": v, "sigma_ja": torch.tensor([1.0, 1.0])})
    assert store.mode == "batch" and len(store) == 0  # over the limit
    store.put(["e", "f"], {"v_ja": v, "sigma_ja": torch.tensor([1.0, 1.0])})
    assert torch.equal(store.get(None, 2, "cpu").vectors["v_ja"], v)


def test_warm_store_starts_unknown_samples_from_the_most_recent_vector():
    from mrijac.train.warm import WarmStore

    v = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    for cold in ("recent", "random"):
        store = WarmStore("sample", cold=cold)
        store.put(["a", "b"], {"v_ja": v[:2], "sigma_ja": torch.tensor([1.0, 3.0])})
        got = store.get(["a", "c"], 2, "cpu", partial_ok=True)
        assert got.cold.tolist() == [False, True]  # still a first visit (an exact step first)
        assert torch.equal(got.vectors["v_ja"][0], v[0])
        assert torch.equal(got.vectors["v_ja"][1], v[1]) == (cold == "recent")  # b was stored last
    store = WarmStore("sample")
    store.put(["a", "b"], {"v_ja": v[:2], "sigma_ja": torch.tensor([1.0, 3.0]), "index": torch.tensor([1, 0])})
    assert torch.equal(store.recent["v_ja"], v[1])  # row 1 went to sample "a", last
    again = WarmStore("sample")
    again.load_state_dict(store.state_dict())  # the checkpoint keeps it, not as a sample
    assert len(again) == 2 and torch.equal(again.recent["v_ja"], v[1])
    assert torch.equal(again.get(["z"], 1, "cpu", partial_ok=True).vectors["v_ja"][0], v[1])
    with pytest.raises(ValueError, match="cold start must be one of"):
        WarmStore("sample", cold="zeros")


def test_config_reads_scientific_notation_and_numeric_strings(tmp_path):
    """YAML 1.1 reads 1e-4 as a string; users write it anyway (files and overrides)."""
    p = tmp_path / "c.yaml"
    p.write_text("optim: {lr: 1e-4}\nreg: {name: sja, lambda_ja: 2e-3}\ntrain: {precision: 32}\n")
    cfg = load_config(p, ["reg.lambda_w=5e-5", "optim.epochs=3"])
    assert cfg.optim.lr == 1e-4 and cfg.reg.lambda_ja == 2e-3 and cfg.reg.lambda_w == 5e-5
    assert cfg.train.precision == "32" and cfg.optim.epochs == 3
    for bad, msg in [
        ("optim.lr=abc", "optim.lr must be a number"),
        ("optim.epochs=2.5", "optim.epochs must be an integer"),
        ("optim.lr=nan", "optim.lr must be > 0"),
        ("train.jac_stats_batches=2", "replaced by train.ref_slices"),
    ]:
        with pytest.raises(ValueError, match=msg):
            load_config(None, [bad])


def test_results_do_not_depend_on_the_number_of_loader_workers(data, tmp_path):
    """Training masks and noise come from (seed, epoch, index), not from each worker's RNG: the
    same config gives the same weights with 0 and 2 loader processes; num_workers=-1 is saved
    resolved."""
    over = ["optim.epochs=2", "data.noise_sigma=0.01", "data.accelerations=[4,8]", "data.center_fractions=[0.08,0.04]"]
    train(cfg_for(data, *over), tmp_path / "w0")
    train(cfg_for(data, *over, "data.num_workers=2"), tmp_path / "w2")
    a = load_checkpoint(tmp_path / "w0" / "checkpoints" / "final.pt")["model"]
    b = load_checkpoint(tmp_path / "w2" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    t = Trainer(cfg_for(data, "data.num_workers=-1", "optim.epochs=1"), tmp_path / "auto")
    saved = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())
    assert saved["data"]["num_workers"] == t.task.workers >= 0
    # different epochs draw different masks; the same (seed, epoch, index) the same one
    ds = t.task.datasets["train"]
    ds.set_epoch(0)
    m0 = ds[0].mask.clone()
    assert torch.equal(ds[0].mask, m0)
    ds.set_epoch(1)
    assert not torch.equal(ds[0].mask, m0)


def test_auto_lambda_is_calibrated_on_several_batches():
    """Auto λ: provisional from the first penalised batch of each term, final from the medians
    over the first reg.auto_steps batches — an outlier first batch does not set λ for good."""
    from mrijac.jacobian import JacobianPenalty
    from mrijac.jacobian.lam import auto_lambda
    from mrijac.train.step import PenaltyStep

    jac = JacobianPenalty("spectral", lambda_ja="auto", lambda_j="auto", alternate=True)
    ps = PenaltyStep(jac, auto_steps=3)
    # alternate: J A on even steps, J on odd steps; the first J A batch is an outlier
    batches = [
        (1.3, "ja", 2.0),
        (13.0, "j", 2.0),
        (13.0, "ja", 2.0),
        (14.0, "j", 2.1),
        (12.0, "ja", 1.9),
        (13.0, "j", 2.0),
    ]
    for i, (loss, t, v) in enumerate(batches):
        stats = {f"term_{t}": torch.tensor(v)}
        pen = ps.calibrate(torch.tensor(loss), stats, torch.tensor(0.0))
        if i == 0:
            assert jac.lambda_ja == auto_lambda(1.3, 2.0) and jac.lambda_j == "auto"  # provisional
            assert pen.item() == pytest.approx(jac.factor * jac.lambda_ja * 2.0)
    assert ps.auto["done"]
    assert jac.lambda_ja == auto_lambda(12.0, 1.9 + 0.1) and jac.lambda_ja != auto_lambda(1.3, 2.0)
    assert jac.lambda_j == auto_lambda(13.0, 2.0)
    # the calibration state travels with the checkpoint
    fresh = PenaltyStep(JacobianPenalty("spectral", lambda_ja="auto", lambda_j="auto", alternate=True), auto_steps=3)
    fresh.load_state_dict(ps.state_dict(), "cpu")
    assert fresh.auto["done"] and fresh.jac.lambda_ja == jac.lambda_ja


def test_auto_lambda_of_coinciding_terms_is_one_lambda_from_every_batch(data, tmp_path):
    """Where ‖J‖ = ‖J A‖ exactly (single coil, tied terms), every penalised batch's estimate is a
    sample for both automatic λs, so they are equal even when the batches of the two alternating
    terms sit on either side of a power of ten of loss/penalty (separate medians would give 0.05
    and 0.5); where the norms differ each term keeps its own batches."""
    from mrijac.jacobian import JacobianPenalty
    from mrijac.jacobian.lam import auto_lambda
    from mrijac.train.step import PenaltyStep

    # J A batches: loss/penalty 12 (λ 0.5 alone); J batches: 8 (λ 0.05 alone)
    batches = [(12.0, "ja", 1.0), (8.0, "j", 1.0), (12.0, "ja", 1.0), (8.0, "j", 1.0), (12.0, "ja", 1.0)]
    for coincide in (True, False):
        jac = JacobianPenalty("spectral", lambda_ja="auto", lambda_j="auto", alternate=True)
        ps = PenaltyStep(jac, auto_steps=2)
        for loss, t, v in batches:
            ps.calibrate(torch.tensor(loss), {f"term_{t}": torch.tensor(v), "coincide": coincide}, torch.tensor(0.0))
        assert ps.auto["done"]
        if coincide:  # the first two batches, both terms: median loss 10, penalty 1
            assert jac.lambda_ja == jac.lambda_j == auto_lambda(10.0, 1.0) == 0.5
        else:
            assert (jac.lambda_ja, jac.lambda_j) == (auto_lambda(12.0, 1.0), auto_lambda(8.0, 1.0)) == (0.5, 0.05)
    # through the trainer: single-coil data with the default (tied, alternating) penalty
    t = Trainer(cfg_for(data, "reg.name=sja+sj", "reg.auto_steps=3", "optim.epochs=1"), tmp_path)
    t.fit()
    assert t.penalty.auto["done"] and t.penalty.jac.lambda_ja == t.penalty.jac.lambda_j


def test_monitor_compares_each_estimate_with_the_weights_it_was_made_with(data, tmp_path):
    """est_ratio_* uses the reference σ of the weights of the estimate's step (CPU copies of the
    last steps' weights), est_ratio_end_* that of the weights at the end of the epoch; a
    power-iteration estimate never exceeds the σ of its own weights."""
    import copy

    from mrijac.jacobian import reference_sigma

    t = Trainer(cfg_for(data, "reg.name=sja+sj", "reg.lambda_ja=0.5", "reg.lambda_j=0.5", "optim.epochs=1"), tmp_path)
    row = t.fit()
    assert {"est_ratio_ja", "est_ratio_end_ja"} <= set(row)
    rows = list(t.monitor.penalised)
    snapped = [r for r in rows if t.monitor._weights(r[4]) is not None]
    assert snapped and len({r[4] for r in snapped}) >= 2  # one copy per step, the last steps only
    model = t.model
    with torch.no_grad():  # move the weights: the end-of-epoch reference changes, the at-step one not
        for p in model.parameters():
            p.mul_(1.3)
    t.monitor.tol, t.monitor.max_iter = 1e-6, 200
    at_step = t.monitor.estimate_pairs(model, at_step=True)
    at_end = t.monitor.estimate_pairs(model, at_step=False)
    term, y, op, est, snap = snapped[-1]
    net = copy.deepcopy(model)
    net.load_state_dict(t.monitor._weights(snap))
    net.eval()
    want = float(reference_sigma(net.as_function(op), y, op if term == "ja" else None, tol=1e-6, max_iter=200).sigma[0])
    i = [j for j, r in enumerate(r for r in rows if r[0] == term) if r is snapped[-1]][0]
    assert abs(float(at_step[term][i, 1]) - want) / want < 1e-4
    assert abs(float(at_end[term][i, 1]) - want) / want > 0.05
    for tm, p in at_step.items():
        keep = [j for j, r in enumerate(r for r in rows if r[0] == tm) if t.monitor._weights(r[4]) is not None]
        assert bool((p[keep, 0] <= p[keep, 1] * 1.01).all()), p


def test_monitor_references_at_most_a_training_batch_at_a_time(data, tmp_path, monkeypatch):
    """The monitor's Lanczos runs hold a graph of every sample they are given: none is given
    more samples than the training batch (batch 1 here), so the monitor's peak memory stays
    within the training step's (it set the peak of a batch-1 run on the H100 before)."""
    from mrijac.train import monitor as mon

    sizes = []
    real = mon.reference_sigma

    def spy(f, y, *a, **k):
        sizes.append(y.shape[0])
        return real(f, y, *a, **k)

    monkeypatch.setattr(mon, "reference_sigma", spy)
    t = Trainer(cfg_for(data, "reg.name=sja+sj", "data.batch_size=1", "optim.epochs=1"), tmp_path)
    row = t.fit()
    assert "est_ratio_ja" in row and "est_ratio_end_ja" in row
    assert sizes and max(sizes) == 1


def test_training_with_the_default_penalty_holds_no_tensors_from_step_to_step(data, tmp_path):
    """A long run must not accumulate memory: with the default penalty at batch 1 (every step
    penalised, vectors carried, the reference monitor on), once every sample has its vectors
    the number of live tensors is the same at the end of each epoch (the fd vector hook once
    kept every step's graph and copies alive)."""
    import gc

    t = Trainer(cfg_for(data, "reg.name=sja+sj", "data.batch_size=1", "optim.epochs=4"), tmp_path / "r")
    counts, validate = [], t.validate

    def counted():
        row = validate()
        gc.collect()
        counts.append(sum(1 for o in gc.get_objects() if torch.is_tensor(o)))
        return row

    t.validate = counted
    t.fit()
    assert t.history[-1]["train_penalty"] > 0 and len(t.warm) == 8
    assert counts[1] == counts[2] == counts[3], counts


@pytest.mark.parametrize("method,fused_left", [("forward", False), ("double_vjp", False), ("fd", True)])
def test_penalties_that_differentiate_a_jvp_get_plain_op_instance_norms(method, fused_left):
    """reg.method=forward / double_vjp differentiate a JVP, which torch's fused InstanceNorm gets
    wrong: the trainer's penalty step writes the U-Net's norms out (same outputs); fd keeps them."""
    from fastmri.models import Unet

    from mrijac.models import Reconstructor
    from mrijac.train.trainer import build_penalty_step

    torch.manual_seed(0)
    model = Reconstructor(Unet(2, 2, chans=4, num_pool_layers=2))
    x = torch.randn(2, 2, 16, 16)
    before = model.net(x)
    cfg = load_config(None, ["reg.name=sja+sj", "reg.lambda_ja=0.1", "reg.lambda_j=0.1", f"reg.method={method}"])
    logged = []
    build_penalty_step(cfg, model, log=logged.append)
    fused = any(isinstance(m, torch.nn.InstanceNorm2d) for m in model.modules())
    assert fused == fused_left and bool(logged) != fused_left
    assert torch.allclose(model.net(x), before, atol=1e-5)


@pytest.mark.parametrize("kinks", ["freeze", "cross"])
def test_reg_fd_kinks_reaches_the_penalty(kinks):
    """reg.fd_kinks configures the fd penalty's copies; bad values are refused by name."""
    from mrijac.models import DnCNN, Reconstructor
    from mrijac.train.trainer import build_penalty_step

    model = Reconstructor(DnCNN(2, 2, depth=3, features=4, batchnorm=False))
    cfg = load_config(None, ["reg.name=sja", "reg.lambda_ja=0.1", "reg.method=fd", f"reg.fd_kinks={kinks}"])
    step = build_penalty_step(cfg, model)
    assert step.jac.fd_kinks == kinks
    with pytest.raises(ValueError, match="reg.fd_kinks"):
        load_config(None, ["reg.fd_kinks=melt"])


def test_tracking_defaults_resolve_to_the_measured_setting():
    """``reg.fd_kinks`` / ``reg.rank`` ``auto``: with ``method=fd`` frozen kinks and Lanczos steps on
    every sample (the setting that tracks the expensive reference, #10 §2), the stored rank where
    Lanczos ranking does not apply; other methods cross / stored (unused).  A config saved before
    the keys existed reads back with what that run used."""
    from mrijac.config import config_from_dict
    from mrijac.jacobian import JacobianPenalty

    # the penalty's own rule, which the config applies where its options allow ranking
    assert JacobianPenalty(lambda_ja=1.0, method="fd").rank == "lanczos"
    assert JacobianPenalty(lambda_ja=1.0, method="fd", recompute=True).rank == "stored"
    assert JacobianPenalty(lambda_ja=1.0, method="fd", first_visits="all").rank == "stored"
    assert JacobianPenalty(lambda_ja=1.0, method="forward").rank == "stored"
    cfg = load_config(None, ["reg.name=sja+sj"])
    assert (cfg.reg.method, cfg.reg.fd_kinks, cfg.reg.rank) == ("fd", "freeze", "lanczos")
    for extra in (["reg.pool=2"], ["reg.fd_recompute=true"], ["reg.first_visits=all"], ["reg.samples=0"]):
        got = load_config(None, ["reg.name=sja+sj", *extra]).reg
        assert (got.fd_kinks, got.rank) == ("freeze", "stored"), extra
    fwd = load_config(None, ["reg.name=sja+sj", "reg.method=forward"]).reg
    assert (fwd.fd_kinks, fwd.rank) == ("cross", "stored")
    varnet = load_config(None, ["reg.name=sja+sj", "model.name=varnet"]).reg  # coils in its U-Nets' batch
    assert (varnet.method, varnet.fd_kinks, varnet.rank) == ("fd", "cross", "lanczos")
    assert config_from_dict(cfg.to_dict()).reg.rank == "lanczos"
    old = cfg.to_dict()
    del old["reg"]["fd_kinks"], old["reg"]["rank"]
    assert (config_from_dict(old).reg.fd_kinks, config_from_dict(old).reg.rank) == ("cross", "stored")
