"""msgpack (msgspec) encoding of the messages between the frontend and the engine-core process.

The messages are the engine's own dataclasses (EngineCoreRequest with its SamplingParams,
EngineCoreOutput, ...). msgspec encodes dataclasses natively but only as plain maps, and decoding
into a dataclass type runs `__post_init__` (which would re-validate SamplingParams and reset its
engine-filled `all_stop_token_ids`). So values are walked here and typed values travel as msgpack
extension types:

| value                              | on the wire                                   |
| ---------------------------------- | --------------------------------------------- |
| None, bool, int, float, str, bytes | itself                                        |
| list, tuple                        | array (a tuple arrives as a list)             |
| dict                               | map (int keys stay ints)                      |
| dataclass instance                 | ext DATACLASS: class path + field values      |
| set / frozenset                    | ext SET: the members                          |
| Enum member                        | ext ENUM: class path + value                  |
| numpy array, torch tensor          | ext ARRAY: dtype, shape, raw bytes            |
| anything else                      | ext PICKLE (both ends are this same program)  |

Invariants:
- `decode(encode(x)) == x` for every value built from the rows above, tuples aside, and a decoded
  dataclass is rebuilt field by field without calling `__init__`/`__post_init__`, so it is exactly
  the object that was sent (the engine's already-validated copy).
- Classes are only ever imported from the `pagoda` package when decoding DATACLASS/ENUM values.
- New fields added to a message dataclass need no change here.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import pickle
from typing import Any

import msgspec

EXT_DATACLASS, EXT_SET, EXT_ENUM, EXT_ARRAY, EXT_PICKLE = 1, 2, 3, 4, 5
_PLAIN = (type(None), bool, int, float, str, bytes)
_FIELDS: dict[type, tuple[str, ...]] = {}
_CLASSES: dict[str, type] = {}


def encode(obj: Any) -> bytes:
    return _ENCODER.encode(_pack(obj))


def decode(data: bytes | memoryview) -> Any:
    return _DECODER.decode(data)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _pack(obj: Any) -> Any:
    kind = type(obj)
    if kind in _PLAIN:
        return obj
    if kind is list or kind is tuple:
        if all(type(x) in _PLAIN for x in obj):
            return obj
        return [_pack(x) for x in obj]
    if kind is dict:
        return {k: _pack(v) for k, v in obj.items()}
    if kind is set or kind is frozenset:
        return msgspec.msgpack.Ext(EXT_SET, _ENCODER.encode([_pack(x) for x in obj]))
    if isinstance(obj, enum.Enum):
        return msgspec.msgpack.Ext(EXT_ENUM, _ENCODER.encode([_class_path(kind), _pack(obj.value)]))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = [_pack(getattr(obj, name)) for name in _field_names(kind)]
        return msgspec.msgpack.Ext(EXT_DATACLASS, _ENCODER.encode([_class_path(kind), values]))
    array = _as_numpy(obj)
    if array is not None:
        payload = [array[0], array[1].dtype.str, list(array[1].shape), array[1].tobytes()]
        return msgspec.msgpack.Ext(EXT_ARRAY, _ENCODER.encode(payload))
    if isinstance(obj, (list, tuple, dict)):  # subclasses of the containers
        return _pack(list(obj) if not isinstance(obj, dict) else dict(obj))
    return msgspec.msgpack.Ext(EXT_PICKLE, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def _as_numpy(obj: Any) -> tuple[str, Any] | None:
    """("torch" or "numpy", a C-contiguous numpy array) for array-like values, else None."""
    module = type(obj).__module__
    if module == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray):
            return "numpy", np.ascontiguousarray(obj)
        return None
    if module == "torch":
        import torch

        if isinstance(obj, torch.Tensor):
            tensor = obj.detach().cpu()
            if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
                tensor = tensor.float()
            return "torch", tensor.contiguous().numpy()
    return None


def _load_class(path: str) -> type:
    cls = _CLASSES.get(path)
    if cls is None:
        module_name, _, qualname = path.partition(":")
        if module_name != "pagoda" and not module_name.startswith("pagoda."):
            raise ValueError(f"refusing to decode a value of class {path!r}: only pagoda classes travel typed")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        cls = _CLASSES[path] = obj
    return cls


def _ext_hook(code: int, data: memoryview) -> Any:
    if code == EXT_DATACLASS:
        path, values = _DECODER.decode(data)
        cls = _load_class(path)
        obj = cls.__new__(cls)
        for name, value in zip(_field_names(cls), values):
            object.__setattr__(obj, name, value)
        return obj
    if code == EXT_SET:
        return set(_DECODER.decode(data))
    if code == EXT_ENUM:
        path, value = _DECODER.decode(data)
        return _load_class(path)(value)
    if code == EXT_ARRAY:
        import numpy as np

        kind, dtype, shape, raw = _DECODER.decode(data)
        array = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
        if kind == "torch":
            import torch

            return torch.from_numpy(array)
        return array
    if code == EXT_PICKLE:
        return pickle.loads(data)
    raise ValueError(f"unknown msgpack extension type {code}")


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ext_hook=_ext_hook)
