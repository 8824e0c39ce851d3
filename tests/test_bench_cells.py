"""tools/bench_cells.py runs and reports both sides of a case (tiny sizes; no timing
asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_cells.py"


def test_sequence_case_reports_both_sides():
    done = subprocess.run([sys.executable, str(TOOL), "--case", "sequence", "--repeats", "1",
                           "--sequence-hidden", "64", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert line["case"] == "sequence_B64_T20_I256_H64_fwd_bwd"
    assert line["cell_ms"] > 0 and line["torch_LSTM_ms"] > 0 and line["speedup"] > 0
    assert line["cpu"] and line["gemm"] in ("onednn", "torch")
    assert line["fused_products"] in ("avx512", "avx2", "gemm")
