"""Property-based fuzzing (hypothesis) of the parsers and entry points: whatever comes in, the
answer is a result or s2s's own error, never another exception. Examples are bounded (and
derandomized: CI sees the same examples every run) so that the suite stays fast."""
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2s import checkpoint, config, data
from s2s.errors import CheckpointError, ConfigError, DataError

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
SLOW_FUZZ = settings(FUZZ, max_examples=20)

SECTION_KEYS = [f"{section}.{name}" for section, name in
                (key.split(".", 1) for key, _ in config.fields_of())]
yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                         st.text(max_size=20))
yaml_values = st.recursive(yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6)


@FUZZ
@given(st.text(max_size=300))
def test_any_config_text_is_a_config_or_a_config_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        assert isinstance(config.load(path), config.Config)
    except ConfigError:
        pass


@FUZZ
@given(st.dictionaries(st.sampled_from(["data", "model", "train", "other"]),
                       st.dictionaries(st.sampled_from([k.split(".")[1] for k in SECTION_KEYS]
                                                       + ["nope"]), yaml_values, max_size=4),
                       max_size=3))
def test_any_config_mapping_is_a_config_or_a_config_error(raw):
    try:
        assert isinstance(config.from_dict(raw), config.Config)
    except ConfigError:
        pass


@FUZZ
@given(st.one_of(st.text(max_size=60),
                 st.builds(lambda k, v: f"{k}={v}", st.sampled_from(SECTION_KEYS),
                           st.text(max_size=30))))
def test_any_set_override_is_a_config_or_a_config_error(text):
    try:
        assert isinstance(config.from_dict({}, [text]), config.Config)
    except ConfigError:
        pass


line_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" "))


@SLOW_FUZZ
@given(st.lists(line_bytes, max_size=8), st.lists(line_bytes, max_size=8),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_any_aligned_text_is_pairs_or_a_data_error_naming_the_file(tmp_path, src, tgt, eol,
                                                                   final):
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    for name, lines in (("train.en", src), ("train.de", tgt)):
        (directory / name).write_bytes(eol.join(lines) + (eol if final and lines else b""))
    cfg = config.DataConfig(dir=str(directory), src_lang="en", tgt_lang="de")
    try:
        ds = data.load_split(cfg, "train")
    except DataError as exc:
        assert "train.en" in str(exc) or "train.de" in str(exc) or "empty" in str(exc)
        return
    assert len(ds) == len(src) == len(tgt)


@SLOW_FUZZ
@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), min_size=1,
                max_size=6))
def test_any_tsv_is_pairs_or_a_data_error_naming_file_and_line(tmp_path, lines):
    directory = Path(tempfile.mkdtemp(dir=tmp_path))
    (directory / "train.tsv").write_bytes(b"\n".join(lines) + b"\n")
    cfg = config.DataConfig(dir=str(directory), src_lang="en", tgt_lang="de")
    try:
        ds = data.load_split(cfg, "train")
    except DataError as exc:
        assert "train.tsv" in str(exc)
        return
    assert len(ds) == len(lines)


@pytest.fixture(scope="module")
def real_checkpoint(toy_run) -> bytes:
    return checkpoint.resolve(toy_run).read_bytes()


@SLOW_FUZZ
@given(st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16)), min_size=1,
                max_size=4), st.booleans())
def test_a_mutated_checkpoint_is_a_model_or_a_checkpoint_error(tmp_path, real_checkpoint,
                                                               patches, truncate):
    from s2s.translate import Translator

    blob = bytearray(real_checkpoint)
    for where, patch in patches:
        at = int(where * (len(blob) - len(patch)))
        blob[at:at + len(patch)] = patch
    if truncate:
        blob = blob[:len(blob) // 2]
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "mutated.pt"
    path.write_bytes(bytes(blob))
    try:
        translator = Translator.from_run(path, device="cpu")
    except CheckpointError:
        return
    assert len(translator.translate(["a b c", ""], precision="fp32")) == 2


@pytest.fixture(scope="module")
def translator(toy_run):
    from s2s.translate import Translator

    return Translator.from_run(toy_run, device="cpu")


@FUZZ
@given(st.lists(st.one_of(line_bytes, st.text(max_size=30).map(
    lambda t: t.replace("\n", " ").encode("utf-8", "surrogatepass"))), max_size=10))
def test_translate_writes_exactly_one_line_per_input_line(translator, lines):
    raw = b"\n".join(lines) + (b"\n" if lines else b"")
    sink = io.StringIO()
    written = translator.translate_stream(io.BytesIO(raw), sink, precision="fp32",
                                          max_src_len=30)
    expected = len(raw.split(b"\n")) - 1 if raw else 0
    assert written == expected and sink.getvalue().count("\n") == expected

