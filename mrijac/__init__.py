"""mrijac: learned MRI reconstruction with model-aware Jacobian regularization."""

__version__ = "0.1.0"
