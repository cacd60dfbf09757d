"""A tensor publisher or subscriber in its own process, for test_roundtrip.

pub TOPIC NPY SEC NANOSEC FRAME: wait for a subscriber, publish NPY once per 0.2 s until killed.
sub TOPIC OUT_DIR: receive one TensorList, save its tensor, header and frame, exit 0.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import rclpy
from std_msgs.msg import Header

from autodice_ros.codec import Frame, TensorPublisher, TensorSubscriber, qos_profile
from autodice_ros.rosutil import spin_until, wait_for_subscribers


def publish(topic: str, npy: str, sec: int, nanosec: int, frame: int) -> int:
    node = rclpy.create_node('roundtrip_pub')
    pub = TensorPublisher(node, topic, qos_profile('reliable', 5))
    if not wait_for_subscribers(node, [pub], timeout=30.0):
        return 3
    header = Header()
    header.stamp.sec, header.stamp.nanosec, header.frame_id = sec, nanosec, 'camera_optical'
    value = np.load(npy)
    while rclpy.ok():
        pub.publish(header, frame, {'activation': value})
        spin_until(node, lambda: False, timeout=0.2)
    return 0


def subscribe(topic: str, out_dir: str) -> int:
    node = rclpy.create_node('roundtrip_sub')
    got: list[Frame] = []
    TensorSubscriber(node, topic, qos_profile('reliable', 5), None,
                     lambda _topic, frame: got.append(frame), lambda _topic, exc: print(exc))
    if not spin_until(node, lambda: bool(got), timeout=60.0):
        return 4
    frame = got[0]
    out = Path(out_dir)
    np.save(out / 'received.npy', frame.tensors['activation'])
    stamp = frame.header.stamp
    (out / 'meta.json').write_text(json.dumps({
        'sec': stamp.sec, 'nanosec': stamp.nanosec, 'frame_id': frame.header.frame_id,
        'frame': frame.frame, 'names': list(frame.tensors)}))
    return 0


if __name__ == '__main__':
    rclpy.init()
    role, args = sys.argv[1], sys.argv[2:]
    try:
        code = publish(args[0], args[1], *map(int, args[2:5])) if role == 'pub' else subscribe(*args)
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)
