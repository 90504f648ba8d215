"""``sspu densify-bag``: the node's densification applied to every scan of a recorded bag,
offline (ROS-free: ``rosbags`` reads and writes the bag)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import CloudFileError
from ..io.bags import (
    POINTCLOUD2,
    BagWriter,
    _connections,
    _input_storage,
    _qos_of,
    _serialization_of,
    open_bag,
    typestore,
)
from ..io.pointcloud2 import decode, encode_densified


def densify_message(msg, upsampler, params, *, store=None):
    """A densified copy of a PointCloud2 (rosbags dataclass): same header, the input's
    fields, generated points appended with the ``generated`` flag (as the node publishes).

    Returns:
        (message, DensifyResult).
    """
    from ..io.pointcloud2_message import to_pointcloud2
    from .densifier import densify_points

    store = store or typestore()
    cloud = decode(msg)
    result = densify_points(cloud.xyz, upsampler, params)
    encoded = encode_densified(cloud, result.generated, neighbors=result.sources)
    out = to_pointcloud2(encoded, msg.header, store.types[POINTCLOUD2],
                         store.types["sensor_msgs/msg/PointField"])
    return out, result


def densify_bag(src: str | Path, dst: str | Path, topic: str, cfg, *,
                out_topic: str | None = None, storage: str | None = None,
                progress: bool = True) -> dict:
    """Copy every message of ``src`` to ``dst`` unchanged and add ``out_topic``: the
    densified PointCloud2 of each ``topic`` message (same timestamps and headers).

    ``out_topic`` defaults to ``<topic>/densified``; equal to ``topic`` it replaces the
    input topic. ``storage`` defaults to the input's (mcap for a ROS 1 input).

    Returns:
        counts and timing: ``{'messages', 'densified', 'input_points', 'generated_points',
        'seconds', 'ms_per_scan_median', ...}``.
    """
    from tqdm import tqdm

    from ..runtime.loading import load_upsampler

    src, dst = Path(src), Path(dst)
    out_topic = out_topic or f"{topic.rstrip('/')}/densified"
    upsampler = load_upsampler(cfg["model"], cfg["ratio"])
    stats = {"input": str(src), "output": str(dst), "topic": topic, "out_topic": out_topic,
             "model": upsampler.name, "messages": 0, "densified": 0, "input_points": 0,
             "generated_points": 0}
    times: list[float] = []
    t_start = time.perf_counter()
    with open_bag(src) as reader:
        in_conns = _connections(reader, src, None, pointcloud_only=False)
        if not any(c.topic == topic and c.msgtype == POINTCLOUD2 for c in in_conns):
            clouds = sorted({c.topic for c in in_conns if c.msgtype == POINTCLOUD2})
            raise CloudFileError(f"{src}: no PointCloud2 topic named {topic}; its PointCloud2 "
                                 f"topics: {', '.join(clouds) or 'none'}")
        if storage is None:
            storage = _input_storage(src, reader)
        total = sum(c.msgcount for c in in_conns)
        with BagWriter(dst, storage=storage) as writer:
            out_conns = {}
            for c in in_conns:
                if c.topic == out_topic and c.topic != topic:
                    raise CloudFileError(f"{src}: already has a topic {out_topic}; choose "
                                         "another --out-topic")
                if not (c.topic == topic and out_topic == topic):
                    out_conns[c.id] = writer.add_connection(c.topic, c.msgtype,
                                                            store=reader.typestore,
                                                            qos=_qos_of(c))
            qos = next(_qos_of(c) for c in in_conns if c.topic == topic)
            dense_conn = writer.add_connection(out_topic, POINTCLOUD2, qos=qos)
            bar = tqdm(total=total, desc="densify-bag", unit="msg", disable=not progress)
            for conn, ts, raw in reader.messages(connections=in_conns):
                if conn.id in out_conns:
                    writer.write_raw(out_conns[conn.id], ts, raw, store=reader.typestore,
                                     serialization=_serialization_of(conn))
                if conn.topic == topic and conn.msgtype == POINTCLOUD2:
                    msg = reader.deserialize(raw, conn.msgtype)
                    t0 = time.perf_counter()
                    dense, result = densify_message(msg, upsampler, cfg)
                    times.append(time.perf_counter() - t0)
                    writer.write_msg(dense_conn, ts, dense)
                    stats["densified"] += 1
                    stats["input_points"] += int(msg.width * msg.height)
                    stats["generated_points"] += int(result.generated.shape[0])
                stats["messages"] += 1
                bar.update(1)
            bar.close()
    stats["storage"] = writer.storage
    stats["seconds"] = round(time.perf_counter() - t_start, 3)
    stats["ms_per_scan_median"] = round(float(np.median(times)) * 1000, 2) if times else 0.0
    return stats
