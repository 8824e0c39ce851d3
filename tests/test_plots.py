"""Pictures: the labelled attention heat maps of validation and the BLEU-against-time plot tool."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from s2s import plots

ROOT = Path(__file__).resolve().parents[1]


def _labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


def test_attention_figure_labels_both_axes_with_the_pieces():
    weights = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1]])
    fig = plots.attention_figure(weights, ["\u2581ein", "\u2581Hund", "</s>"],
                                 ["\u2581a", "</s>"], "step 7")
    ax = fig.axes[0]
    assert _labels(ax.xaxis) == ["\u2581ein", "\u2581Hund", "</s>"]
    assert _labels(ax.yaxis) == ["\u2581a", "</s>"]
    assert ax.get_xlabel() == "source pieces" and ax.get_title() == "step 7"
    assert len(fig.axes) == 2  # the heat map and its colour bar
    picture = plots.rgb(fig)
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    # a colour map, not a grey matrix: some pixels have unequal channels
    assert (picture[..., 0] != picture[..., 2]).any()


def test_attention_figure_thins_labels_of_long_sides_and_checks_shapes():
    n = 3 * plots.MAX_LABELS
    fig = plots.attention_figure(np.full((2, n), 1.0 / n), [f"p{i}" for i in range(n)],
                                 ["a", "b"])
    shown = _labels(fig.axes[0].xaxis)
    assert len(shown) <= plots.MAX_LABELS and shown[:2] == ["p0", "p3"]
    with pytest.raises(ValueError, match="do not match"):
        plots.attention_figure(np.zeros((2, 3)), ["a", "b"], ["x", "y"])


def test_validation_pictures_are_labelled_with_the_pairs_pieces(toy_run, monkeypatch):
    from s2s.training.validation import attention_picture
    from s2s.translate import Translator

    tr = Translator.from_run(toy_run)
    src_ids, tgt_ids = tr.tokenizer.encode_src(["a b c"])[0], tr.tokenizer.encode_tgt(["c b a"])[0]
    captured = {}
    real = plots.attention_figure

    def spy(weights, src, tgt, title=""):
        captured.update(weights=weights, src=src, tgt=tgt)
        return real(weights, src, tgt, title)

    monkeypatch.setattr(plots, "attention_figure", spy)
    picture = attention_picture(tr.model, tr.tokenizer, {"src_ids": src_ids, "tgt_ids": tgt_ids}, 5)
    assert captured["src"] == tr.tokenizer.src.pieces(src_ids)
    assert captured["tgt"] == tr.tokenizer.tgt.pieces(tgt_ids) + ["</s>"]
    assert captured["weights"].shape == (len(tgt_ids) + 1, len(src_ids))
    np.testing.assert_allclose(captured["weights"].sum(1), 1.0, atol=1e-5)  # rows: distributions
    assert picture.ndim == 3 and picture.shape[2] == 3


def _s2s_run(path: Path, points: list[tuple[int, float, float]]) -> Path:
    path.mkdir()
    with open(path / "train_log.jsonl", "w") as f:
        for step, elapsed, bleu in points:
            f.write(json.dumps({"step": step, "train/loss": 3.0, "elapsed_s": elapsed - 1}) + "\n")
            f.write(json.dumps({"step": step, "val/bleu": bleu, "elapsed_s": elapsed}) + "\n")
    return path


def test_plot_tool_reads_s2s_runs_joey_logs_and_tables(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import plot_bleu
    finally:
        sys.path.pop(0)
    run = _s2s_run(tmp_path / "run", [(100, 60.0, 5.0), (200, 120.0, 9.5)])
    assert plot_bleu.read_curve(run) == ([1.0, 2.0], [5.0, 9.5])
    joey = tmp_path / "train.log"
    joey.write_text(
        "2026-11-23 12:00:00,000 - INFO - joeynmt.training - Train stats:\n"
        "2026-11-23 12:05:00,500 - INFO - joeynmt.training - Evaluation result (greedy) "
        "bleu:   7.25, loss:  40.1, ppl:  30.3, duration: 10.1s\n"
        "2026-11-23 12:10:00,000 - INFO - joeynmt.training - Evaluation result (greedy) "
        "bleu:   9.10, loss:  38.0, ppl:  29.0, duration: 10.0s\n")
    xs, ys = plot_bleu.read_curve(joey)
    assert ys == [7.25, 9.10] and xs == pytest.approx([5.0 + 0.5 / 60, 10.0])
    table = tmp_path / "onmt.tsv"
    table.write_text("# seconds\tbleu\n300\t12.5\n600\t20.0\n")
    assert plot_bleu.read_curve(table) == ([5.0, 10.0], [12.5, 20.0])
    bad = tmp_path / "bad.tsv"
    bad.write_text("300\tnot-a-number\n")
    with pytest.raises(SystemExit, match="bad.tsv line 1"):
        plot_bleu.read_curve(bad)


def test_plot_tool_writes_a_png(tmp_path):
    run = _s2s_run(tmp_path / "run", [(100, 60.0, 5.0), (200, 120.0, 9.5)])
    out = tmp_path / "bleu.png"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_bleu.py"), "-o", str(out),
                           f"s2s={run}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_bleu.py"), "-o", str(out),
                           f"x={tmp_path / 'missing'}"], capture_output=True, text=True)
    assert proc.returncode != 0 and "missing" in proc.stderr and "Traceback" not in proc.stderr


def test_ablation_report_compares_variants_on_one_cpu_kind(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import ablation
    finally:
        sys.path.pop(0)
    rows = [("baseline", 1, "avx2", 38.0), ("baseline", 2, "avx2", 39.0),
            ("word_dropout", 1, "avx2", 39.5), ("word_dropout", 2, "avx2", 40.5),
            ("word_dropout", 1, "avx512f", 30.0)]
    for variant, seed, cpu, bleu in rows:
        run = tmp_path / f"{variant}-s{seed}-{cpu}"
        run.mkdir()
        (run / "result.json").write_text(json.dumps({
            "variant": variant, "seed": seed, "cpu": cpu, "steps": 1000,
            "bleu_beam5": bleu, "bleu_beam1": bleu - 2}))
    table = ablation.report(tmp_path)
    avx2 = table.split("CPU: avx512f")[0]
    assert "| baseline | the 15-minute recipe as shipped | 2 | 1000 | 38.50 ± 0.50 |  |" in avx2
    assert "| word_dropout | word dropout 0.1 | 2 | 1000 | 40.00 ± 0.50 | +1.50 |" in avx2
    other = table.split("CPU: avx512f")[1]
    assert "| word_dropout | word dropout 0.1 | 1 | 1000 | 30.00 |  |" in other  # no baseline
    with pytest.raises(SystemExit, match="no finished runs"):
        ablation.report(tmp_path / "empty")
