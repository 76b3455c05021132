"""The Open Inference Protocol (KServe v2) over HTTP: tensors in and out of request bodies.

A request body is a JSON document, optionally followed by raw tensor bytes (the binary
tensor data extension: the JSON's length is in the `Inference-Header-Content-Length`
header, each binary input carries `parameters.binary_data_size`, the bytes follow in input
order). Outputs go back as JSON `data` or, when asked for (`binary_data_output` on the
request, `binary_data` per output), as raw bytes after the JSON, the same way.

Pure functions over bytes and numpy arrays; every malformed request raises ProtocolError
with a message naming what was wrong.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelkiln.errors import UserInputError


class ProtocolError(UserInputError):
    """A request the server cannot take; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# v2 datatype names <-> numpy dtype names (BYTES is a numpy object array of bytes).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}
MAX_ELEMENTS = 1 << 28  # elements per input tensor (1 GiB of fp32)


def datatype_of(dtype: str | np.dtype) -> str:
    """The v2 datatype name of a numpy dtype."""
    name = np.dtype(dtype).name
    if name not in NUMPY_TO_DATATYPE:
        raise ProtocolError(f"dtype {name} has no Open Inference Protocol datatype", 500)
    return NUMPY_TO_DATATYPE[name]


@dataclass
class InferRequest:
    inputs: dict[str, np.ndarray]
    request_id: str | None = None
    outputs: list[str] | None = None  # the outputs asked for (None: all)
    binary_outputs: set[str] = field(default_factory=set)  # those answered as raw bytes
    binary_default: bool = False  # outputs not listed: binary (`binary_data_output`)
    parameters: dict[str, Any] = field(default_factory=dict)


def decode_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The request body without its Content-Encoding (gzip, deflate), at most `limit` bytes
    once decompressed."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(
            f"Content-Encoding {content_encoding!r} is not supported; send identity, gzip "
            "or deflate",
            415,
        )
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ProtocolError(f"the body is not valid {encoding} data ({exc})") from None
    if (
        len(out) <= limit
        and not inflater.unconsumed_tail
        and (not inflater.eof or inflater.unused_data)
    ):
        raise ProtocolError(f"the body is not one complete {encoding} stream")
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(
            f"the request is larger than {limit} bytes once decompressed (--max-request-bytes)",
            413,
        )
    return out


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """An inference request from its (decompressed) body."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise ProtocolError(
                f"Inference-Header-Content-Length {header_length!r} is not a number"
            ) from None
        if not 0 < json_size <= len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length {json_size} does not fit the {len(body)}-byte "
                "body"
            )
    else:
        json_size = len(body)
    header = load_json(body[:json_size])
    if not isinstance(header, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("the request has no 'inputs' list")
    binary = memoryview(body)[json_size:]
    offset = 0
    inputs: dict[str, np.ndarray] = {}
    for entry in raw_inputs:
        name, array, used = _input_tensor(entry, binary, offset)
        if name in inputs:
            raise ProtocolError(f"input '{name}' is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise ProtocolError(
            f"the body holds {len(binary)} bytes of binary tensor data but the inputs' "
            f"binary_data_size add up to {offset}"
        )
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("'parameters' must be a JSON object")
    request = InferRequest(
        inputs=inputs,
        request_id=_request_id(header.get("id")),
        binary_default=_flag(parameters.get("binary_data_output", False), "binary_data_output"),
        parameters=parameters,
    )
    raw_outputs = header.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise ProtocolError("'outputs' must be a list of {\"name\": ...} objects")
        request.outputs = []
        for entry in raw_outputs:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ProtocolError("every entry of 'outputs' needs a 'name'")
            name = entry["name"]
            if name in request.outputs:
                raise ProtocolError(f"output '{name}' is asked for twice")
            request.outputs.append(name)
            params = entry.get("parameters")
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ProtocolError(f"output '{name}': 'parameters' must be a JSON object")
            if _flag(params.get("binary_data", request.binary_default), "binary_data"):
                request.binary_outputs.add(name)
    return request


def load_json(raw: bytes | memoryview) -> Any:
    """A JSON document; NaN and Infinity are not JSON and are refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not a JSON number")

    try:
        return json.loads(bytes(raw), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise ProtocolError(f"the request is not valid JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("the request's JSON is nested too deeply") from None


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{what} must be true or false, got {value!r}")
    return value


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError("'id' must be a string")
    return value


def _input_tensor(entry: Any, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ProtocolError("every entry of 'inputs' needs a 'name'")
    name = entry["name"]
    datatype = entry.get("datatype")
    if datatype not in DATATYPES:
        raise ProtocolError(
            f"input '{name}' has datatype {datatype!r}; use one of {', '.join(DATATYPES)}"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise ProtocolError(f"input '{name}' needs a 'shape': a list of sizes >= 0")
    count = math.prod(shape)  # Python ints: no wrap-around
    if count > MAX_ELEMENTS:
        raise ProtocolError(
            f"input '{name}' has shape {shape}: {count} elements, more than a request may hold "
            f"({MAX_ELEMENTS})"
        )
    params = entry.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise ProtocolError(f"input '{name}': 'parameters' must be a JSON object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise ProtocolError(
                f"input '{name}' has binary_data_size {size!r}, but {len(binary) - offset} "
                "bytes of binary data are left in the body"
            )
        chunk = binary[offset : offset + size]
        array = _from_bytes(name, datatype, shape, count, chunk)
        return name, array, size
    if "data" not in entry:
        raise ProtocolError(f"input '{name}' has neither 'data' nor parameters.binary_data_size")
    return name, _from_json(name, datatype, shape, count, entry["data"]), 0


def _from_bytes(
    name: str, datatype: str, shape: list[int], count: int, chunk: memoryview
) -> np.ndarray:
    if datatype == "BYTES":
        items: list[bytes] = []
        at = 0
        while at < len(chunk):
            if at + 4 > len(chunk):
                raise ProtocolError(f"input '{name}': a BYTES element's length is cut off")
            (length,) = struct.unpack_from("<I", chunk, at)
            at += 4
            if at + length > len(chunk):
                raise ProtocolError(f"input '{name}': a BYTES element runs past its data")
            items.append(bytes(chunk[at : at + length]))
            at += length
        if len(items) != count:
            raise ProtocolError(
                f"input '{name}' holds {len(items)} BYTES elements; shape {shape} needs {count}"
            )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = np.dtype(DATATYPES[datatype])
    if len(chunk) != count * dtype.itemsize:
        raise ProtocolError(
            f"input '{name}' has {len(chunk)} bytes of data; shape {shape} of {datatype} needs "
            f"{count * dtype.itemsize}"
        )
    # A copy: the request body is dropped once parsed, and the session may keep the array.
    return np.frombuffer(chunk, dtype=dtype).reshape(shape).copy()


def _from_json(name: str, datatype: str, shape: list[int], count: int, data: Any) -> np.ndarray:
    flat = _flatten(data)
    if len(flat) != count:
        raise ProtocolError(f"input '{name}' holds {len(flat)} values; shape {shape} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input '{name}' is BYTES: its JSON data must be strings")
        array = np.empty(len(flat), dtype=object)
        array[:] = [x.encode() for x in flat]
        return array.reshape(shape)
    dtype = np.dtype(DATATYPES[datatype])
    if datatype == "BOOL":
        wrong = next((x for x in flat if not isinstance(x, bool)), None)
        if wrong is not None:
            raise ProtocolError(
                f"input '{name}' is BOOL: its data must be true/false, got {wrong!r}"
            )
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        wrong = next((x for x in flat if type(x) is not int or not info.min <= x <= info.max), None)
        if wrong is not None:
            raise ProtocolError(
                f"input '{name}' is {datatype}: its data must be whole numbers from {info.min} "
                f"to {info.max}, got {wrong!r}"
            )
    else:
        wrong = next((x for x in flat if type(x) not in (int, float)), None)
        if wrong is not None:
            raise ProtocolError(
                f"input '{name}' is {datatype}: its data must be numbers, got {wrong!r}"
            )
        try:
            values = np.asarray(flat, dtype=np.float64)
        except OverflowError:  # an integer beyond any float
            raise ProtocolError(f"input '{name}' holds a number too large for {datatype}") from None
        if dtype != np.float64 and flat and np.abs(values).max() > np.finfo(dtype).max:
            raise ProtocolError(f"input '{name}' holds a number too large for {datatype}")
    return np.asarray(flat, dtype=dtype).reshape(shape)


def _flatten(data: Any) -> list[Any]:
    """The elements of nested lists, row-major (iteratively: no recursion limit)."""
    if not isinstance(data, list):
        return [data]
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def encode_infer(
    model: str,
    version: str,
    request: InferRequest,
    outputs: Mapping[str, np.ndarray],
) -> tuple[bytes, int | None]:
    """The response body and, when binary tensors follow the JSON, its length (for the
    Inference-Header-Content-Length header)."""
    names: Sequence[str] = request.outputs if request.outputs is not None else list(outputs)
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name in names:
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(array.dtype),
            "shape": list(array.shape),
        }
        as_binary = (
            name in request.binary_outputs
            if request.outputs is not None
            else request.binary_default
        )
        if as_binary:
            blob = _to_bytes(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif array.dtype == object:
            entry["data"] = [_text(x) for x in array.reshape(-1)]
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version}
    if request.request_id is not None:
        document["id"] = request.request_id
    document["outputs"] = entries
    head = json.dumps(document, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)


def _to_bytes(array: np.ndarray) -> bytes:
    if array.dtype == object:
        parts = []
        for item in array.reshape(-1):
            raw = item if isinstance(item, bytes) else str(item).encode()
            parts.append(struct.pack("<I", len(raw)) + raw)
        return b"".join(parts)
    return np.ascontiguousarray(array).tobytes()


def _text(item: Any) -> str:
    return item.decode(errors="replace") if isinstance(item, bytes) else str(item)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
