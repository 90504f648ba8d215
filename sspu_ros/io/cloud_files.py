"""Point-cloud and mesh files: read and write without any dependency beyond numpy.

Formats (chosen by the file extension, case-insensitive):

- ``.xyz`` / ``.txt`` / ``.pts``: text columns separated by whitespace or commas; ``#``
  comments and blank lines are ignored. Columns 1-3 are x, y, z; column 4 is
  ``intensity``; with exactly 6 columns, columns 4-6 are ``normal``. A ``# fields: ...``
  comment (written by :func:`write_cloud`) or a first line of column names overrides
  the positional rule. A first line holding a single integer (Leica ``.pts`` point
  count) is skipped.
- ``.ply``: ascii / binary_little_endian / binary_big_endian, any scalar vertex
  properties in any order; other elements (faces, ...) are parsed or skipped.
- ``.pcd`` (PCL): DATA ascii / binary / binary_compressed (LZF, column-major).
- ``.bin``: KITTI Velodyne scans, float32 rows of (x, y, z, reflectance).
- ``.npy``: (N, 3) or (N, >=4) numeric arrays, or structured arrays with x/y/z fields.

Every problem with a file (missing, empty, truncated, malformed header, unsupported
variant) raises :class:`CloudFileError`, whose message starts with the file path.

Attribute naming on read: ``nx/ny/nz`` and ``normal_x/normal_y/normal_z`` become
``'normal'`` (N, 3); ``red/green/blue`` become ``'rgb'`` (N, 3) uint8 (PCD packed
``rgb``/``rgba`` fields are unpacked the same way); ``intensity`` / ``reflectance`` /
``scalar_intensity`` (any case) become ``'intensity'``; everything else keeps its name
and its dtype.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CloudFileError

__all__ = [
    "MESH_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "CloudFileError",
    "PointCloud",
    "lzf_decompress",
    "read_cloud",
    "read_mesh",
    "write_cloud",
]

SUPPORTED_EXTENSIONS = (".xyz", ".txt", ".pts", ".ply", ".pcd", ".bin", ".npy")
MESH_EXTENSIONS = (".ply", ".off")
_TEXT_EXTENSIONS = (".xyz", ".txt", ".pts")

_INTENSITY_NAMES = ("intensity", "reflectance", "scalar_intensity")
_GROUPS = {
    "normal": (("nx", "ny", "nz"), ("normal_x", "normal_y", "normal_z")),
    "rgb": (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue")),
}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")


# --------------------------------------------------------------------------------------
# PointCloud
# --------------------------------------------------------------------------------------


@dataclass
class PointCloud:
    """A point cloud with optional per-point attributes.

    Attributes:
        xyz: (N, 3) float32 coordinates. Values from float32 files are kept bit-exact;
            float64 sources are cast. NaN / Inf rows are kept (see :meth:`finite`).
        attributes: name -> (N,) or (N, k) array in its original dtype, e.g.
            ``'intensity'`` (N,), ``'normal'`` (N, 3), ``'rgb'`` (N, 3) uint8, ``'ring'``.
    """

    xyz: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xyz = np.asarray(self.xyz)
        if xyz.ndim != 2 or xyz.shape[1] != 3:
            raise ValueError(f"xyz must have shape (N, 3), got {xyz.shape}")
        if not (np.issubdtype(xyz.dtype, np.number) or xyz.dtype == np.bool_):
            raise ValueError(f"xyz must be numeric, got dtype {xyz.dtype}")
        if xyz.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                xyz = xyz.astype(np.float32)
        self.xyz = xyz
        n = self.xyz.shape[0]
        attrs: dict[str, np.ndarray] = {}
        for name, value in dict(self.attributes).items():
            arr = np.asarray(value)
            if arr.ndim not in (1, 2) or arr.shape[0] != n:
                raise ValueError(
                    f"attribute {name!r} must have shape ({n},) or ({n}, k), got {arr.shape}"
                )
            attrs[str(name)] = arr
        self.attributes = attrs

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @property
    def intensity(self) -> np.ndarray | None:
        """(N,) float32 copy of ``'intensity'`` / ``'reflectance'`` / ``'i'``, or None."""
        for key in ("intensity", "reflectance", "i"):
            if key in self.attributes:
                value = self.attributes[key]
                if value.ndim == 2:
                    if value.shape[1] != 1:
                        continue
                    value = value[:, 0]
                return value.astype(np.float32)
        return None

    def select(self, index: np.ndarray) -> PointCloud:
        """A new cloud with the rows picked by a boolean mask (N,) or an index array."""
        return PointCloud(
            self.xyz[index], {name: value[index] for name, value in self.attributes.items()}
        )

    def finite(self) -> tuple[PointCloud, int]:
        """Drop rows whose xyz holds NaN or Inf.

        Returns:
            ``(cloud, n_removed)``: a copy without the non-finite rows (attributes
            filtered alike) and the number of rows that were removed.
        """
        mask = np.isfinite(self.xyz).all(axis=1)
        return self.select(mask), int(mask.size - np.count_nonzero(mask))


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


def read_cloud(path: str | os.PathLike) -> PointCloud:
    """Read a point cloud; the format comes from the extension (see module docs).

    Returns:
        :class:`PointCloud` with xyz (N, 3) float32. A well-formed empty cloud gives N=0.

    Raises:
        CloudFileError: missing / empty / truncated / malformed / unsupported file.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise CloudFileError(
            f"{p}: unsupported extension {p.suffix!r} "
            f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    data = _read_bytes(p)
    readers = {
        ".ply": _read_ply_cloud,
        ".pcd": _read_pcd,
        ".bin": _read_kitti_bin,
        ".npy": _read_npy,
    }
    reader = readers.get(ext, _read_text_cloud)
    return _guarded(reader, data, str(p), ext)


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh from ``.ply`` or ``.off``.

    Polygons with more than 3 vertices are fan-triangulated; faces with fewer than 3
    vertices are dropped.

    Returns:
        ``(vertices, triangles)``: (V, 3) float64 and (F, 3) int64 (indices into V).

    Raises:
        CloudFileError: missing / malformed / unsupported file, or an index out of range.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in MESH_EXTENSIONS:
        raise CloudFileError(
            f"{p}: unsupported mesh extension {p.suffix!r} "
            f"(supported: {', '.join(MESH_EXTENSIONS)})"
        )
    data = _read_bytes(p)
    reader = _read_ply_mesh if ext == ".ply" else _read_off
    vertices, triangles = _guarded(reader, data, str(p), ext)
    if triangles.size and (triangles.min() < 0 or triangles.max() >= len(vertices)):
        raise CloudFileError(
            f"{p}: face index out of range [0, {len(vertices)}) "
            f"(min {triangles.min()}, max {triangles.max()})"
        )
    return vertices, triangles


def write_cloud(
    path: str | os.PathLike,
    xyz: np.ndarray,
    attributes: Mapping[str, np.ndarray] | None = None,
    *,
    binary: bool = True,
) -> None:
    """Write a point cloud; the format comes from the extension. Creates parent dirs.

    Args:
        path: target file (``.xyz .txt .pts .ply .pcd .bin .npy``).
        xyz: (N, 3) coordinates, written as float32.
        attributes: name -> (N,) or (N, k) arrays. ``'normal'`` (N, 3) and ``'rgb'``
            (N, 3) uint8 get the format's conventional field names; other (N, k)
            attributes are one COUNT-k field in PCD but k columns ``name_0 .. name_{k-1}``
            in PLY and text files (read back as k attributes). ``.bin`` stores only
            ``intensity`` (zeros when absent); ``.npy`` is a plain (N, 3) / (N, 4)
            float32 array unless attributes other than intensity are given, in which
            case it is a structured array (x, y, z, then the attributes).
        binary: binary PLY / PCD (default) or ascii. Ignored by the other formats.

    The text writers print float32 with 9 significant digits and float64 with 17, so
    reading the file back gives the same values bit for bit.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise CloudFileError(
            f"{p}: unsupported extension {p.suffix!r} "
            f"(supported: {', '.join(SUPPORTED_EXTENSIONS)})"
        )
    cloud = PointCloud(np.asarray(xyz), dict(attributes or {}))
    for name in cloud.attributes:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"attribute name {name!r} cannot be stored in a {ext} file")
        if cloud.attributes[name].dtype.kind not in "biuf":
            raise ValueError(
                f"attribute {name!r} has dtype {cloud.attributes[name].dtype}; "
                "only bool, integer and float attributes can be written"
            )
    if ext == ".ply":
        payload = _ply_bytes(cloud, binary)
    elif ext == ".pcd":
        payload = _pcd_bytes(cloud, binary)
    elif ext == ".bin":
        payload = _kitti_bin_bytes(cloud)
    elif ext == ".npy":
        payload = _npy_bytes(cloud)
    else:
        payload = _text_bytes(cloud)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def lzf_decompress(data: bytes, expected_size: int) -> bytes:
    """Decompress an LZF block (the codec of PCD ``binary_compressed``).

    LZF is a byte stream of operations. A control byte ``c < 32`` starts a literal run
    of ``c + 1`` bytes. Otherwise ``c >> 5`` is the back-reference length minus 2 (7
    means "add the next byte"), and the distance back is ``((c & 31) << 8) + next + 1``;
    a reference may overlap the bytes it produces.

    Args:
        data: compressed bytes.
        expected_size: exact size of the output.

    Raises:
        ValueError: corrupt stream (reference before the start, run past the end) or an
            output size different from ``expected_size``.
    """
    src = bytes(data)
    n = len(src)
    out = bytearray()
    i = 0
    while i < n:
        ctrl = src[i]
        i += 1
        if ctrl < 32:
            run = ctrl + 1
            if i + run > n:
                raise ValueError(f"LZF literal run of {run} bytes past the end at byte {i - 1}")
            out += src[i : i + run]
            i += run
        else:
            length = ctrl >> 5
            if length == 7:
                if i >= n:
                    raise ValueError("LZF stream ends inside a back-reference")
                length += src[i]
                i += 1
            if i >= n:
                raise ValueError("LZF stream ends inside a back-reference")
            distance = ((ctrl & 0x1F) << 8) + src[i] + 1
            i += 1
            length += 2
            start = len(out) - distance
            if start < 0:
                raise ValueError(
                    f"LZF back-reference {distance} bytes back, only {len(out)} decoded"
                )
            if distance >= length:
                out += out[start : start + length]
            else:  # overlapping copy: the last `distance` bytes repeat
                pattern = bytes(out[start:])
                out += (pattern * (length // distance + 1))[:length]
        if len(out) > expected_size:
            raise ValueError(f"LZF output exceeds the expected {expected_size} bytes")
    if len(out) != expected_size:
        raise ValueError(f"LZF output has {len(out)} bytes, expected {expected_size}")
    return bytes(out)


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


def _read_bytes(p: Path) -> bytes:
    if not p.exists():
        raise CloudFileError(f"{p}: no such file")
    if not p.is_file():
        raise CloudFileError(f"{p}: not a regular file")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CloudFileError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if not data:
        raise CloudFileError(f"{p}: empty file")
    return data


def _guarded(reader, data: bytes, name: str, ext: str):
    """Run a reader and turn any low-level parsing exception into CloudFileError."""
    try:
        # Out-of-range values cast to a narrower type (1e300 -> float32 inf) are the
        # file's business, not a reason for RuntimeWarnings.
        with np.errstate(all="ignore"):
            return reader(data, name, ext)
    except CloudFileError:
        raise
    except (
        ValueError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
        OverflowError,
        UnicodeDecodeError,
        EOFError,
    ) as exc:
        raise CloudFileError(f"{name}: malformed {ext} file ({exc})") from exc


def _to_rgb_uint8(channels: list[np.ndarray]) -> np.ndarray:
    """Three (N,) colour channels -> (N, 3) uint8 (floats in [0, 1] are scaled)."""
    rgb = np.stack(channels, axis=1)
    if rgb.dtype == np.uint8:
        return rgb
    if rgb.dtype.kind == "f":
        finite = rgb[np.isfinite(rgb)]
        if finite.size and finite.max() <= 1.0:
            rgb = rgb * 255.0
        rgb = np.nan_to_num(np.rint(rgb), nan=0.0)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """(N,) packed 0xAARRGGBB (uint32 or float32 bits) -> (N, 4) uint8 r, g, b, a."""
    bits = packed.astype(packed.dtype.newbyteorder("=")).view(np.uint32)
    shifts = np.array([16, 8, 0, 24], dtype=np.uint32)
    return ((bits[:, None] >> shifts) & 0xFF).astype(np.uint8)


def _assemble(columns: dict[str, np.ndarray], name: str, what: str) -> PointCloud:
    """Group named columns into xyz + attributes (see the module docstring)."""
    cols = dict(columns)
    lower = {key.lower(): key for key in cols}
    xyz_parts = []
    for axis in "xyz":
        if axis not in cols:
            if axis in lower:
                axis = lower[axis]
            else:
                raise CloudFileError(f'{name}: {what} "{axis}" missing')
        xyz_parts.append(cols.pop(axis))
    if any(part.ndim != 1 for part in xyz_parts):
        raise CloudFileError(f"{name}: x, y, z must be scalar {what}s")
    xyz = np.stack(xyz_parts, axis=1)
    attributes: dict[str, np.ndarray] = {}
    for group, alternatives in _GROUPS.items():
        for names in alternatives:
            if all(n in cols and cols[n].ndim == 1 for n in names) and group not in cols:
                parts = [cols.pop(n) for n in names]
                if group == "rgb":
                    attributes[group] = _to_rgb_uint8(parts)
                else:
                    attributes[group] = np.stack(parts, axis=1)
                break
    for key in list(cols):
        if key.lower() in _INTENSITY_NAMES and "intensity" not in attributes:
            if "intensity" in cols and key != "intensity":
                continue
            attributes["intensity"] = cols.pop(key)
    for key, value in cols.items():
        if key in attributes:
            continue
        attributes[key] = value
    return PointCloud(xyz, attributes)


def _flat_columns(cloud: PointCloud) -> list[tuple[str, np.ndarray]]:
    """xyz + attributes as named 1-D columns for PLY / text writers."""
    cols: list[tuple[str, np.ndarray]] = [
        ("x", cloud.xyz[:, 0]),
        ("y", cloud.xyz[:, 1]),
        ("z", cloud.xyz[:, 2]),
    ]
    for name, value in cloud.attributes.items():
        if name == "normal" and value.ndim == 2 and value.shape[1] == 3:
            cols += [(n, value[:, j]) for j, n in enumerate(("nx", "ny", "nz"))]
        elif name == "rgb" and value.ndim == 2 and value.shape[1] == 3:
            rgb = _to_rgb_uint8([value[:, 0], value[:, 1], value[:, 2]])
            cols += [(n, rgb[:, j]) for j, n in enumerate(("red", "green", "blue"))]
        elif value.ndim == 2:
            cols += [(f"{name}_{j}", value[:, j]) for j in range(value.shape[1])]
        else:
            cols.append((name, value))
    return cols


def _storable(arr: np.ndarray, target: str) -> np.ndarray:
    """Cast an attribute to a dtype the target format can hold.

    ``target`` is ``'ply'`` (no 64-bit integers, no float16) or ``'pcd'`` (no float16).
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f" and arr.dtype.itemsize < 4:
        return arr.astype(np.float32)
    if target == "ply" and arr.dtype.kind in "iu" and arr.dtype.itemsize == 8:
        for candidate in (np.int32, np.uint32):
            info = np.iinfo(candidate)
            if arr.size == 0 or (arr.min() >= info.min and arr.max() <= info.max):
                return arr.astype(candidate)
        return arr.astype(np.float64)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _format_for(dtype: np.dtype) -> str:
    if dtype.kind == "f":
        return "%.17g" if dtype.itemsize >= 8 else "%.9g"
    return "%d"


def _text_rows(columns: list[np.ndarray]) -> bytes:
    """Columns (N,) each -> ascii rows, exact for float32 / float64 / integer values."""
    if not columns or len(columns[0]) == 0:
        return b""
    line = " ".join(_format_for(c.dtype) for c in columns) + "\n"
    # tolist() gives Python int / float, so 64-bit integers print exactly too.
    rows = zip(*(c.tolist() for c in columns), strict=True)
    return "".join(line % row for row in rows).encode("ascii")


# --------------------------------------------------------------------------------------
# Text (.xyz / .txt / .pts)
# --------------------------------------------------------------------------------------


def _read_text_cloud(data: bytes, name: str, ext: str) -> PointCloud:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CloudFileError(f"{name}: not a text file ({exc.reason} at byte {exc.start})") from exc
    header_names: list[str] | None = None
    header_types: list[str] | None = None
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    first_data = True
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            body = line[1:].strip()
            if body.startswith("fields:"):
                header_names = body[len("fields:") :].split()
            elif body.startswith("types:"):
                header_types = body[len("types:") :].split()
            continue
        tokens = line.replace(",", " ").split()
        if first_data:
            first_data = False
            if len(tokens) == 1 and tokens[0].isdigit():
                continue  # .pts point count
            if not any(_is_number(t) for t in tokens):
                header_names, header_types = tokens, None
                continue
        rows.append(tokens)
        line_numbers.append(lineno)
    if not rows:
        return PointCloud(np.zeros((0, 3), np.float32))
    ncols = len(rows[0])
    for tokens, lineno in zip(rows, line_numbers, strict=True):
        if len(tokens) < 3:
            raise CloudFileError(f"{name}: line {lineno} has {len(tokens)} columns, expected >= 3")
        if len(tokens) != ncols:
            raise CloudFileError(
                f"{name}: line {lineno} has {len(tokens)} columns, expected {ncols} "
                f"(as on line {line_numbers[0]})"
            )
    flat = [t for tokens in rows for t in tokens]
    try:
        values = np.array(flat, dtype=np.float64).reshape(len(rows), ncols)
    except ValueError:
        for tokens, lineno in zip(rows, line_numbers, strict=True):
            for t in tokens:
                if not _is_number(t):
                    raise CloudFileError(f"{name}: line {lineno}: {t!r} is not a number") from None
        raise
    if header_names is not None and len(header_names) == ncols:
        types = header_types if header_types and len(header_types) == ncols else None
        columns = {}
        for j, col_name in enumerate(header_names):
            dtype = np.float32
            if types is not None:
                try:
                    dtype = np.dtype(types[j])
                except TypeError:
                    dtype = np.float32
            columns[col_name] = values[:, j].astype(dtype)
        return _assemble(columns, name, "column")
    xyz = values[:, :3].astype(np.float32)
    attributes: dict[str, np.ndarray] = {}
    if ncols == 6:
        attributes["normal"] = values[:, 3:6].astype(np.float32)
    elif ncols == 7 and ext == ".pts":
        attributes["intensity"] = values[:, 3].astype(np.float32)
        attributes["rgb"] = _to_rgb_uint8([values[:, 4], values[:, 5], values[:, 6]])
    elif ncols >= 4:
        attributes["intensity"] = values[:, 3].astype(np.float32)
        if ncols > 4:
            attributes["extra"] = values[:, 4:].astype(np.float32)
    return PointCloud(xyz, attributes)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _text_bytes(cloud: PointCloud) -> bytes:
    cols = [(n, _storable(c, "pcd")) for n, c in _flat_columns(cloud)]
    header = (
        "# sspu_ros point cloud\n"
        f"# fields: {' '.join(n for n, _ in cols)}\n"
        f"# types: {' '.join(c.dtype.str.lstrip('<>=|') for _, c in cols)}\n"
    )
    return header.encode("ascii") + _text_rows([c for _, c in cols])


# --------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------

_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}
_PLY_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort", "i4": "int",
              "u4": "uint", "f4": "float", "f8": "double"}  # fmt: skip
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I",
                 "f4": "f", "f8": "d"}  # fmt: skip


@dataclass
class _PlyProperty:
    name: str
    code: str  # numpy type code without byte order, e.g. 'f4'
    count_code: str | None = None  # set for list properties

    @property
    def is_list(self) -> bool:
        return self.count_code is not None


@dataclass
class _PlyElement:
    name: str
    count: int
    properties: list[_PlyProperty]


def _parse_ply_header(data: bytes, name: str) -> tuple[str, list[_PlyElement], int]:
    """Returns (format, elements, byte offset of the body)."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise CloudFileError(f"{name}: not a PLY file (first line is not 'ply')")
    fmt: str | None = None
    elements: list[_PlyElement] = []
    pos = 0
    lineno = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise CloudFileError(f"{name}: PLY header has no 'end_header' line")
        line = data[pos:nl].decode("latin-1").strip()
        pos = nl + 1
        lineno += 1
        if lineno == 1:
            continue
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) != 3 or words[1] not in (
                "ascii",
                "binary_little_endian",
                "binary_big_endian",
            ):
                raise CloudFileError(f"{name}: unsupported PLY format line {line!r}")
            fmt = words[1]
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise CloudFileError(f"{name}: bad PLY element line {line!r}")
            elements.append(_PlyElement(words[1], int(words[2]), []))
        elif key == "property":
            if not elements:
                raise CloudFileError(f"{name}: PLY property before any element: {line!r}")
            if len(words) == 5 and words[1] == "list":
                if words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise CloudFileError(f"{name}: unknown PLY list types in {line!r}")
                count_code = _PLY_TYPES[words[2]]
                if count_code[0] == "f":
                    raise CloudFileError(f"{name}: PLY list count must be an integer: {line!r}")
                prop = _PlyProperty(words[4], _PLY_TYPES[words[3]], count_code)
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                prop = _PlyProperty(words[2], _PLY_TYPES[words[1]])
            else:
                raise CloudFileError(f"{name}: bad PLY property line {line!r}")
            if any(p.name == prop.name for p in elements[-1].properties):
                raise CloudFileError(
                    f'{name}: duplicate property "{prop.name}" in element {elements[-1].name}'
                )
            elements[-1].properties.append(prop)
        else:
            raise CloudFileError(f"{name}: unknown PLY header keyword {key!r} on line {lineno}")
    if fmt is None:
        raise CloudFileError(f"{name}: PLY header has no 'format' line")
    return fmt, elements, pos


class _PlyBody:
    """Sequential reader over a PLY body (ascii values or binary bytes)."""

    def __init__(self, data: bytes, offset: int, fmt: str, name: str):
        self.name = name
        self.ascii = fmt == "ascii"
        self.endian = ">" if fmt == "binary_big_endian" else "<"
        self.data = data
        self.pos = offset
        self.values: np.ndarray | None = None
        if self.ascii:
            tokens = data[offset:].split()
            try:
                self.values = np.array(tokens, dtype=np.bytes_).astype(np.float64)
            except ValueError as exc:
                raise CloudFileError(f"{name}: non-numeric value in ascii PLY body") from exc
            self.pos = 0

    def _size(self) -> int:
        return len(self.values) if self.ascii else len(self.data)

    def read_element(self, element: _PlyElement) -> dict[str, object]:
        """-> property name -> (count,) array, or for lists (count, k) array / list."""
        props = element.properties
        count = element.count
        # Minimal record size: scalars + list counts (lists may be empty).
        if self.ascii:
            min_record = len(props)
        else:
            min_record = sum(
                np.dtype(p.count_code if p.is_list else p.code).itemsize for p in props
            )
        if count * min_record > self._size() - self.pos:
            raise CloudFileError(
                f"{self.name}: truncated PLY data in element {element.name} "
                f"({count} records need at least {count * min_record} "
                f"{'values' if self.ascii else 'bytes'}, {self._size() - self.pos} left)"
            )
        if count == 0:
            out: dict[str, object] = {}
            for p in props:
                shape = (0, 0) if p.is_list else (0,)
                out[p.name] = np.zeros(shape, dtype=p.code)
            return out
        fixed = self._fixed_layout(props)
        if fixed is not None:
            result = self._read_fixed(element, fixed)
            if result is not None:
                return result
        return self._read_loop(element)

    # -- layout of the first record, assumed for all records (the fast path) --------
    def _fixed_layout(self, props: list[_PlyProperty]) -> list[int] | None:
        """List lengths of the first record (one per list property), or None."""
        lengths = []
        pos = self.pos
        for p in props:
            if p.is_list:
                n = self._scalar_at(pos, p.count_code)
                if n is None or not np.isfinite(n) or n < 0 or n != int(n):
                    return None
                n = int(n)
                lengths.append(n)
                pos += (
                    1 + n
                    if self.ascii
                    else np.dtype(p.count_code).itemsize + n * np.dtype(p.code).itemsize
                )
            else:
                pos += 1 if self.ascii else np.dtype(p.code).itemsize
        return lengths

    def _scalar_at(self, pos: int, code: str):
        if self.ascii:
            return float(self.values[pos]) if pos < len(self.values) else None
        size = np.dtype(code).itemsize
        if pos + size > len(self.data):
            return None
        return struct.unpack_from(self.endian + _STRUCT_CODES[code], self.data, pos)[0]

    def _read_fixed(self, element: _PlyElement, lengths: list[int]) -> dict | None:
        props = element.properties
        count = element.count
        if self.ascii:
            stride = 0
            starts = []
            it = iter(lengths)
            list_len = {}
            for p in props:
                starts.append(stride)
                if p.is_list:
                    list_len[p.name] = next(it)
                    stride += 1 + list_len[p.name]
                else:
                    stride += 1
            if count * stride > len(self.values) - self.pos:
                return None
            block = self.values[self.pos : self.pos + count * stride].reshape(count, stride)
            out: dict[str, object] = {}
            for p, start in zip(props, starts, strict=True):
                if p.is_list:
                    k = list_len[p.name]
                    if not np.all(block[:, start] == k):
                        return None
                    out[p.name] = block[:, start + 1 : start + 1 + k].astype(p.code)
                else:
                    out[p.name] = block[:, start].astype(p.code)
            self.pos += count * stride
            return out
        fields = []
        it = iter(lengths)
        for j, p in enumerate(props):
            if p.is_list:
                fields.append((f"c{j}", self.endian + p.count_code))
                fields.append((f"v{j}", self.endian + p.code, (next(it),)))
            else:
                fields.append((f"s{j}", self.endian + p.code))
        dtype = np.dtype(fields)
        if count * dtype.itemsize > len(self.data) - self.pos:
            return None
        arr = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        out = {}
        it = iter(lengths)
        for j, p in enumerate(props):
            if p.is_list:
                k = next(it)
                if not np.all(arr[f"c{j}"] == k):
                    return None
                out[p.name] = arr[f"v{j}"].astype(p.code).reshape(count, k)
            else:
                out[p.name] = arr[f"s{j}"].astype(p.code)
        self.pos += count * dtype.itemsize
        return out

    # -- record-by-record fallback (mixed polygon sizes) ----------------------------
    def _read_loop(self, element: _PlyElement) -> dict[str, object]:
        props = element.properties
        scalars: dict[str, list] = {p.name: [] for p in props if not p.is_list}
        lists: dict[str, list] = {p.name: [] for p in props if p.is_list}
        where = f"{self.name}: truncated PLY data in element {element.name}"
        if self.ascii:
            vals = self.values
            pos = self.pos
            for _ in range(element.count):
                for p in props:
                    if pos >= len(vals):
                        raise CloudFileError(where)
                    if p.is_list:
                        n = vals[pos]
                        if not np.isfinite(n) or n < 0 or n != int(n):
                            raise CloudFileError(f"{self.name}: bad list length {n}")
                        n = int(n)
                        if pos + 1 + n > len(vals):
                            raise CloudFileError(where)
                        lists[p.name].append(vals[pos + 1 : pos + 1 + n].astype(p.code))
                        pos += 1 + n
                    else:
                        scalars[p.name].append(vals[pos])
                        pos += 1
            self.pos = pos
        else:
            data = self.data
            pos = self.pos
            for _ in range(element.count):
                for p in props:
                    if p.is_list:
                        csize = np.dtype(p.count_code).itemsize
                        if pos + csize > len(data):
                            raise CloudFileError(where)
                        n = struct.unpack_from(
                            self.endian + _STRUCT_CODES[p.count_code], data, pos
                        )[0]
                        pos += csize
                        if n < 0:
                            raise CloudFileError(f"{self.name}: negative list length {n}")
                        dt = np.dtype(self.endian + p.code)
                        if pos + n * dt.itemsize > len(data):
                            raise CloudFileError(where)
                        lists[p.name].append(
                            np.frombuffer(data, dtype=dt, count=n, offset=pos).astype(p.code)
                        )
                        pos += n * dt.itemsize
                    else:
                        size = np.dtype(p.code).itemsize
                        if pos + size > len(data):
                            raise CloudFileError(where)
                        scalars[p.name].append(
                            struct.unpack_from(self.endian + _STRUCT_CODES[p.code], data, pos)[0]
                        )
                        pos += size
            self.pos = pos
        out: dict[str, object] = {}
        for p in props:
            if p.is_list:
                out[p.name] = lists[p.name]
            else:
                out[p.name] = np.array(scalars[p.name]).astype(p.code)
        return out


def _read_ply_elements(
    data: bytes, name: str, wanted: tuple[str, ...]
) -> dict[str, tuple[_PlyElement, dict[str, object]]]:
    """Parse elements in file order until every name in ``wanted`` has been read."""
    fmt, elements, offset = _parse_ply_header(data, name)
    body = _PlyBody(data, offset, fmt, name)
    found: dict[str, tuple[_PlyElement, dict[str, object]]] = {}
    for element in elements:
        if all(w in found for w in wanted):
            break
        found[element.name] = (element, body.read_element(element))
    for w in wanted:
        if w not in found:
            raise CloudFileError(f"{name}: PLY file has no '{w}' element")
    return found


def _read_ply_cloud(data: bytes, name: str, ext: str) -> PointCloud:
    del ext
    element, values = _read_ply_elements(data, name, ("vertex",))["vertex"]
    columns = {}
    for p in element.properties:
        value = values[p.name]
        if p.is_list:
            if isinstance(value, np.ndarray):
                columns[p.name] = value
            continue  # ragged per-vertex lists cannot be an (N, k) attribute
        columns[p.name] = value
    return _assemble(columns, name, "vertex property")


def _read_ply_mesh(data: bytes, name: str, ext: str) -> tuple[np.ndarray, np.ndarray]:
    del ext
    found = _read_ply_elements(data, name, ("vertex", "face"))
    _, v_values = found["vertex"]
    for axis in "xyz":
        if axis not in v_values:
            raise CloudFileError(f'{name}: vertex property "{axis}" missing')
    vertices = np.stack([np.asarray(v_values[a], np.float64) for a in "xyz"], axis=1)
    f_element, f_values = found["face"]
    list_props = [p for p in f_element.properties if p.is_list]
    chosen = next(
        (p for p in list_props if p.name in ("vertex_indices", "vertex_index")),
        list_props[0] if list_props else None,
    )
    if chosen is None:
        raise CloudFileError(f"{name}: face element has no vertex_indices list property")
    return vertices, _triangulate(f_values[chosen.name])


def _triangulate(faces) -> np.ndarray:
    """(F, k) array or list of index arrays -> (T, 3) int64 fan triangles."""
    if isinstance(faces, np.ndarray):
        faces = faces.astype(np.int64).reshape(len(faces), -1)
        k = faces.shape[1]
        if k < 3:
            return np.zeros((0, 3), np.int64)
        if k == 3:
            return faces
        tris = np.stack(
            [
                np.stack([faces[:, 0], faces[:, i], faces[:, i + 1]], axis=1)
                for i in range(1, k - 1)
            ],
            axis=1,
        )
        return tris.reshape(-1, 3)
    out = []
    for face in faces:
        face = np.asarray(face, dtype=np.int64)
        for i in range(1, len(face) - 1):
            out.append((face[0], face[i], face[i + 1]))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


def _ply_bytes(cloud: PointCloud, binary: bool) -> bytes:
    cols = [(n, _storable(c, "ply")) for n, c in _flat_columns(cloud)]
    n = len(cloud)
    fmt = "binary_little_endian" if binary else "ascii"
    lines = ["ply", f"format {fmt} 1.0", "comment written by sspu_ros", f"element vertex {n}"]
    for col_name, col in cols:
        lines.append(f"property {_PLY_NAMES[col.dtype.str.lstrip('<>=|')]} {col_name}")
    lines.append("end_header")
    header = ("\n".join(lines) + "\n").encode("ascii")
    if not binary:
        return header + _text_rows([c for _, c in cols])
    dtype = np.dtype([(f"c{j}", "<" + c.dtype.str.lstrip("<>=|")) for j, (_, c) in enumerate(cols)])
    rec = np.empty(n, dtype=dtype)
    for j, (_, col) in enumerate(cols):
        rec[f"c{j}"] = col
    return header + rec.tobytes()


# --------------------------------------------------------------------------------------
# OFF
# --------------------------------------------------------------------------------------


def _read_off(data: bytes, name: str, ext: str) -> tuple[np.ndarray, np.ndarray]:
    del ext
    text = data.decode("latin-1")
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    if not lines:
        raise CloudFileError(f"{name}: empty OFF file")
    first = lines[0].split()
    keyword = first[0]
    if "OFF" not in keyword:
        raise CloudFileError(f"{name}: not an OFF file (first keyword {keyword!r})")
    if keyword.startswith("OFF") and keyword[3:].isdigit():  # "OFF1129 2246 0"
        first = [keyword[:3], keyword[3:], *first[1:]]
        keyword = "OFF"
    if "BINARY" in first:
        raise CloudFileError(f"{name}: binary OFF is not supported")
    rest = first[1:]
    cursor = 1
    if not rest:
        if len(lines) < 2:
            raise CloudFileError(f"{name}: OFF header has no vertex/face counts")
        rest = lines[1].split()
        cursor = 2
    if len(rest) < 2 or not rest[0].isdigit() or not rest[1].isdigit():
        raise CloudFileError(f"{name}: bad OFF counts {' '.join(rest)!r}")
    nv, nf = int(rest[0]), int(rest[1])
    if cursor + nv + nf > len(lines):
        raise CloudFileError(
            f"{name}: truncated OFF file ({nv} vertices + {nf} faces declared, "
            f"{len(lines) - cursor} lines present)"
        )
    vtoks = [line.split() for line in lines[cursor : cursor + nv]]
    for j, t in enumerate(vtoks):
        if len(t) < 3:
            raise CloudFileError(f"{name}: vertex {j} has {len(t)} values, expected >= 3")
    vertices = np.array([t[:3] for t in vtoks], dtype=np.float64).reshape(nv, 3)
    ftoks = [line.split() for line in lines[cursor + nv : cursor + nv + nf]]
    if all(len(t) == 4 and t[0] == "3" for t in ftoks):
        faces = np.array([t[1:] for t in ftoks], dtype=np.int64).reshape(nf, 3)
        return vertices, faces
    polys = []
    for j, t in enumerate(ftoks):
        k = int(t[0])
        if k < 0 or len(t) < 1 + k:
            raise CloudFileError(f"{name}: face {j} declares {k} vertices, has {len(t) - 1}")
        polys.append(np.array(t[1 : 1 + k], dtype=np.int64))
    return vertices, _triangulate(polys)


# --------------------------------------------------------------------------------------
# PCD
# --------------------------------------------------------------------------------------

_PCD_CODES = {("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
              ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8",
              ("F", 4): "f4", ("F", 8): "f8"}  # fmt: skip


def _parse_pcd_header(data: bytes, name: str) -> tuple[dict[str, list[str]], int]:
    header: dict[str, list[str]] = {}
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl
        line = data[pos:end].decode("latin-1").strip()
        pos = end + 1
        if line and not line.startswith("#"):
            words = line.split()
            key = words[0].upper()
            header[key] = words[1:]
            if key == "DATA":
                return header, min(pos, len(data))
        if nl < 0:
            raise CloudFileError(f"{name}: PCD header has no DATA line")


@dataclass
class _PcdLayout:
    fields: list[str]
    types: list[str]  # 'I' / 'U' / 'F'
    codes: list[str | None]  # numpy type code per field, None for '_' padding
    sizes: list[int]
    counts: list[int]
    points: int
    kind: str  # DATA: ascii / binary / binary_compressed

    @property
    def record_size(self) -> int:
        return sum(s * c for s, c in zip(self.sizes, self.counts, strict=True))


def _pcd_layout(header: dict[str, list[str]], name: str) -> _PcdLayout:
    fields = header.get("FIELDS") or header.get("COLUMNS")
    if not fields:
        raise CloudFileError(f"{name}: PCD header has no FIELDS line")
    nf = len(fields)

    def ints(key: str, default: list[int] | None) -> list[int]:
        if key not in header:
            if default is None:
                raise CloudFileError(f"{name}: PCD header has no {key} line")
            return default
        try:
            values = [int(v) for v in header[key]]
        except ValueError as exc:
            raise CloudFileError(f"{name}: bad PCD {key} line {header[key]}") from exc
        if not values:
            raise CloudFileError(f"{name}: empty PCD {key} line")
        return values

    sizes = ints("SIZE", None)
    types = [t.upper() for t in header.get("TYPE", [])]
    counts = ints("COUNT", [1] * nf)
    for key, values in (("SIZE", sizes), ("TYPE", types), ("COUNT", counts)):
        if len(values) != nf:
            raise CloudFileError(f"{name}: PCD {key} has {len(values)} entries, FIELDS has {nf}")
    if any(c < 1 for c in counts):
        raise CloudFileError(f"{name}: PCD COUNT entries must be >= 1, got {counts}")
    codes: list[str | None] = []
    for f, t, s in zip(fields, types, sizes, strict=True):
        if f == "_":  # padding: any type, skipped
            if s < 1:
                raise CloudFileError(f"{name}: PCD padding field has size {s}")
            codes.append(None)
        elif (t, s) in _PCD_CODES:
            codes.append(_PCD_CODES[(t, s)])
        else:
            raise CloudFileError(f"{name}: unsupported PCD TYPE {t} with SIZE {s} for {f!r}")
    width = ints("WIDTH", None)[0] if "WIDTH" in header else None
    height = ints("HEIGHT", [1])[0]
    if "POINTS" in header:
        points = ints("POINTS", None)[0]
        if width is not None and width * height != points:
            raise CloudFileError(f"{name}: PCD POINTS {points} != WIDTH*HEIGHT {width}*{height}")
    elif width is not None:
        points = width * height
    else:
        raise CloudFileError(f"{name}: PCD header has neither POINTS nor WIDTH")
    if points < 0:
        raise CloudFileError(f"{name}: negative PCD point count {points}")
    kind = (header.get("DATA") or [""])[0].lower()
    if kind not in ("ascii", "binary", "binary_compressed"):
        raise CloudFileError(
            f"{name}: unsupported PCD DATA {kind or '(missing)'!r} "
            "(supported: ascii, binary, binary_compressed)"
        )
    return _PcdLayout(fields, types, codes, sizes, counts, points, kind)


def _pcd_ascii(body: bytes, lay: _PcdLayout, name: str) -> dict[str, np.ndarray]:
    per_point = sum(lay.counts)
    tokens = body.split()
    need = lay.points * per_point
    if len(tokens) < need:
        raise CloudFileError(
            f"{name}: truncated PCD ascii data ({len(tokens)} values, expected "
            f"{need} = {lay.points} points x {per_point})"
        )
    try:
        values = np.array(tokens[:need], dtype=np.bytes_).astype(np.float64)
    except ValueError as exc:
        raise CloudFileError(f"{name}: non-numeric value in PCD ascii data") from exc
    values = values.reshape(lay.points, per_point)
    arrays: dict[str, np.ndarray] = {}
    col = 0
    for f, t, code, c in zip(lay.fields, lay.types, lay.codes, lay.counts, strict=True):
        block = values[:, col : col + c]
        col += c
        if code is None:
            continue
        if f.lower() in ("rgb", "rgba") and t == "F" and c == 1:
            # Packed colour in a float field: PCL prints it as the uint32 integer; other
            # writers print the (tiny) float whose bits are the colour.
            as_int = np.all(np.isfinite(block)) and np.all(block == np.round(block))
            if as_int and block.size and block.max() >= 1 and block.max() < 2**32:
                arr = block.astype(np.uint32)
            else:
                arr = block.astype(np.float32)
        else:
            arr = block.astype(code)
        arrays[f] = arr[:, 0] if c == 1 else arr
    return arrays


def _pcd_binary(body: bytes, lay: _PcdLayout, name: str) -> dict[str, np.ndarray]:
    """Row-major records."""
    need = lay.points * lay.record_size
    if len(body) < need:
        raise CloudFileError(
            f"{name}: truncated PCD binary data ({len(body)} bytes, expected "
            f"{need} = {lay.points} points x {lay.record_size})"
        )
    dtype = np.dtype(
        [
            (f"f{j}", ("V", s * c) if code is None else ("<" + code, (c,)))
            for j, (code, s, c) in enumerate(zip(lay.codes, lay.sizes, lay.counts, strict=True))
        ]
    )
    rec = np.frombuffer(body, dtype=dtype, count=lay.points)
    arrays: dict[str, np.ndarray] = {}
    for j, (f, code) in enumerate(zip(lay.fields, lay.codes, strict=True)):
        if code is not None:
            arr = rec[f"f{j}"]
            arrays[f] = arr[:, 0].copy() if arr.shape[1] == 1 else arr.copy()
    return arrays


def _pcd_compressed(body: bytes, lay: _PcdLayout, name: str) -> dict[str, np.ndarray]:
    """uint32 compressed size, uint32 raw size, LZF data of the column-major fields."""
    if len(body) < 8:
        raise CloudFileError(f"{name}: truncated PCD binary_compressed header")
    csize, usize = struct.unpack_from("<II", body, 0)
    if usize != lay.points * lay.record_size:
        raise CloudFileError(
            f"{name}: PCD binary_compressed uncompressed size {usize} != "
            f"{lay.points} points x {lay.record_size} bytes"
        )
    if len(body) < 8 + csize:
        raise CloudFileError(
            f"{name}: truncated PCD binary_compressed data ({len(body) - 8} bytes, "
            f"header says {csize})"
        )
    raw = b""
    if usize:
        try:
            raw = lzf_decompress(body[8 : 8 + csize], usize)
        except ValueError as exc:
            raise CloudFileError(f"{name}: corrupt LZF data ({exc})") from exc
    arrays: dict[str, np.ndarray] = {}
    off = 0
    n = lay.points
    for f, code, s, c in zip(lay.fields, lay.codes, lay.sizes, lay.counts, strict=True):
        if code is not None:
            arr = np.frombuffer(raw, dtype="<" + code, count=n * c, offset=off)
            arrays[f] = arr.copy() if c == 1 else arr.reshape(n, c).copy()
        off += n * s * c
    return arrays


def _read_pcd(data: bytes, name: str, ext: str) -> PointCloud:
    del ext
    header, offset = _parse_pcd_header(data, name)
    lay = _pcd_layout(header, name)
    reader = {"ascii": _pcd_ascii, "binary": _pcd_binary, "binary_compressed": _pcd_compressed}
    arrays = reader[lay.kind](data[offset:], lay, name)
    for key in list(arrays):
        value = arrays[key]
        if key.lower() in ("rgb", "rgba") and value.ndim == 1 and value.dtype.itemsize == 4:
            rgba = _unpack_rgb(arrays.pop(key))
            arrays.setdefault("rgb", rgba[:, :3])
            if key.lower() == "rgba":
                arrays.setdefault("alpha", rgba[:, 3])
    native = {k: v.astype(v.dtype.newbyteorder("="), copy=False) for k, v in arrays.items()}
    return _assemble(native, name, "field")


def _pcd_bytes(cloud: PointCloud, binary: bool) -> bytes:
    cols: list[tuple[str, np.ndarray]] = [("x", cloud.xyz[:, 0]), ("y", cloud.xyz[:, 1]),
                                          ("z", cloud.xyz[:, 2])]  # fmt: skip
    for name, value in cloud.attributes.items():
        if name == "normal" and value.ndim == 2 and value.shape[1] == 3:
            cols += [(f"normal_{a}", value[:, j]) for j, a in enumerate("xyz")]
        elif name == "rgb" and value.ndim == 2 and value.shape[1] == 3:
            rgb = _to_rgb_uint8([value[:, 0], value[:, 1], value[:, 2]]).astype(np.uint32)
            cols.append(("rgb", (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]))
        else:
            cols.append((name, value))
    cols = [(n, _storable(c, "pcd")) for n, c in cols]
    n = len(cloud)
    type_of = {"i": "I", "u": "U", "f": "F"}
    fields, sizes, types, counts = [], [], [], []
    for col_name, col in cols:
        fields.append(col_name)
        sizes.append(str(col.dtype.itemsize))
        types.append(type_of[col.dtype.kind])
        counts.append(str(1 if col.ndim == 1 else col.shape[1]))
    header = (
        "# .PCD v0.7 - Point Cloud Data file format (written by sspu_ros)\n"
        "VERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(sizes)}\n"
        f"TYPE {' '.join(types)}\nCOUNT {' '.join(counts)}\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
        f"DATA {'binary' if binary else 'ascii'}\n"
    ).encode("ascii")
    if not binary:
        flat = []
        for _, col in cols:
            flat += [col] if col.ndim == 1 else [col[:, j] for j in range(col.shape[1])]
        return header + _text_rows(flat)
    dtype = np.dtype(
        [
            (f"c{j}", "<" + c.dtype.str.lstrip("<>=|"), () if c.ndim == 1 else (c.shape[1],))
            for j, (_, c) in enumerate(cols)
        ]
    )
    rec = np.empty(n, dtype=dtype)
    for j, (_, col) in enumerate(cols):
        rec[f"c{j}"] = col
    return header + rec.tobytes()


# --------------------------------------------------------------------------------------
# KITTI .bin and .npy
# --------------------------------------------------------------------------------------


def _read_kitti_bin(data: bytes, name: str, ext: str) -> PointCloud:
    del ext
    if len(data) % 16:
        raise CloudFileError(
            f"{name}: size {len(data)} bytes is not a multiple of 16 "
            "(KITTI .bin holds float32 x, y, z, reflectance rows)"
        )
    rows = np.frombuffer(data, dtype="<f4").reshape(-1, 4)
    return PointCloud(rows[:, :3].copy(), {"intensity": rows[:, 3].copy()})


def _kitti_bin_bytes(cloud: PointCloud) -> bytes:
    rows = np.zeros((len(cloud), 4), dtype="<f4")
    rows[:, :3] = cloud.xyz
    intensity = cloud.intensity
    if intensity is not None:
        rows[:, 3] = intensity
    return rows.tobytes()


def _read_npy(data: bytes, name: str, ext: str) -> PointCloud:
    del ext
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # np.load's header parser raises many kinds on garbage
        raise CloudFileError(f"{name}: not a readable .npy array ({exc})") from exc
    if arr.dtype.names:
        if arr.ndim != 1:
            arr = arr.reshape(-1)
        columns = {}
        for key in arr.dtype.names:
            value = arr[key]
            if value.dtype.kind not in "biuf":
                continue
            columns[key] = value.reshape(len(arr), -1) if value.ndim > 2 else value.copy()
        return _assemble(columns, name, "field")
    if arr.dtype.kind not in "biuf":
        raise CloudFileError(f"{name}: .npy array has non-numeric dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise CloudFileError(
            f"{name}: .npy array has shape {arr.shape}, expected (N, 3) or (N, >=4)"
        )
    attributes: dict[str, np.ndarray] = {}
    if arr.shape[1] >= 4:
        attributes["intensity"] = arr[:, 3].astype(np.float32)
    if arr.shape[1] > 4:
        attributes["extra"] = arr[:, 4:].copy()
    return PointCloud(arr[:, :3].astype(np.float32), attributes)


def _npy_bytes(cloud: PointCloud) -> bytes:
    buf = io.BytesIO()
    others = {k: v for k, v in cloud.attributes.items() if k != "intensity"}
    if not others:
        intensity = cloud.intensity
        arr = cloud.xyz if intensity is None else np.column_stack([cloud.xyz, intensity])
        np.save(buf, np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
        return buf.getvalue()
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    for key, value in cloud.attributes.items():
        fields.append((key, value.dtype.str, () if value.ndim == 1 else (value.shape[1],)))
    rec = np.empty(len(cloud), dtype=fields)
    for j, axis in enumerate("xyz"):
        rec[axis] = cloud.xyz[:, j]
    for key, value in cloud.attributes.items():
        rec[key] = value
    np.save(buf, rec, allow_pickle=False)
    return buf.getvalue()
