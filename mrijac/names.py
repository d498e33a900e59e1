"""Names shared by the config and the modules that implement them, without importing those
modules (so that reading and validating a config, and ``mrijac --help``, stay fast)."""

MODELS = ("unet", "dncnn", "varnet", "fcnet", "edsr", "wdsr")
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "poisson", "gaussian1d")
COLUMN_MASKS = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "gaussian1d")


def auto_rank(method: str, recompute: bool, first_visits: str) -> str:
    """``rank="auto"`` of the fd penalty (``JacobianPenalty``, ``reg.rank``): ``"lanczos"`` (every
    sample's Lanczos steps, the copy for the largest: with frozen kinks the setting that tracks
    the expensive reference, #10 §2) where it applies — ``method="fd"`` without ``recompute`` or
    ``first_visits="all"`` — else ``"stored"``."""
    return "lanczos" if method == "fd" and not recompute and first_visits != "all" else "stored"
