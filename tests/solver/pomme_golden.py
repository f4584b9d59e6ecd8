#!/usr/bin/env python3
"""Golden images from the real Pomme (Magritte-code/pomme, PyPI `pomme`),
Line.LTE_image_along_last_axis, for tests/solver/test_pomme.c.

Run with a Python that has pomme and torch (not needed by the test suite):
    python3 tests/solver/pomme_golden.py tests/data/lamda/co.dat tests/data/solver
Writes pomme<K>_{vz,T,n,freqs,params,image}.npy for K = 1, 2, 3;
params = [dx, vturb, background, mass_amu, lamda_transition].
"""
import sys

import numpy as np
import torch
import pomme
from pomme.lines import Line

lamda, out = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
c = 299792458.0


def smooth(rng, shape, nmodes=4):
    """A smooth field in [-1, 1]: the mean of random Fourier modes."""
    x, y, z = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    f = np.zeros(shape)
    for _ in range(nmodes):
        k = 2 * np.pi * rng.uniform(0, 2.5, 3) / np.array(shape)
        f += np.sin(k[0] * x + k[1] * y + k[2] * z + rng.uniform(0, 2 * np.pi))
    return f / nmodes


def cube(seed, shape):
    rng = np.random.default_rng(seed)
    T = 10 ** (2.238 + 1.239 * smooth(rng, shape))       # 10..3000 K
    n = 10 ** (8.5 + 4.5 * smooth(rng, shape))           # 1e4..1e13 m^-3
    v = 1e4 * smooth(rng, shape)                         # +-10 km/s
    return v, T, n


line = Line("CO", 1, datafile=lamda, molar_mass=28.0)   # 0-based: LAMDA transition 2 (J=2-1)
nu0 = line.frequency
dd = 300 * (31 - 1) / 2 / c
coemunet = torch.linspace(nu0 - nu0 * dd, nu0 + nu0 * dd, 31, dtype=torch.float64)[12:19]
velocity = torch.tensor(nu0 * (1 - np.arange(-6000.0, 6001.0, 1000.0) / c), dtype=torch.float64)

cases = [  # seed, shape, dx, vturb, background, frequencies
    (1, (12, 12, 24), 2e11, 0.0, 0.0, coemunet),
    (2, (10, 12, 32), 5e11, 150.0, 1e-16, velocity),
    (3, (8, 8, 40), 1e11, 0.0, 0.0, velocity),
]
for k, (seed, shape, dx, vt, bdy, freqs) in enumerate(cases, 1):
    v, T, n = cube(seed, shape)
    img = line.LTE_image_along_last_axis(
        abundance=torch.from_numpy(n), temperature=torch.from_numpy(T),
        v_turbulence=torch.full(shape, vt, dtype=torch.float64),
        velocity_los=torch.from_numpy(v), frequencies=freqs,
        dx=torch.tensor(dx, dtype=torch.float64), img_bdy=torch.tensor(bdy, dtype=torch.float64))
    for name, a in [("vz", v), ("T", T), ("n", n), ("freqs", freqs.numpy()),
                    ("params", np.array([dx, vt, bdy, 28.0, 2.0])), ("image", img.numpy())]:
        np.save(f"{out}/pomme{k}_{name}.npy", np.ascontiguousarray(a, dtype=np.float64))
    print(f"case {k}: {shape} {len(freqs)} channels, max I {float(img.max()):.4g}")
print("pomme", getattr(pomme, "__version__", "?"), "torch", torch.__version__, "numpy", np.__version__)
