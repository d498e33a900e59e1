"""Robustness: perturbations of the measurements (attacks.py) and the report (robustness.py)."""

import json

import pytest
import torch
from torch import nn

from mrijac.evaluate.attacks import amplification, first_order, pgd, project, random_perturbation, support
from mrijac.jacobian import explicit_jacobian, operator_matrix
from mrijac.models import Reconstructor
from mrijac.operators import MultiCoilMRI, SingleCoilMRI, batch_norm2

DT = torch.float64


def linear_problem(seed=0, B=2):
    """A linear reconstructor (conv of the zero-filled image's re/im channels, no bias, no
    normalisation): f(y) = W Aᴴ y, so its Jacobian is constant."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mask = (torch.rand(B, 1, 8, generator=g) < 0.5).to(DT)
    mask[..., 4] = 1
    A = SingleCoilMRI(mask, (6, 8))
    net = nn.Conv2d(2, 2, 3, padding=1, bias=False).to(DT)
    recon = Reconstructor(net, normalize=False, output="identity")
    y = A(A.random_input(generator=g, dtype=DT))
    return recon, y, A


def explicit_sigma(recon, y, A):
    f = recon.as_function(A)
    J = explicit_jacobian(f, y)
    JA = J @ operator_matrix(A).expand(J.shape[0], -1, -1)
    return torch.linalg.matrix_norm(JA, ord=2)


def test_linear_amplification_is_sigma_and_pgd_reaches_the_first_order_optimum():
    recon, y, A = linear_problem()
    sigma = explicit_sigma(recon, y, A)
    d, s = first_order(recon, y, A, tol=1e-8, max_iter=200)
    assert torch.allclose(s, sigma, rtol=1e-6)
    for eps in (0.01, 0.1, 1.0):  # linear: the gain does not depend on the size
        r = eps * batch_norm2(y)
        assert torch.allclose(amplification(recon, y, A, d, r), sigma, rtol=1e-6)
    # PGD on ‖f(y + e) − f(y)‖² from a random start climbs to σ·r (power iteration on JᵀJ)
    r = 0.1 * batch_norm2(y)
    sup = support(A, y)
    rand = random_perturbation(y, torch.ones_like(r), sup, torch.Generator().manual_seed(1))
    with torch.no_grad():
        f0 = recon(y, A)
    e = pgd(recon, y, A, f0, r, 300, [rand], sup)
    with torch.no_grad():
        gain = batch_norm2(recon(y + e, A) - f0) / r
    assert (gain / sigma).min() > 0.999


def test_perturbations_respect_the_budget_and_the_sampling():
    recon, y, A = linear_problem(B=3)
    sup = support(A, y)
    assert torch.equal(sup, A.mask.expand_as(sup))  # the support is the sampling mask
    r = 0.05 * batch_norm2(y)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(y.shape + (2,), generator=g, dtype=DT)
    e = project(torch.view_as_complex(big), r, sup)
    assert (batch_norm2(e) <= r * (1 + 1e-12)).all() and (e * (1 - sup)).abs().max() == 0
    d, _ = first_order(recon, y, A)
    found = pgd(recon, y, A, torch.zeros_like(recon(y, A)), r, 5, [d, None], sup)
    assert (batch_norm2(found) <= r * (1 + 1e-9)).all()
    assert (found * (1 - sup)).abs().max() == 0


def test_multicoil_and_varnet():
    """The perturbation lives in multi-coil k-space, on the sampled entries of every coil."""
    from mrijac.models import VarNetReconstructor

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    A = MultiCoilMRI.example(2, g)
    y = A(A.random_input(generator=g, dtype=DT)).to(torch.complex64)
    A = A.to(dtype=torch.float32)
    model = VarNetReconstructor((6, 8), num_cascades=1, chans=4, pools=1, sens_chans=2, sens_pools=1).float()
    sup = support(A, y)
    assert sup.shape == y.shape and torch.equal(sup[:, 0], sup[:, 1])  # same mask on every coil
    r = 0.05 * batch_norm2(y)
    d, s = first_order(model, y, A, tol=1e-3)
    assert (s > 0).all() and (d * (1 - sup)).abs().max() < 1e-6
    e = pgd(model, y, A, torch.zeros_like(model(y, A)), r, 3, [d], sup)
    assert (batch_norm2(e) <= r * (1 + 1e-5)).all() and (e * (1 - sup)).abs().max() == 0


@pytest.fixture(scope="module")
def tiny_run(synthetic_knee, tmp_path_factory):
    from mrijac.cli import main

    run = tmp_path_factory.mktemp("rob") / "run"
    over = ["data.batch_size=2", "data.num_workers=0", "model.chans=4", "model.num_pool_layers=2", "optim.epochs=1"]
    over += ["train.progress=false", "train.ref_slices=0", "train.ge_batches=1"]
    assert main(["train", f"data.root={synthetic_knee}", *over, "--out", str(run)]) == 0
    return run / "checkpoints" / "final.pt"


def test_robustness_command_is_seeded_and_reported(tiny_run, synthetic_knee, tmp_path, capsys):
    from mrijac.cli import main

    outs = []
    for name in ("a", "b"):
        args = ["robustness", "--checkpoint", str(tiny_run), "--data", str(synthetic_knee / "val"), "--quick"]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
        r = json.loads((tmp_path / name / "robustness.json").read_text())
        for k in ("seconds", "seconds_per_slice_step", "checkpoint"):
            r.pop(k)
        outs.append(r)
    assert outs[0] == outs[1]  # the same command twice: identical numbers
    r = outs[0]
    assert r["slices"] == 2 and set(r["curves"]) == {"0.01", "0.05"}
    c = r["curves"]["0.05"]
    # PGD starts from the first-order direction: it never does worse than it, nor than random
    assert c["adversarial_psnr"] <= c["first_order_psnr"] + 1e-9
    assert c["adversarial_psnr"] <= c["random_psnr"] + 1e-9
    assert [s["setting"] for s in r["shifts"]] == ["trained: random 4×", "random 8×"]
    assert set(r["features"]) == {"1", "3"} and all(-1 < f["kept_zero_filled"] < 2 for f in r["features"].values())
    md = (tmp_path / "a" / "report.md").read_text()
    assert "## Worst-case perturbations" in md and "## Small features" in md and "## Sampling shift" in md
    for fig in ("robustness.png", "worst.png"):
        assert (tmp_path / "a" / "figures" / fig).exists()
    assert (
        main(
            [
                "robustness",
                "--checkpoint",
                str(tiny_run),
                "--data",
                str(synthetic_knee / "val"),
                "--out",
                str(tmp_path / "c"),
                "--eps",
                "0,2",
            ]
        )
        == 2
    )
    assert "--eps must be numbers in (0, 1)" in capsys.readouterr().err


def test_evaluate_with_robustness_feeds_compare(tiny_run, synthetic_knee, tmp_path):
    from mrijac.evaluate.compare import compare_runs
    from mrijac.evaluate.runner import evaluate_checkpoint

    r = evaluate_checkpoint(
        tiny_run, synthetic_knee / "val", tmp_path / "ev", jac_batches=0, progress=False, robustness="quick"
    )
    assert set(r["robustness"]["curves"]) == {"0.01", "0.05"}
    assert (tmp_path / "ev" / "robustness" / "report.html").exists()
    table = compare_runs([tmp_path / "ev"], tmp_path / "cmp")
    assert "adv_psnr_eps0.05" in table[0] and "kept_r3" in table[0]
    assert (tmp_path / "cmp" / "figures" / "robustness.png").exists()
