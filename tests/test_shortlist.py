"""Target-vocabulary shortlists: the lexicon learns translations, a batch's shortlist holds what
it must, searching over a shortlist equals searching a model that can only say those pieces, the
int8 / float row subsets are right and freed with their shortlist, and the CLI path works."""
from __future__ import annotations

import gc
import json
import random

import pytest
import torch
from click.testing import CliRunner
from tiny_models import padded, sources, tiny_model

from s2s import checkpoint, search, shortlist
from s2s.cli import main
from s2s.errors import CheckpointError
from s2s.ops import gemm
from s2s.tokenizer import EOS, PAD, UNK


def _parallel(n: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    """Source word w (4..23) is always translated as target word w + 10, in shuffled order,
    with a frequent target word 5 ("the") added to every sentence."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = rng.sample(range(4, 24), rng.randint(2, 6))
        translated = [w + 10 for w in words] + [5]
        rng.shuffle(translated)
        src.append(words)
        tgt.append(translated)
    return src, tgt


def test_lexicon_learns_a_one_to_one_translation():
    src, tgt = _parallel(400)
    lexicon = shortlist.build(src, tgt, 24, 34, k=3)
    assert lexicon["table"].shape == (24, 3) and lexicon["table"].dtype == torch.int32
    for w in range(4, 24):  # IBM model 1 explains the shared "the" away: the translation first
        assert int(lexicon["table"][w, 0]) == w + 10
    assert int(lexicon["frequent"][0]) == 5  # in every sentence
    assert sorted(lexicon["frequent"].tolist()) == [5, *range(14, 34)]  # seen targets only
    assert (lexicon["table"][:4] == EOS).all()  # unseen source ids: padded with EOS


def test_lexicon_uses_at_most_max_entries():
    src, tgt = _parallel(400)
    few = shortlist.build(src, tgt, 24, 34, k=3, max_entries=1)  # not even one pair
    assert (few["table"] == EOS).all() and int(few["frequent"][0]) == 5


def test_a_large_corpus_is_sampled_in_contiguous_blocks(monkeypatch):
    """Blocks of consecutive pairs: reading them touches only those parts of the mapped file."""
    import numpy as np

    class Corpus:
        def __len__(self):
            return 5000

        def select(self, rows):
            self.rows = np.asarray(rows)
            return {"src_ids": [[4, 5]] * len(rows), "tgt_ids": [[6]] * len(rows)}

    monkeypatch.setattr(shortlist, "SAMPLE_ROWS", 1000)
    monkeypatch.setattr(shortlist, "SAMPLE_BLOCK", 100)
    corpus = Corpus()
    shortlist.build_for(corpus, 8, 8, seed=3, say=lambda message: None)
    rows = corpus.rows
    assert len(rows) == 1000 and len(set(rows.tolist())) == 1000 and rows.max() < 5000
    blocks = rows.reshape(10, 100)
    assert (np.diff(blocks, axis=1) == 1).all() and (blocks[:, 0] % 100 == 0).all()
    first = rows.copy()
    shortlist.build_for(corpus, 8, 8, seed=3, say=lambda message: None)
    assert (corpus.rows == first).all()  # seeded


def test_select_holds_frequent_translations_and_specials():
    src, tgt = _parallel(400)
    lexicon = shortlist.build(src, tgt, 24, 34, k=3)
    batch = torch.tensor([[4, 7, PAD], [9, PAD, PAD]])
    vocab = shortlist.select(lexicon, batch, k=1, frequent=1)
    assert vocab.tolist() == sorted({UNK, EOS, 5, 14, 17, 19})
    wider = shortlist.select(lexicon, batch, k=3, frequent=4)
    assert set(vocab.tolist()) < set(wider.tolist())
    assert torch.equal(wider, torch.unique(wider))  # sorted, no repeats


def test_malformed_lexicons_are_refused():
    good = {"table": torch.zeros(3, 2, dtype=torch.int32), "frequent": torch.tensor([4])}
    assert shortlist.checked(good, "here", tgt_vocab=6) is good
    for bad in (None, {"table": torch.zeros(3, 2)}, {**good, "frequent": torch.tensor([[1]])},
                {**good, "table": torch.zeros(3, 2)}, {**good, "frequent": torch.tensor([6])}):
        with pytest.raises(CheckpointError, match="here: the target-vocabulary lexicon"):
            shortlist.checked(bad, "here", tgt_vocab=6)


class _Restricted:
    """The model with every target outside `allowed` impossible (probabilities renormalised):
    searching it over the whole vocabulary must equal searching the model over `allowed`."""

    def __init__(self, model, allowed: torch.Tensor) -> None:
        self.model = model
        self.mask = torch.zeros(model.generator.weight.shape[0], dtype=torch.bool)
        self.mask[allowed] = True

    def encode(self, src, lengths):
        return self.model.encode(src, lengths)

    def step(self, tokens, enc, state, vocab=None):
        log_probs, state, weights = self.model.step(tokens, enc, state)
        return log_probs.masked_fill(~self.mask, float("-inf")).log_softmax(-1), state, weights

    def reorder(self, obj, index):
        return self.model.reorder(obj, index)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("options", [dict(beam=1), dict(beam=3), dict(beam=3, nbest=2),
                                     dict(beam=2, min_len=2, max_len_a=0, max_len_b=4),
                                     dict(beam=1, min_len=1, max_len_a=0, max_len_b=3)])
def test_shortlisted_search_equals_the_restricted_model(seed, options):
    model = tiny_model(seed, tgt_vocab=12)
    allowed = torch.tensor([UNK, EOS, 4, 6, 7, 10])
    src, lengths = padded(sources(seed, 5))
    opts = search.SearchOptions(**options)
    got = search.search(model, src, lengths, opts, vocab=allowed)
    want = search.search(_Restricted(model, allowed), src, lengths, opts)
    for mine, theirs in zip(got, want):
        assert [h.tokens for h in mine] == [h.tokens for h in theirs]
        assert [h.score for h in mine] == pytest.approx([h.score for h in theirs], abs=1e-5)
        assert all(set(h.tokens) <= set(allowed.tolist()) for h in mine)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_shortlist_of_everything_changes_nothing(beam):
    model = tiny_model(4, tgt_vocab=9)
    src, lengths = padded(sources(4, 6))
    opts = search.SearchOptions(beam=beam)
    full = search.search(model, src, lengths, opts)
    listed = search.search(model, src, lengths, opts, vocab=torch.arange(9))
    assert [[(h.tokens, h.score) for h in hs] for hs in full] == \
        [[(h.tokens, h.score) for h in hs] for hs in listed]


def test_sampling_draws_from_the_shortlist_only():
    model = tiny_model(1, tgt_vocab=12)
    allowed = torch.tensor([EOS, 5, 8])
    src, lengths = padded(sources(1, 8))
    opts = search.SearchOptions(sampling=True, seed=3, nbest=3, temperature=2.0)
    found = search.search(model, src, lengths, opts, vocab=allowed)
    tokens = {t for hyps in found for h in hyps for t in h.tokens}
    assert tokens and tokens <= {5, 8}


def test_linear_rows_float_and_int8_and_freed_with_the_shortlist():
    torch.manual_seed(0)
    x, w, b = torch.randn(7, 32), torch.randn(50, 32), torch.randn(50)
    rows = torch.tensor([1, 4, 9, 30, 49])
    want = torch.nn.functional.linear(x, w[rows], b[rows])
    assert torch.allclose(gemm.linear_rows(x, w, b, rows), want, atol=1e-5)
    cache: dict = {}
    with torch.no_grad(), gemm.int8(cache):
        got = gemm.linear_rows(x, w, b, rows)
        full = gemm.linear(x, w, b)
    assert (got - want).abs().max() < 0.03 * want.abs().max()  # int8 (7-bit inputs on AVX2)
    assert torch.allclose(got, full[:, rows], atol=1e-4)  # the same int8 weights as the full layer
    kinds = sorted(key[0] for key in cache)
    assert kinds == ["linear", "quantized", "rows"]
    del rows, got
    gc.collect()
    assert sorted(key[0] for key in cache) == ["linear", "quantized"]  # the subset went with rows


def test_int8_weights_repack_after_an_in_place_change():
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    cache: dict = {}
    with torch.no_grad(), gemm.int8(cache):
        before = gemm.linear(x, w)
        w.mul_(2)
        after = gemm.linear(x, w)
    assert torch.allclose(after, 2 * before, rtol=0.05, atol=0.05)


# -- through a run and the CLI --------------------------------------------------------------------
def test_a_trained_run_has_a_lexicon_and_translate_uses_it(toy_run, tmp_path):
    payload = checkpoint.load(checkpoint.resolve(toy_run))
    lexicon = shortlist.checked(payload["lexicon"], "best")
    assert not (toy_run / shortlist.LEXICON_FILE).exists()  # in the checkpoints only
    assert int(lexicon["frequent"].numel()) > 0
    source = tmp_path / "in.txt"
    source.write_text("a b c\n\nd e f g\n" + "x " * 300 + "\n", encoding="utf-8")
    out = tmp_path / "out.txt"
    result = CliRunner().invoke(main, ["translate", str(toy_run), "-i", str(source), "-o",
                                       str(out), "--beam", "3", "--shortlist", "3",
                                       "--shortlist-frequent", "5", "--output-scores"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert records[1]["translation"] == ""


def _without_lexicon(toy_run, tmp_path):
    run = tmp_path / "old_run"
    (run / "checkpoints").mkdir(parents=True)
    payload = checkpoint.load(checkpoint.resolve(toy_run))
    payload = {k: v for k, v in payload.items() if k not in ("lexicon", "format")}
    checkpoint.save(payload, run / "checkpoints" / "last.pt")
    for name in ("config.yaml", "spm.model", "vocab.json"):
        if (toy_run / name).exists():
            (run / name).write_bytes((toy_run / name).read_bytes())
    return run


def test_a_run_without_a_lexicon_says_how_to_build_one(toy_run, toy_data, tmp_path):
    run = _without_lexicon(toy_run, tmp_path)
    source = tmp_path / "in.txt"
    source.write_text("a b c\n", encoding="utf-8")
    args = ["translate", str(run), "-i", str(source), "--shortlist", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "has no target-vocabulary lexicon" in result.output and "s2s lexicon" in result.output
    assert CliRunner().invoke(main, args[:4]).exit_code == 0  # without --shortlist: fine
    built = CliRunner().invoke(main, ["lexicon", str(run), "--set", f"data.dir={toy_data}"])
    assert built.exit_code == 0, built.output
    assert (run / shortlist.LEXICON_FILE).is_file()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 1


def test_a_damaged_lexicon_file_is_one_clear_error(toy_run, tmp_path):
    run = _without_lexicon(toy_run, tmp_path)
    (run / shortlist.LEXICON_FILE).write_bytes(b"not a zip")
    source = tmp_path / "in.txt"
    source.write_text("a b c\n", encoding="utf-8")
    plain = CliRunner().invoke(main, ["translate", str(run), "-i", str(source)])
    assert plain.exit_code == 0, plain.output  # only --shortlist reads the lexicon
    result = CliRunner().invoke(main, ["translate", str(run), "-i", str(source), "--shortlist",
                                       "2"])
    assert result.exit_code == 1 and "lexicon.pt" in result.output
    assert "Traceback" not in result.output


def test_lexicon_of_a_non_run_is_an_error(tmp_path):
    result = CliRunner().invoke(main, ["lexicon", str(tmp_path)])
    assert result.exit_code == 1 and "is it a run directory" in result.output


def test_average_keeps_the_lexicon(toy_run, tmp_path):
    out = tmp_path / "avg.pt"
    result = CliRunner().invoke(main, ["average", str(toy_run), "--last", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    averaged = checkpoint.load(out)
    original = checkpoint.load(checkpoint.resolve(toy_run))
    assert torch.equal(averaged["lexicon"]["table"], original["lexicon"]["table"])


def test_a_rebuilt_lexicon_file_is_used_instead_of_the_checkpoints(toy_run, tmp_path):
    import shutil

    from s2s.translate import Translator

    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    payload = checkpoint.load(checkpoint.resolve(run))
    vocab = payload["lexicon"]["table"].shape[0]
    only_eos = {"table": torch.full((vocab, 4), EOS, dtype=torch.int32),
                "frequent": torch.tensor([EOS], dtype=torch.int32)}
    shortlist.save(only_eos, run / shortlist.LEXICON_FILE)
    translator = Translator.from_run(run)
    assert torch.equal(translator.lexicon()["table"], only_eos["table"])
    found = translator.search(["a b c", "d e"], beam=2, shortlist=4, shortlist_frequent=1)
    # the shortlist holds EOS and UNK only: every translation is empty or UNK pieces
    assert all(set(translator.tokenizer.encode_tgt([f[0]["translation"]])[0]) <= {UNK}
               for f in found)
