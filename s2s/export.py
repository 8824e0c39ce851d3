"""`s2s export RUN -o DIR`: the encoder and one decoder step as ONNX graphs (dynamic batch and
lengths), the SentencePiece model and a manifest; `s2s translate DIR` / `s2s serve DIR` run them
with onnxruntime through s2s's own search, which only sees encode / step / reorder.

- `encoder.onnx`: (src [B, S] int64, lengths [B] int64) -> memory [B, S, H], keys [B, S, H],
  mask [B, S] bool, feed [B, H], then each decoder layer's initial state tensors [B, H].
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

from s2s.errors import CheckpointError, PluginError

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


def export(run: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Export RUN (a run directory or checkpoint) into OUT_DIR; returns the manifest."""
    from s2s import config
    from s2s.ops import gemm
    from s2s.training.state import versions
    from s2s.translate import Translator

    translator = Translator.from_run(run, device="cpu")
    model, cfg = translator.model.eval(), translator.cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    top = translator.tokenizer.src_vocab_size - 1
    src = torch.tensor([[5, 6, 7, 3], [8, 9, 3, 0]]).clamp(max=top)  # a trace example
    lengths = torch.tensor([4, 3])
    with torch.no_grad():
        enc, state = model.encode(src, lengths)
    per_layer, n_layers = len(state.layers[0]), len(state.layers)
    flat = _flat(state.layers)
    states = [f"state{i}" for i in range(len(flat))]
    batch = {0: "batch"}
    seq = {0: "batch", 1: "source"}
    try:
        with torch.no_grad(), gemm.use("torch"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Encoder(model).eval(), (src, lengths), str(out / "encoder.onnx"),
                              dynamo=False, opset_version=17,
                              input_names=["src", "lengths"],
                              output_names=["memory", "keys", "mask", "feed", *states],
                              dynamic_axes={"src": seq, "lengths": batch, "memory": seq,
                                            "keys": seq, "mask": seq, "feed": batch,
                                            **{s: batch for s in states}})
            tokens = torch.full((src.shape[0],), 2, dtype=torch.long)
            torch.onnx.export(_Step(model, per_layer).eval(),
                              (tokens, enc.memory, enc.keys, enc.mask, state.feed, *flat),
                              str(out / "step.onnx"), dynamo=False, opset_version=17,
                              input_names=["tokens", "memory", "keys", "mask", "feed", *states],
                              output_names=["log_probs", "feed_out",
                                            *[f"{s}_out" for s in states], "attention"],
                              dynamic_axes={"tokens": batch, "memory": seq, "keys": seq,
                                            "mask": seq, "feed": batch,
                                            **{s: batch for s in states},
                                            "log_probs": batch, "feed_out": batch,
                                            **{f"{s}_out": batch for s in states},
                                            "attention": seq})
    except Exception as exc:  # noqa: BLE001 - whatever the tracer raises: name the cell
        raise PluginError(f"cell '{cfg.model.cell}' cannot be exported to ONNX: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          ) from exc
    blobs = translator.tokenizer.to_bytes()
    names = {"joint": "spm.model", "src": "spm.src.model", "tgt": "spm.tgt.model"}
    for key, name in names.items():
        if key in blobs:
            (out / name).write_bytes(blobs[key])
    if "kept" in blobs:
        (out / "vocab.json").write_text(blobs["kept"], encoding="utf-8")
    manifest = {"format": FORMAT, "config": config.to_dict(cfg), "cell": cfg.model.cell,
                "layers": n_layers, "per_layer": per_layer,
                "src_vocab_size": translator.tokenizer.src_vocab_size,
                "tgt_vocab_size": translator.tokenizer.tgt_vocab_size, "versions": versions(),
                "source": str(run)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    _verify(model, out, top, cfg.model.cell)
    return manifest


def _verify(model, out: Path, top: int, cell: str) -> None:
    """Run the exported graphs at another batch size and source length than the trace's and
    compare them with PyTorch: a cell whose forward is a Python loop over time (StepCell's)
    traces to a fixed number of steps, which this catches (a PluginError naming the cell)."""
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
        same, why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not same:
        for name in ("encoder.onnx", "step.onnx", MANIFEST):  # no half-usable folder
            (out / name).unlink(missing_ok=True)
        raise PluginError(f"cell '{cell}' does not export to ONNX with dynamic lengths ({why}); "
                          f"a cell whose forward loops over time in Python traces to a fixed "
                          f"number of steps: give it a forward built from torch's RNN ops")


def is_export(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class OnnxModel(nn.Module):
    """encode / step / reorder over onnxruntime sessions: what s2s.search needs."""

    def __init__(self, directory: str | Path, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort

        self._device = nn.Parameter(torch.zeros(0), requires_grad=False)  # the CPU, for search
        directory = Path(directory)
        self.manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.encoder = ort.InferenceSession(str(directory / "encoder.onnx"), options,
                                                providers=["CPUExecutionProvider"])
            self.stepper = ort.InferenceSession(str(directory / "step.onnx"), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types
            raise CheckpointError(f"{directory}: the exported graphs cannot be loaded "
                                  f"({type(exc).__name__}: {exc}); export the run again") from exc
        self.per_layer = self.manifest["per_layer"]

    def encode(self, src: Tensor, src_lengths: Tensor):
        from s2s.model.seq2seq import DecoderState, EncoderOut

        out = self.encoder.run(None, {"src": src.cpu().numpy(),
                                      "lengths": src_lengths.cpu().numpy()})
        memory, keys, mask, feed, *flat = (torch.from_numpy(o) for o in out)
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
