"""coemu.dataset: a map-style dataset over a coemu dataset.h5 (validation,
testing, anything that wants random access rather than a stream).

    from coemu.dataset import H5Dataset
    val = H5Dataset("out", split="validation", normalised=True)
    x, y = val[0]                      # torch tensors when torch is installed
    loader = torch.utils.data.DataLoader(val, batch_size=16, num_workers=2)

The split's samples are those whose /split is the split's code (train 0,
validation 1, test 2; "all": every sample) and whose /valid is 1 where that
dataset exists, in ascending order: the same list `coemu serve --split` and
`coemu eval` use. Every sample read is checked against its /checksums row
(HDF5 reads a missing shard as zeros; check=False skips it), and a shard
missing or shorter than manifest.json says is refused when the dataset is
made, naming it (its /valid would read 0: a shorter split). The HDF5 file
is opened lazily in each process (DataLoader workers included), never
shared across a fork.
"""
import os

import numpy as np

from coemu.normalise import Normalisation
from coemu.stream import check_dataset_sample

try:
    import torch
    from torch.utils.data import Dataset as _Base
except ImportError:  # torch is optional: then items are numpy arrays
    torch = None
    _Base = object

SPLITS = {"train": 0, "validation": 1, "test": 2, "all": None}


def _h5path(path):
    return os.path.join(path, "dataset.h5") if os.path.isdir(path) else path


def _check_shards(h5path, f):
    """Refuse a dataset with a shard missing or shorter than its manifest
    says, naming it and its samples, as coemu's own readers do
    (docs/dataset-format.md, "Faults"): HDF5 reads a missing shard as zeros,
    so its /valid would read 0 and its samples would silently leave the
    split. The shards come from manifest.json beside dataset.h5 (a stat
    each), else from the virtual datasets' source files."""
    base = os.path.dirname(os.path.abspath(h5path))
    man = os.path.join(base, "manifest.json")
    shards = []
    if os.path.isfile(man):
        import json
        with open(man, encoding="utf-8") as m:
            for s in json.load(m).get("shards", []):
                shards.append((s["file"], int(s["first"]), int(s["count"]), s.get("bytes")))
    elif "targets" in f and f["targets"].is_virtual:
        names = sorted({v.file_name for v in f["targets"].virtual_sources()} - {"."})
        shards = [(n, None, None, None) for n in names]
    for name, first, count, size in shards:
        path = name if os.path.isabs(name) else os.path.join(base, name)
        what = f"shard {path}" + (f" (samples {first}..{first + count - 1})" if count else "")
        try:
            got = os.stat(path).st_size
        except OSError as e:
            raise ValueError(f"{h5path}: {what}: missing or unreadable ({e.strerror}); the "
                             f"dataset is damaged (coemu verify tells more; rerunning the same "
                             f"generate job remakes the shard)") from None
        if size is not None and got < int(size):
            raise ValueError(f"{h5path}: {what}: {got} bytes, the manifest says {size}: "
                             f"truncated; the dataset is damaged (coemu verify tells more; "
                             f"rerunning the same generate job remakes the shard)")


class H5Dataset(_Base):
    """Samples of one split of DATASET_DIR/dataset.h5 (or a dataset.h5 path).
    Items are (inputs (3, n, n, n), targets (F, n, n)) float32, plus the
    dataset index when with_ids; normalised with the dataset's /stats when
    normalised=True. torch tensors when torch is installed (as_numpy=True:
    numpy arrays)."""

    def __init__(self, path, split="validation", normalised=False, check=True, with_ids=False,
                 as_numpy=False):
        import h5py
        if split not in SPLITS:
            raise ValueError(f"split '{split}': expected train, validation, test or all")
        self.path, self.split = _h5path(path), split
        self.check, self.with_ids = check, with_ids
        self.as_numpy = as_numpy or torch is None
        if not os.path.exists(self.path):
            base = str(path)
            made = os.path.isdir(base) and any(
                os.path.exists(os.path.join(base, n)) for n in ("job.yaml", "plan.json"))
            raise ValueError(f"{self.path}: no such file: " + (
                f"{base} is a dataset coemu generate has not finished (run or resume it)" if made
                else "expected a dataset directory (or its dataset.h5), as coemu generate writes it"))
        with h5py.File(self.path, "r") as f:
            for name in ("inputs", "targets"):
                if name not in f:
                    raise ValueError(f"{self.path}: no /{name} dataset (is it a coemu dataset "
                                     f"stored with inputs?)")
            _check_shards(self.path, f)
            n = f["targets"].shape[0]
            keep = np.ones(n, bool)
            if SPLITS[split] is not None:
                if "split" not in f:
                    raise ValueError(f"{self.path}: no /split dataset, but split '{split}' was asked for")
                keep &= f["split"][:] == SPLITS[split]
            if "valid" in f:
                keep &= f["valid"][:] == 1
            if check and "checksums" not in f:
                raise ValueError(f"{self.path}: no /checksums (dataset format 1): run "
                                 f"`coemu verify`, or pass check=False")
            self.in_shape = tuple(f["inputs"].shape[1:])
            self.out_shape = tuple(f["targets"].shape[1:])
        self.indices = np.flatnonzero(keep)
        if len(self.indices) == 0:
            raise ValueError(f"{self.path}: split '{split}' has no samples")
        self.norm = Normalisation.from_h5(self.path) if normalised else None
        self._f = None
        self._pid = None

    def __len__(self):
        return len(self.indices)

    def _file(self):
        if self._f is None or self._pid != os.getpid():
            import h5py
            self._f = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._f

    def __getitem__(self, k):
        if not -len(self) <= k < len(self):
            raise IndexError(f"index {k} out of range for {len(self)} samples")
        i = int(self.indices[k])
        f = self._file()
        x = f["inputs"][i]
        y = f["targets"][i]
        if self.check:
            check_dataset_sample(f, i, x, y)
        if self.norm is not None:
            x = self.norm.normalise_inputs(x)
            y = self.norm.normalise_targets(y)
        if not self.as_numpy:
            x, y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        return (x, y, i) if self.with_ids else (x, y)

    def __getstate__(self):  # the open file never travels to a worker
        d = dict(self.__dict__)
        d["_f"], d["_pid"] = None, None
        return d

    def close(self):
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None
