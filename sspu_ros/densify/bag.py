"""``sspu densify-bag``: the node's densification applied to every scan of a recorded bag,
offline (ROS-free: ``rosbags`` reads and writes the bag).

Every message of every topic is copied (converted between ROS 1 and rosbag2 where the
output's ROS differs, with the bag's own type definitions); a message that cannot be
converted, or a scan that cannot be decoded, is skipped with one line naming the topic and
why, and the run goes on. The output is written under a temporary name and renamed when
complete (:class:`sspu_ros.io.bags.BagWriter`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import CloudFileError, PointCloudFormatError
from ..io.bags import (
    POINTCLOUD2,
    BagCopier,
    BagWriter,
    _qos_of,
    header_for,
    open_bag,
    output_storage,
    pointcloud_topic,
    typestore,
)
from ..io.pointcloud2 import decode, encode_densified


def densify_message(msg, upsampler, params, *, store=None):
    """A densified copy of a PointCloud2 (rosbags dataclass): same header, the input's
    fields, generated points appended with the ``generated`` flag (as the node publishes).

    ``store``: the type store of the message to make (default ROS 2 Kilted; a ROS 1 store
    makes a ROS 1 PointCloud2, its Header keeping the input's ``seq``).

    Returns:
        (message, DensifyResult).
    """
    from ..io.pointcloud2_message import to_pointcloud2
    from .beams import ScanHints
    from .densifier import densify_points

    store = store or typestore()
    cloud = decode(msg)
    result = densify_points(cloud.xyz, upsampler, params, hints=ScanHints.from_decoded(cloud))
    encoded = encode_densified(cloud, result.generated, neighbors=result.sources)
    out = to_pointcloud2(encoded, header_for(store, msg.header), store.types[POINTCLOUD2],
                         store.types["sensor_msgs/msg/PointField"])
    return out, result


def densify_bag(src: str | Path, dst: str | Path, topic: str | None, cfg, *,
                out_topic: str | None = None, storage: str | None = None,
                progress: bool = True, warn=None) -> dict:
    """Copy every message of ``src`` to ``dst`` and add ``out_topic``: the densified
    PointCloud2 of each ``topic`` message (same timestamps and headers).

    ``topic`` None: the bag's only PointCloud2 topic. ``out_topic`` defaults to
    ``<topic>/densified``; equal to ``topic`` it replaces the input topic. ``storage``
    defaults to ROS 1 for a ``.bag`` output, else the input's rosbag2 storage (mcap for a
    ROS 1 input). ``warn``: called with one line per topic with skipped messages (default:
    none; they are in the result's ``skipped``).

    Returns:
        counts and timing: ``{'messages', 'densified', 'input_points', 'generated_points',
        'skipped', 'seconds', 'ms_per_scan_median', ...}``.
    """
    from tqdm import tqdm

    from ..runtime.loading import load_upsampler

    src, dst = Path(src), Path(dst)
    upsampler = load_upsampler(cfg["model"], cfg["ratio"])
    times: list[float] = []
    t_start = time.perf_counter()
    with open_bag(src) as reader:
        topic = pointcloud_topic(reader, src, topic)
        out_topic = out_topic or f"{topic.rstrip('/')}/densified"
        stats = {"input": str(src), "output": str(dst), "topic": topic, "out_topic": out_topic,
                 "model": upsampler.name, "messages": 0, "densified": 0, "input_points": 0,
                 "generated_points": 0}
        in_conns = list(reader.connections)
        if out_topic != topic and any(c.topic == out_topic for c in in_conns):
            raise CloudFileError(f"{src}: already has a topic {out_topic}; choose another "
                                 "--out-topic")
        total = sum(c.msgcount for c in in_conns)
        with BagWriter(dst, storage=storage or output_storage(src, dst)) as writer:
            copier = BagCopier(reader, writer)
            store = copier.store if POINTCLOUD2 in copier.store.types else writer.store
            for c in in_conns:
                if not (c.topic == topic and out_topic == topic):
                    copier.add(c)
            qos = next(_qos_of(c) for c in in_conns if c.topic == topic)
            dense_conn = writer.add_connection(out_topic, POINTCLOUD2, store=store,
                                               **({"qos": qos} if copier.ros2 else {}))
            bar = tqdm(total=total, desc="densify-bag", unit="msg", disable=not progress)
            for conn, ts, raw in reader.messages(connections=in_conns):
                stats["messages"] += 1
                bar.update(1)
                if not (conn.topic == topic and out_topic == topic):
                    copier.write(conn, ts, raw)
                if conn.topic != topic or conn.msgtype != POINTCLOUD2:
                    continue
                t0 = time.perf_counter()
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                    dense, result = densify_message(msg, upsampler, cfg, store=store)
                except (PointCloudFormatError, ValueError) as e:
                    copier.skipped.setdefault(out_topic, [0, POINTCLOUD2, f"scan not "
                                              f"densified: {e}"])[0] += 1
                    continue
                times.append(time.perf_counter() - t0)
                writer.write_msg(dense_conn, ts, dense, store=store)
                stats["densified"] += 1
                stats["input_points"] += int(msg.width * msg.height)
                stats["generated_points"] += int(result.generated.shape[0])
            bar.close()
            for line in copier.report():
                if warn is not None:
                    warn(line)
    stats["storage"] = writer.storage
    stats["skipped"] = {t: {"messages": n, "type": m, "reason": r}
                        for t, (n, m, r) in copier.skipped.items()}
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    stats["ms_per_scan_median"] = round(float(np.median(times)) * 1000, 2) if times else 0.0
    return stats
