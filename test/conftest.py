"""Shared test set-up: DDS stays on this machine, each test session gets its own domain."""
from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

# Never let a test's discovery leave this host; a robot keeps the ROS default (SUBNET).
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
# Concurrent test sessions on one machine must not see each other's topics.
os.environ.setdefault('ROS_DOMAIN_ID', str(random.SystemRandom().randint(1, 100)))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line('markers', 'slow: takes more than about 20 s')
    config.addinivalue_line('markers', 'netns: needs root and network namespaces')


@pytest.fixture(scope='session')
def zoo_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``zoo_model('vgg19')`` -> path of that zoo model, materialized once per test session."""
    from autodice_ros.graph import zoo

    root = tmp_path_factory.mktemp('zoo')

    def get(name: str) -> Path:
        path = root / f'{name}.onnx'
        if not path.exists():
            zoo.materialize(name).write(path)
        return path
    return get
