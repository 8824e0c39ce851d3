"""sacreBLEU scores (BLEU, chrF, TER) with their signatures."""
from __future__ import annotations

from dataclasses import dataclass

from s2s.errors import DataError

METRICS = ("bleu", "chrf", "ter")


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    text: str  # sacreBLEU's own one-line summary
    signature: str


def _metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"bleu": BLEU, "chrf": CHRF, "ter": TER}[name]()


def score(hypotheses: list[str], references: list[str],
          metrics: tuple[str, ...] = ("bleu", "chrf")) -> dict[str, Score]:
    """Corpus-level scores of detokenized hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references: "
                        f"they must be line-aligned")
    if not hypotheses:
        raise DataError("no lines to score: the hypotheses and references are empty")
    out = {}
    for name in metrics:
        metric = _metric(name)
        result = metric.corpus_score(hypotheses, [references])
        out[name] = Score(name, float(result.score), str(result), str(metric.get_signature()))
    return out
