#!/usr/bin/env python3
"""coemu.dataset.H5Dataset and coemu.normalise on a real dataset:

- H5Dataset(split) has the split's valid samples in ascending order, and its
  items equal h5py reads (also through a DataLoader with 2 workers, and
  normalised = coemu.normalise of the h5py rows);
- a sample whose shard was altered is refused (its /checksums row), naming it;
  a missing or truncated shard is refused when the dataset is made, naming it;
- Normalisation.from_h5 equals the /stats attributes; from_info (the
  stream's INFO) equals from_h5;
- round trip: denormalise(normalise(x)) = x within the bound that float32
  rounding of the normalised value allows (derived per element below), for
  numpy and for torch tensors; torch's denormalise_targets is differentiable.
"""
import os
import shutil
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fixture  # noqa: E402
import h5py  # noqa: E402

from coemu.dataset import H5Dataset  # noqa: E402
from coemu.normalise import Normalisation  # noqa: E402
from coemu.stream import server_info  # noqa: E402
from pycheck import check, report  # noqa: E402

TORCH = fixture.have_torch()
if TORCH:
    import torch
else:
    print("torch parts skipped: torch missing (apt-get install python3-torch)")

F32 = 2.0 ** -24  # float32 unit roundoff


def roundtrip_bound(t, scale):
    """|x' - x| / x for x' = exp(t' scale + min), t' = float32(t): t' is off
    by at most half an ulp of t (float32 rounding), so x' by a factor
    exp(scale ulp(t) / 2); then x' is rounded to float32 (F32), and the
    float32 ln inside t is off by half an ulp of ln x (already in t, scaled
    by 1/scale, so scale * that / scale): the relative bound per element."""
    return scale * np.spacing(np.abs(t).astype(np.float32)).astype(np.float64) / 2 + 2 * F32


with tempfile.TemporaryDirectory() as tmp:
    d = fixture.make_dataset(tmp)
    h5 = os.path.join(d, "dataset.h5")
    with h5py.File(h5, "r") as f:
        split, valid = f["split"][:], f["valid"][:]
        X, Y = f["inputs"][:], f["targets"][:]
        attrs = dict(f["stats"].attrs)
    val = [i for i in range(len(split)) if split[i] == 1 and valid[i] == 1]

    # ---- map-style dataset == h5py ----
    ds = H5Dataset(d, split="validation", with_ids=True, as_numpy=True)
    check(len(ds) == len(val) and list(ds.indices) == val, f"validation: {len(ds)} samples")
    ok = all(np.array_equal(ds[k][0], X[i]) and np.array_equal(ds[k][1], Y[i]) and ds[k][2] == i
             for k, i in enumerate(val))
    check(ok, "items equal h5py reads")
    check(len(H5Dataset(h5, split="all")) == int(valid.sum()), "split all: every valid sample")
    try:
        ds[len(ds)]
        check(False, "index past the end refused")
    except IndexError:
        check(True, "index past the end refused")
    for bad, what in (({"split": "valdation"}, "expected train, validation"),):
        try:
            H5Dataset(d, **bad)
            check(False, f"bad argument {bad} refused")
        except ValueError as e:
            check(what in str(e), f"bad argument message: {e}")

    # ---- Normalisation from /stats and from the stream ----
    norm = Normalisation.from_h5(h5)
    check(all(getattr(norm, k) == float(attrs[k]) for k in
              ("vz_mean", "vz_std", "lnT_min", "lnT_scale", "lnn_min", "lnn_scale", "lnI_clip",
               "lnI_min", "lnI_scale")) and norm.I_mode == attrs["I_mode"].decode(),
          "from_h5 equals the /stats attributes")
    ep = f"ipc://{tmp}/s.sock"
    p = fixture.serve(d, ep, "--ranks", "3", "--batch", "2")
    info = server_info(ep)
    p.terminate()
    _, err = fixture.finish(p)
    check(" 0 hellos," in err and " 0 consumers dropped" in err,
          f"INFO opens no session: {err[-300:]}")
    check(info["world"] == 3 and info["in_shape"] == [3, 8, 8, 8] and info["out_shape"] == [3, 8, 8]
          and info["batch"] == 2 and info["split"] == "train" and info["epochs"] == 0,
          f"INFO: {info}")
    check(Normalisation.from_info(info) == norm, "from_info (the stream) equals from_h5 (/stats)")

    # normalised items == normalise of the rows
    nds = H5Dataset(d, split="validation", normalised=True, as_numpy=True)
    ok = all(np.array_equal(nds[k][0], norm.normalise_inputs(X[i])) and
             np.array_equal(nds[k][1], norm.normalise_targets(Y[i])) for k, i in enumerate(val))
    check(ok, "normalised items equal normalise() of the h5py rows")
    # a negative intensity (round-off: the exact one is >= 0) counts as a
    # zero, as in stats/norm_body.h: no NaN in the targets
    yneg = Y[val[0]].copy()
    yz = yneg.copy()
    yneg.flat[::5] = -1e-29
    yz.flat[::5] = 0
    tn = norm.normalise_targets(yneg)
    check(not np.isnan(tn).any() and np.array_equal(tn, norm.normalise_targets(yz)),
          "negative intensities normalise as zeros, not NaN")

    # ---- round trip within the derived bound ----
    tx = norm.normalise_inputs(X)
    back = norm.denormalise_inputs(tx).astype(np.float64)
    x64 = X.astype(np.float64)
    # v_z: t = (v - mean)/std rounded: |dv| <= std ulp(t)/2 + ulp(v) (twice rounded)
    bv = norm.vz_std * np.spacing(np.abs(tx[:, 0])).astype(np.float64) / 2 + \
        2 * np.spacing(np.abs(X[:, 0])).astype(np.float64)
    check(np.all(np.abs(back[:, 0] - x64[:, 0]) <= bv), "v_z round trip within bound")
    for c, scale in ((1, norm.lnT_scale), (2, norm.lnn_scale)):
        # float32 ln x: half an ulp of ln x, i.e. a relative error of ulp(ln x)/2 in x
        lnx = np.log(x64[:, c]).astype(np.float32)
        b = roundtrip_bound(tx[:, c], scale) + np.spacing(np.abs(lnx)).astype(np.float64) / 2
        rel = np.abs(back[:, c] - x64[:, c]) / x64[:, c]
        check(np.all(rel <= b), f"channel {c} round trip: max rel {rel.max():.3g} "
                                f"(bound {b.max():.3g})")
    ty = norm.normalise_targets(Y)
    by = norm.denormalise_targets(ty).astype(np.float64)
    y64 = Y.astype(np.float64)
    m = (Y > 0) & (np.log(np.maximum(y64, 1e-300)) > norm.lnI_clip)  # invertible entries
    lny = np.log(np.maximum(y64, 1e-300)).astype(np.float32)
    b = roundtrip_bound(ty, norm.lnI_scale) + np.spacing(np.abs(lny)).astype(np.float64) / 2
    rel = np.abs(by - y64) / np.maximum(y64, 1e-300)
    check(m.sum() > 0 and np.all(rel[m] <= b[m]),
          f"targets round trip on {m.sum()} unclipped values: max rel {rel[m].max():.3g}")
    check(np.all(by[~m] <= np.exp(norm.lnI_clip) * (1 + 1e-6)),
          "clipped values come back at most at the clip")

    if TORCH:
        tt = norm.normalise_inputs(torch.from_numpy(X))
        check(isinstance(tt, torch.Tensor) and np.array_equal(tt.numpy(), tx),
              "torch normalise_inputs == numpy")
        check(np.array_equal(norm.denormalise_inputs(tt).numpy(), norm.denormalise_inputs(tx)),
              "torch denormalise_inputs == numpy")
        yt = torch.from_numpy(ty).requires_grad_(True)
        out = norm.denormalise_targets(yt)
        check(np.array_equal(out.detach().numpy(), norm.denormalise_targets(ty)),
              "torch denormalise_targets == numpy")
        out.sum().backward()
        check(yt.grad is not None and torch.all(yt.grad > 0), "denormalise_targets is differentiable")
        tds = H5Dataset(d, split="validation", with_ids=True)
        seen = []
        for x, y, i in torch.utils.data.DataLoader(tds, batch_size=3, num_workers=2):
            for k in range(len(i)):
                seen.append(int(i[k]))
                check(np.array_equal(x[k].numpy(), X[int(i[k])]) and
                      np.array_equal(y[k].numpy(), Y[int(i[k])]), f"DataLoader item {int(i[k])}")
        check(seen == val, "DataLoader with 2 workers: the split in order")

    # ---- a damaged shard is refused ----
    d2 = os.path.join(tmp, "damaged")
    shutil.copytree(d, d2)
    shards = sorted(os.listdir(os.path.join(d2, "shards")))
    with h5py.File(os.path.join(d2, "shards", shards[0]), "r+") as f:
        assert val[0] < f["targets"].shape[0]  # shard 0 holds samples 0..15
        f["targets"][val[0], 0, 0, 0] += 1.0
    with h5py.File(os.path.join(d2, "dataset.h5"), "r") as f:
        changed = [i for i in range(len(Y)) if not np.array_equal(f["targets"][i], Y[i])]
    check(len(changed) == 1, f"one sample altered: {changed}")
    dam = H5Dataset(d2, split="all", as_numpy=True)
    k = list(dam.indices).index(changed[0])
    try:
        dam[k]
        check(False, "a damaged sample is refused")
    except ValueError as e:
        # the file and the shard are named, not only the sample
        shard0 = os.path.join(d2, "shards", shards[0])
        row = changed[0]  # shard 0 holds samples 0..15 at rows 0..15
        check(f"sample {changed[0]}" in str(e) and "/targets does not match its checksum" in str(e)
              and os.path.join(d2, "dataset.h5") in str(e)
              and f"(shard {shard0}, its row {row})" in str(e), f"message: {e}")
    check(np.array_equal(dam[(k + 1) % len(dam)][1], Y[dam.indices[(k + 1) % len(dam)]]),
          "the others still read")

    # ---- a missing or truncated shard is refused when the dataset is made,
    # naming it: HDF5 reads its /valid as 0, which dropped its samples from
    # the split without a word (a shorter split) ----
    shards = sorted(os.listdir(os.path.join(d2, "shards")))
    d3 = os.path.join(tmp, "missing")
    shutil.copytree(d, d3)
    os.remove(os.path.join(d3, "shards", shards[1]))
    for split in ("all", "train"):
        try:
            n = len(H5Dataset(d3, split=split, as_numpy=True))
            check(False, f"a missing shard is refused (split {split}: {n} samples of {len(Y)})")
        except Exception as e:  # noqa: BLE001
            check(isinstance(e, ValueError) and shards[1] in str(e) and "missing" in str(e) and "samples 16..31" in str(e),
                  f"missing shard, split {split}: {e}")
    d4 = os.path.join(tmp, "truncated")
    shutil.copytree(d, d4)
    with open(os.path.join(d4, "shards", shards[2]), "r+b") as f:
        f.truncate(4096)
    try:
        H5Dataset(os.path.join(d4, "dataset.h5"), split="all", as_numpy=True)
        check(False, "a truncated shard is refused")
    except Exception as e:  # noqa: BLE001 - before: h5py's OSError, naming no shard
        check(isinstance(e, ValueError) and shards[2] in str(e) and "truncated" in str(e), f"truncated shard: {e}")

report()
