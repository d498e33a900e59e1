"""The ``mrijac`` command line.

Errors in the input (``ValueError``, ``FileNotFoundError``, ``FileExistsError``) print one
line ``mrijac: error: …`` and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 320x320, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") \
            from None


# --- data ----------------------------------------------------------------------------------
def cmd_data_synth(a):
    from .data.synthetic import write_synthetic_dataset
    w = write_synthetic_dataset(a.out, a.kind, a.challenge,
                                {"train": a.train, "val": a.val, "test": a.test}, a.slices,
                                a.kspace, a.recon, a.coils, a.seed, a.test_acceleration,
                                noise=a.noise)
    print(f"wrote {sum(len(v) for v in w.values())} volumes under {a.out}")


def cmd_data_kspace(a):
    from .data.convert import convert_kspace
    from .data.readers import read_array
    k = read_array(a.input, a.key)
    p = convert_kspace(k, a.out, a.axes, a.challenge, a.recon, a.acquisition,
                       fft_axes_are_image=a.images)
    print(f"wrote {p}")


def cmd_data_images(a):
    from .data.prep import images_to_dataset
    w = images_to_dataset(a.source, a.out, a.per_volume, a.split, a.challenge, not a.no_phase,
                          a.coils, a.seed, a.key)
    print(f"wrote {sum(len(v) for v in w.values())} volumes under {a.out} "
          f"(train {len(w['train'])}, val {len(w['val'])}, test {len(w['test'])})")


def cmd_data_maps(a):
    from .data.prep import maps_for_folder
    out = maps_for_folder(a.root, a.maps_dir, a.calib_width, a.overwrite)
    print(f"coil maps for {len(out)} volumes in {out[0].parent}")


def cmd_data_subset(a):
    from .data.prep import subset
    out = subset(a.src, a.dst, a.volumes, a.seed, a.copy)
    print(f"{len(out)} volumes in {a.dst}")


def add_data_parser(sub):
    p = sub.add_parser("data", help="make or convert fastMRI-format data")
    ds = p.add_subparsers(dest="data_cmd", required=True)
    s = ds.add_parser("synth", help="write a synthetic fastMRI-format dataset (phantoms)")
    s.add_argument("--out", required=True, help="output folder (train/, val/, test/ inside)")
    s.add_argument("--kind", choices=["knee", "brain"], default="knee")
    s.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    s.add_argument("--train", type=int, default=4, help="training volumes")
    s.add_argument("--val", type=int, default=2, help="validation volumes")
    s.add_argument("--test", type=int, default=1, help="test volumes (masked, with test_targets/)")
    s.add_argument("--slices", type=int, default=8, help="slices per volume")
    s.add_argument("--kspace", type=_size, default=(64, 48), help="k-space size HxW (640x368 = fastMRI knee)")
    s.add_argument("--recon", type=_size, default=(32, 32), help="target size hxw (320x320 = fastMRI)")
    s.add_argument("--coils", type=int, default=8, help="coils (multicoil)")
    s.add_argument("--noise", type=float, default=0.002, help="k-space noise std relative to the image peak")
    s.add_argument("--test-acceleration", type=int, default=4)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_data_synth)
    c = ds.add_parser("convert", help="convert real data into fastMRI format")
    cs = c.add_subparsers(dest="convert_cmd", required=True)
    k = cs.add_parser("kspace", help="raw k-space (BART .cfl/.hdr, MATLAB .mat, .npy) -> one .h5 volume")
    k.add_argument("input", help="raw file (.cfl/.hdr, .mat, .npy)")
    k.add_argument("--out", required=True, help="output .h5 file")
    k.add_argument("--axes", required=True, help="input axes, e.g. x,y,coil (BART) or slice,coil,x,y")
    k.add_argument("--key", help="variable name inside a .mat file")
    k.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="multicoil",
                   help="multicoil: RSS target; singlecoil: emulated single coil (ESC) target")
    k.add_argument("--recon", type=_size, help="target size hxw (default: the smaller side, square)")
    k.add_argument("--acquisition", default="CONVERTED")
    k.add_argument("--images", action="store_true", help="the input holds coil images, not k-space")
    k.set_defaults(func=cmd_data_kspace)
    i = cs.add_parser("images", help="magnitude images (folder or .mat/.npy) -> volumes with simulated k-space")
    i.add_argument("source", help="image folder (PNG/JPEG/TIFF/.mat/.npy) or one .mat/.npy stack")
    i.add_argument("--out", required=True, help="output folder (train/, val/, test/ inside)")
    i.add_argument("--per-volume", type=int, default=10, help="images per volume")
    i.add_argument("--split", type=_fractions, default=(0.8, 0.2, 0.0), help="train,val,test fractions")
    i.add_argument("--challenge", choices=["singlecoil", "multicoil"], default="singlecoil")
    i.add_argument("--coils", type=int, default=8)
    i.add_argument("--no-phase", action="store_true", help="real images (no smooth random phase)")
    i.add_argument("--key", help="variable name inside .mat files (e.g. im_ori)")
    i.add_argument("--seed", type=int, default=0)
    i.set_defaults(func=cmd_data_images)
    m = ds.add_parser("maps", help="ESPIRiT coil maps for every multi-coil volume of a folder")
    m.add_argument("root", help="folder of multi-coil .h5 volumes")
    m.add_argument("--maps-dir", help="where to write (default <root>_maps)")
    m.add_argument("--calib-width", type=int, default=24)
    m.add_argument("--overwrite", action="store_true")
    m.set_defaults(func=cmd_data_maps)
    b = ds.add_parser("subset", help="a seeded subset of a folder's volumes (links or copies)")
    b.add_argument("src")
    b.add_argument("dst")
    b.add_argument("--volumes", type=int, required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--copy", action="store_true", help="copy instead of symbolic links")
    b.set_defaults(func=cmd_data_subset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mrijac", description="Learned MRI reconstruction with "
                                     "model-aware Jacobian regularization.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_data_parser(sub)
    try:
        from .train.cli import add_parsers
    except ImportError:  # training commands not installed in this build
        pass
    else:
        add_parsers(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rv = args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"mrijac: error: {msg}", file=sys.stderr)
        return 2
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())
