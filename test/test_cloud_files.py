"""Tests of sspu_ros.io.cloud_files: every format round trip, hand-written files, real data,
errors."""

from __future__ import annotations

import atexit
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sspu_ros.errors import CloudFileError
from sspu_ros.io.cloud_files import (
    SUPPORTED_EXTENSIONS,
    PointCloud,
    lzf_decompress,
    read_cloud,
    read_mesh,
    write_cloud,
)

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def lzf_compress(data: bytes) -> bytes:
    """A small greedy LZF compressor (test-only), the inverse of lzf_decompress.

    Emits literal runs of at most 32 bytes and back-references of 3..264 bytes at
    distances 1..8192, found through a dict of the last position of each 3-byte key.
    """
    out = bytearray()
    literal = bytearray()
    last: dict[bytes, int] = {}
    i, n = 0, len(data)

    def flush() -> None:
        for start in range(0, len(literal), 32):
            chunk = literal[start : start + 32]
            out.append(len(chunk) - 1)
            out.extend(chunk)
        literal.clear()

    while i < n:
        key = data[i : i + 3]
        ref = last.get(key) if len(key) == 3 else None
        if len(key) == 3:
            last[key] = i
        if ref is not None and 0 < i - ref <= 8192:
            length = 0
            while i + length < n and length < 264 and data[ref + length] == data[i + length]:
                length += 1
            if length >= 3:
                flush()
                dist = i - ref - 1
                code = length - 2
                if code < 7:
                    out += bytes([(code << 5) | (dist >> 8), dist & 0xFF])
                else:
                    out += bytes([(7 << 5) | (dist >> 8), code - 7, dist & 0xFF])
                for j in range(i + 1, min(i + length, n - 2)):
                    last[data[j : j + 3]] = j
                i += length
                continue
        literal.append(data[i])
        i += 1
    flush()
    return bytes(out)


def _sample_cloud(n: int = 50, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    xyz = (rng.normal(size=(n, 3)) * 20).astype(np.float32)
    normal = rng.normal(size=(n, 3)).astype(np.float32)
    attrs = {
        "intensity": rng.random(n).astype(np.float32),
        "normal": normal / np.linalg.norm(normal, axis=1, keepdims=True),
        "rgb": rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        "ring": rng.integers(0, 64, size=n).astype(np.uint16),
    }
    return xyz, attrs


def _assert_attrs_equal(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ext", "binary"),
    [
        (".ply", True),
        (".ply", False),
        (".pcd", True),
        (".pcd", False),
        (".xyz", True),
        (".txt", True),
        (".pts", True),
        (".npy", True),
    ],
)
def test_round_trip_with_attributes(tmp_path, ext, binary):
    xyz, attrs = _sample_cloud()
    xyz[3] = np.nan  # NaN rows are kept
    path = tmp_path / "sub" / f"cloud{ext}"
    write_cloud(path, xyz, attrs, binary=binary)
    cloud = read_cloud(path)
    assert cloud.xyz.dtype == np.float32
    np.testing.assert_array_equal(cloud.xyz, xyz)
    _assert_attrs_equal(cloud.attributes, attrs)
    finite, removed = cloud.finite()
    assert removed == 1 and len(finite) == len(xyz) - 1
    assert finite.attributes["ring"].shape == (len(xyz) - 1,)


@pytest.mark.parametrize("ext", [".ply", ".pcd", ".xyz", ".npy"])
def test_round_trip_other_dtypes(tmp_path, ext):
    n = 7
    xyz = np.arange(n * 3, dtype=np.float64).reshape(n, 3) / 3.0  # float64 is cast
    attrs = {"t": np.linspace(0, 1, n), "label": np.arange(n, dtype=np.int32) - 3}
    write_cloud(tmp_path / f"c{ext}", xyz, attrs, binary=ext != ".xyz")
    cloud = read_cloud(tmp_path / f"c{ext}")
    np.testing.assert_array_equal(cloud.xyz, xyz.astype(np.float32))
    _assert_attrs_equal(cloud.attributes, attrs)


def test_round_trip_bin_and_plain_npy(tmp_path):
    xyz, attrs = _sample_cloud()
    write_cloud(tmp_path / "a.bin", xyz, attrs)  # .bin keeps intensity only
    cloud = read_cloud(tmp_path / "a.bin")
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.intensity, attrs["intensity"])
    assert set(cloud.attributes) == {"intensity"}
    write_cloud(tmp_path / "b.bin", xyz)  # no intensity -> zeros
    assert not read_cloud(tmp_path / "b.bin").intensity.any()

    write_cloud(tmp_path / "a.npy", xyz, {"intensity": attrs["intensity"]})
    raw = np.load(tmp_path / "a.npy")
    assert raw.shape == (len(xyz), 4) and raw.dtype == np.float32
    write_cloud(tmp_path / "b.npy", xyz)
    assert np.load(tmp_path / "b.npy").shape == (len(xyz), 3)
    np.testing.assert_array_equal(read_cloud(tmp_path / "a.npy").xyz, xyz)


@pytest.mark.parametrize("ext", [".ply", ".pcd", ".xyz", ".npy"])
def test_empty_cloud_round_trip(tmp_path, ext):
    write_cloud(tmp_path / f"e{ext}", np.zeros((0, 3)), {"intensity": np.zeros(0, np.float32)})
    cloud = read_cloud(tmp_path / f"e{ext}")
    assert cloud.xyz.shape == (0, 3)


def test_kitti_bin_round_trip_bit_exact(tmp_path, kitti_scans):
    for scan in kitti_scans[:8]:
        cloud = read_cloud(scan)
        assert cloud.xyz.dtype == np.float32 and len(cloud) > 10_000
        out = tmp_path / scan.name
        write_cloud(out, cloud.xyz, cloud.attributes)
        assert out.read_bytes() == scan.read_bytes(), scan


# --------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------


def test_text_columns(tmp_path):
    (tmp_path / "a.xyz").write_text("# comment\n\n1 2 3\n4,5,6\n  7\t8 9  \n")
    cloud = read_cloud(tmp_path / "a.xyz")
    np.testing.assert_array_equal(cloud.xyz, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert cloud.attributes == {}

    (tmp_path / "b.txt").write_text("1 2 3 0.5\n4 5 6 0.25\n")
    assert read_cloud(tmp_path / "b.txt").intensity.tolist() == [0.5, 0.25]

    (tmp_path / "c.xyz").write_text("1 2 3 0 0 1\n4 5 6 1 0 0\n")
    cloud = read_cloud(tmp_path / "c.xyz")
    assert cloud.attributes["normal"].shape == (2, 3) and cloud.intensity is None

    (tmp_path / "d.pts").write_text("2\n1 2 3 -5 255 0 10\n4 5 6 7 1 2 3\n")
    cloud = read_cloud(tmp_path / "d.pts")
    assert cloud.intensity.tolist() == [-5, 7]
    assert cloud.attributes["rgb"].tolist() == [[255, 0, 10], [1, 2, 3]]

    (tmp_path / "e.txt").write_text("x,y,z,intensity\n1,2,3,4\n")
    assert read_cloud(tmp_path / "e.txt").intensity.tolist() == [4]

    (tmp_path / "f.xyz").write_text("# nothing here\n\n")
    assert len(read_cloud(tmp_path / "f.xyz")) == 0


def test_pugan_xyz_reads(data_dir):
    files = sorted((data_dir / "pugan-dev" / "gt").glob("*.xyz"))[:2]
    if not files:
        pytest.skip(f"no pugan-dev ground truth under {data_dir}")
    for f in files:
        assert read_cloud(f).xyz.shape == (8192, 3)


# --------------------------------------------------------------------------------------
# PLY
# --------------------------------------------------------------------------------------

ASCII_PLY = """ply
format ascii 1.0
comment hand-written test file
element vertex 4
property float nx
property double z
property uchar red
property float x
property uchar green
property int ring
property float y
property float ny
property uchar blue
property float nz
property float reflectance
element face 2
property list uchar int vertex_indices
end_header
0 3 255 1 0 7 2 0 1 1 0.5
0 6 0 4 128 8 5 1 2 0 0.25
1 9 1 7 2 9 8 0 3 0 0
1 -1 4 0 5 10 0 0 6 0 1
4 0 1 2 3
3 0 2 3
"""


def test_ascii_ply_hand_written(tmp_path):
    path = tmp_path / "hand.ply"
    path.write_text(ASCII_PLY)
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.xyz, [[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, -1]])
    np.testing.assert_array_equal(cloud.attributes["normal"][:, 1], [0, 1, 0, 0])
    assert cloud.attributes["rgb"].dtype == np.uint8
    assert cloud.attributes["rgb"].tolist()[1] == [0, 128, 2]
    assert cloud.attributes["ring"].dtype == np.int32
    assert cloud.intensity.tolist() == [0.5, 0.25, 0, 1]
    vertices, faces = read_mesh(path)
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    # quad 0 1 2 3 -> (0 1 2), (0 2 3); then the triangle
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 2, 3]]


def _be_ply(faces: list[list[int]], vertex_count: int = 3) -> bytes:
    header = (
        "ply\nformat binary_big_endian 1.0\n"
        "element material 2\nproperty ushort id\n"
        f"element vertex {vertex_count}\n"
        "property double x\nproperty double y\nproperty double z\n"
        "property short intensity\n"
        f"element face {len(faces)}\nproperty list uchar uint vertex_indices\nend_header\n"
    ).encode()
    body = struct.pack(">HH", 5, 6)
    for i in range(vertex_count):
        body += struct.pack(">dddh", 1.5 * i, -2.0 * i, 0.25, -i)
    for face in faces:
        body += struct.pack(f">B{len(face)}I", len(face), *face)
    return header + body


def test_binary_big_endian_ply(tmp_path):
    path = tmp_path / "be.ply"
    path.write_bytes(_be_ply([[0, 1, 2], [2, 1, 0]], vertex_count=3))
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.xyz, [[0, 0, 0.25], [1.5, -2, 0.25], [3, -4, 0.25]])
    assert cloud.attributes["intensity"].dtype == np.int16
    assert cloud.intensity.tolist() == [0, -1, -2]
    vertices, faces = read_mesh(path)
    assert faces.tolist() == [[0, 1, 2], [2, 1, 0]]
    # mixed polygons: the record-by-record path
    path.write_bytes(_be_ply([[0, 1, 2, 3, 4], [4, 3, 2]], vertex_count=5))
    vertices, faces = read_mesh(path)
    assert vertices.shape == (5, 3)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 3, 4], [4, 3, 2]]


def test_real_meshes_load(data_dir):
    files = [
        data_dir / "meshes" / "objects" / "cow.ply",
        data_dir / "meshes" / "vehicles_scene" / "car_suv.ply",
        data_dir / "pugan-dev" / "meshes" / "m32.off",
        data_dir / "pugan-dev" / "meshes" / "chair.off",
    ]
    present = [f for f in files if f.is_file()]
    if not present:
        pytest.skip(f"none of the test meshes found under {data_dir}")
    for f in present:
        vertices, faces = read_mesh(f)
        assert vertices.shape[1] == 3 and vertices.dtype == np.float64 and len(vertices) > 20
        assert faces.shape[1] == 3 and faces.dtype == np.int64 and len(faces) > 20
        assert faces.min() >= 0 and faces.max() < len(vertices)
        if f.suffix == ".ply":
            assert len(read_cloud(f)) == len(vertices)


def test_off_polygons_and_variants(tmp_path):
    path = tmp_path / "q.off"
    path.write_text("OFF\n# comment\n4 2 0\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n3 0 1 2\n")
    vertices, faces = read_mesh(path)
    assert vertices.shape == (4, 3)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 2]]
    path.write_text("OFF3 1 0\n0 0 0\n1 0 0\n1 1 0\n3 0 1 2\n")
    assert read_mesh(path)[1].tolist() == [[0, 1, 2]]
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n1 1 0\n3 0 1 5\n")
    with pytest.raises(CloudFileError, match=r"q\.off: face index out of range"):
        read_mesh(path)


# --------------------------------------------------------------------------------------
# PCD
# --------------------------------------------------------------------------------------


def _packed_rgb_float(r: int, g: int, b: int) -> float:
    return float(np.array([(r << 16) | (g << 8) | b], np.uint32).view(np.float32)[0])


def test_pcd_ascii_hand_written(tmp_path):
    rgb = _packed_rgb_float(10, 20, 30)
    path = tmp_path / "a.pcd"
    path.write_text(
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z _ rgb pair\nSIZE 4 4 4 1 4 2\n"
        "TYPE F F F U F I\nCOUNT 1 1 1 3 1 2\nWIDTH 2\nHEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n"
        f"1 2 3 0 0 0 {rgb!r} -1 1\nnan nan nan 0 0 0 {rgb!r} 5 6\n"
    )
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.xyz[0], [1, 2, 3])
    assert np.isnan(cloud.xyz[1]).all()
    assert cloud.attributes["rgb"].tolist() == [[10, 20, 30], [10, 20, 30]]
    # PCL prints a float rgb field as the packed uint32 integer (opaque colours are NaN
    # as floats)
    opaque = (255 << 24) | (10 << 16) | (20 << 8) | 30
    path.write_text(path.read_text().replace(repr(rgb), str(opaque)))
    assert read_cloud(path).attributes["rgb"].tolist() == [[10, 20, 30], [10, 20, 30]]
    assert cloud.attributes["pair"].dtype == np.int16
    assert cloud.attributes["pair"].tolist() == [[-1, 1], [5, 6]]
    assert "_" not in cloud.attributes
    finite, removed = cloud.finite()
    assert removed == 1 and finite.xyz.tolist() == [[1, 2, 3]]


def _pcd_header(data: str, points: int) -> bytes:
    return (
        "VERSION 0.7\nFIELDS x y z _ intensity ring\nSIZE 4 4 4 1 4 2\n"
        "TYPE F F F U F U\nCOUNT 1 1 1 2 1 1\n"
        f"WIDTH {points}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {points}\nDATA {data}\n"
    ).encode()


def _pcd_columns(n: int):
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n, 3)).astype(np.float32)
    xyz[: n // 2] = np.round(xyz[: n // 2], 1)  # repetitive data compresses
    intensity = np.repeat(np.float32(0.5), n)
    ring = (np.arange(n) % 4).astype(np.uint16)
    return xyz, intensity, ring


def test_pcd_binary_with_padding(tmp_path):
    n = 40
    xyz, intensity, ring = _pcd_columns(n)
    rec = np.zeros(n, dtype=[("xyz", "<f4", (3,)), ("pad", "u1", (2,)), ("i", "<f4"), ("r", "<u2")])
    rec["xyz"], rec["pad"], rec["i"], rec["r"] = xyz, 0xAB, intensity, ring
    path = tmp_path / "b.pcd"
    path.write_bytes(_pcd_header("binary", n) + rec.tobytes())
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.intensity, intensity)
    assert cloud.attributes["ring"].dtype == np.uint16
    np.testing.assert_array_equal(cloud.attributes["ring"], ring)


def test_pcd_binary_compressed(tmp_path):
    n = 300
    xyz, intensity, ring = _pcd_columns(n)
    columns = [xyz[:, 0], xyz[:, 1], xyz[:, 2], np.full((n, 2), 7, np.uint8), intensity, ring]
    raw = b"".join(
        np.ascontiguousarray(c).astype(c.dtype.newbyteorder("<")).tobytes() for c in columns
    )
    packed = lzf_compress(raw)
    assert len(packed) < len(raw)  # back-references were used
    assert lzf_decompress(packed, len(raw)) == raw
    path = tmp_path / "c.pcd"
    payload = struct.pack("<II", len(packed), len(raw)) + packed
    path.write_bytes(_pcd_header("binary_compressed", n) + payload)
    cloud = read_cloud(path)
    np.testing.assert_array_equal(cloud.xyz, xyz)
    np.testing.assert_array_equal(cloud.intensity, intensity)
    np.testing.assert_array_equal(cloud.attributes["ring"], ring)
    # corrupt stream -> CloudFileError naming the file
    bad = struct.pack("<II", len(packed), len(raw)) + bytes([0x20, 0xFF]) + packed[2:]
    path.write_bytes(_pcd_header("binary_compressed", n) + bad)
    with pytest.raises(CloudFileError, match=r"c\.pcd: corrupt LZF"):
        read_cloud(path)


def test_lzf_decompress_hand_assembled():
    # literal "abc"; back-ref length 3 at distance 3 ("abc"); overlapping length 4 at
    # distance 1 ("cccc")
    stream = bytes([2, *b"abc", 0x20, 2, 0x40, 0])
    assert lzf_decompress(stream, 10) == b"abcabccccc"
    long_ref = bytes([0, *b"z", 0xE0, 10, 0])  # len 7 + 10 + 2 = 19 copies of "z"
    assert lzf_decompress(long_ref, 20) == b"z" * 20
    far = bytes([31, *range(32), 0x21, 31])  # distance ((1 << 8) + 31 + 1) = 288: too far
    with pytest.raises(ValueError, match="back-reference"):
        lzf_decompress(far, 100)
    with pytest.raises(ValueError, match="expected"):
        lzf_decompress(stream, 11)
    with pytest.raises(ValueError, match="past the end"):
        lzf_decompress(bytes([5, 1, 2]), 6)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([b"ab", b"xyz", b"\0" * 7, b"q"]), max_size=200), st.binary())
def test_lzf_compressor_inverse(chunks, tail):
    data = b"".join(chunks) + tail
    assert lzf_decompress(lzf_compress(data), len(data)) == data


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


def test_error_messages_name_the_file(tmp_path):
    with pytest.raises(CloudFileError, match=r"missing\.ply: no such file"):
        read_cloud(tmp_path / "missing.ply")
    (tmp_path / "empty.pcd").write_bytes(b"")
    with pytest.raises(CloudFileError, match=r"empty\.pcd: empty file"):
        read_cloud(tmp_path / "empty.pcd")
    (tmp_path / "x.las").write_bytes(b"abc")
    with pytest.raises(CloudFileError, match=r"x\.las: unsupported extension.*\.ply.*\.npy"):
        read_cloud(tmp_path / "x.las")
    with pytest.raises(CloudFileError, match=r"unsupported extension"):
        write_cloud(tmp_path / "x.las", np.zeros((1, 3)))
    (tmp_path / "bar.xyz").write_text("1 2 3\n" * 16 + "4 5\n")
    with pytest.raises(CloudFileError, match=r"bar\.xyz: line 17 has 2 columns, expected >= 3"):
        read_cloud(tmp_path / "bar.xyz")
    (tmp_path / "ragged.xyz").write_text("1 2 3\n1 2 3 4\n")
    with pytest.raises(CloudFileError, match=r"ragged\.xyz: line 2 has 4 columns, expected 3"):
        read_cloud(tmp_path / "ragged.xyz")
    (tmp_path / "word.xyz").write_text("1 2 3\n1 2 x\n")
    with pytest.raises(CloudFileError, match=r"word\.xyz: line 2: 'x' is not a number"):
        read_cloud(tmp_path / "word.xyz")
    (tmp_path / "odd.bin").write_bytes(b"\0" * 20)
    with pytest.raises(CloudFileError, match=r"odd\.bin: size 20 bytes is not a multiple of 16"):
        read_cloud(tmp_path / "odd.bin")
    (tmp_path / "nox.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 1\nproperty float y\nproperty float z\n"
        "end_header\n1 2\n"
    )
    with pytest.raises(CloudFileError, match=r'nox\.ply: vertex property "x" missing'):
        read_cloud(tmp_path / "nox.ply")
    (tmp_path / "fmt.ply").write_text("ply\nformat binary_middle_endian 1.0\nend_header\n")
    with pytest.raises(CloudFileError, match=r"fmt\.ply: unsupported PLY format"):
        read_cloud(tmp_path / "fmt.ply")
    (tmp_path / "noend.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\n")
    with pytest.raises(CloudFileError, match=r"noend\.ply: PLY header has no 'end_header'"):
        read_cloud(tmp_path / "noend.ply")
    (tmp_path / "data.pcd").write_bytes(_pcd_header("binary_lz4", 1) + b"\0" * 19)
    with pytest.raises(CloudFileError, match=r"data\.pcd: unsupported PCD DATA 'binary_lz4'"):
        read_cloud(tmp_path / "data.pcd")
    (tmp_path / "short.pcd").write_bytes(_pcd_header("binary", 2) + b"\0" * 30)
    with pytest.raises(CloudFileError, match=r"short\.pcd: truncated PCD binary data"):
        read_cloud(tmp_path / "short.pcd")
    np.save(tmp_path / "two.npy", np.zeros((4, 2)))
    with pytest.raises(CloudFileError, match=r"two\.npy: .npy array has shape \(4, 2\)"):
        read_cloud(tmp_path / "two.npy")
    (tmp_path / "mesh.obj").write_text("v 0 0 0\n")
    with pytest.raises(CloudFileError, match=r"mesh\.obj: unsupported mesh extension"):
        read_mesh(tmp_path / "mesh.obj")
    assert issubclass(CloudFileError, ValueError)


def test_truncated_binary_ply(tmp_path):
    xyz, attrs = _sample_cloud(20)
    write_cloud(tmp_path / "full.ply", xyz, attrs)
    data = (tmp_path / "full.ply").read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[:-5])
    with pytest.raises(CloudFileError, match=r"cut\.ply: truncated PLY data in element vertex"):
        read_cloud(tmp_path / "cut.ply")


def test_point_cloud_validation_and_intensity():
    cloud = PointCloud(np.zeros((2, 3), np.float64), {"reflectance": np.array([1, 2], np.uint8)})
    assert cloud.xyz.dtype == np.float32
    assert cloud.intensity.dtype == np.float32 and cloud.intensity.tolist() == [1, 2]
    assert PointCloud(np.zeros((2, 3))).intensity is None
    with pytest.raises(ValueError, match="attribute 'a'"):
        PointCloud(np.zeros((2, 3)), {"a": np.zeros(3)})
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        PointCloud(np.zeros((2, 2)))
    assert SUPPORTED_EXTENSIONS == (".xyz", ".txt", ".pts", ".ply", ".pcd", ".bin", ".npy")


# --------------------------------------------------------------------------------------
# fuzzing: garbage never escapes as anything but CloudFileError
# --------------------------------------------------------------------------------------

_FUZZ_DIR = Path(tempfile.mkdtemp(prefix="sspu_cloud_io_fuzz_"))
atexit.register(shutil.rmtree, _FUZZ_DIR, True)
_PREFIXES = [
    b"",
    b"ply\n",
    b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n",
    b"ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
    b"property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n",
    b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nWIDTH 3\nPOINTS 3\nDATA binary_compressed\n",
    b"FIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\nWIDTH 2\nDATA ascii\n",
    b"OFF\n3 1 0\n",
]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    prefix=st.sampled_from(_PREFIXES),
    garbage=st.binary(max_size=300),
    ext=st.sampled_from([".ply", ".pcd", ".bin", ".xyz", ".npy", ".off"]),
)
def test_garbage_raises_only_cloud_file_error(prefix, garbage, ext):
    path = _FUZZ_DIR / f"fuzz{ext}"
    path.write_bytes(prefix + garbage)
    try:
        if ext == ".off":
            read_mesh(path)
        else:
            read_cloud(path)
            if ext == ".ply":
                read_mesh(path)
    except CloudFileError as exc:
        assert str(path) in str(exc)


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=1, max_value=10_000), ext=st.sampled_from([".ply", ".pcd"]))
def test_truncated_files_raise(cut, ext):
    xyz, attrs = _sample_cloud(30, seed=3)
    path = _FUZZ_DIR / f"whole{ext}"
    write_cloud(path, xyz, attrs)
    data = path.read_bytes()
    path.write_bytes(data[: max(0, len(data) - cut)])
    with pytest.raises(CloudFileError, match="whole"):
        read_cloud(path)
