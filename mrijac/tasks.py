"""Tasks: how data, operator and network fit together for MRI, compressed sensing and SR.

Every task yields batches as ``(y, A, target, info)`` (data flows one way: dataset -> sample
-> model -> loss + penalty -> metrics) and builds its :class:`~mrijac.models.Reconstructor`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .metrics import image_metrics, volume_metrics
from .models import EDSR, WDSR, DnCNN, FCNet, Reconstructor, Unet, VarNetReconstructor


def resolve_workers(n: int) -> int:
    """``data.num_workers``: ``-1`` (default) means ``min(4, cpu_count − 1)`` loader processes."""
    if n >= 0:
        return int(n)
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def check_recon_size(model_meta: dict, dataset, checkpoint) -> None:
    """Refuse MRI data whose reconstruction size differs from the one a checkpoint was trained
    at (its output is cropped to that size: scores would crash, predictions be the wrong size)."""
    want = tuple(model_meta.get("crop") or ())
    if not want or not hasattr(dataset, "recon_sizes"):
        return
    for size, fname in dataset.recon_sizes().items():
        if size != want:
            raise ValueError(
                f"{fname}: reconstruction size {size[0]}×{size[1]}, but the checkpoint {checkpoint} "
                f"reconstructs {want[0]}×{want[1]} (the size of its training data); "
                "use data of that size or train on this one"
            )


def build_reconstructor(cfg, meta: dict) -> Reconstructor:
    """The reconstructor of ``cfg.model`` for a task described by ``meta`` (from the task)."""
    m = cfg.model
    if cfg.task == "mri" and m.name == "varnet":
        return VarNetReconstructor(tuple(meta["crop"]), m.cascades, m.chans, m.num_pool_layers)
    if cfg.task == "mri":
        ch = 2 if m.complex_to == "channels" else 1
        if m.name == "unet":
            net = Unet(ch, ch, chans=m.chans, num_pool_layers=m.num_pool_layers, drop_prob=m.drop_prob)
        elif m.name == "dncnn":
            # DnCNN is residual by design (x − r(x)); with model.residual the reconstructor adds
            # the input instead — never both (that would start from twice the zero-filled image)
            net = DnCNN(ch, ch, depth=m.depth, features=m.features, batchnorm=m.batchnorm, residual=not m.residual)
        else:
            raise ValueError(f"config key model.name: {m.name!r} is not an MRI model (unet, dncnn, varnet)")
        return Reconstructor(net, "adjoint", m.complex_to, tuple(meta["crop"]), m.normalize, residual=m.residual)
    if cfg.task == "cs":
        if m.name != "fcnet":
            raise ValueError(f"config key model.name: the cs task uses fcnet, got {m.name!r}")
        return Reconstructor(FCNet(meta["q"], meta["p"]), "measurement", normalize=False, output="identity")
    if m.name == "edsr":
        net = EDSR(meta["factor"], 1, m.n_resblocks, m.features)
    elif m.name == "wdsr":
        net = WDSR(meta["factor"], 1, m.n_resblocks, m.features)
    else:
        raise ValueError(f"config key model.name: the sr task uses edsr or wdsr, got {m.name!r}")
    return Reconstructor(net, "measurement", normalize=False, output="identity")


class _IndexedDataset(torch.utils.data.Dataset):
    """Wraps a dataset so each item also carries its index (warm-start keys)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return (*self.ds[i], i)


class Task:
    """Dataset → ``(y, A, target, info)`` → reconstructor: what every task shares.  Subclasses
    set ``name``, ``datasets``, ``batch_size``, ``workers`` and define ``unpack``; ``collate``
    (``None``: torch's default) and :meth:`split_batch_size` shape the loaders."""

    collate = None

    def split_batch_size(self, split: str) -> int:
        return self.batch_size

    def loader(self, split, shuffle, generator=None, sampler=None):
        """The ``DataLoader`` of ``split`` (``sampler``: e.g. a ``DistributedSampler``)."""
        return torch.utils.data.DataLoader(
            self.datasets[split],
            batch_size=self.split_batch_size(split),
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.workers,
            collate_fn=self.collate,
            generator=generator,
        )


class MRITask(Task):
    """fastMRI slices ``(y, A, target)``; results are scored per *volume* (slices gathered by
    file, fastMRI's SSIM/PSNR/NMSE with the volume maximum as data range) and against the
    zero-filled reconstruction ``|Aᴴ y|``."""

    name = "mri"
    volumes = True  # items are volumes gathered from slices

    @staticmethod
    def zero_filled(info) -> torch.Tensor:
        """The zero-filled baseline of a batch, ``(B, h, w)``."""
        return info["batch"].zero_filled

    @staticmethod
    def metrics(target, pred) -> dict:
        return volume_metrics(target, pred)

    def __init__(self, cfg, splits=("train", "val"), paths: dict | None = None):
        from .data import MaskConfig, MRISliceDataset
        from .data.dataset_cache import cache_file

        d = cfg.data
        root = Path(d.root)
        if not d.root:
            raise ValueError("config key data.root is empty: give the folder holding train/ and val/")
        mask = MaskConfig(d.mask_type, tuple(d.accelerations), tuple(d.center_fractions))
        self.datasets = {}
        for split in splits:
            path = Path((paths or {}).get(split, root / split))
            if not path.is_dir():
                raise FileNotFoundError(
                    f"{path}: missing {split} folder (data.root must hold {', '.join(s + '/' for s in splits)})"
                )
            self.datasets[split] = MRISliceDataset(
                path,
                d.challenge,
                mode="train" if split == "train" else "val",
                mask=mask,
                crop_kspace=d.crop_kspace,
                noise_sigma=d.noise_sigma,
                sample_rate=d.sample_rate if split == "train" and d.sample_rate < 1 else None,
                volume_sample_rate=d.volume_sample_rate if split == "train" and d.volume_sample_rate < 1 else None,
                use_dataset_cache=d.cache,
                dataset_cache_file=cache_file(path, d.cache_dir or None) if d.cache else None,
                coil_compression=d.coil_compression,
                seed=cfg.train.seed if split == "train" else None,
            )
        first = next(iter(self.datasets.values()))[0]
        self.meta = {"crop": list(first.crop), "challenge": d.challenge}
        self.batch_size, self.workers = d.batch_size, resolve_workers(d.num_workers)

    @staticmethod
    def collate(samples):
        from .data import collate_mri

        return collate_mri(samples)

    @staticmethod
    def unpack(batch, device):
        b = batch.to(device)
        info = {
            "keys": [f"{f}:{int(s)}" for f, s in zip(b.fname, b.slice)],
            "max": b.max,
            "fname": b.fname,
            "slice": b.slice,
            "batch": b,
        }
        return b.y, b.A, b.target, info


class ImageTask(Task):
    """Tasks whose results are single images, scored with data range 1 and without a
    zero-filled baseline (compressed sensing, super-resolution)."""

    volumes = False

    @staticmethod
    def zero_filled(info) -> None:
        return None

    @staticmethod
    def metrics(target, pred) -> dict:
        return image_metrics(target, pred, 1.0)


class CSTask(ImageTask):
    """MNIST compressed sensing (Gaussian measurements of flattened digits)."""

    name = "cs"

    def __init__(self, cfg, splits=("train", "val"), paths: dict | None = None):
        from .data.mnist import MNISTCompressedSensing

        d = cfg.data
        if paths:
            d.mnist_dir = str(next(iter(paths.values())))
        if not d.mnist_dir:
            raise ValueError("config key data.mnist_dir is empty: give the MNIST IDX folder")
        n = d.n_train + d.n_val
        split = (
            "train"
            if (Path(d.mnist_dir) / "train-images-idx3-ubyte.gz").exists()
            or (Path(d.mnist_dir) / "train-images-idx3-ubyte").exists()
            else "t10k"
        )
        full = MNISTCompressedSensing(d.mnist_dir, split, q=d.q, eps=d.eps, seed=cfg.train.seed, indices=range(n))
        if len(full) < n:
            raise ValueError(f"data.n_train + data.n_val = {n} exceeds the {len(full)} images")
        self.A = full.A
        idx = {"train": range(d.n_train), "val": range(d.n_train, n)}
        self.datasets = {s: _IndexedDataset(torch.utils.data.Subset(full, idx[s])) for s in splits}
        self.meta = {"q": d.q, "p": full.x.shape[1]}
        self.batch_size, self.workers = d.batch_size, resolve_workers(d.num_workers)

    def unpack(self, batch, device):
        y, x, _, idx = batch
        return (
            y.to(device),
            self.A.to(device),
            x.to(device),
            {"keys": [int(i) for i in idx], "max": torch.ones(len(y), device=device)},
        )


class SRTask(ImageTask):
    """Super-resolution: blurred, decimated patches (training) and whole images (validation),
    or fixed patches of the validation images (``data.val_patches``) — then the validation ℓ2
    is per patch like the training one, and the generalization error compares like with like."""

    name = "sr"

    def __init__(self, cfg, splits=("train", "val"), paths: dict | None = None):
        from .data.images import ImageFolderSR

        d = cfg.data
        self.datasets = {}
        for s in splits:
            folder = (paths or {}).get(s) or (d.train_dir if s == "train" else d.val_dir)
            if not folder:
                raise ValueError(f"config key data.{s}_dir is empty: give an image folder")
            patched = s == "train" or d.val_patches > 0
            self.datasets[s] = ImageFolderSR(
                folder,
                d.factor,
                d.kernel,
                d.patch if patched else None,
                d.patches_per_image if s == "train" else d.val_patches,
                cfg.train.seed if s == "train" else cfg.train.seed + 1_000_003,  # other positions
                flips=s == "train",
                eps=d.eps,
                resample=d.resample_patches if s == "train" else False,
            )
        self.A = next(iter(self.datasets.values())).A
        self.meta = {"factor": d.factor}
        # ‖f(y) − x‖₂ of a whole image and of a patch are not on one scale: no absolute GE then
        self.ge_comparable = all(ds.patch is not None for ds in self.datasets.values())
        self.batch_size, self.workers = d.batch_size, resolve_workers(d.num_workers)

    def split_batch_size(self, split: str) -> int:
        if split == "train" or self.datasets[split].patch is not None:
            return self.batch_size
        return 1  # full images differ in size

    def unpack(self, batch, device):
        y, x = batch
        return (y.to(device), self.A.to(device), x.to(device), {"keys": None, "max": torch.ones(len(y), device=device)})


def make_task(cfg, splits=("train", "val"), paths: dict | None = None):
    """The task of ``cfg.task`` with the datasets of ``splits`` (``paths`` overrides folders)."""
    return {"mri": MRITask, "cs": CSTask, "sr": SRTask}[cfg.task](cfg, splits, paths)


def fixed_raw(task, split: str, indices, seed: int) -> list:
    """Samples ``indices`` of ``split`` as collated (not yet unpacked) batches, drawn the same
    way every call: training-mode randomness (masks, patches) comes from a forked RNG seeded
    from ``seed``, so calling this changes no global random state.  Batches hold the task's
    batch size (1 where samples differ in size)."""
    ds = task.datasets[split]
    base = task.loader(split, False)
    fixed = ds.seeded(seed) if hasattr(ds, "seeded") else contextlib.nullcontext()
    with torch.random.fork_rng(devices=[]), fixed:
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, list(indices)),
            batch_size=base.batch_size or 1,
            collate_fn=base.collate_fn,
            num_workers=0,
        )
        return list(loader)


def seeded_indices(task, split: str, n: int, seed: int) -> list[int]:
    """``n`` indices of ``split`` (all when ``n`` is 0 or larger), chosen once from ``seed``."""
    size = len(task.datasets[split])
    n = size if n <= 0 else min(int(n), size)
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=g)[:n].tolist())


def fetch(task, split: str, indices, seed: int, device) -> list:
    """:func:`fixed_raw` unpacked: ``[(y, A, target, info), …]`` on ``device``."""
    return [task.unpack(b, device) for b in fixed_raw(task, split, indices, seed)]


def fixed_batches(task, split: str, n: int, seed: int, device) -> list:
    """``n`` samples of ``split`` chosen once from ``seed`` (the same slices, masks and noise
    every call) as unpacked batches — the probe sets of the reference σ."""
    if n <= 0:
        return []
    return fetch(task, split, seeded_indices(task, split, n, seed), seed, device)
