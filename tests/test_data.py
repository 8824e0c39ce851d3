"""s2s/data.py: every local format loads to columns src/tgt; every user mistake is a DataError
that names the file (and line, where there is one)."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from s2s import data
from s2s.config import DataConfig
from s2s.errors import DataError

SRC = ["a b c", "d e", "f g h i"]
TGT = ["ow px qu", "nv mu", "jr ks lt iq"]


def cfg_for(directory: Path, **kwargs) -> DataConfig:
    return DataConfig(dir=str(directory), src_lang="en", tgt_lang="de", **kwargs)


def write(path: Path, lines: list[str], compress: bool = False) -> Path:
    text = "".join(f"{line}\n" for line in lines).encode("utf-8")
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


def pairs(ds) -> list[tuple[str, str]]:
    assert set(ds.column_names) == {"src", "tgt"}
    return list(zip(ds["src"], ds["tgt"]))


# --- formats that load -----------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_aligned_text_loads(tmp_path, compress):
    write(tmp_path / "train.en", SRC, compress)
    write(tmp_path / "train.de", TGT, compress)
    ds = data.load_split(cfg_for(tmp_path), "train")
    assert pairs(ds) == list(zip(SRC, TGT))


def test_aligned_text_mixed_gz_and_plain(tmp_path):
    write(tmp_path / "train.en", SRC, compress=True)
    write(tmp_path / "train.de", TGT)
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(SRC, TGT))


def test_aligned_text_keeps_empty_lines_and_strips_crlf(tmp_path):
    (tmp_path / "val.en").write_bytes(b"a b\r\n\r\nc\r\n")
    (tmp_path / "val.de").write_bytes(b"x\n\ny z\n")
    ds = data.load_split(cfg_for(tmp_path), "val")
    assert pairs(ds) == [("a b", "x"), ("", ""), ("c", "y z")]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_tsv_loads(tmp_path, compress):
    write(tmp_path / "train.tsv", [f"{s}\t{t}" for s, t in zip(SRC, TGT)], compress)
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(SRC, TGT))


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_jsonl_flat_fields_load(tmp_path, compress):
    lines = [json.dumps({"en": s, "de": t, "id": i}) for i, (s, t) in enumerate(zip(SRC, TGT))]
    write(tmp_path / "train.jsonl", lines, compress)
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(SRC, TGT))


def test_jsonl_translation_object_loads(tmp_path):
    lines = [json.dumps({"translation": {"en": s, "de": t, "fr": "x"}}) for s, t in zip(SRC, TGT)]
    write(tmp_path / "train.jsonl", lines[:1] + [""] + lines[1:])  # a blank line is skipped
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(SRC, TGT))


def test_jsonl_custom_field_names(tmp_path):
    lines = [json.dumps({"source": s, "target": t}) for s, t in zip(SRC, TGT)]
    write(tmp_path / "train.jsonl", lines)
    cfg = cfg_for(tmp_path, src_field="source", tgt_field="target")
    assert pairs(data.load_split(cfg, "train")) == list(zip(SRC, TGT))


def test_non_ascii_text_round_trips(tmp_path):
    src, tgt = ["naïve café", "日本語"], ["Straße", "ünïcödé 🙂"]
    write(tmp_path / "train.en", src)
    write(tmp_path / "train.de", tgt)
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(src, tgt))


def test_aligned_text_takes_precedence_over_tsv(tmp_path):
    write(tmp_path / "train.en", SRC)
    write(tmp_path / "train.de", TGT)
    write(tmp_path / "train.tsv", ["other\tpair"])
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(SRC, TGT))


def test_changed_file_is_reloaded_not_served_from_cache(tmp_path):
    src, tgt = write(tmp_path / "train.en", SRC), write(tmp_path / "train.de", TGT)
    cfg = cfg_for(tmp_path)
    assert pairs(data.load_split(cfg, "train")) == list(zip(SRC, TGT))
    # different size
    write(src, ["x y"])
    write(tgt, ["zo"])
    assert pairs(data.load_split(cfg, "train")) == [("x y", "zo")]
    # same size, newer modification time
    write(src, ["y x"])
    write(tgt, ["oz"])
    stamp = os.stat(src).st_mtime_ns + 1_000_000_000
    os.utime(src, ns=(stamp, stamp))
    os.utime(tgt, ns=(stamp, stamp))
    assert pairs(data.load_split(cfg, "train")) == [("y x", "oz")]


def test_changed_file_with_same_size_and_mtime_is_reloaded(tmp_path):
    """What `cp -p` / `rsync -t` of another same-size file does."""
    src = write(tmp_path / "train.en", ["a b"])
    write(tmp_path / "train.de", ["zo"])
    cfg = cfg_for(tmp_path)
    assert pairs(data.load_split(cfg, "train")) == [("a b", "zo")]
    before = os.stat(src)
    write(src, ["c d"])
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(src)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if after.st_ctime_ns == before.st_ctime_ns:
        pytest.skip("filesystem timestamps too coarse to tell the two writes apart")
    assert pairs(data.load_split(cfg, "train")) == [("c d", "zo")]


def test_changed_tsv_is_reloaded(tmp_path):
    path = write(tmp_path / "train.tsv", ["a\tb"])
    cfg = cfg_for(tmp_path)
    assert pairs(data.load_split(cfg, "train")) == [("a", "b")]
    write(path, ["a b\tc d", "e\tf"])
    assert pairs(data.load_split(cfg, "train")) == [("a b", "c d"), ("e", "f")]


def test_read_lines_plain_and_gz(tmp_path):
    assert data.read_lines(write(tmp_path / "x.txt", SRC)) == SRC
    assert data.read_lines(write(tmp_path / "y.txt", SRC, compress=True)) == SRC


# --- user mistakes ---------------------------------------------------------------------------


@pytest.mark.parametrize("longer", ["en", "de"])
def test_mismatched_line_counts_name_both_files(tmp_path, longer):
    write(tmp_path / "train.en", SRC + (["extra"] if longer == "en" else []))
    write(tmp_path / "train.de", TGT + (["extra"] if longer == "de" else []))
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    text = str(info.value)
    assert str(tmp_path / "train.en") in text and str(tmp_path / "train.de") in text
    assert "3 lines" in text


@pytest.mark.parametrize("present", ["en", "de"])
def test_missing_side_is_an_error(tmp_path, present):
    write(tmp_path / f"train.{present}", SRC)
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    missing = "de" if present == "en" else "en"
    assert f"train.{present}" in str(info.value) and f"train.{missing}" in str(info.value)


def test_missing_split_lists_what_was_looked_for(tmp_path):
    write(tmp_path / "train.en", SRC)
    write(tmp_path / "train.de", TGT)
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "val")
    text = str(info.value)
    for needle in ("'val'", "val.en", "val.de", "val.tsv", "val.jsonl", str(tmp_path)):
        assert needle in text, needle


def test_data_dir_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        data.load_split(cfg_for(tmp_path / "nope"), "train")


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gz"])
def test_invalid_utf8_names_file_and_line(tmp_path, compress):
    write(tmp_path / "train.en", SRC + ["x"])
    raw = b"ok\nok\n" + b"bad \xff\xfe byte\n" + b"ok\n"
    path = tmp_path / ("train.de.gz" if compress else "train.de")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    assert f"{path}:3" in str(info.value)
    assert "UTF-8" in str(info.value)


def test_truncated_gzip_is_a_data_error(tmp_path):
    blob = gzip.compress(("".join(f"line {i}\n" for i in range(2000))).encode())
    path = tmp_path / "x.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="unreadable"):
        data.read_lines(path)


def test_unopenable_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        data.read_lines(tmp_path / "missing.txt")


def test_bad_json_line_names_line(tmp_path):
    lines = [json.dumps({"en": "a", "de": "b"}), "{not json", json.dumps({"en": "c", "de": "d"})]
    write(tmp_path / "train.jsonl", lines)
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    assert f"{tmp_path / 'train.jsonl'}:2" in str(info.value)
    assert "invalid JSON" in str(info.value)


@pytest.mark.parametrize("line", [
    json.dumps({"en": "a"}),  # missing target field
    json.dumps({"en": "a", "de": 3}),  # not a string
    json.dumps(["a", "b"]),  # not an object
    json.dumps({"translation": {"en": "a"}}),  # translation without target language
], ids=["missing-field", "not-string", "not-object", "translation-missing-lang"])
def test_jsonl_wrong_shape_names_line_and_fields(tmp_path, line):
    write(tmp_path / "train.jsonl", [json.dumps({"en": "x", "de": "y"}), line])
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    text = str(info.value)
    assert f"{tmp_path / 'train.jsonl'}:2" in text
    assert "'en'" in text and "'de'" in text and "data.src_field" in text


@pytest.mark.parametrize("bad", ["a\tb\tc", "just one field"], ids=["3-fields", "1-field"])
def test_tsv_wrong_field_count_names_line(tmp_path, bad):
    write(tmp_path / "train.tsv", ["a\tb", bad])
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    text = str(info.value)
    assert f"{tmp_path / 'train.tsv'}:2" in text
    assert f"found {len(bad.split(chr(9)))}" in text


# --- large plain files: read by several processes ---------------------------------------------


@pytest.fixture
def parallel(monkeypatch):
    """Every plain file counts as large; three readers."""
    monkeypatch.setattr(data, "PARALLEL_BYTES", 1)
    monkeypatch.setattr(data, "MAX_READERS", 3)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)


def _corpus(n: int) -> tuple[list[str], list[str]]:
    src = [f"s{i} " + "x" * (i % 7) if i % 11 else "" for i in range(n)]  # empty lines too
    return src, [f"t{i} ü" for i in range(n)]


@pytest.mark.parametrize("n", [3, 10, 1000, 1001])
@pytest.mark.parametrize("final_newline", [True, False])
def test_parallel_reading_equals_one_reader(tmp_path, parallel, n, final_newline):
    src, tgt = _corpus(n)
    for name, lines in (("train.en", src), ("train.de", tgt)):
        text = "\r\n".join(lines) + ("\r\n" if final_newline else "")
        (tmp_path / name).write_bytes(text.encode("utf-8"))
    cut = data.shards([tmp_path / "train.en", tmp_path / "train.de"], 3)
    assert cut is not None and len(cut[0]) == (3 if n >= 3 else n)
    assert pairs(data.load_split(cfg_for(tmp_path), "train")) == list(zip(src, tgt))


def test_compressed_or_small_files_are_read_by_one_process(tmp_path, monkeypatch):
    write(tmp_path / "train.en", SRC)
    write(tmp_path / "train.de", TGT, compress=True)
    files = [tmp_path / "train.en", tmp_path / "train.de.gz"]
    assert data.shards(files, 4) is None
    monkeypatch.setattr(data, "PARALLEL_BYTES", 1)
    assert data.shards(files, 4) is None  # gzip cannot be cut
    assert data.shards([tmp_path / "train.en"] * 2, 1) is None  # one reader


def test_parallel_reading_keeps_the_errors(tmp_path, parallel):
    src, tgt = _corpus(1000)
    write(tmp_path / "train.en", src)
    write(tmp_path / "train.de", tgt + ["one more"])
    with pytest.raises(DataError, match=r"train.en has 1000 lines but .*train.de has more"):
        data.load_split(cfg_for(tmp_path), "train")
    raw = "".join(f"{t}\n" for t in tgt).encode()
    at = raw.index(b"t900 ")
    (tmp_path / "train.de").write_bytes(raw[:at] + b"\xff" + raw[at + 1:])  # in the last shard
    with pytest.raises(DataError) as info:
        data.load_split(cfg_for(tmp_path), "train")
    assert f"{tmp_path / 'train.de'}:901: invalid UTF-8" in str(info.value)


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_split_is_a_data_error(tmp_path, split):
    write(tmp_path / f"{split}.en", [])
    write(tmp_path / f"{split}.de", [])
    with pytest.raises(DataError, match=rf"split '{split}' is empty: .*{split}.en and "
                                        rf".*{split}.de hold no pairs"):
        data.load_split(cfg_for(tmp_path), split)
