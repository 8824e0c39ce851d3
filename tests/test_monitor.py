"""The JSON-lines training log stays valid across a run killed mid-write."""
from __future__ import annotations

import json

from s2s.monitor import Monitor


def test_a_half_written_last_line_is_cut_before_new_records(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1, "train/loss": 2.5}\n{"step": 2, "train/lo')  # killed mid-line
    monitor = Monitor(tmp_path / "tb", jsonl=log, console=False)
    monitor.record({"step": 2, "train/loss": 2.25})
    monitor.close()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [{"step": 1, "train/loss": 2.5}, {"step": 2, "train/loss": 2.25}]


def test_a_complete_log_is_appended_to_unchanged(tmp_path):
    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n')
    monitor = Monitor(tmp_path / "tb", jsonl=log, console=False)
    monitor.record({"step": 2})
    monitor.close()
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
