"""The other process of test_executor: talks to a node spun by DirectExecutor.

NAMESPACE COUNT: wait for a subscriber of NAMESPACE/chatter, publish COUNT std_msgs/String
messages 50 ms apart, then ask the node NAMESPACE/direct for its parameter 'answer' over its
parameter service; print {"answer": value} as JSON.
"""
from __future__ import annotations

import json
import sys
import time

import rclpy
from rcl_interfaces.srv import GetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String


def main(namespace: str, count: int) -> int:
    rclpy.init()
    node = rclpy.create_node('executor_peer', namespace=namespace)
    qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(String, 'chatter', qos)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() < 2 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    for i in range(count):
        pub.publish(String(data=f'hello {i}'))
        rclpy.spin_once(node, timeout_sec=0.05)
    client = node.create_client(GetParameters, f'{namespace}/direct/get_parameters')
    answer = None
    if client.wait_for_service(timeout_sec=10.0):
        future = client.call_async(GetParameters.Request(names=['answer']))
        rclpy.spin_until_future_complete(node, future, timeout_sec=10.0)
        if future.result() is not None:
            answer = future.result().values[0].integer_value
    print(json.dumps({'answer': answer}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
