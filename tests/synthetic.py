"""A synthetic parallel task the tests generate: reverse the sequence and map every symbol
to its own target word. Learnable in seconds by an attentional encoder-decoder."""
from __future__ import annotations

import random
from pathlib import Path

SOURCE = "a b c d e f g h i j k l".split()
TARGET = "zo ry qu px ow nv mu lt ks jr iq hp".split()
MAPPING = dict(zip(SOURCE, TARGET))


def translate(sentence: str) -> str:
    return " ".join(MAPPING[w] for w in reversed(sentence.split()))


def sentences(n: int, seed: int, min_len: int = 3, max_len: int = 8) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(SOURCE) for _ in range(rng.randint(min_len, max_len)))
            for _ in range(n)]


def write_task(directory: Path, n_train: int = 3000, n_valid: int = 200, n_test: int = 200,
               src: str = "src", tgt: str = "tgt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_valid, 2), ("test", n_test, 3)):
        lines = sentences(n, seed)
        (directory / f"{split}.{src}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (directory / f"{split}.{tgt}").write_text(
            "\n".join(translate(s) for s in lines) + "\n", encoding="utf-8")
    return directory
