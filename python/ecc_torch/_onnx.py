"""The initializers of an ONNX file, read straight from the protobuf wire format, so the
package needs nothing but PyTorch. ModelProto.graph (7) -> GraphProto.initializer (5) ->
TensorProto: dims (1), data_type (2), float_data (4), int64_data (7), name (8),
raw_data (9), double_data (10). Tensors stored outside the file (external data) are
refused."""

import struct

import torch

_DTYPES = {1: (torch.float32, "f"), 11: (torch.float64, "d"), 7: (torch.int64, "q")}


def _varint(b, i):
    shift = result = 0
    while True:
        c = b[i]
        i += 1
        result |= (c & 0x7F) << shift
        if c < 0x80:
            return result, i
        shift += 7


def _fields(b):
    """(field number, wire type, value) for every field of a message."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = b[i : i + 8], i + 8
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif wt == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        yield num, wt, v


def _packed(v, wt, fmt, size):
    if wt == 2:
        return list(struct.unpack(f"<{len(v) // size}{fmt}", v))
    return [struct.unpack(f"<{fmt}", v)[0]] if size else []


def _tensor(b):
    dims, dtype, name, raw, floats, doubles, ints, external = [], 1, "", None, [], [], [], False
    for num, wt, v in _fields(b):
        if num == 1:
            if wt == 2:
                j = 0
                while j < len(v):
                    d, j = _varint(v, j)
                    dims.append(d)
            else:
                dims.append(v)
        elif num == 2:
            dtype = v
        elif num == 4:
            floats += _packed(v, wt, "f", 4)
        elif num == 7:
            if wt == 2:
                j = 0
                while j < len(v):
                    d, j = _varint(v, j)
                    ints.append(d - (1 << 64) if d >= 1 << 63 else d)
            else:
                ints.append(v - (1 << 64) if v >= 1 << 63 else v)
        elif num == 8:
            name = bytes(v).decode()
        elif num == 9:
            raw = bytes(v)
        elif num == 10:
            doubles += _packed(v, wt, "d", 8)
        elif num == 14 and v == 1:  # data_location EXTERNAL
            external = True
    if external:
        raise ValueError(f"initializer '{name}' is stored outside the file (external data)")
    if dtype not in _DTYPES:
        return name, None
    tdtype, fmt = _DTYPES[dtype]
    n = 1
    for d in dims:
        n *= d
    if raw is not None:
        size = struct.calcsize(fmt)
        vals = struct.unpack(f"<{n}{fmt}", raw[: n * size])
    else:
        vals = {1: floats, 11: doubles, 7: ints}[dtype]
    return name, torch.tensor(vals, dtype=tdtype).reshape(dims)


def initializers(path):
    """Name -> tensor for every float, double or int64 initializer of the ONNX file."""
    with open(path, "rb") as f:
        b = memoryview(f.read())
    out = {}
    for num, _, graph in _fields(b):
        if num != 7:
            continue
        for gnum, _, t in _fields(graph):
            if gnum == 5:
                name, value = _tensor(t)
                if value is not None:
                    out[name] = value
    return out
