"""Turn an :class:`~sspu_ros.io.pointcloud2.EncodedCloud` into a real PointCloud2 message.

The message classes are passed in by the caller, so this module imports nothing from ROS:
``msg_cls``/``field_cls`` are either rclpy's ``sensor_msgs.msg.PointCloud2`` /
``PointField`` or a rosbags typestore's ``sensor_msgs/msg/PointCloud2`` /
``sensor_msgs/msg/PointField`` dataclasses. (Decoding needs no adapter:
:func:`sspu_ros.io.pointcloud2.decode` reads either kind of message directly.)

How rclpy's ``uint8[] data`` is assigned
----------------------------------------
rclpy stores ``data`` as ``array.array('B')``. Its setter keeps an ``array.array('B')`` as
is; anything else goes through ``array.array('B', value)`` (one copy for bytes, element by
element for a memoryview, list or ndarray), and when field checks are on
(``ROS_PYTHON_CHECK_FIELDS=1``; always on in older distributions such as Humble) every
element is first type-checked in Python. Measured on the 2-core dev
machine (rclpy from the ROS 2 Kilted wheels, 2.3-2.4 MB = 115-120k points x 20 bytes,
median; the machine was shared, so read the ranges as orders of magnitude):

====================================================  ==============  ===============
assignment                                            checks off      checks on
====================================================  ==============  ===============
``a = array.array('B'); a.frombytes(ndarray)``        0.15-0.2 ms     0.09 ms
``msg.data = ndarray.tobytes()``                      0.4-1.2 ms      204 ms
``msg.data = memoryview(ndarray)``                    106-229 ms      324 ms
``msg.data = ndarray.tolist()``                       71-146 ms       276 ms
``msg.data = ndarray``                                179 ms          AssertionError
====================================================  ==============  ===============

So the data go in as a fresh ``array.array('B')`` filled by ``frombytes`` (one memcpy),
set after construction (the constructor would copy again). ``sspu bench codec`` re-measures
this on the machine at hand.
"""

from __future__ import annotations

import array
import dataclasses

import numpy as np

from .pointcloud2 import EncodedCloud

__all__ = ["bytes_to_uint8_array", "fields_to_msgs", "to_pointcloud2"]


def fields_to_msgs(fields, field_cls) -> list:
    """``field_cls`` (PointField) messages for :class:`~sspu_ros.io.pointcloud2.Field` objects."""
    return [
        field_cls(name=f.name, offset=int(f.offset), datatype=int(f.datatype), count=int(f.count))
        for f in fields
    ]


def bytes_to_uint8_array(data: np.ndarray) -> array.array:
    """``array.array('B')`` copy of a C-contiguous buffer (one memcpy)."""
    out = array.array("B")
    out.frombytes(data)
    return out


def _is_rosbags_class(msg_cls) -> bool:
    return dataclasses.is_dataclass(msg_cls) and hasattr(msg_cls, "__msgtype__")


def to_pointcloud2(encoded: EncodedCloud, header, msg_cls, field_cls):
    """Build a ``msg_cls`` PointCloud2 with ``header`` and the encoded layout and data.

    Args:
        encoded: the cloud; ``encoded.data`` is ``(height*row_step,)`` uint8.
        header: a header of the message family of ``msg_cls`` (std_msgs/Header).
        msg_cls: rclpy ``sensor_msgs.msg.PointCloud2`` or a rosbags typestore PointCloud2.
        field_cls: the matching PointField class.

    rosbags classes are dataclasses that need every constructor argument and take ``data``
    as a 1-D np.uint8 array (passed without a copy). rclpy messages get ``data`` as an
    ``array.array('B')`` filled by ``frombytes``: the fastest assignment measured (see the
    module docstring for the numbers).
    """
    data = np.ascontiguousarray(encoded.data, dtype=np.uint8).reshape(-1)
    fields = fields_to_msgs(encoded.fields, field_cls)
    common = dict(
        height=int(encoded.height),
        width=int(encoded.width),
        fields=fields,
        is_bigendian=bool(encoded.is_bigendian),
        point_step=int(encoded.point_step),
        row_step=int(encoded.row_step),
        is_dense=bool(encoded.is_dense),
    )
    if _is_rosbags_class(msg_cls):
        return msg_cls(header=header, data=data, **common)
    msg = msg_cls(header=header, **common)
    msg.data = bytes_to_uint8_array(data)
    return msg
