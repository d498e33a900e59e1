"""Training: the loop (:class:`Trainer`, :func:`train`), data losses, warm-start store."""

from ..config import Config, load_config
from .trainer import Interrupted, NonFiniteError, Trainer, train

__all__ = ["Config", "load_config", "Trainer", "train", "Interrupted", "NonFiniteError"]
