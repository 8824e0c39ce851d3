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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from s2s.config import DataConfig
from s2s.errors import DataError


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without newline), decoding UTF-8 strictly."""
    try:
        raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from exc
    with raw:
        try:
            for number, line in enumerate(io.BufferedReader(raw), start=1):
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


def _aligned_text(src_path: str, tgt_path: str, signature: Any = None) -> Iterator[dict]:
    src_lines, tgt_lines = _open_lines(Path(src_path)), _open_lines(Path(tgt_path))
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


def _from_generator(generator, **kwargs):
    import datasets

    datasets.logging.set_verbosity_error()
    try:
        return datasets.Dataset.from_generator(generator, gen_kwargs=kwargs)
    except Exception as exc:
        found = _unwrap(exc)
        if found is not None:
            raise DataError(str(found)) from None
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
    return _from_generator(generator, **kwargs)


def read_lines(path: str | Path) -> list[str]:
    """All lines of a (possibly gzipped) UTF-8 text file."""
    return [text for _, text in _open_lines(Path(path))]
