"""Bags without ROS: PointCloud2 in rosbag2 (sqlite3, mcap) and ROS 1 bags, via ``rosbags``.

Reading, writing, raw copies and ``kitti2bag`` need only the pure-Python ``rosbags``
package. ``densify-bag`` is :mod:`sspu_ros.densify.bag`; ``play`` and ``record`` (the
live-graph half, rclpy) are :mod:`sspu_ros.ros.bag_player`.

* Reading: :func:`read_pointclouds` yields decoded clouds of one PointCloud2 topic of any
  bag ``rosbags.highlevel.AnyReader`` opens (a rosbag2 folder, a ``.db3``/``.mcap`` file, a
  ROS 1 ``.bag``); training (:mod:`sspu_ros.training.data`) and ``sspu finetune`` use it.
* Writing: :class:`BagWriter` writes rosbag2 (``mcap`` or ``sqlite3`` storage, file-format
  version :data:`ROSBAG2_VERSION` unless told otherwise: ``rosbags``' writer has no default
  version) or a ROS 1 bag (``storage='ros1'``, or a path ending in ``.bag``). Raw messages
  are converted between CDR and ROS 1 serialization when source and target differ.
* Message types come from the bag's own definitions (``reader.typestore``) or, for new
  messages, from the ROS 2 Kilted type store (PointCloud2 is identical in every ROS 2
  distribution).
"""

from __future__ import annotations

import calendar
import contextlib
import io
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import CloudFileError
from .pointcloud2 import DecodedCloud, decode, encode_structured

__all__ = [
    "POINTCLOUD2",
    "ROSBAG2_VERSION",
    "STORAGES",
    "BagCloud",
    "BagWriter",
    "kitti2bag",
    "open_bag",
    "parse_frames",
    "read_kitti_timestamps",
    "read_pointclouds",
    "typestore",
]

POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
STORAGES = ("mcap", "sqlite3", "ros1")
ROSBAG2_VERSION = 8
"""rosbag2 metadata version written by default (8: read by rosbag2 of Jazzy and later;
rosbags' writer supports 8 and 9)."""

NS = 1_000_000_000


def typestore():
    """The ROS 2 Kilted message type store of ``rosbags`` (cached)."""
    global _TYPESTORE
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _TYPESTORE = get_typestore(Stores.ROS2_KILTED)
    return _TYPESTORE


_TYPESTORE = None
_ROS1_TYPESTORE = None


def ros1_typestore():
    """The ROS 1 Noetic message type store of ``rosbags`` (cached): std_msgs/Header has the
    ``seq`` field ROS 1 tools expect (and their md5sums)."""
    global _ROS1_TYPESTORE
    if _ROS1_TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore

        _ROS1_TYPESTORE = get_typestore(Stores.ROS1_NOETIC)
    return _ROS1_TYPESTORE


def target_typestore(reader, *, ros2: bool):
    """The type store to write ``reader``'s messages with as ROS 2 (``ros2``) or ROS 1: the
    bag's own definitions (ROS 1 connection headers, rosbag2 metadata; so types only the bag
    defines are known), with ``std_msgs/msg/Header`` as the target ROS defines it (ROS 1's
    has ``seq``, ROS 2's not: converting with the other's layout corrupts every message
    with a header: the "Invalid string length" of a ROS 1 bag written as rosbag2)."""
    if reader.is2 == ros2:
        return reader.typestore
    from rosbags.typesys import Stores, get_typestore

    header = (typestore() if ros2 else ros1_typestore()).fielddefs["std_msgs/msg/Header"]
    store = get_typestore(Stores.EMPTY)
    store.register({**reader.typestore.fielddefs, "std_msgs/msg/Header": header})
    return store


def message_converter(reader, msgtype: str, dst_store, *, ros2: bool):
    """``raw -> raw``: a message of ``reader`` (its serialization) as ``dst_store`` defines it
    in CDR (``ros2``) or ROS 1 serialization; the bytes unchanged where nothing differs.

    Raises what ``rosbags`` raises for a type it cannot convert (caller reports the topic)."""
    from rosbags.convert.converter import generate_message_converter

    with contextlib.redirect_stdout(io.StringIO()):  # rosbags prints "will be migrated"
        return generate_message_converter(reader.typestore, dst_store, msgtype, msgtype, {},
                                          src_is2=reader.is2, dst_is2=ros2)


def header_for(store, header):
    """``header`` (a std_msgs/Header of any ROS version) as ``store``'s Header type: ROS 1
    keeps/gets ``seq`` (0 when the source has none), ROS 2 drops it."""
    names = [name for name, _ in store.fielddefs["std_msgs/msg/Header"][1]]
    stamp = store.types["builtin_interfaces/msg/Time"](sec=int(header.stamp.sec),
                                                       nanosec=int(header.stamp.nanosec))
    values = {"stamp": stamp, "frame_id": header.frame_id}
    if "seq" in names:
        values["seq"] = int(getattr(header, "seq", 0))
    return store.types["std_msgs/msg/Header"](**values)


# --------------------------------------------------------------------------- reading


@contextmanager
def open_bag(path: str | Path) -> Iterator[Any]:
    """``with open_bag(path) as reader``: an open ``rosbags.highlevel.AnyReader`` over one bag.

    Raises:
        CloudFileError: the path does not exist or is not a bag rosbags can read.
    """
    from rosbags.highlevel import AnyReader, AnyReaderError

    path = Path(path)
    if not path.exists():
        raise CloudFileError(f"{path}: no such bag (file or rosbag2 folder)")
    try:
        reader = AnyReader([path], default_typestore=typestore())
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError) as exc:
        raise CloudFileError(f"{path}: not a readable rosbag2/ROS 1 bag ({exc})") from None
    try:
        yield reader
    finally:
        reader.close()


def _connections(reader, path: Path, topics: Sequence[str] | None, *,
                 pointcloud_only: bool) -> list:
    conns = [c for c in reader.connections if not pointcloud_only or c.msgtype == POINTCLOUD2]
    if topics:
        known = sorted({c.topic for c in conns})
        missing = [t for t in topics if t not in known]
        if missing:
            what = "PointCloud2 topic" if pointcloud_only else "topic"
            raise CloudFileError(f"{path}: no {what} named {', '.join(missing)}; the bag has "
                                 f"{', '.join(known) or 'none'}")
        conns = [c for c in conns if c.topic in topics]
    elif not conns:
        raise CloudFileError(f"{path}: the bag has no "
                             f"{'PointCloud2 ' if pointcloud_only else ''}messages")
    return conns


def pointcloud_topic(reader, path: Path, topic: str | None) -> str:
    """``topic`` checked to be a PointCloud2 topic of the bag; None: the bag's only one."""
    clouds = sorted({c.topic for c in reader.connections if c.msgtype == POINTCLOUD2})
    if topic is not None:
        if topic not in clouds:
            raise CloudFileError(f"{path}: no PointCloud2 topic named {topic}; its PointCloud2 "
                                 f"topics: {', '.join(clouds) or 'none'}")
        return topic
    if len(clouds) == 1:
        return clouds[0]
    if not clouds:
        raise CloudFileError(f"{path}: the bag has no PointCloud2 topic")
    raise CloudFileError(f"{path}: {len(clouds)} PointCloud2 topics ({', '.join(clouds)}): "
                         "choose one with --topic")


def parse_frames(text: str | None) -> slice:
    """``'A:B'`` (either side may be empty) -> ``slice(A, B)`` over a topic's messages."""
    if text is None or text.strip() in ("", ":"):
        return slice(None)
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"frames must be 'A:B' with integers A < B (either may be empty), "
                         f"got {text!r}") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise ValueError(f"frames {text!r}: indices must be >= 0")
    if start is not None and stop is not None and stop <= start:
        raise ValueError(f"frames {text!r}: selects no message (B must be > A)")
    return slice(start, stop)


@dataclass
class BagCloud:
    """One PointCloud2 message of a bag."""

    index: int            # position among the topic's messages (0-based)
    timestamp: int        # bag receive/record time, ns
    topic: str
    msg: Any              # the rosbags PointCloud2 dataclass (header, fields, data ...)
    cloud: DecodedCloud   # decoded points (xyz (N, 3) float32 ...)


def read_pointclouds(path: str | Path, topic: str | None = None, *,
                     frames: slice = slice(None), every: int = 1) -> Iterator[BagCloud]:
    """Decoded PointCloud2 messages of ``topic`` (None: the bag's first PointCloud2 topic).

    Args:
        frames: which messages of the topic (by index), e.g. ``parse_frames('0:5')``.
        every: keep every ``every``-th message of the selection.

    Raises:
        CloudFileError: no such bag/topic; PointCloudFormatError: a malformed message.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    path = Path(path)
    with open_bag(path) as reader:
        conns = _connections(reader, path, [topic] if topic else None, pointcloud_only=True)
        if topic is None:
            conns = [c for c in conns if c.topic == conns[0].topic]
        start, stop, _ = frames.indices(1 << 62)
        for i, (conn, ts, raw) in enumerate(reader.messages(connections=conns)):
            if i >= stop:
                break
            if i < start or (i - start) % every:
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            yield BagCloud(i, int(ts), conn.topic, msg, decode(msg))


# --------------------------------------------------------------------------- writing


def _storage_for(path: Path, storage: str | None) -> str:
    if storage is None:
        return "ros1" if path.suffix == ".bag" else "mcap"
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
    return storage


class BagWriter:
    """Writes a new bag; a context manager.

    The bag is written under a temporary name beside it (``.NAME.partial-PID/NAME``) and
    renamed to ``path`` only when the ``with`` block ends without an exception: an
    interrupted or failed run (Ctrl-C, an error) never leaves a bag that looks finished (its
    partial folder is removed; after a ``kill -9`` the hidden ``.partial`` folder stays).

    Args:
        path: the new bag (a rosbag2 folder, or a ``.bag`` file for ROS 1); must not exist.
        storage: ``mcap`` (default), ``sqlite3`` or ``ros1`` (default for ``.bag`` paths).
        version: rosbag2 file-format version (8 or 9); ignored for ROS 1.
    """

    def __init__(self, path: str | Path, *, storage: str | None = None,
                 version: int = ROSBAG2_VERSION) -> None:
        self.path = Path(path)
        self.storage = _storage_for(self.path, storage)
        if self.path.exists():
            raise CloudFileError(f"{self.path}: exists already; bags are never overwritten "
                                 "(remove it or choose another output path)")
        if self.storage != "ros1" and version not in (8, 9):
            raise ValueError(f"rosbag2 version must be 8 or 9, got {version}")
        self._version = version
        self._partial = self.path.parent / f".{self.path.name}.partial-{os.getpid()}"
        self._writer: Any = None
        #: default type store of new connections and messages: ROS 1 Noetic or ROS 2 Kilted
        self.store = ros1_typestore() if self.storage == "ros1" else typestore()
        self._keys: dict[tuple[str, str], Any] = {}
        self.counts: dict[str, int] = {}

    @property
    def serialization(self) -> str:
        return "ros1" if self.storage == "ros1" else "cdr"

    def __enter__(self) -> BagWriter:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._partial.mkdir()
        except OSError as e:
            raise CloudFileError(f"{self.path}: cannot write here ({e})") from None
        work = self._partial / self.path.name
        try:
            if self.storage == "ros1":
                from rosbags.rosbag1 import Writer as Ros1Writer

                self._writer = Ros1Writer(work)
            else:
                from rosbags.rosbag2 import StoragePlugin, Writer

                plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
                self._writer = Writer(work, version=self._version, storage_plugin=plugin)
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._partial, ignore_errors=True)
            raise
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            self._writer.close()
        except BaseException:
            shutil.rmtree(self._partial, ignore_errors=True)
            if exc_type is None:
                raise
            return
        if exc_type is not None:
            shutil.rmtree(self._partial, ignore_errors=True)
            return
        if self.path.exists():
            shutil.rmtree(self._partial, ignore_errors=True)
            raise CloudFileError(f"{self.path}: appeared while the bag was written; the new "
                                 "bag was discarded")
        os.replace(self._partial / self.path.name, self.path)
        self._partial.rmdir()

    def add_connection(self, topic: str, msgtype: str = POINTCLOUD2, *, store=None,
                       qos: Sequence = (), latching: int | None = None,
                       callerid: str | None = None):
        """The writer connection of ``topic`` (created once; ``store``: the type store that
        defines ``msgtype``, default :attr:`store`; ``qos``: rosbag2 offered QoS profiles;
        ``latching``/``callerid``: ROS 1 connection header fields)."""
        key = (topic, msgtype)
        if key not in self._keys:
            store = store or self.store
            if self.storage == "ros1":
                conn = self._writer.add_connection(topic, msgtype, typestore=store,
                                                   latching=latching, callerid=callerid)
            else:
                conn = self._writer.add_connection(topic, msgtype, typestore=store,
                                                   offered_qos_profiles=list(qos))
            self._keys[key] = conn
            self.counts.setdefault(topic, 0)
        return self._keys[key]

    def write_raw(self, conn, timestamp: int, raw) -> None:
        """Write bytes already serialized as this bag's (:attr:`serialization`); messages
        of another bag go through :class:`BagCopier`, which converts them."""
        self._writer.write(conn, int(timestamp), raw)
        self.counts[conn.topic] += 1

    def write_msg(self, conn, timestamp: int, msg, *, store=None) -> None:
        """Serialize a rosbags message dataclass (of ``store``, default :attr:`store`)."""
        store = store or self.store
        if self.storage == "ros1":
            raw = store.serialize_ros1(msg, conn.msgtype)
        else:
            raw = store.serialize_cdr(msg, conn.msgtype)
        self._writer.write(conn, int(timestamp), raw)
        self.counts[conn.topic] += 1


class BagCopier:
    """Copies messages of a reader's connections into a :class:`BagWriter`, converting them
    where the writer's ROS version differs (ROS 1 <-> rosbag2), with the bag's own type
    definitions (:func:`target_typestore`).

    A connection whose type cannot be written, or a message that cannot be converted, is
    skipped and recorded in :attr:`skipped` (``topic -> [count, msgtype, first reason]``);
    everything else is copied. :meth:`report` gives one line per skipped topic.
    """

    def __init__(self, reader, writer: BagWriter) -> None:
        self.reader, self.writer = reader, writer
        self.ros2 = writer.storage != "ros1"
        self.store = target_typestore(reader, ros2=self.ros2)
        self._out: dict[int, tuple[Any, Any]] = {}
        self.skipped: dict[str, list] = {}

    def add(self, conn) -> bool:
        """Prepare ``conn`` (a reader connection); False when its type cannot be written."""
        if conn.id not in self._out:
            try:
                kw = ({"qos": _qos_of(conn)} if self.ros2 else
                      {"latching": int(getattr(conn.ext, "latching", 0) or 0),
                       "callerid": getattr(conn.ext, "callerid", None)})
                out = self.writer.add_connection(conn.topic, conn.msgtype, store=self.store,
                                                 **kw)
                convert = message_converter(self.reader, conn.msgtype, self.store,
                                            ros2=self.ros2)
                self._out[conn.id] = (out, convert)
            except Exception as e:  # noqa: BLE001 - rosbags raises many types here
                self._out[conn.id] = (None, f"its type cannot be written: {e}")
        return self._out[conn.id][0] is not None

    def write(self, conn, timestamp: int, raw) -> bool:
        """Copy one message of ``conn``; False (and recorded) when it cannot be."""
        if not self.add(conn):
            self._skip(conn, self._out[conn.id][1])
            return False
        out, convert = self._out[conn.id]
        try:
            data = convert(raw)
        except Exception as e:  # noqa: BLE001 - SerdeError, struct/index errors on bad bytes
            self._skip(conn, f"cannot convert: {type(e).__name__}: {e}")
            return False
        self.writer.write_raw(out, timestamp, data)
        return True

    def _skip(self, conn, reason: str) -> None:
        self.skipped.setdefault(conn.topic, [0, conn.msgtype, reason])[0] += 1

    def report(self) -> list[str]:
        """One line per skipped topic: which, how many and why."""
        return [f"topic {topic} ({msgtype}): {count} message(s) skipped ({reason})"
                for topic, (count, msgtype, reason) in sorted(self.skipped.items())]


def _serialization_of(conn) -> str:
    from rosbags.interfaces import ConnectionExtRosbag1

    return "ros1" if isinstance(conn.ext, ConnectionExtRosbag1) else "cdr"


def _qos_of(conn) -> list:
    return list(getattr(conn.ext, "offered_qos_profiles", None) or [])


def pointcloud2_message(encoded, *, stamp_ns: int, frame_id: str, store=None):
    """A rosbags PointCloud2 with ``header(stamp_ns, frame_id)`` from an EncodedCloud, of
    ``store``'s definitions (default ROS 2 Kilted; ROS 1 Noetic for a ROS 1 bag)."""
    from .pointcloud2_message import to_pointcloud2

    store = store or typestore()
    stamp = SimpleNamespace(sec=int(stamp_ns // NS), nanosec=int(stamp_ns % NS))
    header = header_for(store, SimpleNamespace(stamp=stamp, frame_id=frame_id))
    return to_pointcloud2(encoded, header, store.types[POINTCLOUD2],
                          store.types["sensor_msgs/msg/PointField"])


# --------------------------------------------------------------------------- kitti2bag

KITTI_DTYPE = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": ["<f4"] * 4,
                        "offsets": [0, 4, 8, 12], "itemsize": 16})


def _parse_kitti_time(line: str, path: Path, lineno: int) -> int:
    """``'2011-09-26 13:02:25.951199337'`` -> ns since the epoch (UTC), exact."""
    text = line.strip()
    try:
        whole, _, frac = text.partition(".")
        secs = calendar.timegm(datetime.strptime(whole, "%Y-%m-%d %H:%M:%S").timetuple())
        if frac and (not frac.isdigit() or len(frac) > 9):
            raise ValueError
        return secs * NS + int((frac or "0").ljust(9, "0"))
    except ValueError:
        raise CloudFileError(f"{path}:{lineno}: not a KITTI timestamp "
                             f"'YYYY-MM-DD HH:MM:SS.fffffffff': {text!r}") from None


def read_kitti_timestamps(path: str | Path) -> np.ndarray:
    """(F,) int64 ns of a KITTI raw ``timestamps.txt`` (non-empty lines)."""
    path = Path(path)
    lines = [(i + 1, s) for i, s in enumerate(path.read_text().splitlines()) if s.strip()]
    return np.array([_parse_kitti_time(s, path, i) for i, s in lines], dtype=np.int64)


def _kitti_velodyne_dir(raw_dir: Path) -> Path:
    for cand in (raw_dir / "velodyne_points", raw_dir):
        if (cand / "data").is_dir():
            return cand
    raise CloudFileError(f"{raw_dir}: not a KITTI raw drive folder (expected "
                         "velodyne_points/data/*.bin and velodyne_points/timestamps.txt)")


def kitti2bag(raw_dir: str | Path, out: str | Path, *, storage: str | None = None,
              topic: str = "/kitti/velo", frame_id: str = "velo_link",
              frames: slice = slice(None), progress: bool = True) -> dict:
    """Write a KITTI raw drive's Velodyne scans as PointCloud2 messages.

    Each scan becomes x, y, z, intensity float32 (point_step 16), frame ``frame_id``,
    header stamp = bag time = the scan's ``timestamps.txt`` entry (the instant the laser
    faced forward; with only ``timestamps_start/end.txt`` their midpoint).

    Returns:
        ``{'bag', 'storage', 'topic', 'messages', 'points', 'first_stamp_ns', 'last_stamp_ns'}``.
    """
    from tqdm import tqdm

    from .kitti import read_velodyne

    raw_dir = Path(raw_dir)
    velo = _kitti_velodyne_dir(raw_dir)
    bins = sorted((velo / "data").glob("*.bin"))
    if not bins:
        raise CloudFileError(f"{velo / 'data'}: no .bin scans")
    if (velo / "timestamps.txt").is_file():
        stamps = read_kitti_timestamps(velo / "timestamps.txt")
    elif (velo / "timestamps_start.txt").is_file() and (velo / "timestamps_end.txt").is_file():
        start = read_kitti_timestamps(velo / "timestamps_start.txt")
        end = read_kitti_timestamps(velo / "timestamps_end.txt")
        if len(start) != len(end):
            raise CloudFileError(f"{velo}: timestamps_start.txt has {len(start)} lines, "
                                 f"timestamps_end.txt {len(end)}")
        stamps = start + (end - start) // 2
    else:
        raise CloudFileError(f"{velo}: no timestamps.txt (nor timestamps_start/end.txt)")
    # Scan files are named by frame number (0000000042.bin <-> line 43 of the timestamps);
    # a drive folder may hold a subset of the scans (the timestamps stay complete).
    try:
        numbers = np.array([int(b.stem) for b in bins], dtype=np.int64)
    except ValueError:
        raise CloudFileError(f"{velo / 'data'}: scan names must be frame numbers "
                             "(0000000000.bin ...)") from None
    if numbers.max() >= len(stamps):
        raise CloudFileError(f"{velo}: scan {bins[int(numbers.argmax())].name} has no line in "
                             f"the timestamps ({len(stamps)} lines)")
    stamps = stamps[numbers]
    idx = range(len(bins))[frames]
    if not idx:
        raise CloudFileError(f"{velo}: the frame selection leaves no scan of {len(bins)}")
    n_points = 0
    with BagWriter(out, storage=storage) as writer:
        conn = writer.add_connection(topic, POINTCLOUD2)
        for i in tqdm(idx, desc="kitti2bag", unit="scan", disable=not progress):
            scan = read_velodyne(bins[i])  # (N, 4) float32
            points = np.zeros(len(scan), dtype=KITTI_DTYPE)
            for j, name in enumerate(("x", "y", "z", "intensity")):
                points[name] = scan[:, j]
            msg = pointcloud2_message(encode_structured(points), stamp_ns=int(stamps[i]),
                                      frame_id=frame_id, store=writer.store)
            writer.write_msg(conn, int(stamps[i]), msg)
            n_points += len(scan)
    return {"bag": str(out), "storage": writer.storage, "topic": topic,
            "messages": len(idx), "points": n_points,
            "first_stamp_ns": int(stamps[idx[0]]), "last_stamp_ns": int(stamps[idx[-1]])}


# --------------------------------------------------------------------------- densify-bag


def output_storage(src: Path, dst: Path) -> str:
    """Storage of a bag derived from ``src`` and written to ``dst``: ROS 1 for a ``.bag``
    path, else the input's rosbag2 storage (mcap for a ROS 1 input)."""
    if dst.suffix == ".bag":
        return "ros1"
    if src.suffix == ".bag":
        return "mcap"
    files = [src] if src.is_file() else list(src.iterdir())
    return "sqlite3" if any(f.suffix == ".db3" for f in files) else "mcap"


# --------------------------------------------------------------------------- live graph
