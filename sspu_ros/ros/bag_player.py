"""``sspu play`` / ``sspu record``: bags to and from a live ROS 2 graph (rclpy).

The bag side is :mod:`sspu_ros.io.bags` (ROS-free); this is the live-graph half, the only
place besides the node that talks to rclpy.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CloudFileError
from ..io.bags import (
    NS,
    BagWriter,
    _connections,
    message_converter,
    open_bag,
    target_typestore,
)


def _message_class(msgtype: str):
    """The rclpy message class of ``'pkg/msg/Name'``."""
    import importlib

    pkg, kind, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError):
        raise CloudFileError(f"message type {msgtype} is not importable here (install the "
                             f"Python package of '{pkg}', e.g. ros-{pkg.replace('_', '-')})"
                             ) from None


def _has_header(store, msgtype: str) -> bool:
    try:
        first = store.fielddefs[msgtype][1][0]
    except (KeyError, IndexError):
        return False
    return first[1][0].name == "NAME" and first[1][1] == "std_msgs/msg/Header"


def restamp_cdr(raw: bytes | memoryview, stamp_ns: int) -> bytes:
    """CDR bytes of a message whose first field is a std_msgs/Header, with header.stamp set
    to ``stamp_ns`` (sec int32 and nanosec uint32 right after the 4-byte encapsulation)."""
    buf = bytearray(raw)
    order = "<" if buf[1] == 1 else ">"  # CDR encapsulation: 0x0001 little, 0x0000 big
    struct.pack_into(f"{order}iI", buf, 4, int(stamp_ns // NS), int(stamp_ns % NS))
    return bytes(buf)


@dataclass
class PlayStats:
    published: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    loops: int = 0


def _init_rclpy(args: Sequence[str] | None = None):
    try:
        import rclpy
    except ImportError:
        raise CloudFileError("rclpy is not importable: source a ROS 2 install or "
                             "pip install -e '.[ros]'") from None
    if not rclpy.ok():
        rclpy.init(args=list(args) if args else None)
    return rclpy


def shutdown_rclpy() -> None:
    """Shut rclpy down if it is importable and running (end of ``sspu play``/``record``)."""
    try:
        import rclpy
    except ImportError:
        return
    if rclpy.ok():
        rclpy.shutdown()


def play(path: str | Path, *, topics: Sequence[str] | None = None, rate: float = 1.0,
         loop: bool = False, remap: dict[str, str] | None = None, restamp: bool = False,
         wait_for_subscribers: float = 0.0, reliable: bool = True, progress: bool = True,
         stop: Any = None) -> PlayStats:
    """Publish a bag's messages into the live ROS 2 graph at the recorded rate.

    Args:
        topics: topics to play (default: every PointCloud2 topic); any type whose rclpy
            class is importable can be named. Messages go out as recorded (raw CDR; ROS 1
            bags are converted).
        rate: time scale (2.0 = twice as fast).
        loop: start over at the end (until interrupted).
        remap: ``{bag_topic: published_topic}``.
        restamp: set header.stamp of messages with a Header to the publish time.
        wait_for_subscribers: wait up to this many seconds for a subscriber on every topic
            before the first message.
        stop: optional ``threading.Event``-like object; play returns when it is set.
    """
    from tqdm import tqdm

    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    path = Path(path)
    remap = remap or {}
    rclpy = _init_rclpy()
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                     reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    stats = PlayStats()
    node = rclpy.create_node(f"sspu_play_{abs(hash((str(path), time.time()))) % 10**8}")
    try:
        with open_bag(path) as reader:
            conns = _connections(reader, path, topics, pointcloud_only=not topics)
            pubs, header, convert = {}, {}, {}
            ros2_store = target_typestore(reader, ros2=True)
            for c in conns:
                name = remap.get(c.topic, c.topic)
                if name not in pubs:
                    pubs[name] = node.create_publisher(_message_class(c.msgtype), name, qos)
                    stats.published[name] = 0
                header[c.id] = _has_header(reader.typestore, c.msgtype)
                if not reader.is2:  # ROS 1 bytes -> the CDR the live ROS 2 graph expects
                    convert[c.id] = message_converter(reader, c.msgtype, ros2_store, ros2=True)
            deadline = time.monotonic() + wait_for_subscribers
            while (wait_for_subscribers > 0 and time.monotonic() < deadline
                   and not all(p.get_subscription_count() > 0 for p in pubs.values())):
                time.sleep(0.02)
            total = sum(c.msgcount for c in conns)
            t_begin = time.monotonic()
            while True:
                bar = tqdm(total=total, desc="play", unit="msg", disable=not progress)
                t0_wall, t0_bag = None, None
                for conn, ts, raw in reader.messages(connections=conns):
                    if stop is not None and stop.is_set():
                        break
                    if t0_wall is None:
                        t0_wall, t0_bag = time.monotonic(), ts
                    delay = t0_wall + (ts - t0_bag) / NS / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    if conn.id in convert:
                        raw = convert[conn.id](raw)
                    if restamp and header[conn.id]:
                        raw = restamp_cdr(raw, time.time_ns())
                    name = remap.get(conn.topic, conn.topic)
                    pubs[name].publish(bytes(raw))
                    stats.published[name] += 1
                    bar.update(1)
                bar.close()
                stats.loops += 1
                if not loop or (stop is not None and stop.is_set()):
                    break
            stats.seconds = time.monotonic() - t_begin
            if reliable:  # a writer destroyed right after its last publish can lose the
                # unacknowledged tail for a reader still catching up: wait (bounded)
                from rclpy.duration import Duration

                for p in pubs.values():
                    p.wait_for_all_acked(Duration(seconds=5.0))
    finally:
        node.destroy_node()
    return stats


def record(out: str | Path, topics: Sequence[str], *, duration: float | None = None,
           count: int | None = None, storage: str | None = None, reliable: bool = True,
           discovery_timeout: float = 10.0, msgtypes: dict[str, str] | None = None,
           ready: Any = None, stop: Any = None,
           live_counts: dict[str, int] | None = None) -> dict[str, int]:
    """Subscribe to ``topics`` and write what arrives to a new bag (bag time = receive time,
    messages byte-exact as received).

    Args:
        duration: stop after this many seconds (from the start of recording).
        count: stop when every topic has this many messages.
        msgtypes: ``{topic: 'pkg/msg/Type'}``; topics not named are looked up in the graph
            (waiting up to ``discovery_timeout`` s for a publisher).
        ready: optional ``threading.Event`` set once the subscriptions exist.
        stop: optional ``threading.Event``-like object; recording ends when it is set.
        live_counts: optional dict kept up to date with the messages written per topic.

    Returns:
        messages written per topic.
    """
    if not topics:
        raise ValueError("record needs at least one topic")
    if duration is None and count is None and stop is None:
        raise ValueError("record needs --duration or --count (or both)")
    rclpy = _init_rclpy()
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                     reliability=ReliabilityPolicy.RELIABLE if reliable
                     else ReliabilityPolicy.BEST_EFFORT)
    types = dict(msgtypes or {})
    node = rclpy.create_node(f"sspu_record_{abs(hash((str(out), time.time()))) % 10**8}")
    try:
        deadline = time.monotonic() + discovery_timeout
        while any(t not in types for t in topics):
            for name, kinds in node.get_topic_names_and_types():
                if name in topics and name not in types and kinds:
                    types[name] = kinds[0]
            if time.monotonic() > deadline:
                missing = [t for t in topics if t not in types]
                raise CloudFileError(f"record: no publisher of {', '.join(missing)} seen within "
                                     f"{discovery_timeout:g} s; pass the type or start the "
                                     "publisher first")
            time.sleep(0.05)
        with BagWriter(out, storage=storage or "mcap") as writer:
            if live_counts is not None:
                live_counts.clear()
                writer.counts = live_counts
            conns = {t: writer.add_connection(t, types[t]) for t in topics}

            def callback_for(topic: str):
                def cb(raw: bytes) -> None:
                    writer.write_raw(conns[topic], time.time_ns(), raw)
                return cb

            subs = [node.create_subscription(_message_class(types[t]), t, callback_for(t), qos,
                                             raw=True) for t in topics]
            if ready is not None:
                ready.set()
            t0 = time.monotonic()
            try:  # Ctrl-C ends a recording: the bag is closed and kept (complete so far)
                while rclpy.ok():
                    rclpy.spin_once(node, timeout_sec=0.05)
                    if duration is not None and time.monotonic() - t0 >= duration:
                        break
                    if count is not None and all(writer.counts[t] >= count for t in topics):
                        break
                    if stop is not None and stop.is_set():
                        break
            except KeyboardInterrupt:
                pass
            for s in subs:
                node.destroy_subscription(s)
        return dict(writer.counts)
    finally:
        node.destroy_node()
