"""The tensors the tritonclient tests send, for either of tritonclient's modules (http or grpc)."""

from __future__ import annotations

import base64
from types import ModuleType

import numpy as np


def bytes_tensor(triton: ModuleType, elements: list[bytes], name: str = "image", binary: bool = True):
    """A BYTES tensor of these elements (each an image file, or not), as tritonclient sends it by default:
    binary data; or (binary=False, tritonclient.http only) JSON, each element in base64 as the service asks."""
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(elements, dtype=object))
    else:
        tensor.set_data_from_numpy(np.array([base64.b64encode(e) for e in elements], dtype=object), binary_data=False)
    return tensor


def float_tensor(triton: ModuleType):
    """A 96x96 FP32 tensor: the model's input, which the service does not take (it takes image files)."""
    tensor = triton.InferInput("image", [1, 96, 96], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 96, 96), np.float32))
    return tensor
