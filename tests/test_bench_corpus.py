"""benchmarks/bench_corpus.py: the corpora it builds read back as the records it meant, in every
format, and its `tokenizers` ceiling tokenizes like the SentencePiece model it stands for.

Budget: a few seconds (1 MB corpora, no preparation).
"""
import os
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/
from benchmarks import bench_corpus as B  # noqa: E402
from bertjax.data import corpus, records  # noqa: E402
from bertjax.data.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def base():
  src, recs = B.source_records()
  assert len(recs) > 100 and all(r.strip() for r in recs)
  return recs


@pytest.mark.parametrize("fmt", B.FORMATS)
def test_corpus_reads_back(fmt, base, tmp_path, monkeypatch):
  monkeypatch.setattr(B, "PART_BYTES", 300_000)    # several files, as at scale
  facts = B.write_corpus(base, fmt, 1, str(tmp_path / fmt))
  want = list(B.corpus_records(base, 1 << 20))
  got = [r for p in corpus.expand_inputs(facts["glob"]) for c in records.plan_chunks(p)
         for r in records.read_chunk(c, "text", "id")]
  assert [(i, t) for t, i in got] == want
  assert facts["records"] == len(want) and facts["text_bytes"] >= 1 << 20
  assert len(facts["files"]) >= 3
  assert B.write_corpus(base, fmt, 1, str(tmp_path / fmt)) == facts   # kept for reruns


def test_unigram_ceiling_matches_sentencepiece(base):
  uni = B.unigram_from_spm_vocab(B.SPM[:-len(".model")] + ".vocab")
  sp = load_tokenizer(B.SPM)
  lines = [ln for r in base[::10] for ln in r.split("\n") if ln.strip()][:3000]
  got = [e.ids for e in uni.encode_batch(lines, add_special_tokens=False)]
  assert got == sp.encode_batch(lines)
