"""The tensors the tritonclient tests send, for either of tritonclient's modules (http or grpc)."""

from __future__ import annotations

from types import ModuleType

import numpy as np


def bytes_tensor(triton: ModuleType, elements: list[bytes], name: str = "image"):
    """A BYTES tensor of these elements (each an image file, or not), as tritonclient sends it by default."""
    tensor = triton.InferInput(name, [len(elements)], "BYTES")
    tensor.set_data_from_numpy(np.array(elements, dtype=object))
    return tensor


def float_tensor(triton: ModuleType):
    """A 96x96 FP32 tensor: the model's input, which the service does not take (it takes image files)."""
    tensor = triton.InferInput("image", [1, 96, 96], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 96, 96), np.float32))
    return tensor
