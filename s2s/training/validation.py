"""Validation: loss and perplexity on the validation split, BLEU/chrF of greedy translations
(through translate and evaluate: the trainer never decodes itself), sample translations and
attention heat maps for TensorBoard."""
from __future__ import annotations

import math

import torch

from s2s import config, evaluate, plots
from s2s import precision as precisions
from s2s.batching import bucket_batches, collate
from s2s.model import Seq2Seq
from s2s.options import source_limit
from s2s.tokenizer import Tokenizer
from s2s.training.prepare import Corpus
from s2s.translate import translate_lines

N_SAMPLES = 3  # validation sentences shown as text and attention images in TensorBoard


@torch.no_grad()
def attention_map(model: Seq2Seq, src_ids: list[int], tgt_ids: list[int]) -> torch.Tensor:
    """Attention weights [T, S] of the model reading the reference (teacher forcing)."""
    batch = collate([src_ids], [tgt_ids]).to(next(model.parameters()).device)
    enc, state = model.encode(batch.src, batch.src_lengths)
    rows = []
    for token in batch.tgt_in[0]:
        _, state, weights = model.step(token.view(1), enc, state)
        rows.append(weights[0].float())
    return torch.stack(rows)  # [T, S]


def attention_picture(model: Seq2Seq, tokenizer: Tokenizer, row: dict, step: int):
    """An [H, W, 3] picture of the attention over one validation pair, its axes labelled with
    the source pieces (EOS included) and the target pieces each step predicts."""
    weights = attention_map(model, row["src_ids"], row["tgt_ids"])  # [T, S]
    src = tokenizer.src.pieces(row["src_ids"]) or ["</s>"]  # an empty source: one EOS
    tgt = tokenizer.tgt.pieces(row["tgt_ids"]) + ["</s>"]
    return plots.rgb(plots.attention_figure(weights.numpy(), src, tgt, f"step {step}"))


@torch.no_grad()
def validate(model: Seq2Seq, tokenizer: Tokenizer, valid: Corpus, cfg: config.Config,
             precision: str, monitor, step: int) -> dict[str, float]:
    """val/loss and val/ppl (and val/bleu, val/chrf with train.valid_bleu); samples and
    attention images go to `monitor` at `step`. The model is left in training mode."""
    t = cfg.train
    device = next(model.parameters()).device
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for idx in bucket_batches(valid.src_len, valid.tgt_len, t.valid_batch_size, "sents",
                              shuffle=False):
        rows = valid.data[idx.tolist()]
        batch = collate(rows["src_ids"], rows["tgt_ids"]).to(device)
        with precisions.compute(precision, device):
            _, nll = model.loss(batch.src, batch.src_lengths, batch.tgt_in, batch.tgt_out)
        total_nll += float(nll)
        total_tokens += batch.n_tgt_tokens
    loss = total_nll / max(1, total_tokens)
    result = {"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))}
    if t.valid_bleu:
        hyps = translate_lines(model, tokenizer, valid.raw_src, beam=1,
                               batch_size=t.valid_batch_size, max_src_len=source_limit(cfg))
        scores = evaluate.score(hyps, valid.raw_tgt, ("bleu", "chrf"))
        result["val/bleu"], result["val/chrf"] = scores["bleu"].score, scores["chrf"].score
        samples = "\n\n".join(f"src: {s}  \nref: {r}  \nhyp: {h}" for s, r, h in
                              list(zip(valid.raw_src, valid.raw_tgt, hyps))[:N_SAMPLES])
        monitor.text(step, "val/samples", samples)
    for i in range(min(N_SAMPLES, len(valid.src_len))):
        row = valid.data[i]
        monitor.image(step, f"attention/{i}", attention_picture(model, tokenizer, row, step))
    model.train()
    return result


def metric(result: dict[str, float], name: str) -> float:
    """The validation metric `name` (bleu, chrf or loss) of a result, higher is better."""
    return -result["val/loss"] if name == "loss" else result[f"val/{name}"]
