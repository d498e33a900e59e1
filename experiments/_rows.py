"""Penalty settings shared by the experiment scripts' rows."""

from __future__ import annotations

# the default until 2026-11-28: one fused power step per visit (Lanczos JVPs by forward mode)
FORMER_DEFAULT = ("reg.n_iter=1", "reg.lanczos_jvp=forward")


def pin_power(rows: dict) -> None:
    """Give every row of ``{name: (label, overrides)}`` that does not set ``reg.n_iter`` /
    ``reg.lanczos_jvp`` the former default's, in place: rows measured before the default became
    ``reg.n_iter=3 reg.lanczos_jvp=fd`` (2026-11-28) keep the settings they were measured with,
    so a rerun repeats what their reports show."""
    for _, over in rows.values():
        for pin in FORMER_DEFAULT:
            if not any(o.startswith(pin.split("=")[0] + "=") for o in over):
                over.append(pin)
