"""``bench faults`` bookkeeping (no processes): frames lost per outage, the suite's summary rows."""
from __future__ import annotations

import numpy as np

from autodice_ros.bench.faults import Outage, lost_per_outage, outage_row, summary_line
from autodice_ros.bench.suite import summary
from autodice_ros.driver import Received


def received(stamp: tuple[int, int], sent_ns: int, received_ns: int) -> Received:
    return Received(0, stamp, None, {'y': np.zeros(1)}, received_ns, sent_ns)


def test_lost_frames_are_counted_up_to_each_outages_resume_frame() -> None:
    sent = [(i, 0) for i in range(12)]
    # frames 2-4 lost in the first outage (resumed by 5), 8-9 in the second (resumed by 10)
    outputs = {k: received(k, 0, 0) for k in sent if k[0] not in (2, 3, 4, 8, 9)}
    outages = [Outage(1, 2, outputs[(5, 0)]), Outage(3, 4, outputs[(10, 0)])]
    assert lost_per_outage(outages, sent, outputs) == [3, 2]
    # an outage that never resumed takes every later frame
    assert lost_per_outage([Outage(1, 2, None)], sent, outputs) == [5]


def test_outage_row_times_are_from_kill_to_restart_and_restart_to_first_output() -> None:
    row = outage_row(Outage(1_000_000_000, 1_500_000_000, received((1, 0), 2_000_000_000, 3_000_000_000)), 4)
    assert (row['restart_s'], row['resume_s'], row['resume_frame_sent_s'], row['lost_frames']) == (
        0.5, 1.5, 0.5, 4)
    assert outage_row(Outage(1, 0, None), 9)['resume_s'] is None


def test_summary_rows_give_the_worst_resume_and_mismatches_with_verdicts() -> None:
    report = {'model': 'squeezenet', 'partitions': 3, 'killed_stage': 'stage1', 'kills': 2, 'rate_hz': 5.0,
              'restart_s': [0.05, None], 'resume_s': [1.25, None], 'resume_p50_s': 1.25, 'resume_max_s': None,
              'target_s': 2.0, 'target_met': False, 'frames_lost': 7, 'frames_sent': 40,
              'mismatched_frames': 0, 'compared_frames': 33}
    table = summary({'faults_squeezenet': report}, {}, short=True)
    assert ('| squeezenet K=3 resume after a stage restart, worst of 2 kills (s) | - | <= 2 | NOT met |'
            in table)
    assert '| squeezenet K=3 outputs != unsplit model across restarts | 0 | 0 | met |' in table
    line = summary_line(report)
    assert 'resume 1.25/- s after the restart' in line and 'NOT met' in line and '\n' not in line
