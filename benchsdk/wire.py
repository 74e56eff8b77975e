"""The contract's wire format: length-prefixed frames carrying a JSON header and raw numpy arrays.

    frame   := MAGIC (4 bytes) | header_len (uint32, little-endian) | header (UTF-8 JSON) | payload
    header  := {"op" | "ok": ..., ..., "arrays": [{"name": str, "dtype": str, "shape": [int, ...]}, ...]}
    payload := the arrays' C-order bytes, concatenated in header order (little-endian dtypes only)

It works over any pair of byte streams: a subprocess's stdin/stdout, a container's attached stdio,
or a Unix socket. Only numpy and the standard library are used, so method images need nothing else.
"""

from __future__ import annotations

import json
import struct

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"VRB1"
MAX_HEADER_BYTES = 1 << 20
ALLOWED_DTYPES = {"uint8", "int32", "int64", "float16", "float32", "float64", "bool"}
_PREFIX = struct.Struct("<4sI")


class WireError(Exception):
    """The byte stream does not follow the contract (bad magic, oversize frame, unknown dtype...)."""


def _array_nbytes(spec: dict) -> int:
    dtype = spec.get("dtype")
    if dtype not in ALLOWED_DTYPES:
        raise WireError(f"array {spec.get('name')!r}: dtype {dtype!r} not in {sorted(ALLOWED_DTYPES)}")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise WireError(f"array {spec.get('name')!r}: bad shape {shape!r}")
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def encode(header: dict, arrays: dict[str, np.ndarray] | None = None) -> list[bytes | memoryview]:
    """Frame a message; returns buffers to write in order (arrays are not copied when contiguous)."""
    header = dict(header)
    specs, payload = [], []
    for name, arr in (arrays or {}).items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.str[0] == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {arr.dtype.name} not in {sorted(ALLOWED_DTYPES)}")
        specs.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape)})
        payload.append(memoryview(arr.reshape(-1).view(np.uint8)))
    header["arrays"] = specs
    body = json.dumps(header, separators=(",", ":")).encode()
    if len(body) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(body)} bytes exceeds {MAX_HEADER_BYTES}")
    return [_PREFIX.pack(MAGIC, len(body)), body, *payload]


def read_frame(read_exact, max_payload: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one frame with `read_exact(n) -> bytes`; refuses payloads above `max_payload` before reading them."""
    magic, header_len = _PREFIX.unpack(read_exact(_PREFIX.size))
    if magic != MAGIC:
        raise WireError(f"bad frame magic {magic!r} (expected {MAGIC!r}); did the method print to stdout?")
    if header_len > MAX_HEADER_BYTES:
        raise WireError(f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(read_exact(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays", []), list):
        raise WireError("frame header must be a JSON object with an 'arrays' list")
    specs = header.pop("arrays", [])
    sizes = [_array_nbytes(s) for s in specs]
    if max_payload is not None and sum(sizes) > max_payload:
        raise WireError(f"payload of {sum(sizes)} bytes exceeds the limit of {max_payload} bytes")
    arrays = {}
    for spec, size in zip(specs, sizes):
        buf = read_exact(size)
        arrays[str(spec.get("name"))] = np.frombuffer(buf, dtype=spec["dtype"]).reshape(spec["shape"])
    return header, arrays
