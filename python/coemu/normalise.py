"""coemu.normalise: the COEmuNet normalisation of inputs and targets, forward
and inverse, with the parameters of a dataset's /stats group (or of the
stream's INFO reply, which carries the same numbers).

The same operations, in the same order and precisions, as
stats/transforms.c (docs/statistics.md), so `normalise_*` here gives what
`coemu serve` sends with normalised=True (logarithms in double rounded to
float32; the C library's and numpy's double logarithms may differ in the
last bit, which changes a float32 result by at most one unit in the last
place in rare cases):

    v_z     (v - mean) / std
    T, n    (ln x - min) / scale                  scale = median(ln x - min)
    I       per sample: zeros and negatives (round-off: the exact
            intensity is >= 0) -> the sample's smallest positive value,
            t = max(ln I, clip), (t - min) / scale  (minmax: clip -40,
            scale = max - min; median: no clip)

The inverses undo everything except the zero replacement and the clip.
Inputs are (..., 3, n, n, n) [v_z, T, n_CO], targets (..., F, n, n); numpy
arrays give numpy float32 arrays; torch tensors give torch float32 tensors
on the same device (computed in float64 there).

    from coemu.normalise import Normalisation
    norm = Normalisation.from_h5("out/dataset.h5")     # or .from_info(server_info(ep))
    I = norm.denormalise_targets(model(x))              # back to intensities
"""
import math

import numpy as np

_FIELDS = ("vz_mean", "vz_std", "lnT_min", "lnT_scale", "lnn_min", "lnn_scale", "I_mode",
           "lnI_clip", "lnI_min", "lnI_scale", "outlier_vz_range")


def _is_torch(x):
    return type(x).__module__.startswith("torch")


class Normalisation:
    """The normalisation parameters (the attributes of /stats)."""

    def __init__(self, vz_mean, vz_std, lnT_min, lnT_scale, lnn_min, lnn_scale, I_mode="minmax",
                 lnI_clip=-40.0, lnI_min=0.0, lnI_scale=1.0, outlier_vz_range=0.0):
        self.vz_mean, self.vz_std = float(vz_mean), float(vz_std)
        self.lnT_min, self.lnT_scale = float(lnT_min), float(lnT_scale)
        self.lnn_min, self.lnn_scale = float(lnn_min), float(lnn_scale)
        if I_mode not in ("minmax", "median"):
            raise ValueError(f"I_mode '{I_mode}', expected minmax or median")
        self.I_mode = I_mode
        self.lnI_clip = -math.inf if lnI_clip is None else float(lnI_clip)
        self.lnI_min, self.lnI_scale = float(lnI_min), float(lnI_scale)
        self.outlier_vz_range = float(outlier_vz_range or 0.0)
        for k in ("vz_std", "lnT_scale", "lnn_scale", "lnI_scale"):
            if not getattr(self, k) > 0:
                raise ValueError(f"normalisation: {k} = {getattr(self, k)!r}, expected > 0")

    @classmethod
    def from_dict(cls, d):
        missing = [k for k in _FIELDS if k not in d]
        if missing:
            raise ValueError(f"normalisation parameters lack {', '.join(missing)}")
        return cls(**{k: d[k] for k in _FIELDS})

    @classmethod
    def from_h5(cls, path_or_file):
        """From the /stats group of a dataset.h5 (a path or an open h5py.File)."""
        import h5py
        own = not isinstance(path_or_file, h5py.File)
        f = h5py.File(path_or_file, "r") if own else path_or_file
        try:
            if "stats" not in f:
                raise ValueError(f"{f.filename}: no /stats group: run `coemu stats` on the dataset")
            a = f["stats"].attrs
            d = {}
            for k in _FIELDS:
                if k not in a:
                    raise ValueError(f"{f.filename}: /stats has no attribute {k}")
                v = a[k]
                d[k] = v.decode() if isinstance(v, bytes) else (str(v) if k == "I_mode" else float(v))
            return cls.from_dict(d)
        finally:
            if own:
                f.close()

    @classmethod
    def from_info(cls, info):
        """From the dict coemu.stream.server_info() returns."""
        n = info.get("normalisation")
        if n is None:
            raise ValueError("the server's dataset has no /stats: no normalisation parameters "
                             "(run `coemu stats` on it)")
        return cls.from_dict(n)

    def as_dict(self):
        return {k: getattr(self, k) for k in _FIELDS}

    def __eq__(self, other):
        return isinstance(other, Normalisation) and self.as_dict() == other.as_dict()

    def __repr__(self):
        return "Normalisation(" + ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items()) + ")"

    # ---- numpy ----
    @staticmethod
    def _ln32(x):  # (double)(float)log((double)x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(x.astype(np.float64)).astype(np.float32).astype(np.float64)

    def _np_norm_inputs(self, x):
        x = np.asarray(x, dtype=np.float32)
        out = np.empty(x.shape, np.float32)
        out[..., 0, :, :, :] = (x[..., 0, :, :, :].astype(np.float64) - self.vz_mean) / self.vz_std
        out[..., 1, :, :, :] = (self._ln32(x[..., 1, :, :, :]) - self.lnT_min) / self.lnT_scale
        out[..., 2, :, :, :] = (self._ln32(x[..., 2, :, :, :]) - self.lnn_min) / self.lnn_scale
        return out

    def _np_denorm_inputs(self, t):
        t = np.asarray(t, dtype=np.float32)
        out = np.empty(t.shape, np.float32)
        out[..., 0, :, :, :] = t[..., 0, :, :, :].astype(np.float64) * self.vz_std + self.vz_mean
        with np.errstate(over="ignore"):
            out[..., 1, :, :, :] = np.exp(t[..., 1, :, :, :].astype(np.float64) * self.lnT_scale
                                          + self.lnT_min)
            out[..., 2, :, :, :] = np.exp(t[..., 2, :, :, :].astype(np.float64) * self.lnn_scale
                                          + self.lnn_min)
        return out

    def _np_ln_intensity(self, I):
        """stats_ln_intensity per sample (the last three axes are one sample)."""
        I = np.asarray(I, dtype=np.float32)
        flat = I.reshape((-1,) + I.shape[-3:]) if I.ndim >= 3 else I.reshape(1, -1)
        pos = np.where(flat > 0, flat, np.float32(np.inf))
        smallest = pos.reshape(flat.shape[0], -1).min(axis=1)
        smallest = np.where(np.isinf(smallest), np.float32(0), smallest).astype(np.float32)
        shp = (flat.shape[0],) + (1,) * (flat.ndim - 1)
        v = np.where(flat <= 0, smallest.reshape(shp), flat).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.log(v)
        t = np.where(t < self.lnI_clip, self.lnI_clip, t)  # NaN stays NaN
        return t.astype(np.float32).reshape(I.shape)

    def _np_norm_targets(self, I):
        t = self._np_ln_intensity(I).astype(np.float64)
        return ((t - self.lnI_min) / self.lnI_scale).astype(np.float32)

    def _np_denorm_targets(self, t, dtype=np.float32):
        with np.errstate(over="ignore"):
            return np.exp(np.asarray(t, dtype=np.float32).astype(np.float64) * self.lnI_scale
                          + self.lnI_min).astype(dtype)

    # ---- torch (float64 on the tensor's device) ----
    def _torch_apply(self, fn, x):
        import torch
        return torch.from_numpy(fn(x.detach().cpu().numpy())).to(x.device)

    def _t_denorm_inputs(self, t):
        import torch
        d = t.to(torch.float64)
        out = torch.empty_like(d)
        out[..., 0, :, :, :] = d[..., 0, :, :, :] * self.vz_std + self.vz_mean
        out[..., 1, :, :, :] = torch.exp(d[..., 1, :, :, :] * self.lnT_scale + self.lnT_min)
        out[..., 2, :, :, :] = torch.exp(d[..., 2, :, :, :] * self.lnn_scale + self.lnn_min)
        return out.to(torch.float32)

    def _t_denorm_targets(self, t):
        import torch
        return torch.exp(t.to(torch.float64) * self.lnI_scale + self.lnI_min).to(torch.float32)

    # ---- the public four ----
    def normalise_inputs(self, x):
        """(..., 3, n, n, n) physical v_z [m/s], T [K], n_CO -> normalised."""
        return self._torch_apply(self._np_norm_inputs, x) if _is_torch(x) else self._np_norm_inputs(x)

    def denormalise_inputs(self, t):
        return self._t_denorm_inputs(t) if _is_torch(t) else self._np_denorm_inputs(t)

    def normalise_targets(self, I):
        """(..., F, n, n) intensities -> normalised (per-sample zero replacement)."""
        return self._torch_apply(self._np_norm_targets, I) if _is_torch(I) else self._np_norm_targets(I)

    def denormalise_targets(self, t):
        """Normalised (..., F, n, n) -> intensities (differentiable for torch tensors)."""
        return self._t_denorm_targets(t) if _is_torch(t) else self._np_denorm_targets(t)
