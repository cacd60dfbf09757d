"""A board-to-board link pulled mid-stream and plugged back: the pipeline recovers without a
restart; frames of the outage are dropped and counted, never delivered late, never mixed."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pipeline_helpers import needs_netns, split, whole_model

from autodice_ros.boards import Boards, leftovers, load_spec
from autodice_ros.manifest import load_bundle

RATE_HZ = 5.0
FRAMES = 90                # 18 s of camera
DOWN_AFTER_S = 3.0
OUTAGE_S = 4.0
LIFESPAN_S = 0.5          # QoS lifespan: older frames are dropped, not delivered
RECOVERY_S = 6.0           # TCP retransmission backoff after the outage, rediscovery


@needs_netns
def test_link_down_and_up_drops_the_outage_and_recovers_without_restarts(
        tmp_path: Path, zoo_model: Callable[[str], Path]) -> None:
    from autodice_ros.bench.boards import board_watch, connect_driver

    model = zoo_model('squeezenet')
    bundle = split(model, tmp_path / 'bundle', '--boards', '2')
    manifest = load_bundle(bundle).manifest
    instance = f't{os.getpid()}l'
    spec = load_spec(None, manifest.boards, {'cpu': None, 'memory': None, 'link': '1gbit'})
    recorded = tmp_path / 'frames.npz'
    reply: dict[str, Any] = {}
    with Boards(spec, instance=instance) as boards, open(tmp_path / 'nodes.log', 'w') as log:
        procs = boards.start_pipeline(bundle, ['--source', 'none', '--lifespan', str(LIFESPAN_S)],
                                      stdout=log, stderr=log)
        driver = connect_driver(boards, bundle, board_watch(boards, procs), log, record=True)
        assert driver.request(90.0, {'cmd': 'warmup', 'frames': 2, 'interval': 1.0, 'timeout': 60.0})['ok']
        before = driver.request(30.0, {'cmd': 'diagnostics'})
        pids = {board: sorted(boards.pids(board)) for board in manifest.boards}

        def stream() -> None:
            reply.update(driver.request(120.0, {'cmd': 'record', 'frames': FRAMES, 'rate': RATE_HZ,
                                                'path': str(recorded), 'timeout': 10.0}))

        feeder = threading.Thread(target=stream)
        feeder.start()
        time.sleep(DOWN_AFTER_S)
        down_ns = time.time_ns()
        boards.link_down(manifest.boards[1])
        time.sleep(OUTAGE_S)
        boards.link_up(manifest.boards[1])
        up_ns = time.time_ns()
        feeder.join()
        after = driver.request(30.0, {'cmd': 'diagnostics'})
        still = {board: sorted(boards.pids(board)) for board in manifest.boards}
        alive = [proc.poll() is None for proc in procs.values()]
        driver.request(10.0, {'cmd': 'quit'})
    assert leftovers(instance) == ([], [])
    assert all(alive) and still == pids, 'nothing may restart: same processes before and after'
    assert reply['in_order'] and not reply['errors'], reply.get('errors')
    stamps, latency = reply['stamps_ns'], reply['latency_ms']
    lost = [s for s, ms in zip(stamps, latency, strict=True) if ms is None]
    during = [s for s in stamps if down_ns <= s < up_ns]
    print(f'outage {OUTAGE_S:.0f} s: {len(during)} frames sent during it, {len(lost)} lost; '
          f'latency of delivered frames max {max(ms for ms in latency if ms is not None):.0f} ms')
    assert lost, 'frames sent while the link was down cannot all arrive'
    recovered_ns = up_ns + RECOVERY_S * 1e9
    assert all(down_ns - 1e9 <= s <= recovered_ns for s in lost), 'frames lost outside the outage'
    assert all(ms is not None for s, ms in zip(stamps, latency, strict=True) if s > recovered_ns), \
        'the pipeline did not recover after the link came back'
    # not delivered late: nothing of the outage arrives after the link is back (without a
    # lifespan they do, up to the outage plus TCP's backoff later), and nothing waits out a lifespan
    stale = [ms for s, ms in zip(stamps, latency, strict=True)
             if ms is not None and down_ns + 1e9 <= s < up_ns - 1e9]
    assert not stale, f'{len(stale)} frames of the outage were delivered late ({max(stale):.0f} ms)'
    assert max(ms for ms in latency if ms is not None) < 3 * LIFESPAN_S * 1e3
    # counted: the nodes past the link report the gap in frame numbers as upstream drops
    tail = next(name for name in after if name.endswith('/tail'))
    counted = int(after[tail].get('drops.upstream', 0)) - int(before.get(tail, {}).get('drops.upstream', 0))
    assert counted >= len(lost), (counted, len(lost))
    # never mixed: every delivered output equals the single node on its own input
    data = np.load(recorded)
    got = [i for i, ms in enumerate(latency) if ms is not None]
    expected = whole_model(model, [data[f'input_{i}'] for i in got])
    for index, reference in zip(got, expected, strict=True):
        for name, value in reference.items():
            assert np.max(np.abs(data[f'output_{index}_{name}'] - value)) <= 1e-4, (index, name)
