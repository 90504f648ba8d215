"""Hypothesis strategies and builders for PointCloud2-like messages, shared by the codec's
property tests (test_pointcloud2.py) and the node's over-the-wire fuzz test
(test_node_fuzz.py). Messages are plain ``SimpleNamespace`` objects; values are packed with
:mod:`struct`, independently of the codec's numpy dtypes.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace as NS

import numpy as np
from hypothesis import strategies as st

from sspu_ros.io.pointcloud2 import (
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    UINT8,
    UINT16,
    UINT32,
)

STRUCT_CHAR = {INT8: "b", UINT8: "B", INT16: "h", UINT16: "H", INT32: "i", UINT32: "I",
               FLOAT32: "f", FLOAT64: "d"}
SIZE = {INT8: 1, UINT8: 1, INT16: 2, UINT16: 2, INT32: 4, UINT32: 4, FLOAT32: 4, FLOAT64: 8}
NAN = float("nan")
INF = float("inf")


def pf(name, offset, datatype, count=1):
    """A PointField-like object (not the codec's own Field class)."""
    return NS(name=name, offset=offset, datatype=datatype, count=count)


TYPES = [INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64]
NAME = st.text("abcdefghjklmnopqrstuvw_", min_size=1, max_size=6)


@st.composite
def layouts(draw):
    """(fields, point_step, height, width, row_step, bigendian, seed)."""
    n_extra = draw(st.integers(1, 6))
    names = draw(st.lists(st.one_of(NAME, st.sampled_from(["intensity", "reflectance", "i"])),
                          min_size=n_extra, max_size=n_extra, unique=True))
    specs = [(n, draw(st.sampled_from(TYPES)), draw(st.integers(1, 3))) for n in names]
    xyz_type = draw(st.sampled_from([FLOAT32, FLOAT32, FLOAT32, FLOAT64, INT16]))
    specs += [(n, xyz_type, 1) for n in "xyz"]
    specs = draw(st.permutations(specs))
    fields, off = [], 0
    for name, dt, count in specs:
        off += draw(st.integers(0, 3))
        fields.append(pf(name, off, dt, count))
        off += SIZE[dt] * count
    point_step = off + draw(st.integers(0, 5))
    height = draw(st.integers(1, 4))
    width = draw(st.integers(0, 20))
    row_step = width * point_step + draw(st.integers(0, 7))
    return fields, point_step, height, width, row_step, draw(st.booleans()), draw(
        st.integers(0, 2**32 - 1))


def build_random_msg(layout):
    """Random bytes everywhere, then finite/NaN/Inf coordinates written over x, y, z."""
    fields, point_step, height, width, row_step, bigendian, seed = layout
    rng = np.random.default_rng(seed)
    buf = bytearray(rng.integers(0, 256, height * row_step, dtype=np.uint8).tobytes())
    order = ">" if bigendian else "<"
    special = [NAN, INF, -INF]
    for p in range(height * width):
        r, c = divmod(p, width)
        for f in fields:
            if f.name not in "xyz":
                continue
            if f.datatype in (FLOAT32, FLOAT64):
                v = (special[rng.integers(3)] if rng.random() < 0.1
                     else float(rng.normal() * 100))
            else:
                v = int(rng.integers(-1000, 1000))
            struct.pack_into(order + STRUCT_CHAR[f.datatype], buf,
                             r * row_step + c * point_step + f.offset, v)
    data = bytes(buf) if rng.random() < 0.5 else np.frombuffer(bytes(buf), np.uint8).copy()
    return NS(height=height, width=width, fields=fields, is_bigendian=bigendian,
              point_step=point_step, row_step=row_step, data=data, is_dense=False)



# ------------------------------------------------------------------------------------------
# malformed clouds that a real sensor_msgs/PointCloud2 can carry (every value fits its
# uint8/uint32/string/bool field), for the node's over-the-wire fuzz test

UINT32_MAX = 2**32 - 1
DECLARED_10M = 10_000_000
WIRE_CORRUPTIONS = ("truncate", "extend", "shrink_point_step", "bogus_datatype",
                    "offset_past_point_step", "huge_offset", "remove_xyz", "duplicate_name",
                    "row_step_small", "zero_count", "zero_point_step", "empty_name",
                    "declared_10M_points", "absurd_size", "width_overflow")


def corrupt_layout(msg, fields, raw: bytes, corruption: str, amount: int, j: int,
                   draw) -> bool:
    """The corruptions of sizes and names that both the decoder's property test and the
    wire fuzz test make (data length, point step, row step, a duplicate field name), on
    ``msg`` in place; True when ``corruption`` was one of them."""
    if corruption == "truncate":
        if raw:
            msg.data = raw[:-amount]
        else:  # nothing to truncate: make the expected length non-zero instead
            msg.row_step += amount
    elif corruption == "extend":
        msg.data = raw + b"\0" * amount
    elif corruption == "shrink_point_step":
        end = max(f.offset + SIZE[f.datatype] * f.count for f in fields)
        msg.point_step = end - draw(st.integers(1, end))
    elif corruption == "duplicate_name":
        fields[(j + 1) % len(fields)].name = fields[j].name
    elif corruption == "row_step_small":
        if msg.width == 0:
            msg.width = 1
        msg.row_step = msg.width * msg.point_step - 1
        msg.data = b"\0" * (msg.height * max(msg.row_step, 0))
    else:
        return False
    return True


def corrupt_for_wire(msg, corruption: str, amount: int, draw) -> NS:
    """``msg`` (from :func:`build_random_msg`) made malformed in one way that
    :func:`sspu_ros.io.pointcloud2.decode` must reject; ``draw``: hypothesis' draw function.
    Declared sizes are never backed by data: nothing of that size may be allocated."""
    fields = [NS(**vars(f)) for f in msg.fields]
    msg = NS(**vars(msg))
    msg.fields = fields
    raw = bytes(msg.data)
    msg.data = raw
    j = draw(st.integers(0, len(fields) - 1))
    if corrupt_layout(msg, fields, raw, corruption, amount, j, draw):
        pass
    elif corruption == "bogus_datatype":
        fields[j].datatype = draw(st.sampled_from([0, 9, 17, 255]))
    elif corruption == "offset_past_point_step":
        fields[j].offset = msg.point_step - SIZE[fields[j].datatype] * fields[j].count + amount
    elif corruption == "huge_offset":
        fields[j].offset = draw(st.sampled_from([2**31, UINT32_MAX]))
    elif corruption == "remove_xyz":
        gone = draw(st.sampled_from("xyz"))
        msg.fields = [f for f in fields if f.name != gone]
    elif corruption == "zero_count":
        fields[j].count = 0
    elif corruption == "zero_point_step":
        msg.point_step = 0
    elif corruption == "empty_name":
        fields[j].name = ""
    elif corruption == "declared_10M_points":  # a 10 M point header over a few bytes
        msg.height, msg.width = 1, DECLARED_10M
        msg.row_step = min(DECLARED_10M * msg.point_step, UINT32_MAX)
    elif corruption == "absurd_size":  # 10^10 points: more than decode's max_points
        msg.height = msg.width = 100_000
        msg.row_step = min(100_000 * msg.point_step, UINT32_MAX)
    elif corruption == "width_overflow":  # width * point_step beyond uint32
        msg.width = UINT32_MAX
    else:
        raise ValueError(f"unknown corruption {corruption!r}")
    return msg


@st.composite
def malformed_wire_clouds(draw, corruptions=WIRE_CORRUPTIONS):
    """(corruption name, PointCloud2-like message that decode must reject)."""
    corruption = draw(st.sampled_from(corruptions))
    msg = build_random_msg(draw(layouts()))
    return corruption, corrupt_for_wire(msg, corruption, draw(st.integers(1, 64)), draw)
