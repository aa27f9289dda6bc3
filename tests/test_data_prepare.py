"""Corpus reading, sentence splitting, `prepare` (shards, manifest, re-runs) and bad inputs."""
import json
import os
import warnings

import ml_collections
import numpy as np
import pytest

from bertjax.config import base_config
from bertjax.data import corpus, shards
from bertjax.data.prepare import format_summary, prepare_corpus
from bertjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")


def data_cfg(corpus_glob, **kw) -> ml_collections.ConfigDict:
  d = base_config().data
  d.corpus = corpus_glob
  d.tokenizer = SPM
  for k, v in kw.items():
    d[k] = v
  return d


def test_split_sentences():
  text = ('PRESIDENT HARRY S. TRUMAN spoke to Mr. Smith at 4 A. M., with a "bunk". '
          '"Gold, surely!" he said. It was 3.5 miles.  Yes? (Indeed.) Then 1945 came')
  assert corpus.split_sentences(text) == [
      'PRESIDENT HARRY S. TRUMAN spoke to Mr. Smith at 4 A. M., with a "bunk".',
      '"Gold, surely!" he said.', "It was 3.5 miles.", "Yes?", "(Indeed.)", "Then 1945 came"]
  assert corpus.split_sentences("  \n ") == []


def test_formats_bom_crlf(tmp_path):
  bert = tmp_path / "b.txt"   # BERT format, BOM + CRLF
  bert.write_bytes("\ufeffFirst sentence.\r\nSecond one here.\r\n\r\nOther doc.\r\n".encode())
  docs = list(corpus.read_documents(str(bert)))
  assert docs == [["First sentence.", "Second one here."], ["Other doc."]]
  prose = tmp_path / "p.txt"  # hard-wrapped prose: one document, sentences across lines
  prose.write_text("It was a dark\nnight. The rain\nfell.\n\nA new paragraph began here.\n")
  assert list(corpus.read_documents(str(prose))) == [
      ["It was a dark night.", "The rain fell.", "A new paragraph began here."]]
  para = tmp_path / "q.txt"   # one paragraph per line (long lines): lines are not joined
  para.write_text("Title line\n" + "Long sentence number one goes on and on and on. " * 3 + "\n")
  assert list(corpus.read_documents(str(para)))[0][0] == "Title line"


def test_auto_format_on_real_files():
  def fmt(name):
    return corpus.detect_format(corpus.read_text(os.path.join(REPO, "data", "corpus", name))
                                .splitlines())
  assert fmt("bert_sample_text.txt") == "bert"
  assert fmt("gutenberg_carroll-alice.txt") == "prose"
  assert fmt("inaugural_1861-Lincoln.txt") == "prose"


def test_latin1_fallback_warns_with_name(tmp_path):
  f = tmp_path / "latin.txt"
  f.write_bytes("Caf\xe9 au lait.\nNa\xefve words.\n".encode("latin-1"))
  stats = corpus.ReadStats()
  with pytest.warns(UserWarning, match="latin.txt: not valid UTF-8"):
    docs = list(corpus.read_documents(str(f), "bert", stats))
  assert docs == [["Café au lait.", "Naïve words."]] and stats.latin1_files == [str(f)]


def test_prepare_counts_rerun_and_heldout(tmp_path):
  src = tmp_path / "c"
  src.mkdir()
  for i in range(40):
    (src / f"d{i:02d}.txt").write_text(
        "\n".join(f"Document {i} has sentence number {j}." for j in range(3 + i % 5)) + "\n")
  out = str(tmp_path / "prep")
  cfg = data_cfg(str(src / "*.txt"), heldout_fraction=0.25, corpus_format="bert")
  m = prepare_corpus(cfg, out)
  tr, ho = m["splits"]["train"], m["splits"]["heldout"]
  assert tr["documents"] + ho["documents"] == 40 and 3 <= ho["documents"] <= 20
  assert tr["sentences"] + ho["sentences"] == sum(3 + i % 5 for i in range(40))
  assert m["tokenizer"]["sha256"] == m["fingerprint"]["tokenizer"]["sha256"]
  assert json.load(open(os.path.join(out, "manifest.json"))) == m
  # records round-trip: sentence lengths in the record == index; tokens decode to the text
  sent, pieces = shards.load_index(out, "train")
  store = shards.DocStore(out, tr, m["token_dtype"])
  (lens, toks), = store.read(np.array([0]))
  np.testing.assert_array_equal(lens, sent[:pieces[0, 1]])
  from bertjax.data.tokenizer import load_tokenizer
  assert load_tokenizer(SPM).decode(toks[:lens[0]]).startswith("document ")
  # re-run: nothing redone (shards untouched); a changed input redoes the work
  shard = os.path.join(out, tr["shards"][0]["file"])
  mtime = os.stat(shard).st_mtime_ns
  assert prepare_corpus(cfg, out) == m and os.stat(shard).st_mtime_ns == mtime
  (src / "d00.txt").write_text("Changed text here.\nAnd more of it.\n")
  (tmp_path / "prep" / "users-own.bin").write_bytes(b"keep me")
  m2 = prepare_corpus(cfg, out)
  assert (tmp_path / "prep" / "users-own.bin").read_bytes() == b"keep me"  # only ours removed
  assert m2["fingerprint"] != m["fingerprint"]
  # same split assignment whatever the file order (content hash): heldout stays stable
  assert abs(m2["splits"]["heldout"]["documents"] - ho["documents"]) <= 1
  # a corrupt manifest: reading it names the file; preparing again rebuilds it with a warning
  from bertjax.data.prepare import load_manifest
  with open(os.path.join(out, "manifest.json"), "w") as f:
    f.write('{"splits": {"train"')
  with pytest.raises(UserError, match="manifest.json: not a valid manifest"):
    load_manifest(out)
  with pytest.warns(UserWarning, match="preparing the corpus again"):
    m3 = prepare_corpus(cfg, out)
  assert m3["fingerprint"] == m2["fingerprint"] and load_manifest(out) == m3


def test_prepare_parallel_equals_serial(tmp_path):
  cfg = data_cfg(os.path.join(REPO, "data", "corpus", "inaugural_18*.txt"), heldout_fraction=0.1)
  a = prepare_corpus(cfg, str(tmp_path / "a"), num_workers=0)
  b = prepare_corpus(cfg, str(tmp_path / "b"), num_workers=2)
  assert a["splits"] == b["splits"] and a["summary"] == b["summary"]
  for s in ("train", "heldout"):
    for suffix in ("-sentlens.bin", "-pieces.bin", "-00000.array_record"):
      assert open(tmp_path / "a" / (s + suffix), "rb").read() == \
          open(tmp_path / "b" / (s + suffix), "rb").read()


def test_bad_inputs(tmp_path):
  out = str(tmp_path / "prep")
  with pytest.raises(UserError, match="matches no file"):
    prepare_corpus(data_cfg(str(tmp_path / "missing.txt")), out)
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("\n \n\t\n")
  with pytest.raises(UserError, match="no text left"):
    prepare_corpus(data_cfg(str(tmp_path / "*.txt")), out)
  with pytest.raises(UserError, match="corpus_format"):
    prepare_corpus(data_cfg(str(tmp_path / "*.txt"), corpus_format="xml"), out)
  # mixed good and bad: empty files, one-sentence docs, a huge line, Latin-1 -> counted
  (tmp_path / "good.txt").write_text("A first sentence.\nA second sentence.\n\nAlone.\n")
  (tmp_path / "long.txt").write_text("word " * 3000 + "\n")
  (tmp_path / "latin.txt").write_bytes(b"Caf\xe9 one.\nCaf\xe9 two.\n")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    m = prepare_corpus(data_cfg(str(tmp_path / "*.txt"), heldout_fraction=0.0), out)
  assert any("latin.txt" in str(w.message) for w in caught)
  s = m["summary"]
  assert s["files"] == 5 and s["empty_files"] == 2
  assert s["one_sentence_documents"] == 1           # "Alone." (the long line became 6)
  assert s["long_sentences_split"] == 1
  assert [os.path.basename(f) for f in s["latin1_files"]] == ["latin.txt"]
  sent, _ = shards.load_index(out, "train")
  assert sent.max() == shards.MAX_SENTENCE_TOKENS and m["splits"]["train"]["sentences"] == 2 + 1 + 6 + 2
  assert "2 empty files" in format_summary(m) and "cut" in format_summary(m)


def test_cli_prepare_and_errors(tmp_path, capsys):
  from bertjax.cli import main
  cfg_file = tmp_path / "cfg.py"
  cfg_file.write_text("from bertjax.config import base_config\n"
                      "def get_config():\n  return base_config()\n")
  rc = main(["prepare", "--config", str(cfg_file), "--out", str(tmp_path / "p"),
             "--config.data.heldout_fraction=0.0",
             f"--config.data.tokenizer={SPM}",
             f"--config.data.corpus={os.path.join(REPO, 'data', 'corpus', 'bert_sample_text.txt')}"])
  assert rc == 0 and "train:" in capsys.readouterr().out
  rc = main(["prepare", "--config", str(cfg_file), "--out", str(tmp_path / "q"),
             f"--config.data.corpus={tmp_path}/nothing*.txt"])
  assert rc == 2 and "matches no file" in capsys.readouterr().err


def test_tfds_corpus_without_tensorflow(tmp_path):
  """A TFDS dataset in array_record format (built here, no TensorFlow) is read by name."""
  import tensorflow_datasets as tfds

  class TinyArticles(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "title": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(30):
        yield i, {"title": f"t{i}", "text": f"Article {i} starts here. It has two sentences."
                                            f"\n\nA second paragraph of article {i}."}

  data_dir = str(tmp_path / "tfds")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    TinyArticles(data_dir=data_dir, file_format="array_record").download_and_prepare()
  cfg = data_cfg("tfds:tiny_articles", tfds_data_dir=data_dir, heldout_fraction=0.2)
  m = prepare_corpus(cfg, str(tmp_path / "p"))
  sp = m["splits"]
  assert sp["train"]["documents"] + sp["heldout"]["documents"] == 30
  assert sp["train"]["sentences"] + sp["heldout"]["sentences"] == 90
  assert sp["heldout"]["documents"] > 0
  cfg.tfds_text_field = "body"
  with pytest.raises(UserError, match="tfds_text_field='body'.*features: \\['text', 'title'\\]"):
    prepare_corpus(cfg, str(tmp_path / "q"))
  with pytest.raises(UserError, match="cannot open"):
    prepare_corpus(data_cfg("tfds:no_such_dataset", tfds_data_dir=data_dir), str(tmp_path / "r"))
