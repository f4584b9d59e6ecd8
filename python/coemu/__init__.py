"""coemu: the Python side of coemu (docs/python.md).

    coemu.stream      StreamClient, server_info: the `coemu serve` stream protocol
    coemu.torch_data  StreamDataset: a torch IterableDataset over `coemu serve`
                      (splits itself over DataLoader workers and torch.distributed ranks)
    coemu.dataset     H5Dataset: a map-style dataset over dataset.h5 (validation)
    coemu.normalise   Normalisation: normalise / denormalise with /stats parameters

numpy, h5py and pyzmq are required; torch only for coemu.torch_data (and for
tensors from coemu.dataset).
"""
__version__ = "0.1.0"

from coemu.normalise import Normalisation  # noqa: F401
from coemu.stream import ProducerSilent, ProtocolError, StreamClient, server_info  # noqa: F401


def __getattr__(name):  # torch-dependent names, imported on first use
    if name == "StreamDataset":
        from coemu.torch_data import StreamDataset
        return StreamDataset
    if name == "H5Dataset":
        from coemu.dataset import H5Dataset
        return H5Dataset
    raise AttributeError(f"module 'coemu' has no attribute {name!r}")
