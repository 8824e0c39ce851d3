"""`s2s export`: the encoder and one decoder step as ONNX graphs; `s2s translate DIR` runs them
with onnxruntime through s2s's own search and gives the PyTorch model's lines, for every
built-in cell."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from s2s import config  # noqa: E402
from s2s.errors import ConfigError  # noqa: E402
from s2s.translate import Translator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LINES = ["a b c", "", "d e f g h", "l k j i h g f e d c b a", "a"]


STEPWISE = {"ln-lstm", "ln-gru"}  # StepCell loops: exported step by step


@pytest.fixture(scope="module", params=["lstm", "gru", "fused-lstm", "ln-lstm", "ln-gru"])
def exported(request, toy_run, toy_data, tmp_path_factory):
    from s2s.export import export
    from s2s.training import train

    run = toy_run
    if request.param != "lstm":  # a short run of each other built-in cell
        run = tmp_path_factory.mktemp(f"run_{request.param}")
        train(config.load(ROOT / "configs" / "toy.yaml", [
            f"data.dir={toy_data}", f"model.cell={request.param}", "train.max_steps=150",
            "train.validate_every=150", "train.checkpoint_every=150"]), run, console=False)
    out = tmp_path_factory.mktemp(f"exported_{request.param}")
    manifest = export(run, out)
    return run, out, manifest


@pytest.mark.parametrize("options", [dict(beam=1), dict(beam=5),
                                     dict(beam=4, nbest=3, length_penalty="gnmt"),
                                     dict(beam=3, shortlist=3, shortlist_frequent=4)])
def test_the_exported_model_gives_pytorch_s_lines(exported, options):
    run, out, _ = exported
    torch_model, onnx_model = Translator.from_run(run, device="cpu"), Translator.from_run(out)
    if options.get("shortlist"):
        onnx_model._lexicon = torch_model.lexicon()  # the export carries no lexicon yet
    a = torch_model.search(LINES, precision="fp32", **options)
    b = onnx_model.search(LINES, **options)
    assert [[h["translation"] for h in items] for items in a] == \
        [[h["translation"] for h in items] for items in b]
    for items_a, items_b in zip(a, b):
        for x, y in zip(items_a, items_b):
            assert x["score"] == pytest.approx(y["score"], abs=1e-4)


def test_the_export_folder_and_its_manifest(exported):
    run, out, manifest = exported
    saved = json.loads((out / "manifest.json").read_text())
    if saved["cell"] in STEPWISE:
        graphs = {"embed.onnx", "encoder-0-0.onnx", "encoder-0-1.onnx", "finish.onnx"}
        assert saved["encoder"] == "steps" and saved["encoder_parts"] == saved["per_layer"]
    else:
        graphs = {"encoder.onnx"}
        assert saved["encoder"] == "graph"
    names = {p.name for p in out.iterdir()}
    assert names >= {*graphs, "step.onnx", "manifest.json", "spm.model"}
    assert {n for n in names if n.endswith(".onnx")} == {*graphs, "step.onnx"}
    assert saved["cell"] == manifest["cell"] and saved["per_layer"] in (1, 2)
    assert saved["src_vocab_size"] > 4 and "torch" in saved["versions"]


def test_translate_cli_runs_an_export_and_refuses_other_precisions(exported):
    run, out, _ = exported
    proc = subprocess.run([sys.executable, "-m", "s2s", "translate", str(out), "--beam", "5"],
                          input="\n".join(LINES).encode() + b"\n", capture_output=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == Translator.from_run(run, device="cpu").translate(
        LINES, beam=5, precision="fp32")
    with pytest.raises(ConfigError, match="runs in fp32 under onnxruntime"):
        Translator.from_run(out).translate(["a b"], precision="int8")


def _train(cell: str, data: Path, run: Path) -> Path:
    from s2s.training import train

    train(config.load(ROOT / "configs" / "toy.yaml", [
        f"data.dir={data}", f"model.cell={cell}", "train.max_steps=20",
        "train.validate_every=20", "train.checkpoint_every=20", "train.valid_bleu=false",
        "train.metric=loss"]), run, console=False)
    return run


def test_a_plugin_cell_whose_step_traces_is_exported_step_by_step(toy_data, tmp_path):
    """The example plugin (a StepCell: its forward is a Python loop over time) exports through
    its step; the exported model gives the PyTorch model's lines."""
    pytest.importorskip("s2s_lnlstm")
    from s2s.export import export

    run = _train("lnlstm", toy_data, tmp_path / "run")
    assert export(run, tmp_path / "out")["encoder"] == "steps"
    a = Translator.from_run(run, device="cpu").search(LINES, beam=3, precision="fp32")
    b = Translator.from_run(tmp_path / "out").search(LINES, beam=3)
    assert [[h["translation"] for h in x] for x in a] == [[h["translation"] for h in x] for x in b]


CONSTANT_STEP = """
import torch
from torch import nn
from s2s.cells import StepCell


class ListCell(StepCell):
    \"\"\"h' = tanh(W x + U h), computed from Python lists: traces to the trace's values.\"\"\"

    def __init__(self, input_size, hidden_size):
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.w = nn.Linear(input_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def initial_state(self, batch_size, device, dtype):
        return (torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype),)

    def step(self, x, state):
        x = torch.tensor(x.tolist(), dtype=x.dtype)
        h = torch.tanh(self.w(x) + self.u(state[0]))
        return h, (h,)
"""


def test_a_cell_whose_step_does_not_trace_is_refused_by_name(toy_data, tmp_path, install):
    """A step that turns tensors into Python numbers traces to the trace's own values; the
    export checks the graphs at other shapes, names the cell and leaves no graphs behind."""
    from s2s.errors import PluginError
    from s2s.export import export

    install("listcells", "0.1", {"listcell": (CONSTANT_STEP, "ListCell")})
    run = _train("listcell", toy_data, tmp_path / "run")
    with pytest.raises(PluginError, match="cell 'listcell' does not export to ONNX with "
                                          "dynamic lengths"):
        export(run, tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.onnx"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_an_unwritable_folder_and_a_damaged_manifest_are_clear_errors(exported, tmp_path):
    import shutil

    from s2s.errors import CheckpointError
    from s2s.export import export

    run, out, _ = exported
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create the export folder"):
        export(run, tmp_path / "file" / "sub")
    damaged = tmp_path / "damaged"
    shutil.copytree(out, damaged)
    for text in ("{not json", "[1, 2]", '{"per_layer": 1}'):
        (damaged / "manifest.json").write_text(text)
        with pytest.raises(CheckpointError, match="manifest.json"):
            Translator.from_run(damaged)
