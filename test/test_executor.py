"""DirectExecutor (AUTODICE_EXECUTOR=direct) keeps rclpy's semantics: each
message once, message info, timers, guard conditions, parameter services for other processes,
a subscription destroyed in its own callback, and shutdown."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

PEER = Path(__file__).parent / 'peers' / 'executor_peer.py'
COUNT = 20


def test_direct_executor_serves_a_node_like_rclpys_executor() -> None:
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from autodice_ros.executor import DirectExecutor

    namespace = f'/exec{os.getpid()}'
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('direct', namespace=namespace, context=context,
                             parameter_overrides=[Parameter('answer', value=42)],
                             automatically_declare_parameters_from_overrides=True)
    executor = DirectExecutor(context=context)
    executor.add_node(node)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    got: dict[str, list[Any]] = {'plain': [], 'info': [], 'short': [], 'timer': [], 'guard': []}
    node.create_subscription(String, 'chatter', lambda m: got['plain'].append(m.data), qos)
    node.create_subscription(String, 'chatter', lambda raw, info: got['info'].append(
        (len(raw), info['source_timestamp'])), qos, raw=True)
    short: list[Any] = []

    def first_three(msg: Any) -> None:
        got['short'].append(msg.data)
        if len(got['short']) == 3:
            node.destroy_subscription(short[0])
    short.append(node.create_subscription(String, 'chatter', first_three, qos))
    node.create_timer(0.05, lambda: got['timer'].append(time.monotonic()))
    guard = node.create_guard_condition(lambda: got['guard'].append(threading.get_ident()))

    peer = subprocess.Popen([sys.executable, str(PEER), namespace, str(COUNT)], stdout=subprocess.PIPE,
                            text=True)
    triggers = 0
    try:
        deadline = time.monotonic() + 60
        while peer.poll() is None and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if triggers < 10 and len(got['guard']) == triggers:   # from another thread, one at a time
                threading.Thread(target=guard.trigger).start()
                triggers += 1
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        out, _ = peer.communicate(timeout=10)

        stopper = threading.Timer(0.3, lambda: rclpy.try_shutdown(context=context))
        stopper.start()
        started = time.monotonic()
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        stopped_after = time.monotonic() - started
    finally:
        if peer.poll() is None:
            peer.kill()
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown(context=context)

    assert json.loads(out) == {'answer': 42}           # a parameter service, asked by another process
    assert got['plain'] == [f'hello {i}' for i in range(COUNT)]   # each message once, in order
    assert len(got['info']) == COUNT and all(size > 0 and stamp > 0 for size, stamp in got['info'])
    assert got['short'] == ['hello 0', 'hello 1', 'hello 2']      # destroyed in its own callback
    assert len(got['guard']) == triggers == 10
    assert set(got['guard']) == {threading.get_ident()}           # callbacks run in the spinning thread
    assert len(got['timer']) >= 10
    assert stopped_after < 2.0                          # shutdown ends spin()


def test_the_executor_is_chosen_by_environment_and_a_bad_choice_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from autodice_ros.errors import AutodiceError
    from autodice_ros.executor import EXECUTOR_VAR, DirectExecutor, make_executor

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        monkeypatch.delenv(EXECUTOR_VAR, raising=False)
        assert type(make_executor(context=context)) is SingleThreadedExecutor
        monkeypatch.setenv(EXECUTOR_VAR, 'direct')
        assert type(make_executor(context=context)) is DirectExecutor
        monkeypatch.setenv(EXECUTOR_VAR, 'events')
        with pytest.raises(AutodiceError, match="AUTODICE_EXECUTOR='events'"):
            make_executor(context=context)
    finally:
        rclpy.try_shutdown(context=context)
