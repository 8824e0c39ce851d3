"""s2s/tokenizer.py: special ids, per-side pruning of a joint vocabulary, lossless round trips,
self-contained serialization, and CheckpointError/DataError for unusable inputs."""
from __future__ import annotations

import json

import pytest
import synthetic

from s2s.config import DataConfig
from s2s.errors import CheckpointError, DataError
from s2s.tokenizer import BOS, EOS, JOINT, KEPT, PAD, SPECIALS, SRC, TGT, UNK, Side, Tokenizer

SRC_LINES = synthetic.sentences(300, seed=11)
TGT_LINES = [synthetic.translate(s) for s in SRC_LINES]
CFG = DataConfig(vocab_size=64)


@pytest.fixture(scope="module")
def joint_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_joint")
    Tokenizer.train(SRC_LINES, TGT_LINES, CFG, out)
    return out


@pytest.fixture(scope="module")
def joint(joint_dir) -> Tokenizer:
    return Tokenizer.load(joint_dir)


@pytest.fixture(scope="module")
def separate_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok_separate")
    Tokenizer.train(SRC_LINES, TGT_LINES, DataConfig(vocab_size=64, joint_vocab=False), out)
    return out


def pieces_seen(processor, lines: list[str]) -> set[str]:
    return {processor.id_to_piece(i) for ids in processor.encode(lines) for i in ids}


def test_special_ids():
    assert (PAD, UNK, BOS, EOS) == (0, 1, 2, 3) == SPECIALS


@pytest.mark.parametrize("which", ["joint", "separate"])
def test_trained_models_have_the_special_ids(joint, separate_dir, which):
    tok = joint if which == "joint" else Tokenizer.load(separate_dir)
    for side in (tok.src, tok.tgt):
        p = side.processor
        assert (p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id()) == SPECIALS
    if which == "joint":
        assert tok.src.kept[:4] == list(SPECIALS) and tok.tgt.kept[:4] == list(SPECIALS)


def test_joint_training_writes_one_model_and_kept_ids(joint_dir):
    assert (joint_dir / JOINT).is_file() and (joint_dir / KEPT).is_file()
    assert not (joint_dir / SRC).exists() and not (joint_dir / TGT).exists()
    assert not list(joint_dir.glob("*.vocab"))
    assert Tokenizer.exists(joint_dir)


def test_pruned_sides_keep_only_pieces_seen_on_that_side(joint):
    p = joint.src.processor
    assert joint.tgt.processor is p  # one joint model
    specials = {p.id_to_piece(i) for i in SPECIALS}
    src_kept = {p.id_to_piece(i) for i in joint.src.kept} - specials
    tgt_kept = {p.id_to_piece(i) for i in joint.tgt.kept} - specials
    assert src_kept == pieces_seen(p, SRC_LINES)
    assert tgt_kept == pieces_seen(p, TGT_LINES)
    # the two sides of this task share no word, and 'z' only occurs in the target
    assert not any("z" in piece for piece in src_kept)
    assert any("z" in piece for piece in tgt_kept)
    assert joint.src_vocab_size == len(joint.src.kept) < p.get_piece_size()
    assert joint.tgt_vocab_size == len(joint.tgt.kept) < p.get_piece_size()


def test_pruned_ids_are_dense_and_unseen_pieces_are_unk(joint):
    for ids in joint.encode_src(SRC_LINES):
        assert ids and all(SPECIALS[-1] < i < joint.src_vocab_size for i in ids)
    for ids in joint.encode_tgt(TGT_LINES):
        assert ids and all(SPECIALS[-1] < i < joint.tgt_vocab_size for i in ids)
    # a target-only word on the source side (and vice versa) has no id there
    assert UNK in joint.encode_src(["zo"])[0]
    assert UNK in joint.encode_tgt(["a"])[0]


def test_round_trip_of_training_sentences(joint):
    assert joint.src.decode(joint.encode_src(SRC_LINES)) == SRC_LINES
    assert joint.decode_tgt(joint.encode_tgt(TGT_LINES)) == TGT_LINES


def test_empty_line_encodes_to_nothing(joint):
    assert joint.encode_src([""]) == [[]] and joint.encode_tgt([""]) == [[]]
    assert joint.decode_tgt([[]]) == [""]


def test_unpruned_joint_vocab_uses_sentencepiece_ids(tmp_path):
    tok = Tokenizer.train(SRC_LINES, TGT_LINES, DataConfig(vocab_size=64, prune_vocab=False),
                          tmp_path)
    assert not (tmp_path / KEPT).exists()
    size = tok.src.processor.get_piece_size()
    assert tok.src_vocab_size == tok.tgt_vocab_size == size
    assert tok.encode_src(SRC_LINES) == tok.src.processor.encode(SRC_LINES)
    assert tok.decode_tgt(tok.encode_tgt(TGT_LINES)) == TGT_LINES


@pytest.mark.parametrize("which", ["joint", "separate"])
def test_bytes_round_trip_gives_identical_encodings(joint, separate_dir, which):
    tok = joint if which == "joint" else Tokenizer.load(separate_dir)
    blobs = tok.to_bytes()
    assert set(blobs) == ({"joint", "kept"} if which == "joint" else {"src", "tgt"})
    again = Tokenizer.from_bytes(blobs)
    assert (again.src_vocab_size, again.tgt_vocab_size) == (tok.src_vocab_size,
                                                            tok.tgt_vocab_size)
    probe_src, probe_tgt = SRC_LINES[:50] + ["zo a"], TGT_LINES[:50] + ["a zo"]
    assert again.encode_src(probe_src) == tok.encode_src(probe_src)
    assert again.encode_tgt(probe_tgt) == tok.encode_tgt(probe_tgt)
    ids = tok.encode_tgt(TGT_LINES[:50])
    assert again.decode_tgt(ids) == tok.decode_tgt(ids)


def test_separate_vocabs_write_two_models(separate_dir):
    assert (separate_dir / SRC).is_file() and (separate_dir / TGT).is_file()
    assert not (separate_dir / JOINT).exists() and not (separate_dir / KEPT).exists()
    assert Tokenizer.exists(separate_dir)
    tok = Tokenizer.load(separate_dir)
    assert tok.src.processor is not tok.tgt.processor
    assert tok.src.kept is None and tok.tgt.kept is None
    assert tok.src.decode(tok.encode_src(SRC_LINES)) == SRC_LINES
    assert tok.decode_tgt(tok.encode_tgt(TGT_LINES)) == TGT_LINES


# --- errors ----------------------------------------------------------------------------------


def test_load_empty_dir_is_checkpoint_error(tmp_path):
    assert not Tokenizer.exists(tmp_path)
    with pytest.raises(CheckpointError) as info:
        Tokenizer.load(tmp_path)
    assert str(tmp_path) in str(info.value) and JOINT in str(info.value)


def test_load_with_only_one_separate_model_is_checkpoint_error(separate_dir, tmp_path):
    (tmp_path / SRC).write_bytes((separate_dir / SRC).read_bytes())
    assert not Tokenizer.exists(tmp_path)
    with pytest.raises(CheckpointError):
        Tokenizer.load(tmp_path)


def test_corrupt_model_file_is_checkpoint_error(tmp_path):
    (tmp_path / JOINT).write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        Tokenizer.load(tmp_path)


def test_from_bytes_without_model_is_checkpoint_error():
    with pytest.raises(CheckpointError, match="no SentencePiece model"):
        Tokenizer.from_bytes({})


def test_kept_ids_must_start_with_specials(joint):
    blobs = joint.to_bytes()
    kept = json.loads(blobs["kept"])
    kept["src"] = kept["src"][1:]
    with pytest.raises(CheckpointError, match="special ids"):
        Tokenizer.from_bytes({**blobs, "kept": json.dumps(kept)})


def test_model_with_other_special_ids_is_rejected(tmp_path):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(sentence_iterator=iter(SRC_LINES),
                                   model_prefix=str(tmp_path / "plain"), vocab_size=20,
                                   hard_vocab_limit=False, minloglevel=2)  # unk 0, bos 1, eos 2
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "plain.model"))
    with pytest.raises(CheckpointError, match="special ids"):
        Side(processor)


def test_training_on_no_text_is_data_error(tmp_path):
    with pytest.raises(DataError, match="data.vocab_size"):
        Tokenizer.train([], [], CFG, tmp_path)
    with pytest.raises(DataError):
        Tokenizer.train(["", ""], ["", ""], DataConfig(vocab_size=64, joint_vocab=False),
                        tmp_path / "sep")
