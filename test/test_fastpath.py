"""The same-board fast path: shared-memory slots behind TensorPublisher/TensorSubscriber.

Slot mechanics are tested directly (no ROS); the transport with real processes over real DDS;
the in-process hand-off with two nodes in this process.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from autodice_ros import fastpath

PEER = Path(__file__).parent / 'peers' / 'fastpath_peer.py'


# -- slots without ROS --------------------------------------------------------------------------

def test_a_slot_holds_bit_identical_tensors_and_a_rewrite_is_detected(tmp_path: Path) -> None:
    ring, reader = fastpath.SlotRing(2, tmp_path), fastpath.SlotReader(tmp_path)
    value = np.arange(12, dtype='>i4').reshape(3, 4)[:, ::2]     # big-endian, not contiguous
    first = ring.write([('a', value), ('b', np.array(True))])
    assert first is not None and first.sequence % 2 == 0
    assert [p.offset % fastpath.ALIGN for p in first.placements] == [0, 0]
    data = reader.lease(first.segment, first.sequence)
    a = data[:value.nbytes].view('<i4').reshape(value.shape)
    assert np.array_equal(a, value) and not data.flags.writeable
    del a, data                                                   # lease released
    second = ring.write([('a', value)])
    third = ring.write([('a', value + 1)])                        # the ring wraps: slot 1 again
    assert second is not None and third is not None and third.segment == first.segment
    with pytest.raises(fastpath.SlotOverwrittenError):
        reader.lease(first.segment, first.sequence)


def test_a_leased_slot_is_never_rewritten(tmp_path: Path) -> None:
    ring, reader = fastpath.SlotRing(2, tmp_path), fastpath.SlotReader(tmp_path)
    first = ring.write([('x', np.zeros(4, np.float32))])
    assert first is not None
    held = reader.lease(first.segment, first.sequence)
    for i in range(1, 5):
        written = ring.write([('x', np.full(4, i, np.float32))])
        assert written is not None and written.segment != first.segment
    assert np.all(held.view(np.float32)[:4] == 0)
    other = reader.lease(written.segment, written.sequence)       # now both slots are leased
    assert ring.write([('x', np.ones(4, np.float32))]) is None    # so the writer has nowhere to go
    del held, other
    assert ring.write([('x', np.ones(4, np.float32))]) is not None


def test_a_reader_waits_for_a_writer_still_copying_the_named_frame(tmp_path: Path) -> None:
    # the publisher sends the descriptor between claim and fill, so it can arrive mid-copy
    ring, reader = fastpath.SlotRing(1, tmp_path), fastpath.SlotReader(tmp_path)
    value = np.arange(1000, dtype=np.float32)
    arrays = [('x', value)]
    claim = ring.claim(fastpath.layout(arrays))
    assert claim is not None and claim.written.sequence % 2 == 0
    with pytest.raises(fastpath.SlotOverwrittenError, match='did not finish'):
        reader.lease(claim.written.segment, claim.written.sequence, wait=0.05)
    filler = threading.Timer(0.1, ring.fill, (claim, arrays))
    filler.start()
    start = time.monotonic()
    data = reader.lease(claim.written.segment, claim.written.sequence)
    assert time.monotonic() - start >= 0.05
    assert np.array_equal(data[:value.nbytes].view(np.float32), value)
    filler.join()


def test_a_reader_does_not_wait_for_a_rewrite_with_another_frame(tmp_path: Path) -> None:
    ring, reader = fastpath.SlotRing(1, tmp_path), fastpath.SlotReader(tmp_path)
    arrays = [('x', np.zeros(4, np.float32))]
    old = ring.write(arrays)
    claim = ring.claim(fastpath.layout(arrays))                   # the next frame, same slot
    assert old is not None and claim is not None and claim.written.segment == old.segment
    start = time.monotonic()
    with pytest.raises(fastpath.SlotOverwrittenError, match='being rewritten'):
        reader.lease(old.segment, old.sequence, wait=5.0)
    assert time.monotonic() - start < 1.0
    ring.fill(claim, arrays)


def test_a_failed_fill_never_completes_the_frame_its_descriptor_names(tmp_path: Path) -> None:
    ring, reader = fastpath.SlotRing(1, tmp_path), fastpath.SlotReader(tmp_path)
    arrays = [('x', np.zeros(4, np.float32))]
    claim = ring.claim(fastpath.layout(arrays))
    assert claim is not None
    with pytest.raises(ValueError):
        ring.fill(claim, [])                                      # fewer arrays than the layout
    with pytest.raises(fastpath.SlotOverwrittenError):
        reader.lease(claim.written.segment, claim.written.sequence, wait=0.05)
    after = ring.write(arrays)                                    # the slot is usable again
    assert after is not None and after.sequence % 2 == 0 and after.sequence > claim.written.sequence
    assert reader.lease(after.segment, after.sequence) is not None


def test_another_process_never_sees_a_sequence_number_being_written(tmp_path: Path) -> None:
    """A reader polling the sequence while the writer claims and fills sees only the old or the
    new number (never a half-written one, which would drop a good frame as overwritten)."""
    ring = fastpath.SlotRing(1, tmp_path)
    arrays = [('x', np.zeros(1, np.uint8))]
    first = ring.write(arrays)
    assert first is not None
    reader = fastpath.SlotReader(tmp_path)._mapping(first.segment)
    child = os.fork()
    if child == 0:                      # the reader: any 0 (the slot never holds 0 again) fails
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            for _ in range(1000):
                if reader.sequence() == 0:
                    os._exit(1)
        os._exit(0)
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert ring.write(arrays) is not None
    finally:
        _, status = os.waitpid(child, 0)
        ring.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_bigger_frame_gets_a_bigger_segment_and_close_unlinks(tmp_path: Path) -> None:
    ring = fastpath.SlotRing(1, tmp_path)
    small = ring.write([('x', np.zeros(10, np.uint8))])
    big = ring.write([('x', np.zeros(3 * fastpath.GRANULE, np.uint8))])
    assert small is not None and big is not None and small.segment != big.segment
    assert sorted(os.listdir(tmp_path)) == [big.segment]
    ring.close()
    assert os.listdir(tmp_path) == []


def test_the_reaper_removes_segments_of_dead_owners_only(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])
    try:
        start = fastpath._start_time(child.pid)
        pidns = fastpath._ns_inode('pid')
        dead_name = f'autodice_{child.pid}_{start}_{pidns}_0'
        reused_name = f'autodice_{os.getpid()}_1_{pidns}_0'          # our pid, another start time
        ring = fastpath.SlotRing(1, tmp_path)
        mine = ring.write([('x', np.zeros(4, np.uint8))])
        assert mine is not None
        for name in (dead_name, reused_name, 'autodice_unrelated'):
            (tmp_path / name).write_bytes(b'')
        assert fastpath.reap(tmp_path) == [reused_name]            # the child is still alive
    finally:
        child.kill()
        child.wait()
    assert fastpath.reap(tmp_path) == [dead_name]
    assert sorted(os.listdir(tmp_path)) == sorted([mine.segment, 'autodice_unrelated'])


def test_a_descriptor_pointing_outside_its_slot_is_refused(tmp_path: Path) -> None:
    from autodice_msgs.msg import TensorListRef, TensorRef
    from autodice_ros.codec import decode_ref
    from autodice_ros.errors import TensorError
    from autodice_ros.manifest import TensorEntry

    ring, reader = fastpath.SlotRing(1, tmp_path), fastpath.SlotReader(tmp_path)
    written = ring.write([('x', np.zeros((2, 3), np.float32))])
    assert written is not None
    data = reader.lease(written.segment, written.sequence)

    def ref(offset: int, shape: tuple[int, ...] = (2, 3)) -> TensorListRef:
        return TensorListRef(segment=written.segment, sequence=written.sequence,
                             tensors=[TensorRef(name='x', dtype=1, shape=list(shape), offset=offset)])

    assert decode_ref(ref(0), data).tensors['x'].shape == (2, 3)
    with pytest.raises(TensorError, match='field offset'):
        decode_ref(ref(data.size - 8), data)
    with pytest.raises(TensorError, match='field offset'):
        decode_ref(ref(2), data)                                   # misaligned float32
    with pytest.raises(TensorError, match='field shape'):
        decode_ref(ref(0, (6,)), data, [TensorEntry('x', 'float32', (2, 3), 't')])


def test_host_identity_names_boot_host_and_namespaces() -> None:
    identity = fastpath.host_identity()
    assert Path('/proc/sys/kernel/random/boot_id').read_text().strip() in identity
    assert 'mnt:' in identity and 'net:' in identity


# -- across processes, over real DDS ----------------------------------------------------------------

@dataclass
class Run:
    out: Path
    pub: dict
    sub: dict

    def received(self) -> dict[str, np.ndarray]:
        with np.load(self.out / 'received.npz') as data:
            return dict(data)


def peer(role: str, topic: str, out: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(PEER), role, topic, str(out), *args])


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def exchange(out: Path, topic: str, pub_fast: str = 'on', sub_fast: str = 'on', count: int = 3,
             slots: int = 0, period: float = 0.1, delay: float = 0.0, plain: bool = False,
             sub_prefix: tuple[str, ...] = ()) -> Run:
    """One publisher, one TensorSubscriber (and an ordinary subscriber): the reports of both."""
    subs = [subprocess.Popen([*sub_prefix, sys.executable, str(PEER), 'sub', topic, str(out), sub_fast,
                              str(count), str(delay)])]
    if plain:
        subs.append(peer('plain', topic, out, str(count)))
    pub = peer('pub', topic, out, pub_fast, str(slots), str(count), str(period), str(len(subs)))
    try:
        for proc in subs:
            assert proc.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while not (out / 'pub.json').exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(pub, *subs)
    assert pub.returncode == 0
    return Run(out, json.loads((out / 'pub.json').read_text()), json.loads((out / 'sub.json').read_text()))


def awkward_tensors() -> dict[str, np.ndarray]:
    act = np.random.default_rng(3).standard_normal((1, 256, 56, 56)).astype(np.float32)  # 3.2 MB
    act.reshape(-1)[:4] = [np.nan, -0.0, np.inf, np.finfo(np.float32).tiny]
    return {'activation': act, 'half': np.arange(7, dtype=np.float16), 'ids': np.array([-1, 2**40]),
            'mask': np.array([[True, False]]), 'scalar': np.array(7, np.uint8),
            'empty': np.zeros((0, 3), np.float32)}


@pytest.fixture(scope='module')
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Fast path on at both ends, plus an ordinary TensorList subscriber on the same topic."""
    assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    out = tmp_path_factory.mktemp('shared')
    np.savez(out / 'sent.npz', **awkward_tensors())
    return exchange(out, f'fastpath_shared_{os.getpid()}', plain=True)


def test_tensors_cross_processes_through_shared_memory_bit_identical(shared_run: Run) -> None:
    sent, got = awkward_tensors(), shared_run.received()
    assert shared_run.sub['received'] == {'shm': 3} and shared_run.sub['path'] == 'shm'
    assert list(got) == list(sent)
    for name, value in sent.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        assert got[name].tobytes() == value.tobytes(), name
    assert shared_run.sub['header'] == [1_764_115_200, 123_456_789, 'camera_optical']
    assert shared_run.sub['frames'] == [0, 1, 2]
    assert shared_run.sub['writeable'] == [False] * len(sent)    # views of the publisher's slot
    assert not shared_run.sub['errors'] and not shared_run.sub['drops']


def test_an_ordinary_subscriber_still_gets_full_tensor_lists(shared_run: Run) -> None:
    with np.load(shared_run.out / 'plain.npz') as plain:
        got = dict(plain)
    for name, value in awkward_tensors().items():
        assert got[name].tobytes() == value.tobytes(), name
    assert json.loads((shared_run.out / 'plain.json').read_text()) == {'frames': [0, 1, 2]}
    assert shared_run.pub['sent'] == {'payload': 3, 'shm': 3}
    assert shared_run.pub['failures'] == 0


@pytest.mark.parametrize(('pub_fast', 'sub_fast'), [('off', 'on'), ('on', 'off')])
def test_with_the_fast_path_off_at_either_end_tensor_lists_carry_the_frames(
        tmp_path: Path, pub_fast: str, sub_fast: str) -> None:
    run = exchange(tmp_path, f'fastpath_off_{pub_fast}_{os.getpid()}', pub_fast, sub_fast)
    assert run.sub['received'] == {'payload': 3} and run.sub['wrong'] == []
    assert run.pub['sent'] == {'payload': 3}
    assert run.sub['writeable'] == [False]      # views of the received bytes, on every path


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which('unshare') is None,
                    reason='needs root and unshare for a mount namespace')
def test_a_reader_on_another_host_falls_back_to_tensor_lists(tmp_path: Path) -> None:
    # a mount namespace of its own gives the subscriber another host identity (a container on
    # this machine, or another board, as far as the fast path is concerned)
    private = ('unshare', '--mount', '--propagation', 'private')
    run = exchange(tmp_path, f'fastpath_foreign_{os.getpid()}', count=30, period=0.05, sub_prefix=private)
    assert run.sub['received'].get('payload', 0) >= 1 and 'shm' not in run.sub['received']
    assert run.sub['wrong'] == [] and run.sub['path'] == 'payload'
    assert run.pub['sent'].get('payload', 0) >= 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which('unshare') is None,
                    reason='needs root and unshare for a mount namespace')
def test_a_reader_told_its_publisher_is_remote_loses_not_even_the_first_frame(tmp_path: Path) -> None:
    # payload_first (the plan's remote_boards): TensorLists from the start, so the first frame,
    # whose descriptor names a slot this reader cannot map, still arrives
    private = ('unshare', '--mount', '--propagation', 'private')
    run = exchange(tmp_path, f'fastpath_remote_{os.getpid()}', sub_fast='first', count=30, period=0.05,
                   sub_prefix=private)
    assert run.sub['frames'] == list(range(30)) and run.sub['received'] == {'payload': 30}
    assert run.sub['wrong'] == [] and not run.sub['drops'] and run.sub['path'] == 'payload'


def test_a_reader_told_its_publisher_is_remote_takes_shared_memory_when_it_is_local(tmp_path: Path) -> None:
    # the first descriptor shows the publisher on this host: the TensorList topic goes
    run = exchange(tmp_path, f'fastpath_first_{os.getpid()}', sub_fast='first', count=6, period=0.1)
    assert run.sub['frames'] == [0, 1, 2, 3, 4, 5] and run.sub['path'] == 'shm'
    assert run.sub['received'].get('shm', 0) >= 4 and not run.sub['drops'] and run.sub['wrong'] == []
    assert run.pub['sent'].get('payload', 0) <= 2       # TensorLists stop once the reader switched


def test_a_slow_reader_drops_overwritten_frames_and_never_sees_wrong_data(tmp_path: Path) -> None:
    # two slots; the reader holds frame 0's arrays to the end, so only one slot keeps turning
    run = exchange(tmp_path, f'fastpath_slow_{os.getpid()}', count=12, slots=2, period=0.01, delay=0.3)
    assert run.sub['wrong'] == []
    assert run.sub['held_intact'] and run.sub['frames'][0] == 0
    assert run.sub['drops'].get('overwritten', 0) >= 3
    assert all('FrameDroppedError' in e for e in run.sub['errors'])
    assert run.sub['received']['shm'] == len(run.sub['frames'])


def test_frames_written_into_borrowed_slots_arrive_intact_and_are_not_copied(tmp_path: Path) -> None:
    # the first frame lays the slots out (copied); from then on the publisher lends a slot, the
    # frame is written into it, and publish only sends the descriptor. Frames 5 and 6 are smaller:
    # the slot lent for 5 (laid out like 4) goes back unused and 5 is copied, 6 is written in
    # place again, 7 is copied. A reader holds frame 0 to the end: lent slots are never its slot
    run = exchange(tmp_path, f'fastpath_lend_{os.getpid()}', pub_fast='lend', count=12, slots=3,
                   period=0.05)
    assert run.sub['frames'] == list(range(12)) and run.sub['received'] == {'shm': 12}
    assert run.sub['wrong'] == [] and run.sub['held_intact'] and not run.sub['drops']
    assert run.pub['in_place'] == 12 - 3 and run.pub['sent'] == {'shm': 12}
    assert run.pub['failures'] == 0


def test_segments_of_a_killed_publisher_are_reaped_by_the_next_one(tmp_path: Path) -> None:
    topic = f'fastpath_kill_{os.getpid()}'
    sub = peer('sub', topic, tmp_path, 'on', '1', '0')
    pub = peer('pub', topic, tmp_path, 'on', '0', '3', '0.05', '1')
    try:
        assert sub.wait(timeout=90) == 0
        deadline = time.monotonic() + 30
        while not (tmp_path / 'pub.json').exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = fastpath.own_segments(pid=pub.pid)
        assert left, 'the publisher should own slots while it runs'
        pub.send_signal(signal.SIGKILL)
        pub.wait()
        assert fastpath.own_segments(pid=pub.pid) == left        # a crash leaves them behind
        (tmp_path / 'next').mkdir()
        nxt = peer('pub', f'{topic}_next', tmp_path / 'next', 'on', '0', '0', '0', '0')
        deadline = time.monotonic() + 30
        while fastpath.own_segments(pid=pub.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop(nxt)
        assert fastpath.own_segments(pid=pub.pid) == []
        assert fastpath.own_segments(pid=nxt.pid) == []           # a clean exit unlinks its own
    finally:
        stop(pub, sub)


# -- inside one process ------------------------------------------------------------------------------

@pytest.fixture
def two_nodes() -> Iterator[tuple[object, object, object]]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    executor = SingleThreadedExecutor()
    nodes = [rclpy.create_node(name) for name in ('handoff_pub', 'handoff_sub')]
    for node in nodes:
        executor.add_node(node)
    try:
        yield executor, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


def test_in_one_process_the_subscriber_gets_the_publishers_arrays(two_nodes: tuple) -> None:
    from std_msgs.msg import Header

    from autodice_ros.codec import TensorPublisher, TensorSubscriber, qos_profile

    executor, pub_node, sub_node = two_nodes
    topic = f'handoff_{os.getpid()}'
    got = []
    sub = TensorSubscriber(sub_node, topic, qos_profile(), None, lambda t, f: got.append(f), print)
    pub = TensorPublisher(pub_node, topic, qos_profile())
    assert sub.path == 'local' and pub.get_subscription_count() >= 1
    value = np.random.default_rng(0).standard_normal((1, 64, 32, 32)).astype(np.float32)
    for frame in range(3):
        assert pub.publish(Header(frame_id='cam'), frame, {'x': value})
        executor.spin_once(timeout_sec=1.0)
    assert [f.frame for f in got] == [0, 1, 2]
    assert np.shares_memory(got[0].tensors['x'], value) and not got[0].tensors['x'].flags.writeable
    assert pub.sent == {'local': 3}                     # no copy, nothing over DDS
    assert fastpath.own_segments() == []
    pub.destroy(pub_node)                               # the local publisher goes: DDS again
    assert sub.path == 'shm'
