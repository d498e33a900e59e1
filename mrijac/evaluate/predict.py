"""``mrijac predict``: reconstruct every volume of a folder into fastMRI's submission format,
and score a folder of such predictions against targets (as ``fastmri.evaluate`` does)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch

from ..checkpoint import load_model
from ..data.fastmri import H5_SUFFIXES
from ..data.h5format import TARGET_KEYS, open_h5
from ..metrics import aggregate, volume_metrics
from ..runtime import progress as progress_bar
from ..runtime import resolve_device
from ..tasks import check_recon_size
from .report import md_table, staged_dir, write_csv, write_json, write_report


def _h5_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in H5_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no .h5 files")
    return files


@torch.no_grad()
def predict_folder(
    checkpoint,
    data,
    out,
    device: str = "auto",
    batch_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Write ``out/<file>.h5`` with ``reconstruction`` (float32 ``(S, h, w)``) for every volume.

    Files that carry their own ``mask`` (test/challenge files, no target needed) are
    reconstructed from it; other files are undersampled with the checkpoint's mask settings and
    fastMRI's validation convention (a fixed mask per volume, seeded from the file name).
    """
    from ..data import MaskConfig, MRISliceDataset, collate_mri

    data = Path(data)
    files = _h5_files(data)
    model, cfg, ck = load_model(checkpoint, resolve_device(device))
    model_meta = ck["model_meta"]
    if cfg.task != "mri":
        raise ValueError(f"predict reconstructs MRI volumes; this checkpoint is a {cfg.task} model")
    with_mask = []
    for f in files:
        with open_h5(f) as hf:
            with_mask.append("mask" in hf)
    if any(with_mask) and not all(with_mask):
        raise ValueError(
            f"{data}: mixes files with and without their own 'mask'; put test and validation files in separate folders"
        )
    d = cfg.data
    ds = MRISliceDataset(
        data,
        d.challenge,
        mode="test" if all(with_mask) else "val",
        mask=MaskConfig(d.mask_type, tuple(d.accelerations), tuple(d.center_fractions)),
        crop_kspace=d.crop_kspace,
        coil_compression=d.coil_compression,
    )
    check_recon_size(model_meta, ds, checkpoint)
    bs = batch_size or (d.batch_size if d.crop_kspace else 1)
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, collate_fn=collate_mri)
    dev = next(model.parameters()).device
    vols: dict[str, dict[int, np.ndarray]] = {}
    for batch in progress_bar(loader, desc="predict", disable=not progress):
        b = batch.to(dev)
        rec = model(b.y, b.A).float().cpu().numpy()
        if not np.isfinite(rec).all():
            raise ValueError(f"{checkpoint}: its reconstruction of {b.fname[0]} holds NaN/Inf; nothing was written")
        for i, (f, s) in enumerate(zip(b.fname, b.slice.tolist())):
            vols.setdefault(f, {})[s] = rec[i]
    written = []
    with staged_dir(out, overwrite) as tmp:
        for f, sl in vols.items():
            with h5py.File(tmp / f, "w") as hf:
                hf.create_dataset("reconstruction", data=np.stack([sl[k] for k in sorted(sl)]))
                hf.attrs["checkpoint"] = str(checkpoint)
            written.append(Path(out) / f)
    return written


def evaluate_predictions(predictions, targets, out, challenge: str | None = None, overwrite: bool = False) -> dict:
    """Score ``predictions/<f>.h5`` (``reconstruction``) against ``targets/<f>.h5``.

    Like ``fastmri.evaluate``: the target key is ``reconstruction_esc`` (single-coil) or
    ``reconstruction_rss`` (multi-coil; ``challenge`` picks, else whichever the file has), both
    volumes are centre-cropped to ``(W, W)`` with ``W`` the target's width, and SSIM/PSNR/NMSE
    use the target volume's maximum.  Writes metrics.json/csv and report.md/html into ``out``.
    """
    from fastmri.data.transforms import center_crop

    predictions, targets = Path(predictions), Path(targets)
    per = []
    for tf in _h5_files(targets):
        pf = predictions / tf.name
        if not pf.exists():
            raise FileNotFoundError(f"{pf}: no prediction for target {tf.name}")
        with open_h5(tf) as ht, open_h5(pf) as hp:
            keys = [TARGET_KEYS[challenge]] if challenge else list(TARGET_KEYS.values())
            key = next((k for k in keys if k in ht), None)
            if key is None:
                raise ValueError(f"{tf}: no target dataset ({' or '.join(keys)})")
            if "reconstruction" not in hp:
                raise ValueError(f"{pf}: missing dataset 'reconstruction'")
            t, p = ht[key][()], hp["reconstruction"][()]
        crop = (t.shape[-1], t.shape[-1])
        t = center_crop(t, crop) if t.shape[-2] >= crop[0] else t
        p = center_crop(p, crop) if p.shape[-2] >= crop[0] and p.shape[-1] >= crop[1] else p
        if p.shape != t.shape:
            raise ValueError(f"{pf}: reconstruction {p.shape} does not match target {t.shape}")
        bad = int((~np.isfinite(p)).sum())
        if bad:
            raise ValueError(f"{pf}: 'reconstruction' holds {bad} non-finite values (NaN/Inf); nothing was scored")
        per.append({"fname": tf.name, **volume_metrics(t, p)})
    agg = aggregate(per)
    result = {"predictions": str(predictions), "targets": str(targets), "per_volume": per, "aggregate": agg}
    with staged_dir(out, overwrite) as tmp:
        write_json(tmp / "metrics.json", result)
        write_csv(tmp / "metrics.csv", per)
        md = [
            "# Evaluation of predictions",
            "",
            f"Predictions `{predictions}`, targets `{targets}`, {len(per)} volumes.",
            "",
            md_table(
                ["metric", "mean ± std"], [[m.upper(), f"{v['mean']:.4f} ± {v['std']:.4f}"] for m, v in agg.items()]
            ),
            "",
            md_table(["volume", "SSIM", "PSNR", "NMSE"], [[r["fname"], r["ssim"], r["psnr"], r["nmse"]] for r in per]),
        ]
        write_report(tmp, "\n".join(md) + "\n", "mrijac: predictions")
    return result


@torch.no_grad()
def reconstruct_kspace(model, kspace, mask, sens_maps=None, device: str = "cpu", batch_size: int = 8) -> np.ndarray:
    """Reconstruct masked k-space given as NumPy arrays or tensors, in one call.

    Args:
        model: a checkpoint path, or a :class:`~mrijac.models.Reconstructor` (e.g. from
            :func:`mrijac.checkpoint.load_model`).
        kspace: one slice ``(H, W)`` / ``(C, H, W)`` or a volume ``(S, H, W)`` /
            ``(S, C, H, W)``, complex (already undersampled).
        mask: ``(W,)`` column mask or ``(H, W)`` mask (the same for every slice).
        sens_maps: coil maps like ``kspace`` (multi-coil); with a checkpoint of a multi-coil
            model, ``None`` computes ESPIRiT maps from each slice's calibration lines.  With a
            module, passing ``sens_maps`` is what makes the input multi-coil.
    Returns:
        float32 magnitude ``(h, w)`` for a slice or ``(S, h, w)`` for a volume.
    """
    from ..data.coil_maps import espirit_maps
    from ..operators import MultiCoilMRI, SingleCoilMRI

    if not isinstance(model, torch.nn.Module):
        model, cfg, _ = load_model(model, resolve_device(device))
        multicoil = cfg.data.challenge == "multicoil"
    else:
        multicoil = sens_maps is not None
    dev = next(model.parameters()).device
    k = torch.as_tensor(np.asarray(kspace)).to(torch.complex64)
    per_slice = 3 if multicoil else 2
    if k.dim() not in (per_slice, per_slice + 1):
        raise ValueError(
            f"kspace of shape {tuple(k.shape)}: expected {'(C, H, W)' if multicoil else '(H, W)'}"
            " for a slice or with a leading slice axis for a volume"
        )
    single = k.dim() == per_slice
    k = k[None] if single else k
    m = torch.as_tensor(np.asarray(mask)).float()
    if multicoil:
        if sens_maps is None:
            m_np = m.numpy().reshape(-1, k.shape[-1]).max(0)
            c = k.shape[-1] // 2
            width = 1
            while c - width >= 0 and c + width < len(m_np) and m_np[c - width : c + width + 1].all():
                width += 1
            maps = torch.from_numpy(np.stack([espirit_maps(s.numpy(), calib_width=max(2 * width - 1, 4)) for s in k]))
        else:
            maps = torch.as_tensor(np.asarray(sens_maps)).to(torch.complex64)
            maps = maps[None] if maps.dim() == 3 else maps
    outs = []
    for i in range(0, k.shape[0], batch_size):
        kb = k[i : i + batch_size].to(dev)  # the mask broadcasts over the batch
        A = (
            MultiCoilMRI(m.to(dev), maps[i : i + batch_size].to(dev))
            if multicoil
            else SingleCoilMRI(m.to(dev), tuple(kb.shape[-2:]))
        )
        outs.append(model(kb, A).float().cpu())
    out = torch.cat(outs).numpy()
    return out[0] if single else out
