"""Parallel data through 🤗 datasets.

Local sources, looked up in `data.dir` for a split name:
- aligned plain text `{split}.{src_lang}` + `{split}.{tgt_lang}` (optionally `.gz`);
- `{split}.tsv[.gz]`: `source<TAB>target` per line;
- `{split}.jsonl[.gz]`: one object per line, with fields `data.src_field`/`data.tgt_field`
  (default: the language codes), or a `translation` object keyed by language code.
Local files are read by s2s's own line readers (so a misaligned or badly encoded file gets an
error naming file and line) into an Arrow-backed `datasets.Dataset`; `data.hub` names a Hub
dataset instead (needs network; kept thin). Columns: `src`, `tgt`.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from s2s.config import DataConfig
from s2s.errors import DataError

PARALLEL_BYTES = 64 << 20  # uncompressed files from this size are read by several processes
MAX_READERS = 8


def _open_lines(path: Path, span: tuple[int, int, int] | None = None
                ) -> Iterator[tuple[int, str]]:
    """(line number, text without newline), decoding UTF-8 strictly; `span` (first line
    number, start byte, end byte): only the lines of that byte range of a plain file."""
    first, start, end = span or (1, 0, -1)
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from exc
    with raw:
        try:
            if start:
                raw.seek(start)
            for number, line in enumerate(io.BufferedReader(raw), start=first):
                if end >= 0:  # a shard: up to its end byte
                    if start >= end:
                        break
                    start += len(line)
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{number}: invalid UTF-8 at byte {exc.start} "
                                    f"({exc.reason}); re-encode the file as UTF-8") from exc
                yield number, text.rstrip("\r\n")
        except (OSError, EOFError) as exc:  # truncated or corrupt gzip
            raise DataError(f"{path}: unreadable ({exc}); check the file") from exc


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _line_starts(path: Path, every: int = 0) -> tuple[list[int], int]:
    """(the byte offsets where lines 1, every+1, 2*every+1, ... of a plain file start (with
    `every` > 0), its number of lines)."""
    import numpy as np

    offsets, lines, position, last = [0], 0, 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            if every:
                ends = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
                numbers = lines + 1 + np.arange(len(ends))  # the line each newline ends
                offsets.extend((position + ends[numbers % every == 0] + 1).tolist())
                lines += len(ends)
            else:
                lines += chunk.count(b"\n")
            position, last = position + len(chunk), chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without its newline
    if len(offsets) > 1 and offsets[-1] >= position:
        offsets.pop()  # the file ends where a shard would start
    return offsets, lines


def shards(paths: list[Path], readers: int) -> list[list[tuple[int, int, int]]] | None:
    """Line-aligned byte ranges of the plain files `paths` (one list of (first line, start,
    end) per file, the same lines in each), cut into `readers` shards; None when the files
    are compressed, small, or one reader is asked for. A DataError if their lines differ in
    number (the parallel reader would not see which file is short)."""
    if readers < 2 or any(p.suffix == ".gz" for p in paths) or \
            max(p.stat().st_size for p in paths) < PARALLEL_BYTES:
        return None
    every = max(1, -(-_line_starts(paths[0])[1] // readers))  # lines per shard
    found = [_line_starts(p, every) for p in paths]
    if len({n for _, n in found}) > 1:
        (a, na), (b, nb) = [(p, n) for p, (_, n) in zip(paths, found)][:2]
        shorter, longer, n = (a, b, na) if na < nb else (b, a, nb)
        raise DataError(f"{shorter} has {n} lines but {longer} has more: the two sides of a "
                        f"parallel corpus must have the same number of lines")
    out = []
    for (offsets, _), path in zip(found, paths):
        ends = [*offsets[1:], path.stat().st_size]
        out.append([(i * every + 1, start, end) for i, (start, end) in
                    enumerate(zip(offsets, ends))])
    if len({len(x) for x in out}) > 1:  # uneven cuts (e.g. a trailing newline): read whole
        return None
    return out


def _aligned_text(src_path: str, tgt_path: str, signature: Any = None,
                  spans: Any = None) -> Iterator[dict]:
    """Pairs of the aligned files; `spans`: the (src span, tgt span) shards this reader reads,
    in order (datasets gives each process its slice of the list)."""
    for src_span, tgt_span in spans or [(None, None)]:
        yield from _aligned_pairs(src_path, tgt_path, src_span, tgt_span)


def _aligned_pairs(src_path: str, tgt_path: str, src_span, tgt_span) -> Iterator[dict]:
    src_lines = _open_lines(Path(src_path), src_span)
    tgt_lines = _open_lines(Path(tgt_path), tgt_span)
    count = 0
    while True:
        src, tgt = next(src_lines, None), next(tgt_lines, None)
        if src is None and tgt is None:
            return
        if src is None or tgt is None:
            shorter, longer = (src_path, tgt_path) if src is None else (tgt_path, src_path)
            raise DataError(f"{shorter} has {count} lines but {longer} has more: the two sides "
                            f"of a parallel corpus must have the same number of lines")
        count += 1
        yield {"src": src[1], "tgt": tgt[1]}


def _tsv(path: str, signature: Any = None) -> Iterator[dict]:
    for number, line in _open_lines(Path(path)):
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(f"{path}:{number}: expected 2 tab-separated fields (source, target), "
                            f"found {len(fields)}")
        yield {"src": fields[0], "tgt": fields[1]}


def _jsonl(path: str, src_field: str, tgt_field: str, src_lang: str, tgt_lang: str,
           signature: Any = None) -> Iterator[dict]:
    for number, line in _open_lines(Path(path)):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: invalid JSON ({exc.msg})") from exc
        pair = obj.get("translation", obj) if isinstance(obj, dict) else None
        if isinstance(obj, dict) and isinstance(obj.get("translation"), dict):
            src_field, tgt_field = src_lang, tgt_lang
        if not isinstance(pair, dict) or not isinstance(pair.get(src_field), str) or \
                not isinstance(pair.get(tgt_field), str):
            raise DataError(f"{path}:{number}: expected string fields '{src_field}' and "
                            f"'{tgt_field}' (set data.src_field / data.tgt_field)")
        yield {"src": pair[src_field], "tgt": pair[tgt_field]}


def _signature(*paths: Path) -> str:
    """Changes when a file changes, so datasets' cache never serves stale data; ctime too, since
    a copy that keeps size and mtime (cp -p, rsync -t) still gets a new ctime. (A string:
    datasets would treat a list in gen_kwargs as shards.)"""
    return "|".join(f"{p.resolve()}:{s.st_size}:{s.st_mtime_ns}:{s.st_ctime_ns}"
                    for p, s in ((p, p.stat()) for p in paths))


def _unwrap(exc: BaseException) -> DataError | None:
    while exc is not None:
        if isinstance(exc, DataError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _from_generator(generator, num_proc: int | None = None, **kwargs):
    import datasets

    datasets.logging.set_verbosity_error()
    try:
        return datasets.Dataset.from_generator(generator, gen_kwargs=kwargs, num_proc=num_proc)
    except Exception as exc:
        found = _unwrap(exc)
        if found is not None:
            raise DataError(str(found)) from None
        if num_proc:  # a reader process failed, and its error's cause did not cross the
            for _ in generator(**kwargs):  # process boundary: find it by reading here
                pass
        raise


def local_source(cfg: DataConfig, split: str) -> tuple[Any, dict]:
    """(generator, kwargs) for `split` in data.dir, or a DataError listing what was looked for."""
    directory = Path(cfg.dir or ".")
    if not directory.is_dir():
        raise DataError(f"data.dir {directory}: not a directory; point data.dir at the folder "
                        f"holding {split}.{cfg.src_lang} and {split}.{cfg.tgt_lang}")
    src = _find(directory, f"{split}.{cfg.src_lang}")
    tgt = _find(directory, f"{split}.{cfg.tgt_lang}")
    if src and tgt:
        return _aligned_text, {"src_path": str(src), "tgt_path": str(tgt),
                               "signature": _signature(src, tgt)}
    if src or tgt:
        missing = f"{split}.{cfg.tgt_lang if src else cfg.src_lang}[.gz]"
        raise DataError(f"{directory}: found {(src or tgt).name} but not {missing}; both sides "
                        f"of split '{split}' are needed")
    tsv = _find(directory, f"{split}.tsv")
    if tsv:
        return _tsv, {"path": str(tsv), "signature": _signature(tsv)}
    jsonl = _find(directory, f"{split}.jsonl")
    if jsonl:
        return _jsonl, {"path": str(jsonl), "src_field": cfg.src_field or cfg.src_lang,
                        "tgt_field": cfg.tgt_field or cfg.tgt_lang, "src_lang": cfg.src_lang,
                        "tgt_lang": cfg.tgt_lang, "signature": _signature(jsonl)}
    raise DataError(f"{directory}: no data for split '{split}': looked for "
                    f"{split}.{cfg.src_lang}[.gz] + {split}.{cfg.tgt_lang}[.gz], {split}.tsv[.gz], "
                    f"{split}.jsonl[.gz]; set data.dir (or "
                    f"data.{'train' if split == cfg.train else 'valid'})")


def _hub(cfg: DataConfig, split: str):
    """A Hub dataset (needs network): columns mapped to src/tgt. Untested offline."""
    import datasets

    try:
        ds = datasets.load_dataset(cfg.hub, cfg.hub_config, split=split)
    except Exception as exc:
        raise DataError(f"data.hub {cfg.hub!r} split {split!r}: cannot load ({exc})") from exc
    src_f, tgt_f = cfg.src_field or cfg.src_lang, cfg.tgt_field or cfg.tgt_lang
    if "translation" in ds.column_names:
        return ds.map(lambda r: {"src": r["translation"][cfg.src_lang],
                                 "tgt": r["translation"][cfg.tgt_lang]},
                      remove_columns=ds.column_names)
    missing = [f for f in (src_f, tgt_f) if f not in ds.column_names]
    if missing:
        raise DataError(f"data.hub {cfg.hub!r}: no column(s) {missing}; columns are "
                        f"{ds.column_names} (set data.src_field / data.tgt_field)")
    return ds.select_columns([src_f, tgt_f]).rename_columns({src_f: "src", tgt_f: "tgt"})


def load_split(cfg: DataConfig, split: str):
    """The `split` of the configured corpus as a datasets.Dataset with columns src, tgt."""
    if cfg.hub:
        return _hub(cfg, split)
    generator, kwargs = local_source(cfg, split)
    if next(iter(generator(**kwargs)), None) is None:  # datasets cannot build an empty split
        files = [v for k, v in kwargs.items() if k.endswith("path")]
        raise DataError(f"split '{split}' is empty: {' and '.join(files)} hold no "
                        f"{'pairs' if len(files) == 2 else 'examples'}; fill them or point "
                        f"data.dir at the right folder")
    readers = min(MAX_READERS, os.cpu_count() or 1)
    if generator is _aligned_text:
        cut = shards([Path(kwargs["src_path"]), Path(kwargs["tgt_path"])], readers)
        if cut:  # list-valued gen_kwargs: datasets hands each process its shards, in order
            kwargs["spans"] = [tuple(pair) for pair in zip(*cut)]
            return _from_generator(generator, num_proc=len(cut[0]), **kwargs)
    return _from_generator(generator, **kwargs)


def read_lines(path: str | Path) -> list[str]:
    """All lines of a (possibly gzipped) UTF-8 text file."""
    return [text for _, text in _open_lines(Path(path))]
