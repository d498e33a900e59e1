"""Run configuration: YAML file + ``key=value`` overrides, validated, saved with the run.

Sections and their keys are the dataclasses below; ``mrijac train --help-config`` lists them.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .names import MASK_TYPES, MODELS, auto_n_iter, auto_rank

REGULARIZERS = ("none", "wd", "sw", "sj", "fj", "sja", "fja", "sja+sj", "fja+fj")
TASKS = ("mri", "cs", "sr")


def _meta(help: str, choices: tuple | None = None, min=None) -> dict:
    return {"help": help, "choices": choices, "min": min}


def _opt(default, help: str, choices: tuple | None = None, min=None):
    """A config field: its default, one line of help and (optionally) the allowed values or
    the smallest allowed value — the one place that ``validate`` and ``--help-config`` read
    them from."""
    return field(default=default, metadata=_meta(help, choices, min))


@dataclass
class DataConfig:
    root: str = _opt("", "mri: folder holding train/ and val/ (fastMRI .h5)")
    challenge: str = _opt("singlecoil", "mri: single-coil or multi-coil data", ("singlecoil", "multicoil"))
    mask_type: str = _opt("random", "mri: undersampling mask", MASK_TYPES)
    accelerations: list = field(
        default_factory=lambda: [4],
        metadata=_meta("mri: accelerations, one drawn per sample (list, same length as center_fractions)"),
    )
    center_fractions: list = field(
        default_factory=lambda: [0.08],
        metadata=_meta("mri: fully sampled centre fraction per acceleration, each in (0, 1]"),
    )
    crop_kspace: bool = _opt(True, "mri: crop to the reconstruction size before undersampling")
    noise_sigma: float = _opt(0.0, "mri: extra complex Gaussian k-space noise (std)")
    coil_compression: int = _opt(0, "mri multicoil: SVD to this many virtual coils (0: off)")
    sample_rate: float = _opt(1.0, "mri: fraction of training slices, in (0, 1] (seeded by train.seed)")
    volume_sample_rate: float = _opt(1.0, "mri: fraction of training volumes, in (0, 1] (not with sample_rate)")
    cache: bool = _opt(True, "mri: reuse each folder's slice list between launches (checked against the folder)")
    cache_dir: str = _opt("", "mri: where the slice lists are kept ('': $MRIJAC_CACHE or ~/.cache/mrijac)")
    batch_size: int = _opt(1, "samples per training batch")
    num_workers: int = _opt(-1, "loader processes; -1: min(4, cpu_count - 1)")
    mnist_dir: str = _opt("", "cs: folder of MNIST IDX files")
    q: int = _opt(160, "cs: number of Gaussian measurements", min=1)
    n_train: int = _opt(500, "cs: training images", min=1)
    n_val: int = _opt(1000, "cs: validation images", min=1)
    eps: float = _opt(0.0, "cs, sr: radius of the ℓ2-sphere noise on each measurement (sr: image range [0, 1])")
    train_dir: str = _opt("", "sr: training image folder")
    val_dir: str = _opt("", "sr: validation image folder")
    factor: int = _opt(2, "sr: decimation factor", min=1)
    kernel: str = _opt("gaussian", "sr: blur kernel")
    patch: int = _opt(48, "sr: training patch size (high resolution)", min=1)
    patches_per_image: int = _opt(16, "sr: training patches drawn per image and epoch", min=1)
    val_patches: int = _opt(0, "sr: validate on this many fixed patches per image (0: whole images)", min=0)
    resample_patches: bool = _opt(True, "sr: new training patches every epoch (false: a fixed training sample)")


@dataclass
class ModelConfig:
    name: str = _opt("unet", "network (mri: unet, dncnn, varnet; cs: fcnet; sr: edsr, wdsr)", MODELS)
    chans: int = _opt(32, "unet: first-level channels; varnet: cascade U-Net channels", min=1)
    num_pool_layers: int = _opt(4, "unet; varnet: cascade U-Net pools", min=1)
    cascades: int = _opt(12, "varnet: unrolled cascades", min=1)
    drop_prob: float = _opt(0.0, "unet: dropout probability", min=0)
    depth: int = _opt(17, "dncnn: layers", min=2)
    features: int = _opt(64, "dncnn, edsr (n_feats), wdsr (n_feats)", min=1)
    batchnorm: bool = _opt(False, "dncnn (False: per-sample Jacobians stay exact in training)")
    n_resblocks: int = _opt(16, "edsr, wdsr: residual blocks", min=1)
    complex_to: str = _opt(
        "channels", "mri: a complex image enters as (re, im) channels or as its magnitude", ("channels", "magnitude")
    )
    normalize: bool = _opt(True, "instance normalisation inside the reconstructor")
    residual: bool = _opt(
        False, "network predicts a correction of the zero-filled input (dncnn: residual either way, once)"
    )


@dataclass
class LossConfig:
    name: str = _opt(
        "l2",
        "data loss (l2 = the paper's ||f(y) - x||₂ per sample; weighted: loss.weights)",
        ("l2", "mse", "l1", "ssim", "weighted"),
    )
    weights: dict = field(
        default_factory=dict, metadata=_meta("loss.name=weighted: weighted sum, e.g. {l1: 0.84, ssim: 0.16}")
    )


@dataclass
class RegConfig:
    name: str = _opt(
        "none",
        "regularizer (s/f: spectral/Frobenius, ja: ||J A||, j: ||J||, "
        "wd: weight decay, sw: spectral norm of the weights)",
        REGULARIZERS,
    )
    lambda_ja: typing.Any = _opt("auto", "λ1 (J A): a number >= 0 or auto")
    lambda_j: typing.Any = _opt("auto", "λ2 (J): a number >= 0 or auto")
    lambda_w: float = _opt(1e-4, "wd / sw weight")
    n_iter: typing.Any = _opt(
        "auto",
        "spectral: power iterations per step (fd: n-1 exact Lanczos steps, then the fused one); "
        "auto: 3 with method=fd (the measured default), 1 otherwise",
    )
    n_proj: int = _opt(1, "Frobenius: random projections per step")
    method: str = _opt(
        "auto",
        "JVPs by forward mode, the double-vjp trick, or fused finite differences (fd, spectral only); "
        "auto: fd where it applies (spectral, float32, no BatchNorm), else forward",
        ("auto", "forward", "double_vjp", "fd"),
    )
    every: int = _opt(1, "apply the Jacobian penalty every k steps (scaled by k)")
    every_mode: str = _opt(
        "scale", "scale: ×k on penalised steps; hold: reuse its gradient between them", ("scale", "hold")
    )
    gamma: float = _opt(20.0, "auto λ: λ = 10^floor(log10(loss/penalty)) / γ")
    auto_steps: int = _opt(10, "auto λ: medians of loss and penalty over the first k penalised batches", min=1)
    warm_start: str = _opt(
        "sample", "reuse singular vectors per sample, per batch, or not", ("none", "batch", "sample")
    )
    cold_start: str = _opt(
        "recent",
        "warm_start=sample: a sample's first vector is the one stored last for any sample, or random",
        ("recent", "random"),
    )
    samples: int = _opt(1, "spectral: graph only for the k samples of largest σ (0: all)")
    alternate: bool = _opt(True, "sja+sj / fja+fj: one term per penalised step, in turn (×2)")
    fd_step: float = _opt(0.0, "method=fd: relative finite-difference step (0: 0.3·sqrt(eps))")
    fd_recompute: bool = _opt(False, "method=fd: checkpoint the perturbed copies (less memory)")
    lanczos_jvp: str = _opt(
        "auto",
        "method=fd: J A v of the n_iter-1 Lanczos steps (and a first visit's) by forward mode or a "
        "forward difference (fd: cheaper); auto: fd with method=fd",
        ("auto", "forward", "fd"),
    )
    fd_kinks: str = _opt(
        "auto",
        "method=fd: the perturbed copies take their original's ReLU/LeakyReLU pattern (freeze: the "
        "difference's θ-gradient is ∇θσ, no term from units switching sign) or cross the kinks as they are; "
        "auto: freeze with method=fd",
        ("auto", "freeze", "cross"),
    )
    first_visits: str = _opt(
        "ranked",
        "method=fd with samples: samples without a stored vector rank first and count towards samples (ranked), "
        "or are all penalised on top of them (all: the first pass over the data costs the whole batch's)",
        ("ranked", "all"),
    )
    rank: str = _opt(
        "auto",
        "method=fd with samples: pick the penalised samples by the σ stored at their last visit, unvisited first "
        "(stored), or by a fresh forward-difference probe ‖J A v‖ of every sample with its stored vector at the "
        "current weights (probe: one more forward of the batch without graph), or by the bounds of Lanczos steps "
        "on every sample (lanczos: the whole batch's estimates, copies for the samples chosen only); "
        "auto: lanczos where it applies (method=fd, samples >= 1, no pool, first_visits=ranked, no "
        "fd_recompute), else stored",
        ("auto", "stored", "probe", "lanczos"),
    )
    pool: int = _opt(0, "method=fd: track this many hardest training samples every step (0: penalise the batch)")
    pool_refresh: int = _opt(10, "pool: steps between candidate draws")
    pool_iters: int = _opt(10, "pool: Lanczos steps per term to score a candidate")
    tie_terms: bool = _opt(
        True, "sja+sj/fja+fj: one estimate for both terms where ‖J‖ = ‖J A‖ exactly (single-coil MRI, 0/1 mask)"
    )


@dataclass
class OptimConfig:
    name: str = _opt("adam", "optimizer", ("adam", "rmsprop"))
    lr: float = _opt(1e-3, "learning rate")
    weight_decay: float = _opt(0.0, "the optimizer's own decay (the wd regularizer is explicit)")
    schedule: str = _opt("none", "learning-rate schedule", ("none", "step", "cosine"))
    step_size: int = _opt(10, "step schedule: epochs between decays", min=1)
    lr_gamma: float = _opt(0.1, "step schedule: decay factor", min=0)
    epochs: int = _opt(10, "training epochs")
    grad_clip: float = _opt(0.0, "max gradient norm (0: off)")


@dataclass
class TrainConfig:
    seed: int = _opt(0, "seed of everything random (data order, masks, initial weights)", min=0)
    device: str = _opt("auto", "auto: CUDA when available", ("auto", "cpu", "cuda"))
    precision: str = _opt("32", "autocast precision (fp16 on CUDA with a grad scaler)", ("32", "bf16", "fp16"))
    ref_slices: int = _opt(4, "probe slices (val and train) for the reference σ each epoch (0: off)")
    ref_tol: float = _opt(1e-2, "reference σ: Lanczos relative residual (1e-2: σ to about 1 %)")
    ref_max_iter: int = _opt(40, "reference σ: cap on Lanczos steps")
    ge_batches: int = _opt(8, "training batches (fixed subset) re-evaluated for GE each epoch (0: all)", min=0)
    progress: bool = _opt(True, "progress bars and per-epoch lines")


@dataclass
class Config:
    task: str = _opt("mri", "what is reconstructed from what", TASKS)
    name: str = _opt("run", "run name (default output folder runs/<name>)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _section_classes():
    return {
        "data": DataConfig,
        "model": ModelConfig,
        "loss": LossConfig,
        "reg": RegConfig,
        "optim": OptimConfig,
        "train": TrainConfig,
    }


def valid_keys() -> list[str]:
    keys = ["task", "name"]
    for sec, cls in _section_classes().items():
        keys += [f"{sec}.{f.name}" for f in fields(cls)]
    return keys


def _yaml_scalar(value):
    """A YAML scalar from a string, with numbers such as ``1e-4`` read as floats (YAML 1.1,
    which PyYAML implements, wants ``1.0e-4`` and would return the string)."""
    if not isinstance(value, str):
        return value
    try:
        return float(value) if any(c in value.lower() for c in ".en") else int(value)
    except ValueError:
        return yaml.safe_load(value)


def _coerce(key: str, value, default):
    """Convert ``value`` to the type of ``default`` (YAML scalars from strings)."""
    if key.endswith(("lambda_ja", "lambda_j")):  # a number or "auto"
        return _yaml_scalar(value) if value != "auto" else value
    if key == "reg.n_iter":  # an integer or "auto" (checked by validate)
        return _yaml_scalar(value) if value != "auto" else value
    if isinstance(value, str) and not isinstance(default, str):
        value = _yaml_scalar(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"config key {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"config key {key} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key {key} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        value = value if isinstance(value, list) else [value]
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key} must be a mapping, got {value!r}")
        return value
    if isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. train.precision: 32 in YAML
        if not isinstance(value, str):
            raise ValueError(f"config key {key} must be a string, got {value!r}")
        return value
    return value


RENAMED = {
    "train.jac_stats_batches": "train.ref_slices (probe slices for the converged reference σ, Lanczos)",
    "train.jac_stats_iters": "train.ref_tol and train.ref_max_iter (the reference σ "
    "runs to a tolerance, not a fixed number of iterations)",
}


def _set(cfg: Config, key: str, value) -> None:
    parts = key.split(".")
    if key in RENAMED:
        raise ValueError(f"config key {key} was replaced by {RENAMED[key]}")
    if key not in valid_keys():
        sec = parts[0] if parts[0] in _section_classes() else None
        choices = [k for k in valid_keys() if sec is None or k.startswith(sec + ".")]
        raise ValueError(f"unknown config key {key!r}; valid keys: {', '.join(choices)}")
    obj = cfg if len(parts) == 1 else getattr(cfg, parts[0])
    name = parts[-1]
    setattr(obj, name, _coerce(key, value, getattr(obj, name)))


def flatten(d: dict, prefix="") -> dict:
    """``{"section.key": value}`` from a nested config dictionary."""
    out = {}
    for k, v in d.items():
        full = f"{prefix}{k}"
        if isinstance(v, dict) and full in _section_classes():
            out.update(flatten(v, full + "."))
        else:
            out[full] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from a YAML file (or defaults) plus ``key=value`` overrides, validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: the config must be a mapping of sections")
        for k, v in flatten(raw).items():
            try:
                _set(cfg, k, v)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. reg.name=sja)")
        k, v = item.split("=", 1)
        _set(cfg, k.strip(), v.strip())
    validate(cfg)
    return cfg


# keys added after runs were saved without them, with the value those runs used (their default
# then), so that a saved config resumes and reports what ran, not today's default
ADDED = {"reg.fd_kinks": "cross", "reg.rank": "stored"}


def config_from_dict(d: dict) -> Config:
    """Config from a saved dictionary (a checkpoint's); keys of older versions that were
    replaced are dropped (their defaults apply), keys added since (:data:`ADDED`) take the value
    those runs used."""
    cfg = Config()
    flat = flatten(d)
    if any(k.startswith("reg.") for k in flat):
        flat = {**{k: v for k, v in ADDED.items() if k not in flat}, **flat}
    for k, v in flat.items():
        if k in RENAMED:
            continue
        _set(cfg, k, v)
    validate(cfg)
    return cfg


def _lam(name, v):
    if v == "auto":
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"config key reg.{name} must be a number >= 0 or 'auto', got {v!r}")


def resolve_method(cfg: Config) -> str:
    """``reg.method=auto``: ``fd`` for the spectral penalties in float32 without BatchNorm or
    dropout (the measured default: cheapest per step, see the README), else ``forward``."""
    r = cfg.reg
    if r.method != "auto":
        return r.method
    spectral = r.name in ("sj", "sja", "sja+sj")
    batchnorm = cfg.model.name == "dncnn" and cfg.model.batchnorm
    dropout = cfg.model.name == "unet" and cfg.model.drop_prob > 0  # a sample and its fd copy get other masks
    fd_ok = spectral and str(cfg.train.precision) == "32" and not batchnorm and not dropout
    return "fd" if fd_ok else "forward"


def resolve_power(cfg: Config) -> tuple:
    """``(reg.n_iter, reg.lanczos_jvp)`` with ``auto`` resolved after ``reg.method``: with
    ``method=fd`` two Lanczos steps per visit with finite-difference JVPs before the fused step
    (``n_iter=3, lanczos_jvp=fd``: the setting that holds the true σ over 30 epochs on real
    slices, ``experiments/results/true_sigma_real_lam01_30ep.md``), three at
    ``data.batch_size=1`` (``n_iter=4``: :func:`~mrijac.names.auto_n_iter`); with ``forward`` /
    ``double_vjp`` one power iteration per step (``lanczos_jvp`` is unused there)."""
    r = cfg.reg
    fd = r.method == "fd"
    n_iter = auto_n_iter(r.method, cfg.data.batch_size) if r.n_iter == "auto" else r.n_iter
    lanczos_jvp = ("fd" if fd else "forward") if r.lanczos_jvp == "auto" else r.lanczos_jvp
    return n_iter, lanczos_jvp


def resolve_tracking(cfg: Config) -> tuple:
    """``(reg.fd_kinks, reg.rank)`` with ``auto`` resolved after ``reg.method``: with
    ``method=fd`` the copies on their original's activation pattern (``freeze``: the trained
    gradient is ∇θσ; every built-in network's activations are modules — but VarNet's U-Nets see
    coils as batch rows, so it crosses them) and, where it applies
    (``samples`` ≥ 1, no ``pool``, ``first_visits=ranked``, no ``fd_recompute``), Lanczos steps on
    every sample of the batch with the copy for the largest (``lanczos``): the setting that
    tracks the expensive reference on real slices (#10 §2,
    ``experiments/results/true_sigma_real_lam01_ref_30ep.md``); else ``cross`` / ``stored``."""
    r = cfg.reg
    fd = r.method == "fd"
    # VarNet folds coils into the batch of its U-Nets: no activation row is a sample's
    freezable = fd and cfg.model.name != "varnet"
    kinks = ("freeze" if freezable else "cross") if r.fd_kinks == "auto" else r.fd_kinks
    if r.rank != "auto":
        return kinks, r.rank
    subset = r.samples >= 1 and not r.pool  # part of a batch to rank, not tracked samples
    return kinks, auto_rank(r.method, r.fd_recompute, r.first_visits) if subset else "stored"


def _require(option: str, checks) -> None:
    """Refuse ``option`` unless every ``(key, value, wanted, ok)`` of ``checks`` is ok, naming
    what it needs and the keys that are not as needed."""
    bad = [f"{k}={v}" for k, v, _, ok in checks if not ok]
    if bad:
        need = ", ".join(f"{k}{w}" for k, _, w, _ in checks)
        raise ValueError(f"config key {option} needs {need}; got {', '.join(bad)}")


def validate(cfg: Config) -> None:
    """Raise ``ValueError`` naming the key for any out-of-range value; resolves
    ``reg.method=auto`` (:func:`resolve_method`), then ``reg.n_iter`` / ``reg.lanczos_jvp``
    ``auto`` (:func:`resolve_power`) and ``reg.fd_kinks`` / ``reg.rank`` ``auto``
    (:func:`resolve_tracking`), so a saved config says what ran."""
    cfg.reg.method = resolve_method(cfg)
    n = cfg.reg.n_iter
    if n != "auto" and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"config key reg.n_iter must be an integer >= 1 or 'auto', got {n!r}")
    cfg.reg.n_iter, cfg.reg.lanczos_jvp = resolve_power(cfg)
    cfg.reg.fd_kinks, cfg.reg.rank = resolve_tracking(cfg)

    def choice(key, val, ok):
        if val not in ok:
            raise ValueError(f"config key {key} must be one of {list(ok)}, got {val!r}")

    def positive(key, val, strict=True):
        if not (val > 0 if strict else val >= 0):
            raise ValueError(f"config key {key} must be {'>' if strict else '>='} 0, got {val!r}")

    for key, val, meta in _fields(cfg):  # every field with a fixed set of values or a minimum
        if meta.get("choices"):
            choice(key, str(val) if key == "train.precision" else val, meta["choices"])
        if meta.get("min") is not None and not val >= meta["min"]:
            raise ValueError(f"config key {key} must be >= {meta['min']}, got {val!r}")
    if not cfg.model.drop_prob < 1:
        raise ValueError(f"config key model.drop_prob must be < 1, got {cfg.model.drop_prob}")
    if cfg.model.residual and not (cfg.task == "mri" and cfg.model.name in ("unet", "dncnn")):
        raise ValueError(
            "config key model.residual=true applies to the MRI U-Net and DnCNN (a correction of the "
            f"zero-filled image); task={cfg.task} model.name={cfg.model.name} has no such input to correct"
        )
    if cfg.optim.lr_gamma <= 0:
        raise ValueError(f"config key optim.lr_gamma must be > 0, got {cfg.optim.lr_gamma}")
    d, r, o, t = cfg.data, cfg.reg, cfg.optim, cfg.train
    if len(d.accelerations) != len(d.center_fractions) or not d.accelerations:
        raise ValueError(
            "config keys data.accelerations and data.center_fractions must be "
            f"lists of the same length, got {d.accelerations} and {d.center_fractions}"
        )
    for a in d.accelerations:
        if isinstance(a, bool) or not isinstance(a, (int, float)) or a < 1:
            raise ValueError(f"config key data.accelerations: each acceleration must be >= 1, got {a!r}")
    for c in d.center_fractions:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"config key data.center_fractions: each must be in (0, 1], got {c!r}")
    positive("data.batch_size", d.batch_size)
    if d.num_workers < -1:
        raise ValueError(f"config key data.num_workers must be >= 0, or -1 for automatic, got {d.num_workers}")
    positive("data.noise_sigma", d.noise_sigma, strict=False)
    positive("data.coil_compression", d.coil_compression, strict=False)
    for key in ("sample_rate", "volume_sample_rate"):
        if not 0 < getattr(d, key) <= 1:
            raise ValueError(f"config key data.{key} must be in (0, 1], got {getattr(d, key)}")
    if d.sample_rate < 1 and d.volume_sample_rate < 1:
        raise ValueError("config keys data.sample_rate and data.volume_sample_rate: give one of them, not both")
    positive("data.eps", d.eps, strict=False)
    _lam("lambda_ja", r.lambda_ja)
    _lam("lambda_j", r.lambda_j)
    if cfg.loss.name == "weighted" and not cfg.loss.weights:
        raise ValueError("config key loss.name=weighted needs loss.weights, e.g. {l1: 0.84, ssim: 0.16}")
    positive("reg.lambda_w", r.lambda_w, strict=False)
    positive("reg.n_proj", r.n_proj)
    positive("reg.every", r.every)
    positive("reg.samples", r.samples, strict=False)
    positive("reg.gamma", r.gamma)
    if r.method == "fd" and r.name not in ("sj", "sja", "sja+sj"):
        raise ValueError(f"reg.method=fd is for the spectral penalties (sj, sja, sja+sj), not reg.name={r.name}")
    if r.method == "fd" and str(t.precision) != "32":
        raise ValueError(f"reg.method=fd (finite differences) needs train.precision=32, not {t.precision}")
    if not 0 <= r.fd_step < 1:
        raise ValueError(f"config key reg.fd_step must be in [0, 1), got {r.fd_step}")
    if r.lanczos_jvp == "fd" and r.method != "fd" and r.name not in ("none", "wd", "sw"):
        raise ValueError(
            f"config key reg.lanczos_jvp=fd is for reg.method=fd, but this run uses reg.method={r.method} "
            "(auto gives forward for Frobenius penalties, BatchNorm or train.precision other than 32)"
        )
    # options that read the per-sample store of penalised samples: without it (pool, batch vectors,
    # forward mode, no subset) first_visits=all would do nothing or penalise every batch whole, and
    # rank=probe would have nothing to rank; rank=lanczos ranks every row of the batch afresh, so it
    # needs no per-sample store, only a subset to pick
    store = (
        ("reg.method", r.method, "=fd", r.method == "fd"),
        ("reg.warm_start", r.warm_start, "=sample", r.warm_start == "sample"),
        ("reg.samples", r.samples, " >= 1", r.samples >= 1),
        ("reg.pool", r.pool, "=0", not r.pool),
    )
    fd_subset = tuple(c for c in store if c[0] != "reg.warm_start")  # part of a batch, any vector store
    ranked = (  # a fresh ranking neither penalises whole first passes nor checkpoints the copies
        ("reg.first_visits", r.first_visits, "=ranked", r.first_visits == "ranked"),
        ("reg.fd_recompute", r.fd_recompute, "=false", not r.fd_recompute),
    )
    if r.name not in ("none", "wd", "sw"):
        if r.first_visits == "all":
            _require("reg.first_visits=all", store)
        if r.rank == "probe":
            _require("reg.rank=probe", store + ranked)
        if r.rank == "lanczos":
            _require("reg.rank=lanczos", fd_subset + ranked)
    positive("reg.pool", r.pool, strict=False)
    positive("reg.pool_refresh", r.pool_refresh)
    positive("reg.pool_iters", r.pool_iters)
    if r.pool and (r.method != "fd" or r.name not in ("sj", "sja", "sja+sj")):
        raise ValueError(
            f"reg.pool (tracked samples) needs reg.method=fd and a spectral "
            f"penalty (sj, sja, sja+sj), got reg.method={r.method}, "
            f"reg.name={r.name}"
        )
    if "ja" in r.name and r.lambda_ja == 0:
        raise ValueError(f"reg.name={r.name} needs reg.lambda_ja > 0 or 'auto'")
    if r.name in ("sj", "fj", "sja+sj", "fja+fj") and r.lambda_j == 0:
        raise ValueError(f"reg.name={r.name} needs reg.lambda_j > 0 or 'auto'")
    positive("optim.lr", o.lr)
    positive("optim.epochs", o.epochs)
    positive("optim.weight_decay", o.weight_decay, strict=False)
    positive("optim.grad_clip", o.grad_clip, strict=False)
    positive("train.ref_slices", t.ref_slices, strict=False)
    positive("train.ref_tol", t.ref_tol)
    positive("train.ref_max_iter", t.ref_max_iter)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _fields(cfg: Config):
    """``(key, value, metadata)`` of every config field, sections included."""
    for f in fields(Config):
        if f.name in _section_classes():
            sec = getattr(cfg, f.name)
            for g in fields(sec):
                yield f"{f.name}.{g.name}", getattr(sec, g.name), dict(g.metadata)
        else:
            yield f.name, getattr(cfg, f.name), dict(f.metadata)


def describe() -> str:
    """Every config key with its default, help and allowed values (``--help-config``)."""
    lines, section = [], None
    for key, val, meta in _fields(Config()):
        sec = key.split(".")[0] if "." in key else None
        if sec != section:
            lines.append(f"\n{sec}:" if sec else "")
            section = sec
        line = f"  {key} = {val!r}"
        if meta.get("help"):
            line += f"  — {meta['help']}"
        if meta.get("choices"):
            line += f"  [{' | '.join(map(str, meta['choices']))}]"
        if meta.get("min") is not None:
            line += f"  [>= {meta['min']}]"
        lines.append(line)
    return "\n".join(lines).lstrip("\n")
