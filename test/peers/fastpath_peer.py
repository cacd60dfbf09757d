"""Tensor publishers and subscribers in their own processes, for test_fastpath.

pub TOPIC DIR FAST SLOTS COUNT PERIOD READERS: wait for READERS subscribers, publish COUNT frames
    (DIR/sent.npz's tensors, or with no such file frame i as 'x' = full((64, 64), i)), PERIOD s
    apart, write DIR/pub.json, then spin until SIGINT. (FAST 'lend': on, and each frame written
    into a borrowed slot when the publisher lends one of its shape; frames 5 and 6 are then half
    as tall, so the layout changes twice.)
sub TOPIC DIR FAST COUNT DELAY: (FAST 'first': on, and TensorLists too until the first descriptor,
    as for a publisher on another board) receive until COUNT frames arrived or were dropped, or 2 s passed
    without either (DELAY s in each callback: a slow reader); keep the first frame's arrays alive
    to the end; write DIR/sub.json and DIR/received.npz.
plain TOPIC DIR COUNT: an ordinary rclpy subscription to the TensorList topic; COUNT messages,
    the first one's tensors to DIR/plain.npz, their frame numbers to DIR/plain.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
import rclpy.parameter
from rclpy.executors import ExternalShutdownException
from std_msgs.msg import Header

from autodice_ros import fastpath
from autodice_ros.codec import Frame, TensorPublisher, TensorSubscriber, decode_list, qos_profile
from autodice_ros.errors import TensorError
from autodice_ros.rosutil import spin_until

QOS = qos_profile('reliable', 10)


def header_for(frame: int) -> Header:
    header = Header(frame_id='camera_optical')
    header.stamp.sec, header.stamp.nanosec = 1_764_115_200 + frame, 123_456_789
    return header


def publish(topic: str, out: Path, slots: int, count: int, period: float, readers: int,
            lend: bool = False) -> int:
    node = rclpy.create_node('fastpath_pub', parameter_overrides=[
        rclpy.parameter.Parameter('fast_path_slots', value=slots)])
    pub = TensorPublisher(node, topic, QOS)
    if not spin_until(node, lambda: pub.get_subscription_count() >= readers, timeout=30.0):
        return 3
    spin_until(node, lambda: False, timeout=0.5)    # every endpoint of every reader matched
    fixed = dict(np.load(out / 'sent.npz')) if (out / 'sent.npz').exists() else None
    for i in range(count):
        rows = 32 if lend and i in (5, 6) else 64
        tensors = fixed if fixed is not None else {'x': np.full((rows, 64), i, dtype=np.float32)}
        slot = pub.borrow() if lend else None
        if slot is not None and all(slot[k].shape == v.shape for k, v in tensors.items()):
            # what a stage has ONNX Runtime do: write the frame in place
            for name, value in tensors.items():
                np.copyto(slot[name], value)
            tensors = slot
        pub.publish(header_for(i), i, tensors)
        spin_until(node, lambda: False, timeout=period)
    (out / 'pub.json').write_text(json.dumps({'sent': dict(pub.sent), 'failures': pub.failures,
                                              'in_place': pub.in_place,
                                              'segments': fastpath.own_segments()}))
    while rclpy.ok():
        spin_until(node, lambda: False, timeout=0.2)
    return 0


def subscribe(topic: str, out: Path, count: int, delay: float, payload_first: bool = False) -> int:
    node = rclpy.create_node('fastpath_sub')
    frames: list[int] = []
    held: list[Frame] = []      # the first frame only: a reader that keeps frames keeps their slots
    errors: list[str] = []
    wrong: list[int] = []

    def on_frame(_topic: str, frame: Frame) -> None:
        if 'x' in frame.tensors and frame.tensors['x'].shape in ((64, 64), (32, 64)):
            if not np.all(frame.tensors['x'] == frame.frame):
                wrong.append(frame.frame)
        frames.append(frame.frame)
        if not held:
            held.append(frame)
        time.sleep(delay)

    def on_error(_topic: str, exc: TensorError) -> None:
        errors.append(f'{type(exc).__name__}: {exc}')

    sub = TensorSubscriber(node, topic, QOS, None, on_frame, on_error, payload_first=payload_first)
    seen = [0, time.monotonic()]

    def finished() -> bool:    # COUNT frames in or dropped, or 2 s quiet after the first
        events = len(frames) + sum(sub.drops.values())
        if events != seen[0]:
            seen[:] = [events, time.monotonic()]
        return events >= count or (events > 0 and time.monotonic() - seen[1] > 2.0)

    spin_until(node, finished, timeout=60.0)
    first = held[0] if held else None
    held_intact = bool(first is not None and 'x' in first.tensors and first.tensors['x'].shape == (64, 64)
                       and np.all(first.tensors['x'] == first.frame))
    if first is not None:
        np.savez(out / 'received.npz', **first.tensors)
    (out / 'sub.json').write_text(json.dumps({
        'frames': frames, 'received': dict(sub.received), 'drops': dict(sub.drops),
        'errors': errors, 'wrong': wrong, 'held_intact': held_intact, 'path': sub.path,
        'header': ([first.header.stamp.sec, first.header.stamp.nanosec, first.header.frame_id]
                   if first is not None else None),
        'writeable': [bool(a.flags.writeable) for a in first.tensors.values()] if first else []}))
    return 0 if frames else 4


def plain(topic: str, out: Path, count: int) -> int:
    from autodice_msgs.msg import TensorList

    node = rclpy.create_node('plain_sub')
    got: list[Any] = []
    node.create_subscription(TensorList, topic, got.append, QOS)
    if not spin_until(node, lambda: len(got) >= count, timeout=60.0):
        return 4
    frame = decode_list(got[0])
    np.savez(out / 'plain.npz', **frame.tensors)
    (out / 'plain.json').write_text(json.dumps({'frames': [int(m.frame) for m in got]}))
    return 0


if __name__ == '__main__':
    role, topic, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    rest = sys.argv[4:]
    fast = rest[0] in ('on', 'first', 'lend') if role != 'plain' else False
    rclpy.init(args=['peer', '--ros-args', '-p', f'fast_path:={str(fast).lower()}'])
    try:
        if role == 'pub':
            code = publish(topic, out_dir, int(rest[1]), int(rest[2]), float(rest[3]), int(rest[4]),
                           rest[0] == 'lend')
        elif role == 'sub':
            code = subscribe(topic, out_dir, int(rest[1]), float(rest[2]), rest[0] == 'first')
        else:
            code = plain(topic, out_dir, int(rest[0]))
    except (KeyboardInterrupt, ExternalShutdownException):   # stop() ends every peer with SIGINT
        code = 0
    except Exception:
        if rclpy.ok():
            raise
        code = 0          # SIGINT shut the context down mid-spin (e.g. while making a wait set)
    sys.exit(code)
