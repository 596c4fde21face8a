"""Read the variables of a CTranslate2 ``model.bin`` as NumPy arrays.

CTranslate2 runs its models as whole graphs and offers no access to intermediate activations or
to the weights; dubline needs Whisper's inner encoder layers (``whisper_encoder``), so it reads
the weights from the file. The layout is CTranslate2's binary format, version 6 (written by
``ctranslate2.specs.model_spec.ModelSpec._serialize``, CTranslate2 4.x): a header (version, spec
name, revision, variable count), then per variable its name, rank, shape, data type and raw
bytes, then name aliases. All integers are little-endian.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: CTranslate2's DataType enum order (include/ctranslate2/types.h); bfloat16 has no NumPy type.
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)
_SUPPORTED_VERSIONS = (6,)


def _string(stream: BinaryIO) -> str:
    (length,) = struct.unpack("<H", stream.read(2))
    return stream.read(length)[:-1].decode("utf-8")  # stored with a terminating NUL


def read_variables(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array (shape as stored) of every variable in ``path``, aliases resolved.

    Raises ValueError for a file of another binary version or a bfloat16 variable (a model
    converted with ``--quantization bfloat16``: convert it to float16 or float32 instead).
    """
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as stream:
        (version,) = struct.unpack("<I", stream.read(4))
        if version not in _SUPPORTED_VERSIONS:
            raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported "
                             f"(expected one of {_SUPPORTED_VERSIONS})")
        _string(stream)  # spec name, e.g. "WhisperSpec"
        (_revision, count) = struct.unpack("<II", stream.read(8))
        for _ in range(count):
            name = _string(stream)
            (rank,) = struct.unpack("<B", stream.read(1))
            shape = struct.unpack(f"<{rank}I", stream.read(4 * rank))
            (dtype_id, size) = struct.unpack("<BI", stream.read(5))
            data = stream.read(size)
            dtype = _DTYPES[dtype_id] if dtype_id < len(_DTYPES) else None
            if dtype is None:
                raise ValueError(f"{path}: variable {name!r} has data type {dtype_id} (bfloat16?), which NumPy cannot read")
            variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        (aliases,) = struct.unpack("<I", stream.read(4))
        for _ in range(aliases):
            alias, target = _string(stream), _string(stream)
            variables[alias] = variables[target]
    return variables
