"""`s2s export RUN -o DIR`: the encoder and one decoder step as ONNX graphs (dynamic batch and
lengths), the SentencePiece model and a manifest; `s2s translate DIR` / `s2s serve DIR` run them
with onnxruntime through s2s's own search, which only sees encode / step / reorder.

- `encoder.onnx`: (src [B, S] int64, lengths [B] int64) -> memory [B, S, H], keys [B, S, H],
  mask [B, S] bool, feed [B, H], then each decoder layer's initial state tensors [B, H]; for
  a cell whose forward loops over time in Python instead `embed.onnx`, `encoder-L-D.onnx`
  (each encoder cell's step) and `finish.onnx` (see `export`).
- `step.onnx`: (tokens [B], memory, keys, mask, feed, states...) -> log_probs [B, V], feed,
  states..., attention [B, S].
- `manifest.json`: the run's config, the state layout, vocabulary sizes, versions.
- `spm.model` (+ `vocab.json`), or `spm.src.model` and `spm.tgt.model`.

Exported with torch.onnx's TorchScript-based exporter (the products through torch's own ops, not
oneDNN's); cells whose `forward` and `step` trace export as they are (the built-ins run torch's
RNN ops, which ONNX's LSTM/GRU ops express with sequence lengths). A cell that cannot be traced
gets a PluginError naming it. A shortlist (`--shortlist`) renormalises the exported full
log-probabilities over its ids, which equals normalising the logits over them.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from s2s.cells.base import StepCell, zeros_state
from s2s.errors import CheckpointError, ConfigError, PluginError
from s2s.model.dropout import Dropout
from s2s.model.encoder import Encoder

MANIFEST = "manifest.json"
FORMAT = 1


def _flat(layers) -> list[Tensor]:
    """A decoder state's layers as one list of tensors (the graphs' inputs and outputs)."""
    return [t for layer in layers for t in layer]


def _layers(flat, per_layer: int) -> tuple:
    """The inverse of _flat: `per_layer` tensors per decoder layer."""
    return tuple(tuple(flat[i:i + per_layer]) for i in range(0, len(flat), per_layer))


class _Encoder(nn.Module):
    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, lengths: Tensor):
        enc, state = self.model.encode(src, lengths)
        return (enc.memory, enc.keys, enc.mask, state.feed, *_flat(state.layers))


class _Step(nn.Module):
    def __init__(self, model, per_layer: int) -> None:
        super().__init__()
        self.model, self.per_layer = model, per_layer

    def forward(self, tokens: Tensor, memory: Tensor, keys: Tensor, mask: Tensor, feed: Tensor,
                *flat: Tensor):
        from s2s.model.seq2seq import DecoderState, EncoderOut

        log_probs, state, weights = self.model.step(tokens, EncoderOut(memory, keys, mask),
                                                    DecoderState(_layers(flat, self.per_layer),
                                                                 feed))
        return (log_probs, state.feed, *_flat(state.layers), weights)


class _CellStep(nn.Module):
    """One encoder cell's step: (x [B, I], state...) -> (h [B, H], state...)."""

    def __init__(self, cell) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: Tensor, *state: Tensor):
        h, new = self.cell.step(x, tuple(state))
        return (h, *new)


class _Finish(nn.Module):
    """(memory [B, S, H], lengths [B], each encoder layer's final state...) -> keys, mask,
    feed and the decoder's initial states: Seq2Seq.encoded."""

    def __init__(self, model, parts: int) -> None:
        super().__init__()
        self.model, self.parts = model, parts

    def forward(self, memory: Tensor, lengths: Tensor, *finals: Tensor):
        enc, state = self.model.encoded(memory, list(_layers(finals, self.parts)), lengths)
        return (enc.keys, enc.mask, state.feed, *_flat(state.layers))


def _onnx(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
          axes: dict[str, dict[int, str]], cell: str) -> None:
    """torch.onnx.export of `module` (eval, no grad, torch's own products); whatever the
    tracer raises becomes a PluginError naming the cell."""
    from s2s.ops import gemm

    try:
        with torch.no_grad(), gemm.use("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes)
    except Exception as exc:  # noqa: BLE001 - whatever the tracer raises: name the cell
        raise PluginError(f"cell '{cell}' cannot be exported to ONNX ({path.name}): "
                          f"{type(exc).__name__}: {_first_line(exc)}"
                          ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""


BATCH = {0: "batch"}
SEQ = {0: "batch", 1: "source"}


def export(run: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Export RUN (a run directory or checkpoint) into OUT_DIR; returns the manifest.

    The encoder is one graph when the cell's whole-sequence forward traces to one that holds
    at every length (the built-in lstm, gru, fused-lstm: torch's RNN ops). A cell whose
    forward is a Python loop over time (a StepCell: ln-lstm, ln-gru, most plugins) is exported
    step by step instead: the embedding, each encoder cell's `step` and the encoder's finish
    as graphs, the loop over time run by OnnxModel (s2s.cells.base.run_steps)."""
    from s2s import config
    from s2s.training.state import versions
    from s2s.translate import Translator

    translator = Translator.from_run(run, device="cpu")
    model, cfg = translator.model.eval(), translator.cfg
    cell = cfg.model.cell
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {out_dir}: cannot create the export folder "
                          f"({exc.strerror or exc}); choose a writable place") from exc
    top = translator.tokenizer.src_vocab_size - 1
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]]).clamp(max=top)  # a trace example
    lengths = torch.tensor([4, 3])
    with torch.no_grad():
        enc, state = model.encode(src, lengths)
    per_layer, n_layers = len(state.layers[0]), len(state.layers)
    flat = _flat(state.layers)
    states = [f"state{i}" for i in range(len(flat))]
    tokens = torch.full((src.shape[0],), 2, dtype=torch.long)
    _onnx(_Step(model, per_layer), (tokens, enc.memory, enc.keys, enc.mask, state.feed, *flat),
          out / "step.onnx", ["tokens", "memory", "keys", "mask", "feed", *states],
          ["log_probs", "feed_out", *[f"{s}_out" for s in states], "attention"],
          {"tokens": BATCH, "memory": SEQ, "keys": SEQ, "mask": SEQ, "feed": BATCH,
           **{s: BATCH for s in states}, "log_probs": BATCH, "feed_out": BATCH,
           **{f"{s}_out": BATCH for s in states}, "attention": SEQ}, cell)
    blobs = translator.tokenizer.to_bytes()
    names = {"joint": "spm.model", "src": "spm.src.model", "tgt": "spm.tgt.model"}
    for key, name in names.items():
        if key in blobs:
            (out / name).write_bytes(blobs[key])
    if "kept" in blobs:
        (out / "vocab.json").write_text(blobs["kept"], encoding="utf-8")
    manifest = {"format": FORMAT, "config": config.to_dict(cfg), "cell": cell,
                "layers": n_layers, "per_layer": per_layer,
                "src_vocab_size": translator.tokenizer.src_vocab_size,
                "tgt_vocab_size": translator.tokenizer.tgt_vocab_size, "versions": versions(),
                "source": str(run)}
    whole = None
    if type(model.encoder.layers[0][0]).forward is not StepCell.forward:
        try:
            _onnx(_Encoder(model), (src, lengths), out / "encoder.onnx", ["src", "lengths"],
                  ["memory", "keys", "mask", "feed", *states],
                  {"src": SEQ, "lengths": BATCH, "memory": SEQ, "keys": SEQ, "mask": SEQ,
                   "feed": BATCH, **{s: BATCH for s in states}}, cell)
            _write(out, {**manifest, "encoder": "graph"})
            _verify(model, out, top, cell)
            return {**manifest, "encoder": "graph"}
        except PluginError as exc:
            whole = exc
    try:
        manifest.update(encoder="steps", **_export_steps(model, src, lengths, out, cell))
        _write(out, manifest)
        _verify(model, out, top, cell)
    except PluginError as exc:
        for path in [*out.glob("*.onnx"), out / MANIFEST]:  # no half-usable folder
            path.unlink(missing_ok=True)
        raise PluginError(f"{exc}{f' (as one graph: {whole})' if whole else ''}") from exc
    return manifest


def _write(out: Path, manifest: dict[str, Any]) -> None:
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def _export_steps(model, src: Tensor, lengths: Tensor, out: Path, cell: str
                  ) -> dict[str, Any]:
    """The step-by-step encoder: embed.onnx, encoder-L-D.onnx (layer L, direction D: the
    cell's step) and finish.onnx; returns the manifest's encoder layout."""
    (out / "encoder.onnx").unlink(missing_ok=True)
    _onnx(model.encoder.embed, (src,), out / "embed.onnx", ["src"], ["x"], {"src": SEQ, "x": SEQ},
          cell)
    parts = None
    for i, layer in enumerate(model.encoder.layers):
        for d, c in enumerate(layer):
            zero = c.initial_state(2, torch.device("cpu"), torch.float32)
            if any(bool(t.any()) for t in zero):
                raise PluginError(f"cell '{cell}' cannot be exported to ONNX step by step: its "
                                  f"initial_state is not zeros, which the exported encoder "
                                  f"starts from")
            parts = len(zero)
            names = [f"state{k}" for k in range(parts)]
            _onnx(_CellStep(c), (torch.randn(2, c.input_size), *zero),
                  out / f"encoder-{i}-{d}.onnx", ["x", *names],
                  ["h", *[f"{n}_out" for n in names]],
                  {"x": BATCH, "h": BATCH, **{n: BATCH for n in names},
                   **{f"{n}_out": BATCH for n in names}}, cell)
    with torch.no_grad():
        memory, finals = model.encoder(src, lengths)
    names = [f"final{k}" for k in range(len(_flat(finals)))]
    n_dec = len(model.decoder.cells)
    states = [f"state{k}" for k in range(n_dec * len(finals[0]))]
    _onnx(_Finish(model, len(finals[0])), (memory, lengths, *_flat(finals)),
          out / "finish.onnx", ["memory", "lengths", *names], ["keys", "mask", "feed", *states],
          {"memory": SEQ, "lengths": BATCH, **{n: BATCH for n in names}, "keys": SEQ,
           "mask": SEQ, "feed": BATCH, **{s: BATCH for s in states}}, cell)
    return {"encoder_layers": len(model.encoder.layers),
            "directions": len(model.encoder.layers[0]), "encoder_parts": parts,
            "encoder_hidden": model.encoder.layers[0][0].hidden_size,
            "residual": bool(model.encoder.residual)}


def _verify(model, out: Path, top: int, cell: str) -> None:
    """Run the exported graphs at another batch size and source length than the trace's and
    compare them with PyTorch: a graph that traced to fixed shapes (a Python loop over time
    unrolled, a tensor turned into a Python number) is caught here (a PluginError naming the
    cell)."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(4, max(5, top + 1), (3, 7), generator=gen)
    lengths = torch.tensor([7, 5, 2])
    src[1, 5:], src[2, 2:] = 0, 0
    try:
        onnx = OnnxModel(out)
        with torch.no_grad():
            enc, state = model.encode(src, lengths)
            got_enc, got_state = onnx.encode(src, lengths)
            tokens = torch.full((3,), 2, dtype=torch.long)
            log_probs, _, _ = model.step(tokens, enc, state)
            got, _, _ = onnx.step(tokens, got_enc, got_state)
        same = got_enc.memory.shape == enc.memory.shape and \
            torch.allclose(got_enc.memory, enc.memory.float(), atol=1e-4) and \
            torch.allclose(got, log_probs.float(), atol=1e-3)
        why = "its outputs differ from PyTorch's at another batch size and length"
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors on a fixed-shape graph
        same, why = False, f"{type(exc).__name__}: {_first_line(exc)}"
    if not same:
        raise PluginError(f"cell '{cell}' does not export to ONNX with dynamic lengths ({why}); "
                          f"its step must trace to a graph that holds at every batch size "
                          f"(no Python numbers or loops made from tensor values)")


def is_export(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class OnnxModel(nn.Module):
    """encode / step / reorder over onnxruntime sessions: what s2s.search needs."""

    def __init__(self, directory: str | Path, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # the CPU, for search
        directory = Path(directory)
        try:
            self.manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
            if not isinstance(self.manifest, dict) or "per_layer" not in self.manifest \
                    or not isinstance(self.manifest.get("config"), dict):
                raise ValueError("not an s2s export manifest: per_layer or config missing")
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{directory / MANIFEST} is damaged ({exc}); export the run "
                                  f"again") from exc
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        m = self.manifest

        def session(name: str):
            return ort.InferenceSession(str(directory / name), options,
                                        providers=["CPUExecutionProvider"])

        try:
            self.stepper = session("step.onnx")
            if m.get("encoder", "graph") == "graph":
                self.encoder, self.stepwise = session("encoder.onnx"), None
            else:
                self.encoder, self.finish = None, session("finish.onnx")
                cells = [[_OrtCell(_Run(session(f"encoder-{i}-{d}.onnx")), m["encoder_parts"],
                                   m["encoder_hidden"]) for d in range(m["directions"])]
                         for i in range(m["encoder_layers"])]
                self.stepwise = _StepwiseEncoder(_Run(session("embed.onnx")), cells,
                                                 m["residual"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise CheckpointError(f"{directory}: the exported graphs cannot be loaded "
                                  f"({type(exc).__name__}: {exc}); export the run again") from exc
        self.per_layer = m["per_layer"]

    def encode(self, src: Tensor, src_lengths: Tensor):
        from s2s.model.seq2seq import DecoderState, EncoderOut

        src, src_lengths = src.cpu(), src_lengths.cpu()
        if self.stepwise is None:
            out = self.encoder.run(None, {"src": src.numpy(), "lengths": src_lengths.numpy()})
            memory, keys, mask, feed, *flat = (torch.from_numpy(o) for o in out)
        else:
            memory, finals = self.stepwise(src, src_lengths)
            keys, mask, feed, *flat = _Run(self.finish)(memory, src_lengths, *_flat(finals))
        return EncoderOut(memory, keys, mask), DecoderState(_layers(flat, self.per_layer), feed)

    def step(self, tokens: Tensor, enc, state, vocab: Tensor | None = None):
        from s2s.model.seq2seq import DecoderState

        flat = _flat(state.layers)
        feeds = {"tokens": tokens.numpy(), "memory": enc.memory.numpy(),
                 "keys": enc.keys.numpy(), "mask": enc.mask.numpy(), "feed": state.feed.numpy(),
                 **{f"state{i}": t.numpy() for i, t in enumerate(flat)}}
        log_probs, feed, *rest = (torch.from_numpy(o) for o in self.stepper.run(None, feeds))
        flat, weights = rest[:-1], rest[-1]
        if vocab is not None:  # normalised over the shortlist: as the logits over its ids
            log_probs = log_probs.index_select(1, vocab)
            log_probs = log_probs - torch.logsumexp(log_probs, dim=1, keepdim=True)
        return log_probs, DecoderState(_layers(flat, self.per_layer), feed), weights

    @staticmethod
    def reorder(obj, index: Tensor):
        from s2s.model.seq2seq import reorder

        return reorder(obj, index)


class _Run:
    """An onnxruntime session called with tensors, in its inputs' order, -> tensors."""

    def __init__(self, session) -> None:
        self.session, self.names = session, [i.name for i in session.get_inputs()]

    def __call__(self, *tensors: Tensor):
        out = self.session.run(None, {n: t.numpy() for n, t in zip(self.names, tensors)})
        return [torch.from_numpy(o) for o in out]


class _OrtCell(StepCell):
    """An exported encoder cell: its step is the graph; StepCell's forward runs it over time
    exactly as the cell's own forward does (run_steps)."""

    def __init__(self, run: _Run, parts: int, hidden_size: int) -> None:
        super().__init__()
        self.run, self.parts, self.hidden_size = run, parts, hidden_size

    def initial_state(self, batch_size, device, dtype):
        return zeros_state(self.parts, batch_size, self.hidden_size, device, dtype)

    def step(self, x: Tensor, state):
        h, *new = self.run(x, *state)
        return h, tuple(new)


class _StepwiseEncoder(Encoder):
    """The model's Encoder.forward (embedding, layers, directions, residuals) over exported
    graphs: the embedding graph and one _OrtCell per layer and direction."""

    def __init__(self, embed: _Run, layers: list[list[_OrtCell]], residual: bool) -> None:
        nn.Module.__init__(self)
        self.embed = lambda src: embed(src)[0]
        self.layers = layers
        self.bidirectional, self.residual = len(layers[0]) == 2, residual
        self.dropout = self.word_dropout = self.h_dropout = Dropout(0.0)
        self.eval()
