"""Seeded synthetic clusters of catalog devices, for benchmarks, tests and "what if it were bigger".

:func:`synthetic_cluster` draws ``n`` devices: edge kinds uniformly from the catalog (tier
``edge``: Raspberry Pi 4 / 5, Jetson Nano / Orin Nano, NUC, laptop) spread over
``max(1, n // 8)`` sites (or ``sites``), plus — when ``fog_every`` is set — one fog server
(``fog-server-64gb``, site ``fog``) in every ``fog_every`` devices. Links: each edge site gets
wired Ethernet (1 Gbit/s, 0.5 ms) or, with probability ``wifi_share``, Wi-Fi (200 Mbit/s, 3 ms);
the fog site 10 Gbit/s, 0.1 ms; the WAN between sites 100 Mbit/s, 20 ms (the presets' figures).
Everything comes from ``numpy.random.default_rng(seed)``: same arguments, same cluster.
"""

from __future__ import annotations

import numpy as np

from ..devices import ETHERNET, WAN, WIFI, Cluster, DeviceSpec, Link, load_catalog

__all__ = ["synthetic_cluster"]

FOG_LAN = Link(10_000.0, 0.1)


def synthetic_cluster(n: int, seed: int = 0, *, sites: int | None = None, fog_every: int | None = 16,
                      wifi_share: float = 0.25, name: str | None = None) -> Cluster:
    """``n`` seeded random devices (module docstring). ``fog_every=None``: edge devices only."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    kinds = sorted(k for k, v in load_catalog().items() if v["tier"] == "edge")
    n_sites = sites or max(1, n // 8)
    devices = []
    for i in range(n):
        if fog_every and i % fog_every == fog_every - 1:
            kind, site = "fog-server-64gb", "fog"
        else:
            kind, site = kinds[rng.integers(len(kinds))], f"site{rng.integers(n_sites)}"
        devices.append(DeviceSpec.from_kind(kind, f"d{i:03d}-{kind}", site=site))
    used = sorted({d.site for d in devices})
    lan = {s: FOG_LAN if s == "fog" else (WIFI if rng.random() < wifi_share else ETHERNET) for s in used}
    return Cluster(name=name or f"synthetic{n}-{seed}", devices=devices, lan=lan,
                   wan=WAN if len(used) > 1 else None,
                   description=f"{n} seeded random catalog devices (seed {seed})")
