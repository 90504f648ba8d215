"""ROS-free ``sensor_msgs/PointCloud2`` <-> numpy codec.

Nothing here imports ROS. :func:`decode` accepts any object with PointCloud2's attributes
(an rclpy message, a rosbags message, a ``types.SimpleNamespace``); :func:`encode_structured`
and :func:`encode_densified` return an :class:`EncodedCloud` that
:func:`sspu_ros.io.pointcloud2_message.to_pointcloud2` turns into a real message.

Layout handling
---------------
* A structured dtype is built from the fields (any order, padding, unaligned offsets such
  as Velodyne's 22-byte layout, ``count > 1`` as subarray fields) with
  ``itemsize = point_step`` and the message's byte order.
* ``points`` is a zero-copy strided view of the message buffer whenever possible
  (``np.ndarray(buffer=..., strides=(row_step, point_step))``). The only copy is for an
  organized cloud (``height > 1``) whose rows carry ``row_step`` padding: a flat
  ``(H*W,)`` array cannot view that memory.
* Points whose x, y or z is NaN/Inf (after the cast to float32) are invalid: they stay in
  ``points`` but are dropped from ``xyz``/``intensity`` and counted in ``n_invalid``.

Every malformed input raises :class:`PointCloudFormatError` (a ``ValueError``) with a
message naming the offending attribute, value and expectation.
"""

from __future__ import annotations

import array
import reprlib
import sys
from dataclasses import dataclass

import numpy as np

from ..errors import PointCloudFormatError

__all__ = [
    "FLOAT32",
    "FLOAT64",
    "GENERATED_FIELD",
    "INT8",
    "INT16",
    "INT32",
    "INTENSITY_NAMES",
    "UINT8",
    "UINT16",
    "UINT32",
    "DecodedCloud",
    "EncodedCloud",
    "Field",
    "PointCloudFormatError",
    "decode",
    "encode_densified",
    "encode_structured",
    "fields_dtype",
]


# ROS sensor_msgs/PointField datatype codes.
INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64 = 1, 2, 3, 4, 5, 6, 7, 8

_TYPECHARS = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
_DATATYPE_NAMES = {
    INT8: "INT8",
    UINT8: "UINT8",
    INT16: "INT16",
    UINT16: "UINT16",
    INT32: "INT32",
    UINT32: "UINT32",
    FLOAT32: "FLOAT32",
    FLOAT64: "FLOAT64",
}
_SIZES = {code: int(chars[1]) for code, chars in _TYPECHARS.items()}
_CODE_BY_KIND_SIZE = {(chars[0], int(chars[1])): code for code, chars in _TYPECHARS.items()}

GENERATED_FIELD = "generated"
"""Name of the uint8 per-point flag appended by :func:`encode_densified` (1 = generated)."""

INTENSITY_NAMES = ("intensity", "reflectance", "i")
"""Field names treated as intensity (decode: the first such field in message order)."""

_XYZ = ("x", "y", "z")
_KNN_CELL_M = 1.0  # candidate-grid cell (m) for the neighbour search of generated points
_KNN_MAX_CELLS = 1 << 20
_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60


def _short(value) -> str:
    return _repr.repr(value)


@dataclass(frozen=True)
class Field:
    """Mirrors ``sensor_msgs/PointField``: ``count`` values of ``datatype`` at byte ``offset``."""

    name: str
    offset: int
    datatype: int
    count: int = 1

    @property
    def size(self) -> int:
        """Bytes occupied by the field (``datatype size * count``)."""
        return _SIZES[self.datatype] * self.count


@dataclass
class DecodedCloud:
    """A decoded PointCloud2.

    Attributes:
        points: structured array ``(H*W,)`` (dtype from the fields, ``itemsize=point_step``,
            message byte order) viewing the message data when the buffer allows.
        valid: ``(H*W,)`` bool, True where x, y and z are all finite.
        xyz: ``(N, 3)`` float32, C-contiguous, native byte order, valid points only.
        intensity: ``(N,)`` float32 of the first field named intensity/reflectance/i (cast, not
            rescaled), valid points only; None when there is no such field.
        n_invalid: number of points dropped for non-finite xyz (``H*W - N``).
    """

    points: np.ndarray
    valid: np.ndarray
    xyz: np.ndarray
    intensity: np.ndarray | None
    n_invalid: int
    fields: tuple[Field, ...]
    height: int
    width: int
    point_step: int
    row_step: int
    is_bigendian: bool

    def valid_points(self) -> np.ndarray:
        """Structured array ``(N,)`` of the valid points (a copy, padding bytes included)."""
        raw = self.points.view(np.dtype((np.void, self.points.dtype.itemsize)))
        raw = raw.copy() if self.n_invalid == 0 else raw[self.valid]
        return raw.view(self.points.dtype)


@dataclass
class EncodedCloud:
    """Everything a PointCloud2 needs except the header.

    ``data`` is ``(height*row_step,)`` uint8, C-contiguous.
    """

    fields: tuple[Field, ...]
    height: int
    width: int
    point_step: int
    row_step: int
    is_bigendian: bool
    is_dense: bool
    data: np.ndarray


# --------------------------------------------------------------------------------------------
# validation helpers


def _int_attr(obj, name: str, what: str) -> int:
    try:
        value = getattr(obj, name)
    except AttributeError:
        raise PointCloudFormatError(f"{what} has no attribute '{name}'") from None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise PointCloudFormatError(
            f"{what}.{name} must be an integer, got {type(value).__name__} {_short(value)}"
        )
    return int(value)


def _bool_attr(obj, name: str, what: str) -> bool:
    try:
        value = getattr(obj, name)
    except AttributeError:
        raise PointCloudFormatError(f"{what} has no attribute '{name}'") from None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise PointCloudFormatError(
        f"{what}.{name} must be a bool, got {type(value).__name__} {_short(value)}"
    )


def _read_fields(msg) -> tuple[Field, ...]:
    try:
        raw = msg.fields
    except AttributeError:
        raise PointCloudFormatError("message has no attribute 'fields'") from None
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
        raise PointCloudFormatError(
            f"fields must be a sequence of PointField, got {type(raw).__name__}"
        )
    fields = []
    for i, f in enumerate(raw):
        what = f"fields[{i}]"
        try:
            name = f.name
        except AttributeError:
            raise PointCloudFormatError(f"{what} has no attribute 'name'") from None
        if not isinstance(name, str):
            raise PointCloudFormatError(
                f"{what}.name must be a str, got {type(name).__name__} {_short(name)}"
            )
        what = f"field '{name}'"
        fields.append(
            Field(
                name,
                _int_attr(f, "offset", what),
                _int_attr(f, "datatype", what),
                _int_attr(f, "count", what),
            )
        )
    return tuple(fields)


def _check_fields(fields: tuple[Field, ...], point_step: int, *, require_xyz: bool) -> None:
    seen = set()
    for f in fields:
        if f.name == "":
            raise PointCloudFormatError("a field has an empty name")
        if f.name in seen:
            raise PointCloudFormatError(f"duplicate field name '{f.name}'")
        seen.add(f.name)
        if f.datatype not in _TYPECHARS:
            raise PointCloudFormatError(
                f"field '{f.name}' has unknown datatype code {f.datatype} "
                "(expected 1..8: INT8, UINT8, INT16, UINT16, INT32, UINT32, FLOAT32, FLOAT64)"
            )
        if f.offset < 0:
            raise PointCloudFormatError(f"field '{f.name}' has negative offset {f.offset}")
        if f.count < 1:
            raise PointCloudFormatError(f"field '{f.name}' has count {f.count} (expected >= 1)")
        end = f.offset + f.size
        if end > point_step:
            raise PointCloudFormatError(
                f"field '{f.name}' ({_DATATYPE_NAMES[f.datatype]} x{f.count} at offset "
                f"{f.offset}) ends at byte {end} but point_step is {point_step}"
            )
    if require_xyz:
        missing = [n for n in _XYZ if n not in seen]
        if missing:
            raise PointCloudFormatError(
                f"cloud has no field {', '.join(repr(m) for m in missing)} "
                f"(fields: {[f.name for f in fields]})"
            )


def fields_dtype(fields, point_step: int, bigendian: bool = False) -> np.dtype:
    """Structured dtype for ``fields`` (:class:`Field` objects) with ``itemsize=point_step``.

    ``count > 1`` fields become ``(count,)`` subarray fields. Raises PointCloudFormatError when
    numpy rejects the layout.
    """
    order = ">" if bigendian else "<"
    formats = []
    for f in fields:
        base = order + _TYPECHARS[f.datatype]
        formats.append(base if f.count == 1 else (base, (f.count,)))
    try:
        return np.dtype(
            {
                "names": [f.name for f in fields],
                "formats": formats,
                "offsets": [f.offset for f in fields],
                "itemsize": point_step,
            }
        )
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise PointCloudFormatError(
            f"cannot build a dtype for fields {[f.name for f in fields]} with point_step "
            f"{point_step}: {exc}"
        ) from None


def _byte_buffer(data) -> np.ndarray:
    """The message data as a 1-D uint8 array, zero-copy when the object is contiguous."""
    if isinstance(data, np.ndarray):
        if data.dtype.itemsize != 1 or data.dtype.kind not in "uiV":
            raise PointCloudFormatError(f"data array must have dtype uint8, got {data.dtype}")
        if data.ndim != 1:
            raise PointCloudFormatError(f"data array must be 1-D, got shape {data.shape}")
        return np.ascontiguousarray(data).view(np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview, array.array)):
        mv = memoryview(data)
        if mv.itemsize != 1:
            raise PointCloudFormatError(
                f"data must hold bytes (itemsize 1), got format {mv.format!r} "
                f"with itemsize {mv.itemsize}"
            )
        if not mv.c_contiguous:
            mv = memoryview(mv.tobytes())
        return np.frombuffer(mv, dtype=np.uint8)
    raise PointCloudFormatError(
        "data must be bytes-like (bytes, bytearray, array.array('B'), memoryview or "
        f"np.uint8 array), got {type(data).__name__}"
    )


# --------------------------------------------------------------------------------------------
# decode


def decode(msg, *, max_points: int = 50_000_000) -> DecodedCloud:
    """Decode a PointCloud2-like message into numpy arrays.

    Args:
        msg: any object with ``height, width, fields (name/offset/datatype/count),
            is_bigendian, point_step, row_step, data``; ``data`` may be bytes, bytearray,
            array.array('B'), memoryview or a 1-D np.uint8 array. ``is_dense`` is ignored
            (validity is computed).
        max_points: reject clouds with more than this many points (``height*width``).

    Returns:
        DecodedCloud with ``points (H*W,)`` structured, ``valid (H*W,)``, ``xyz (N, 3)``
        float32 and ``intensity (N,)`` float32 or None.

    Raises:
        PointCloudFormatError: for any malformed message.
    """
    height = _int_attr(msg, "height", "message")
    width = _int_attr(msg, "width", "message")
    point_step = _int_attr(msg, "point_step", "message")
    row_step = _int_attr(msg, "row_step", "message")
    bigendian = _bool_attr(msg, "is_bigendian", "message")
    if height < 0 or width < 0:
        raise PointCloudFormatError(f"height and width must be >= 0, got {height}x{width}")
    n = height * width
    if n > max_points:
        raise PointCloudFormatError(
            f"cloud has height*width = {height}*{width} = {n} points, more than "
            f"max_points={max_points}"
        )
    if point_step <= 0:
        raise PointCloudFormatError(f"point_step must be > 0, got {point_step}")
    if row_step < width * point_step:
        raise PointCloudFormatError(
            f"row_step {row_step} is smaller than width*point_step = {width}*{point_step} "
            f"= {width * point_step}"
        )
    fields = _read_fields(msg)
    _check_fields(fields, point_step, require_xyz=True)
    try:
        data = msg.data
    except AttributeError:
        raise PointCloudFormatError("message has no attribute 'data'") from None
    buf = _byte_buffer(data)
    if buf.size != height * row_step:
        raise PointCloudFormatError(
            f"data has {buf.size} bytes, expected height*row_step = {height}*{row_step} "
            f"= {height * row_step}"
        )
    dtype = fields_dtype(fields, point_step, bigendian)
    try:
        if height <= 1 or row_step == width * point_step:
            points = np.ndarray((n,), dtype=dtype, buffer=buf, strides=(point_step,))
        else:
            grid = np.ndarray(
                (height, width), dtype=dtype, buffer=buf, strides=(row_step, point_step)
            )
            points = grid.reshape(n)  # row padding: a flat copy is unavoidable
    except (ValueError, TypeError, OverflowError, MemoryError) as exc:
        raise PointCloudFormatError(f"cannot view data with the given layout: {exc}") from None

    by_name = {f.name: f for f in fields}
    xyz_all = _xyz_view(points, by_name, bigendian)
    with np.errstate(over="ignore", invalid="ignore"):
        if xyz_all is None:  # generic path: cast each coordinate to float32
            cols = np.empty((3, n), dtype=np.float32)
            for i, name in enumerate(_XYZ):
                cols[i] = _first_component(points[name])
            valid = np.isfinite(cols[0]) & np.isfinite(cols[1]) & np.isfinite(cols[2])
        else:
            valid = (
                np.isfinite(xyz_all[:, 0]) & np.isfinite(xyz_all[:, 1]) & np.isfinite(xyz_all[:, 2])
            )
    n_valid = int(np.count_nonzero(valid))
    all_valid = n_valid == n
    if xyz_all is None:
        xyz = np.ascontiguousarray((cols if all_valid else cols[:, valid]).T)
    else:
        # Copy the 12 xyz bytes of each point as one void item (much faster than a strided
        # (n, 3) float copy), then reinterpret.
        packed = _xyz_void_view(points, by_name["x"].offset)
        packed = packed.copy() if all_valid else packed[valid]
        xyz = packed.view(np.float32).reshape(n_valid, 3)

    intensity = None
    for f in fields:
        if f.name in INTENSITY_NAMES:
            col = _first_component(points[f.name])
            with np.errstate(over="ignore", invalid="ignore"):
                intensity = (col if all_valid else col[valid]).astype(np.float32)
            break

    return DecodedCloud(
        points=points,
        valid=valid,
        xyz=xyz,
        intensity=intensity,
        n_invalid=n - n_valid,
        fields=fields,
        height=height,
        width=width,
        point_step=point_step,
        row_step=row_step,
        is_bigendian=bigendian,
    )


def _first_component(col: np.ndarray) -> np.ndarray:
    """``(n,)`` column of a field; the first element of a ``count > 1`` field."""
    return col if col.ndim == 1 else col[:, 0]


def _native_float32_xyz(by_name: dict, bigendian: bool) -> bool:
    x, y, z = (by_name[n] for n in _XYZ)
    return (
        bigendian == (sys.byteorder == "big")
        and all(f.datatype == FLOAT32 and f.count == 1 for f in (x, y, z))
        and y.offset == x.offset + 4
        and z.offset == x.offset + 8
    )


def _xyz_view(points: np.ndarray, by_name: dict, bigendian: bool) -> np.ndarray | None:
    """``(n, 3)`` float32 strided view of x, y, z when they are 3 consecutive native float32."""
    if not _native_float32_xyz(by_name, bigendian):
        return None
    dt = np.dtype(
        {
            "names": ["xyz"],
            "formats": [(np.float32, (3,))],
            "offsets": [by_name["x"].offset],
            "itemsize": points.dtype.itemsize,
        }
    )
    return points.view(dt)["xyz"]


def _xyz_void_view(points: np.ndarray, x_offset: int) -> np.ndarray:
    dt = np.dtype(
        {"names": ["v"], "formats": ["V12"], "offsets": [x_offset], "itemsize": points.itemsize}
    )
    return points.view(dt)["v"]


# --------------------------------------------------------------------------------------------
# encode


def _fields_from_dtype(dtype: np.dtype) -> tuple[Field, ...]:
    if dtype.names is None or len(dtype.names) == 0:
        raise PointCloudFormatError(f"expected a structured dtype with fields, got {dtype}")
    fields = []
    for name in dtype.names:
        fdt, offset = dtype.fields[name][:2]
        base, shape = (fdt.subdtype[0], fdt.subdtype[1]) if fdt.subdtype else (fdt, ())
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        code = _CODE_BY_KIND_SIZE.get((base.kind, base.itemsize))
        if code is None or base.names is not None:
            raise PointCloudFormatError(
                f"field '{name}' has dtype {fdt}; PointCloud2 supports int8/16/32, "
                "uint8/16/32, float32 and float64 (and fixed-size arrays of them)"
            )
        if count < 1:
            raise PointCloudFormatError(f"field '{name}' has an empty subarray shape {shape}")
        fields.append(Field(str(name), int(offset), code, count))
    return tuple(fields)


def _assign_field(dst: np.ndarray, src: np.ndarray) -> None:
    dst[...] = np.reshape(src, dst.shape)


def encode_structured(points: np.ndarray) -> EncodedCloud:
    """Encode a 1-D numeric structured array ``(N,)`` as a height-1 little-endian cloud.

    Field offsets and ``point_step`` come from the dtype; subarray fields become ``count``.
    Bytes not covered by a field are zero. ``is_dense`` is True unless an x/y/z field holds
    NaN/Inf.
    """
    if not isinstance(points, np.ndarray):
        raise PointCloudFormatError(
            f"expected a structured numpy array, got {type(points).__name__}"
        )
    if points.ndim != 1:
        raise PointCloudFormatError(f"expected a 1-D structured array, got shape {points.shape}")
    fields = _fields_from_dtype(points.dtype)
    point_step = points.dtype.itemsize
    _check_fields(fields, point_step, require_xyz=False)
    out_dtype = fields_dtype(fields, point_step, bigendian=False)
    n = points.shape[0]
    data = np.zeros(n * point_step, dtype=np.uint8)
    out = data.view(out_dtype)
    for f in fields:
        _assign_field(out[f.name], points[f.name])
    is_dense = True
    with np.errstate(invalid="ignore"):
        for f in fields:
            if f.name in _XYZ and f.datatype in (FLOAT32, FLOAT64):
                is_dense = is_dense and bool(np.isfinite(out[f.name]).all())
    return EncodedCloud(
        fields=fields,
        height=1,
        width=n,
        point_step=point_step,
        row_step=n * point_step,
        is_bigendian=False,
        is_dense=is_dense,
        data=data,
    )


def encode_densified(
    cloud: DecodedCloud,
    generated_xyz: np.ndarray | None,
    *,
    k: int = 3,
    neighbors: np.ndarray | None = None,
) -> EncodedCloud:
    """Encode the valid original points followed by generated points, flagged.

    Args:
        cloud: a decoded input cloud (N valid points).
        generated_xyz: ``(M, 3)`` finite coordinates of generated points (M may be 0; None is
            the same as M = 0).
        k: number of nearest original points for the intensity interpolation.
        neighbors: optional ``(M, k')`` int indices into the valid points (rows of
            ``cloud.xyz``) to use instead of a search; k' replaces ``k``.

    Returns:
        EncodedCloud, little-endian, height 1, width N+M, is_dense True. Originals keep all
        their fields and bytes (big-endian input is byte-swapped). Generated points: x, y, z
        set; intensity/reflectance/i = inverse-distance-weighted mean of the k nearest
        originals (rounded and clipped for integer types; exact copy when a neighbour
        coincides); every other field copied from the nearest original; padding zero. A uint8
        field ``generated`` at offset old point_step (0 original, 1 generated) is appended and
        point_step rounded up to a multiple of 4.

    Raises:
        PointCloudFormatError: the cloud already has a ``generated`` field, bad
            ``generated_xyz``/``neighbors``/``k``, or generated points but no valid original.
    """
    fields = tuple(cloud.fields)
    if any(f.name == GENERATED_FIELD for f in fields):
        raise PointCloudFormatError(
            f"input cloud already has a field named '{GENERATED_FIELD}'; refusing to add a second"
        )
    gen = _check_generated(generated_xyz)
    m = gen.shape[0]
    n = int(cloud.xyz.shape[0])
    old_step = int(cloud.point_step)
    new_step = (old_step + 1 + 3) // 4 * 4
    out_fields = fields + (Field(GENERATED_FIELD, old_step, UINT8, 1),)
    out_dtype = fields_dtype(out_fields, new_step, bigendian=False)

    data = np.zeros((n + m) * new_step, dtype=np.uint8)
    points = cloud.points
    if not cloud.is_bigendian:
        # Byte-exact copy of each valid record (fields and padding) as one void item.
        void = np.dtype((np.void, old_step))
        src = points.view(void)
        dst = np.ndarray((n,), dtype=void, buffer=data, strides=(new_step,))
        if cloud.n_invalid == 0:
            dst[...] = src
        else:
            dst[...] = src[cloud.valid]
    out = data.view(out_dtype)
    if cloud.is_bigendian:
        src = points if cloud.n_invalid == 0 else points[cloud.valid]
        for f in fields:
            _assign_field(out[f.name][:n], src[f.name])

    if m:
        if n == 0:
            raise PointCloudFormatError(
                f"cannot attribute {m} generated points: the cloud has no valid original point"
            )
        dist, idx = _neighbors_for(cloud.xyz, gen, k, neighbors)
        nearest = idx[np.arange(m), np.argmin(dist, axis=1)]
        rows = data.reshape(n + m, new_step)
        np.take(rows[:n], nearest, axis=0, out=rows[n:])
        covered = np.zeros(new_step, dtype=bool)
        for f in out_fields:
            covered[f.offset : f.offset + f.size] = True
        if not covered.all():
            rows[n:, ~covered] = 0
        for i, name in enumerate(_XYZ):
            _set_values(out[name][n:], gen[:, i])
        weights = _idw_weights(dist)
        for f in fields:
            if f.name in INTENSITY_NAMES:
                vals = out[f.name][:n].astype(np.float64)  # (N,) or (N, count)
                near = vals[idx]  # (M, k) or (M, k, count)
                spec = "mk,mk->m" if near.ndim == 2 else "mkc,mk->mc"
                _set_values(out[f.name][n:], np.einsum(spec, near, weights))
        out[GENERATED_FIELD][n:] = 1

    return EncodedCloud(
        fields=out_fields,
        height=1,
        width=n + m,
        point_step=new_step,
        row_step=(n + m) * new_step,
        is_bigendian=False,
        is_dense=True,
        data=data,
    )


def _check_generated(generated_xyz) -> np.ndarray:
    """``(M, 3)`` float64 from the caller's generated points, validated."""
    if generated_xyz is None:
        return np.empty((0, 3), dtype=np.float64)
    try:
        gen = np.asarray(generated_xyz)
    except (ValueError, TypeError) as exc:
        raise PointCloudFormatError(f"generated_xyz is not an array: {exc}") from None
    if gen.size == 0:
        return np.empty((0, 3), dtype=np.float64)
    if gen.ndim != 2 or gen.shape[1] != 3 or gen.dtype.kind not in "iuf":
        raise PointCloudFormatError(
            f"generated_xyz must be a real (M, 3) array, got shape {gen.shape} dtype {gen.dtype}"
        )
    gen = gen.astype(np.float64)
    if not np.isfinite(gen).all():
        bad = int(np.count_nonzero(~np.isfinite(gen).all(axis=1)))
        raise PointCloudFormatError(f"generated_xyz has {bad} points with NaN/Inf coordinates")
    return gen


def _set_values(dst: np.ndarray, values: np.ndarray) -> None:
    """Write float64 ``values (M,)`` or ``(M, count)`` into a field column, rounding and
    clipping for integer fields; a ``(M,)`` value is broadcast over a ``count > 1`` field."""
    if dst.ndim == 2 and values.ndim == 1:
        values = values[:, None]
    if dst.dtype.kind in "iu":
        info = np.iinfo(dst.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    with np.errstate(over="ignore", invalid="ignore"):
        dst[...] = values


def _idw_weights(dist: np.ndarray) -> np.ndarray:
    """``(M, k)`` normalized inverse-distance weights; a coincident neighbour takes all."""
    zero = dist <= 1e-12
    with np.errstate(divide="ignore"):
        w = 1.0 / dist
    if zero.any():
        hit = zero.any(axis=1)
        w[hit] = zero[hit]
    w /= np.einsum("mk->m", w)[:, None]  # einsum: much faster than sum(axis=1) for small k
    return w


def _neighbors_for(xyz: np.ndarray, gen: np.ndarray, k, neighbors) -> tuple:
    """``(dist (M, k), idx (M, k))`` of original points ``xyz (N, 3)`` near ``gen (M, 3)``."""
    n = xyz.shape[0]
    m = gen.shape[0]
    if neighbors is not None:
        idx = np.asarray(neighbors)
        if idx.ndim == 1:
            idx = idx[:, None]
        if idx.ndim != 2 or idx.shape[0] != m or idx.shape[1] < 1 or idx.dtype.kind not in "iu":
            raise PointCloudFormatError(
                f"neighbors must be an int (M, k) array with M = {m}, got shape {idx.shape} "
                f"dtype {idx.dtype}"
            )
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise PointCloudFormatError(
                f"neighbors must index the {n} valid points, got values in "
                f"[{idx.min()}, {idx.max()}]"
            )
        idx = idx.astype(np.intp)
        dist = np.linalg.norm(xyz[idx].astype(np.float64) - gen[:, None, :], axis=2)
        return dist, idx
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise PointCloudFormatError(f"k must be an integer >= 1, got {_short(k)}")
    return _knn(xyz, gen, min(int(k), n))


def _knn(xyz: np.ndarray, gen: np.ndarray, k: int, cell: float = _KNN_CELL_M) -> tuple:
    """Exact k nearest neighbours of ``gen (M, 3)`` among ``xyz (N, 3)``, 1 <= k <= N.

    The tree holds only the original points in grid cells next to a generated point's cell
    (all inside the generated points' bounding box grown by one cell), so a few object
    patches in a large scan stay cheap. Any point closer than ``cell`` to a query is in the
    tree, so a query whose k-th neighbour is closer than ``cell`` is exact; the others are
    answered again with a 4x larger cell, and finally from a tree over all points.
    Returns ``dist (M, k)`` float64, ``idx (M, k)`` intp.
    """
    from ..geometry.knn_numpy import nearest_neighbors

    m, n = gen.shape[0], xyz.shape[0]
    if cell <= _KNN_CELL_M * 64:
        cand, cell = _candidates(xyz, gen, cell)
    if cell > _KNN_CELL_M * 64 or cand.size < k or cand.size == n:
        dist, idx = nearest_neighbors(xyz, gen, k=k)
        return dist.reshape(m, k), idx.reshape(m, k).astype(np.intp)
    bound = 0.999 * cell
    dist, sub = nearest_neighbors(xyz[cand], gen, k=k, max_distance=bound)
    dist, sub = dist.reshape(m, k), sub.reshape(m, k)
    redo = np.flatnonzero(~(dist[:, -1] <= bound))  # beyond the bound: inf distance
    idx = cand[np.minimum(sub, cand.size - 1)]
    if redo.size:
        # Mostly sparse surroundings: one tree over everything beats growing the cell.
        grow = 4.0 * cell if 2 * redo.size <= m else _KNN_CELL_M * 1e9
        dist[redo], idx[redo] = _knn(xyz, gen[redo], k, grow)
    return dist, idx


def _candidates(xyz: np.ndarray, gen: np.ndarray, cell: float) -> tuple[np.ndarray, float]:
    """Indices of the points of ``xyz (N, 3)`` in or next to (3x3x3) a cell holding a point of
    ``gen (M, 3)``, on a grid of ``cell`` metres anchored at the generated points' bounding
    box grown by one cell (the cell grows when that box would need too many cells).

    Every point closer than ``cell`` to a generated point is included. Returns
    ``(indices (K,), cell)``.
    """
    lo = gen.min(axis=0) - cell
    extent = gen.max(axis=0) + cell - lo
    cells = float(np.prod(np.floor(extent / cell) + 1))
    if cells > _KNN_MAX_CELLS:
        cell = cell * float(np.cbrt(cells / _KNN_MAX_CELLS)) * 1.01
        lo = gen.min(axis=0) - cell
        extent = gen.max(axis=0) + cell - lo
    dims = (np.floor(extent / cell) + 1).astype(np.intp)
    inv = 1.0 / cell

    occ = np.zeros(tuple(dims), dtype=bool)
    gi = np.minimum(((gen - lo) * inv).astype(np.intp), dims - 1)
    occ[gi[:, 0], gi[:, 1], gi[:, 2]] = True
    for axis in range(3):  # separable 3x3x3 box dilation
        grown = occ.copy()
        lead = [slice(None)] * 3
        trail = [slice(None)] * 3
        lead[axis], trail[axis] = slice(1, None), slice(None, -1)
        grown[tuple(lead)] |= occ[tuple(trail)]
        grown[tuple(trail)] |= occ[tuple(lead)]
        occ = grown

    # Cell coordinates in float32 (cheap for a 120k-point scan); points outside the grid
    # are dropped before the integer cast.
    q = [(xyz[:, a] - np.float32(lo[a])) * np.float32(inv) for a in range(3)]
    inside = (q[0] >= 0) & (q[0] < dims[0])
    inside &= (q[1] >= 0) & (q[1] < dims[1])
    inside &= (q[2] >= 0) & (q[2] < dims[2])
    sel = np.flatnonzero(inside)
    lin = q[0][sel].astype(np.intp)
    for a in (1, 2):
        lin *= dims[a]
        lin += q[a][sel].astype(np.intp)
    return sel[occ.reshape(-1)[lin]], cell
