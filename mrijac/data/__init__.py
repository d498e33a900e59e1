"""Datasets: fastMRI (model-aware samples), fastMRI-format writers, MNIST, image folders."""

from .fastmri import MaskConfig, MRIBatch, MRISample, MRISliceDataset, collate_mri
from .synthetic import write_synthetic_dataset

__all__ = ["MaskConfig", "MRIBatch", "MRISample", "MRISliceDataset", "collate_mri", "write_synthetic_dataset"]
