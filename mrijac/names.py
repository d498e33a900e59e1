"""Names shared by the config and the modules that implement them, without importing those
modules (so that reading and validating a config, and ``mrijac --help``, stay fast)."""

MODELS = ("unet", "dncnn", "varnet", "fcnet", "edsr", "wdsr")
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "poisson", "gaussian1d")
COLUMN_MASKS = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "gaussian1d")


def auto_n_iter(method: str, batch: int) -> int:
    """``n_iter="auto"`` of the spectral penalty (``JacobianPenalty``, ``reg.n_iter``) for a batch
    of ``batch`` samples: with ``method="fd"`` 3 — two Lanczos steps from each sample's carried
    vector, then the fused step — or 4 where the batch is one sample.  Measured on real slices
    against the converged σ: at batch 4 two steps give the penalised sample (the largest of four
    Lanczos bounds, likely one whose steps converged further) an estimate of 0.91–0.93; a lone
    sample's two steps reach 0.87 and three 0.91 (#10 §2 asks 0.90;
    ``experiments/results/true_sigma_real_b1_ref_30ep.md``); at batch 2 two steps reach 0.93
    (``true_sigma_real_b2_ref_30ep.md``; batch 3 is not measured).  The rule counts the batch's
    rows, which is what the penalised sample is chosen among with ``rank="lanczos"`` (the default);
    with ``rank="stored"`` / ``"probe"`` it is not chosen by Lanczos bounds, and two steps there
    gave 0.85–0.86 at batch 4 (``true_sigma_real_lam01_fk_30ep.md``) — left as it is.
    Forward mode and the double-vjp: 1 power iteration per step."""
    if method != "fd":
        return 1
    return 4 if batch == 1 else 3


def auto_rank(method: str, recompute: bool, first_visits: str) -> str:
    """``rank="auto"`` of the fd penalty (``JacobianPenalty``, ``reg.rank``): ``"lanczos"`` (every
    sample's Lanczos steps, the copy for the largest: with frozen kinks the setting that tracks
    the expensive reference, #10 §2) where it applies — ``method="fd"`` without ``recompute`` or
    ``first_visits="all"`` — else ``"stored"``."""
    return "lanczos" if method == "fd" and not recompute and first_visits != "all" else "stored"
