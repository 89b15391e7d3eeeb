"""The policy server's wire format: msgpack maps, arrays as raw little-endian bytes. Never pickle.

POST /act, `Content-Type: application/msgpack`, body a msgpack map:

    task         str, or a list of N str (a batch: row i uses task i's prefix)
    image        array uint8  (n_cam, S, S, 3), or (N, n_cam, S, S, 3) for a batch
    proprio      array float32 (proprio_dim,),  or (N, proprio_dim)
    instruction  optional: str, or a list of N str (default: each task's own instruction)

An array is the map `{"dtype": "uint8" | "float32", "shape": [...], "data": <bin, C order, little-endian>}`.
The reply (msgpack) is `{"actions": array float32 (H, action_dim)}`, or (N, H, action_dim) for a
batch. GET /tasks and GET /health reply JSON. Every error replies JSON `{"error": message, "status": code}`
with a 4xx status (5xx only for a failure inside the server).

This module needs only numpy and msgpack (no torch), so a robot-side client stays light.
"""

from __future__ import annotations

import math

import msgpack
import numpy as np

CONTENT_TYPE = "application/msgpack"
JSON_TYPE = "application/json"
ACCEPTED_TYPES = (CONTENT_TYPE, "application/x-msgpack")
DTYPES = {"uint8": np.dtype("<u1"), "float32": np.dtype("<f4")}
REQUEST_KEYS = ("task", "image", "proprio", "instruction")
MAX_INSTRUCTION_CHARS = 1000
MAX_TASK_CHARS = 200


class RequestError(Exception):
    """A bad request: `status` is the HTTP status (4xx), the message says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------- arrays


def encode_array(a: np.ndarray) -> dict:
    """A numpy array -> the wire map (uint8 and float32 only)."""
    a = np.asarray(a)
    name = a.dtype.name
    if name not in DTYPES:
        raise TypeError(f"only {sorted(DTYPES)} arrays go on the wire, got {a.dtype}")
    return {"dtype": name, "shape": list(a.shape), "data": np.ascontiguousarray(a, dtype=DTYPES[name]).tobytes()}


def decode_array(obj, name: str, max_bytes: int) -> np.ndarray:
    """The wire map -> a numpy array (a read-only view of the bytes). Bad input -> RequestError(400)."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise RequestError(400, f"`{name}` must be an array map {{dtype, shape, data}}, got {_describe(obj)}")
    dtype, shape, data = obj["dtype"], obj["shape"], obj["data"]
    if dtype not in DTYPES:
        raise RequestError(400, f"`{name}` has dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= max_bytes for d in shape)):
        raise RequestError(400, f"`{name}`.shape must be a list of at most 8 non-negative integers, got {shape!r}")
    if not isinstance(data, bytes):
        raise RequestError(400, f"`{name}`.data must be binary (msgpack bin), got {type(data).__name__}")
    expected = math.prod(shape) * DTYPES[dtype].itemsize
    if len(data) != expected:
        raise RequestError(400, f"`{name}` has {len(data)} bytes of data, but shape {shape} of {dtype} needs {expected}")
    return np.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape)


def _describe(obj) -> str:
    if isinstance(obj, dict):
        return f"a map with keys {sorted(map(str, obj))[:8]}"
    return type(obj).__name__


# ---------------------------------------------------------------------------- requests


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(body: bytes):
    """msgpack bytes -> object; anything undecodable -> RequestError(400)."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as err:  # msgpack raises several types (ExtraData, FormatError, ValueError, ...)
        raise RequestError(400, f"the body is not valid msgpack ({type(err).__name__}); "
                                f"send a msgpack map with {', '.join(REQUEST_KEYS[:3])}") from None


def encode_request(obs: dict, task, instruction=None) -> bytes:
    """One observation and a task (str), or N observations and N tasks (list) -> request bytes."""
    msg = {"task": task if isinstance(task, str) else list(task),
           "image": encode_array(np.asarray(obs["image"])), "proprio": encode_array(np.asarray(obs["proprio"]))}
    if instruction is not None:
        msg["instruction"] = instruction if isinstance(instruction, str) else list(instruction)
    return pack(msg)


def decode_request(body: bytes, image_shape: tuple, proprio_dim: int, max_rows: int):
    """Request bytes -> (image (N, *image_shape) uint8, proprio (N, proprio_dim) float32, tasks [N],
    instructions [N] or None, batched: bool). Every malformed request -> RequestError(4xx)."""
    msg = unpack(body)
    if not isinstance(msg, dict):
        raise RequestError(400, f"the body must be a msgpack map with keys {list(REQUEST_KEYS)}, got {_describe(msg)}")
    unknown = sorted(str(k) for k in msg if k not in REQUEST_KEYS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {unknown[:5]}; the fields are {list(REQUEST_KEYS)}")
    for key in ("task", "image", "proprio"):
        if key not in msg:
            raise RequestError(400, f"missing field `{key}`; a request needs task, image and proprio")
    task = msg["task"]
    batched = isinstance(task, list)
    tasks = task if batched else [task]
    if not tasks or len(tasks) > max_rows:
        raise RequestError(400 if not tasks else 413, f"a batch holds 1 to {max_rows} rows, got {len(tasks)}")
    for t in tasks:
        if not isinstance(t, str) or not t or len(t) > MAX_TASK_CHARS:
            raise RequestError(400, f"`task` must be a task id string (or a list of them), got {_describe(t)}")
    n = len(tasks)
    max_bytes = len(body)
    image = decode_array(msg["image"], "image", max_bytes)
    proprio = decode_array(msg["proprio"], "proprio", max_bytes)
    want_image = (n, *image_shape) if batched else tuple(image_shape)
    if image.dtype != DTYPES["uint8"] or image.shape != want_image:
        raise RequestError(400, f"`image` must be uint8 {list(want_image)} (n_cameras, S, S, 3"
                                f"{', with N rows first' if batched else ''}), got {image.dtype.name} {list(image.shape)}")
    want_proprio = (n, proprio_dim) if batched else (proprio_dim,)
    if proprio.dtype != DTYPES["float32"] or proprio.shape != want_proprio:
        raise RequestError(400, f"`proprio` must be float32 {list(want_proprio)}, got {proprio.dtype.name} "
                                f"{list(proprio.shape)}")
    if not np.isfinite(proprio).all():
        raise RequestError(400, "`proprio` holds NaN or infinite values")
    instructions = msg.get("instruction")
    if instructions is not None:
        if batched != isinstance(instructions, list):
            raise RequestError(400, "`instruction` must be a str for one observation, a list of N str for a batch")
        instructions = instructions if batched else [instructions]
        if len(instructions) != n or not all(isinstance(s, str) and len(s) <= MAX_INSTRUCTION_CHARS
                                             for s in instructions):
            raise RequestError(400, f"`instruction` must hold {n} string(s) of at most {MAX_INSTRUCTION_CHARS} "
                                    "characters")
    if not batched:
        image, proprio = image[None], proprio[None]
    return image, proprio, tasks, instructions, batched


def encode_actions(actions: np.ndarray) -> bytes:
    return pack({"actions": encode_array(np.asarray(actions, dtype=np.float32))})


def decode_actions(body: bytes) -> np.ndarray:
    """Reply bytes -> actions float32 (a writable copy)."""
    msg = unpack(body)
    if not isinstance(msg, dict) or "actions" not in msg:
        raise RequestError(502, "the server's reply holds no `actions`")
    return decode_array(msg["actions"], "actions", len(body)).copy()
