"""The example third-party plugin distribution plugins/s2s-lnlstm, installed like any other
package (README's set-up, .ci/run): a model trains and translates with its cell end to end.
And a broken installed plugin: listed as broken, a clear error when asked for, no effect on
runs that use other cells."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import synthetic
from click.testing import CliRunner
from conftest import ROOT

from s2s.cells import registry
from s2s.cells.lstm import LSTMCell
from s2s.cli import main

TOY = ROOT / "configs" / "toy.yaml"


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.slow
def test_train_and_translate_with_the_plugin_cell(toy_data, tmp_path):
    lnlstm = pytest.importorskip("s2s_lnlstm", reason="pip install -e plugins/s2s-lnlstm")
    from s2s import config
    from s2s.train import train

    run = tmp_path / "run"
    cfg = config.load(TOY, [f"data.dir={toy_data}", "model.cell=lnlstm",
                            "model.cell_options.eps=1e-5", "train.max_steps=150"])
    result = train(cfg, run, console=False)
    assert result["step"] == 150 and math.isfinite(result["val/loss"]), result
    cls, entry = registry.load("lnlstm")
    assert cls is lnlstm.LayerNormLSTMCell and entry.dist == "s2s-lnlstm"

    lines = synthetic.sentences(5, seed=11) + ["", "l k j"]
    done = subprocess.run([sys.executable, "-m", "s2s", "translate", str(run)],
                          input="\n".join(lines).encode() + b"\n", capture_output=True,
                          timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out[:-1]) == len(lines), out
    assert out[len(lines) - 2] == ""  # an empty line translates to an empty line


RAISES = "raise ImportError('s2s_badcell needs libfoo.so.3, which is not installed')\n"


def test_a_plugin_that_fails_to_import_breaks_only_itself(install, tmp_path, toy_data):
    install("s2s-badcell", "2.0", {"badcell": (RAISES, "BadCell")})

    result = cli("plugins")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "s2s-badcell" in rows["badcell"] and "2.0" in rows["badcell"]
    assert "broken: ImportError: s2s_badcell needs libfoo.so.3" in rows["badcell"]
    assert rows["lstm"].rstrip().endswith(" ok") and rows["gru"].rstrip().endswith(" ok")
    assert cli("plugins", "--check").exit_code == 1  # --check fails on a broken cell

    run_dir = tmp_path / "run"
    result = cli("train", TOY, "--run-dir", run_dir, "--quiet", "--set", f"data.dir={toy_data}",
                 "--set", "model.cell=badcell")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    for needle in ("'badcell'", "s2s-badcell 2.0", "failed to load", "libfoo.so.3"):
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in result.stderr
    assert not (run_dir / "checkpoints").exists()

    # runs using other cells are unaffected
    assert registry.load("lstm")[0] is LSTMCell
    assert registry.build("lstm", 3, 4, {}).hidden_size == 4
