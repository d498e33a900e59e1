"""Names shared by the config and the modules that implement them, without importing those
modules (so that reading and validating a config, and ``mrijac --help``, stay fast)."""

MODELS = ("unet", "dncnn", "varnet", "fcnet", "edsr", "wdsr")
MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "poisson", "gaussian1d")
COLUMN_MASKS = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction", "gaussian1d")
