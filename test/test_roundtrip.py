"""A 3.2 MB VGG activation crosses real Fast DDS between two processes, bit for bit."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

PEER = Path(__file__).parent / 'peers' / 'roundtrip_peer.py'


def test_vgg_activation_round_trip_is_bit_identical(tmp_path: Path) -> None:
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    # conv3 output of VGG19: 1 x 256 x 56 x 56 float32 = 3.2 MB, with awkward bit patterns
    value = np.random.default_rng(3).standard_normal((1, 256, 56, 56)).astype(np.float32)
    value.reshape(-1)[:4] = [np.nan, -0.0, np.inf, np.finfo(np.float32).tiny]
    assert value.nbytes == 3_211_264
    np.save(tmp_path / 'sent.npy', value)
    topic = f'roundtrip_{os.getpid()}'
    sub = subprocess.Popen([sys.executable, str(PEER), 'sub', topic, str(tmp_path)])
    pub = subprocess.Popen([sys.executable, str(PEER), 'pub', topic, str(tmp_path / 'sent.npy'),
                            '1764115200', '123456789', '4242'])
    try:
        assert sub.wait(timeout=90) == 0
    finally:
        pub.send_signal(signal.SIGINT)
        pub.wait(timeout=10)
        sub.kill()
    received = np.load(tmp_path / 'received.npy')
    assert received.dtype == np.float32 and received.shape == value.shape
    assert received.tobytes() == value.tobytes()
    meta = json.loads((tmp_path / 'meta.json').read_text())
    assert meta == {'sec': 1764115200, 'nanosec': 123456789, 'frame_id': 'camera_optical',
                    'frame': 4242, 'names': ['activation']}
