"""Shared test set-up: DDS stays on this machine, each test session gets its own domain."""
from __future__ import annotations

import os
import random

import pytest

# Never let a test's discovery leave this host; a robot keeps the ROS default (SUBNET).
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# Concurrent test sessions on one machine must not see each other's topics.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: takes more than about 20 s')
    config.addinivalue_line('markers', 'netns: needs root and network namespaces')
