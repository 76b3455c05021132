"""Structural check of .safetensors files before anything loads them.

A truncated download or a flipped header byte otherwise surfaces deep inside transformers as
an opaque error (or, for a short tail, not at all until a tensor is read).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from modelkiln.errors import CheckpointError

_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


# How pickle-based PyTorch weights start: torch.save's zip archive, or a bare pickle stream
# from older torch.save / pickle.dump: PROTO 2..5, then the first opcode (FRAME for 4 and 5;
# LONG1 for torch's magic number, EMPTY_DICT, GLOBAL, EMPTY_LIST or MARK for 2 and 3).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = (2, 3, 4, 5)
_PICKLE_FIRST_OPS = b"\x95\x8a}c](\x80"


def check_safetensors(path: Path) -> None:
    size = path.stat().st_size
    hint = "re-download or re-save the checkpoint"
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            _refuse_pickle(path, head)
            raise CheckpointError(f"{path} is truncated ({size} bytes): {hint}")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, _MAX_HEADER):
            _refuse_pickle(path, head)
            raise CheckpointError(
                f"{path} is corrupt or truncated: its header claims {n} bytes but the file "
                f"has {size}: {hint}"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError):
            _refuse_pickle(path, head)
            raise CheckpointError(
                f"{path} is corrupt: its header is not valid JSON: {hint}"
            ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is corrupt: its header is not a JSON object: {hint}")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(x) for x in info["data_offsets"])
            expected = _DTYPE_BYTES[info["dtype"]] * math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path} is corrupt: tensor '{name}' has a malformed header entry: {hint}"
            ) from None
        if stop - begin != expected or begin < 0:
            raise CheckpointError(
                f"{path} is corrupt: tensor '{name}' spans {stop - begin} bytes but its dtype "
                f"and shape need {expected}: {hint}"
            )
        end = max(end, stop)
    if 8 + n + end != size:
        raise CheckpointError(
            f"{path} is truncated or corrupt: the header describes {8 + n + end} bytes, "
            f"the file has {size}: {hint}"
        )


def _refuse_pickle(path: Path, head: bytes) -> None:
    """A file that is not valid safetensors but starts like a pickle is named as such (a
    `torch.save` file renamed `.safetensors` otherwise reads as an absurd header size)."""
    if head.startswith(_ZIP_MAGIC) or (
        len(head) >= 3
        and head[0] == 0x80
        and head[1] in _PICKLE_PROTOCOLS
        and head[2] in _PICKLE_FIRST_OPS
    ):
        raise CheckpointError(
            f"{path} is a pickle file (PyTorch torch.save format) named .safetensors, which "
            "can run code when loaded; convert it with safetensors.torch.save_file, or name "
            "it pytorch_model.bin and pass --allow-pickle"
        )
