"""Write a large parallel corpus for scale tests: a corpus's training split repeated N times
(never commit the result). The validation split is copied once.

    python tools/make_corpus.py ../shared/data/multi30k /tmp/m30k_x35 --times 35   # 1.0M pairs
    /usr/bin/time -v s2s train configs/peer-matched.yaml --run-dir RUN \
        --set data.dir=/tmp/m30k_x35 --set train.max_steps=20
"""
from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path


def _read(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder with {train,val}.{src,tgt}[.gz]")
    parser.add_argument("out", type=Path)
    parser.add_argument("--times", type=int, default=35)
    parser.add_argument("--langs", nargs=2, default=["en", "de"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for lang in args.langs:
        for split in ("train", "val"):
            found = [p for p in (args.data / f"{split}.{lang}", args.data / f"{split}.{lang}.gz")
                     if p.is_file()]
            if not found:
                raise SystemExit(f"{args.data}: no {split}.{lang}[.gz]")
            text = _read(found[0])
            if not text.endswith(b"\n"):
                text += b"\n"
            with open(args.out / f"{split}.{lang}", "wb") as f:
                for _ in range(args.times if split == "train" else 1):
                    f.write(text)
    for extra in args.data.glob("test*"):  # test sets, as they are
        shutil.copyfile(extra, args.out / extra.name)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
