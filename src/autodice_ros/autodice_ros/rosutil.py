"""Small rclpy helpers every node and tool uses: matching, spinning, clean shutdown."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autodice_ros.fastpath import subscriber_count


def now_header(frame_id: str = '') -> Any:
    """A std_msgs/Header stamped with the wall clock now (what a camera driver would do)."""
    from std_msgs.msg import Header

    header = Header()
    ns = time.time_ns()
    header.stamp.sec, header.stamp.nanosec = divmod(ns, 1_000_000_000)
    header.frame_id = frame_id
    return header


def subscribe_decoding(node: Any, msg_type: Any, topic: str, callback: Callable[[Any, int], None], qos: Any,
                       on_undecodable: Callable[[Exception], None],
                       decode: Callable[[bytes], Any] | None = None) -> Any:
    """A subscription that deserializes in this process: a message that does not decode (random
    bytes, a sequence longer than the message) reaches ``on_undecodable`` to be counted, where a
    typed subscription would lose it silently inside the middleware. ``callback`` gets the
    message and its DDS source timestamp (ns, the publisher's wall clock; 0 if unknown).

    ``decode``: a faster reader of the bytes (returns an object with the message's fields, or
    None to leave them to rclpy)."""
    from rclpy.serialization import deserialize_message

    def receive(raw: bytes, info: Mapping[str, Any]) -> None:
        msg = None if decode is None else decode(raw)
        try:
            if msg is None:
                msg = deserialize_message(raw, msg_type)
        except Exception as exc:  # rclpy raises RMWError (and others) for bytes that are no message
            on_undecodable(exc)
            return
        callback(msg, int(info.get('source_timestamp', 0) or 0))

    return node.create_subscription(msg_type, topic, receive, qos, raw=True)


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def spin_until(node: Any, done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Spin ``node`` until ``done()`` or ``timeout`` seconds; True when done."""
    import rclpy

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        rclpy.spin_once(node, timeout_sec=step)
    return True


def wait_for_subscribers(node: Any, publishers: Sequence[Any], timeout: float, count: int = 1) -> bool:
    """Wait until every publisher is matched with ``count`` subscriptions (discovery, not sleeps)."""
    return spin_until(node, lambda: all(p.get_subscription_count() >= count for p in publishers), timeout)


def unconnected_links(node: Any, links: Mapping[str, int], namespace: str) -> list[str]:
    """The pipeline topics still lacking a publisher or readers, each as 'topic: what it has'
    (graph view; empty once every link is connected). Said in errors, so a stalled start-up
    names the link to look at.

    A subscriber counts on whichever path it listens (TensorList, shared memory, in-process).
    """
    missing = []
    for topic, readers in links.items():
        name = f'{namespace.rstrip("/")}/{topic}'
        publishers = node.count_publishers(name)
        subscribers = subscriber_count(node.count_subscribers, name)
        if publishers < 1 or subscribers < readers:
            missing.append(f'{name}: {publishers} publisher(s), {subscribers} of {readers} reader(s)')
    return missing


def links_connected(node: Any, links: Mapping[str, int], namespace: str) -> bool:
    """Every pipeline topic has a publisher and its expected number of subscribers (graph view)."""
    return not unconnected_links(node, links, namespace)
