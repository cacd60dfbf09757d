"""``autodice replay``: run a bundle over the images of a rosbag2 bag and record the results.

The whole pipeline (head, every stage, tail) runs as separate processes over DDS, exactly as
``autodice run`` starts it; this process plays the bag's ``sensor_msgs/Image`` messages into it
and writes the tail's ``TensorList`` outputs (stamp = the image's) into a new bag. With a
one-partition bundle the same command is the single-node baseline.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autodice_ros.bags import IMAGE_TYPE, BagError, BagWriter, read_messages
from autodice_ros.codec import encode_list
from autodice_ros.driver import PipelineDriver, Received
from autodice_ros.manifest import OUTPUT_TOPIC, load_bundle
from autodice_ros.plan import PlanOptions, make_plan
from autodice_ros.runner import Runner

TIMINGS = ('recorded', 'rate', 'fast')


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    received: int
    missing: int
    in_order: bool
    seconds: float
    latency_p50_ms: float
    out: Path

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.received == self.sent


def load_images(bag: Path, topic: str | None) -> list[tuple[int, Any]]:
    """(log time, Image) of the bag's one image topic (or ``topic``), in log order."""
    images = [(t, msg, name) for name, t, msg in read_messages(bag, IMAGE_TYPE, topic)]
    topics = sorted({name for _, _, name in images})
    if len(topics) > 1:
        raise BagError(f'{bag}: several image topics ({", ".join(topics)}); choose one with --topic')
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m, _ in images]
    if len(set(stamps)) != len(stamps):
        raise BagError(f'{bag}: {len(stamps) - len(set(stamps))} images share a header stamp; '
                       f'the pipeline identifies frames by stamp')
    return [(t, m) for t, m, _ in images]


def feed(driver: PipelineDriver, images: Sequence[tuple[int, Any]], timing: str, rate: float,
         window: int) -> None:
    """Publish the images: at their recorded spacing, at ``rate`` Hz, or as fast as results return."""
    start = time.monotonic()
    first = images[0][0] if images else 0
    for index, (log_ns, image) in enumerate(images):
        if timing == 'recorded':
            due = start + (log_ns - first) / 1e9
        elif timing == 'rate':
            due = start + index / rate
        else:
            driver.wait_for(index - window + 1, timeout=60.0)
            due = time.monotonic()
        driver.spin_for(max(0.0, due - time.monotonic()))
        driver.send(image)


def replay(bundle_dir: Path, bag: Path, out: Path, *, storage: str = 'sqlite3', topic: str | None = None,
           timing: str = 'recorded', rate: float = 5.0, window: int = 2, timeout: float = 60.0,
           namespace: str = '/autodice') -> ReplayResult:
    import rclpy

    if timing not in TIMINGS:
        raise ValueError(f'timing {timing!r}: expected one of {", ".join(TIMINGS)}')
    manifest = load_bundle(bundle_dir, check_hashes=True).manifest
    images = load_images(bag, topic)
    writer = BagWriter(out, storage)
    specs = make_plan(bundle_dir, PlanOptions(source='none', namespace=namespace))

    def record(received: Received) -> None:     # as they come: an interrupted replay keeps them
        writer.write(topic_out, received.received_ns,
                     encode_list(received.header, received.frame, received.tensors))

    rclpy.init()
    node = rclpy.create_node('autodice_replay')
    try:
        with Runner(specs):
            driver = PipelineDriver(node, manifest, namespace, on_output=record)
            topic_out = driver.topic(OUTPUT_TOPIC)
            driver.wait_connected()
            started = time.monotonic()
            feed(driver, images, timing, rate, window)
            driver.wait_for(len(images), timeout)
            seconds = time.monotonic() - started
        got = driver.collected
    finally:
        writer.close()
        node.destroy_node()
        rclpy.try_shutdown()
    sent_keys = [(m.header.stamp.sec, m.header.stamp.nanosec) for _, m in images]
    missing = sum(1 for k in sent_keys if k not in got.outputs)
    order = [k for k in got.order if k in set(sent_keys)]
    latency = driver.latency_ms()
    return ReplayResult(len(images), len(got.outputs), missing,
                        order == [k for k in sent_keys if k in got.outputs], seconds,
                        statistics.median(latency) if latency else float('nan'), out)
