"""Task readers (real GLUE / SQuAD files, synthetic CoNLL), featurizers and batching."""
import json

import numpy as np
import pytest

from bertjax.errors import UserError
from bertjax.tasks import conll, featurize, glue, registry, squad

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "a",
         "dog", "ran", "eu", "rejects", "german", "call", "to", "boycott", "british", "lamb",
         "peter", "black", "##s", "play", "##ing", ".", ",", "in", "paris", "where", "did",
         "what", "?", "1990", "un", "##believ", "##able", "good", "bad", "movie"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  from bertjax.data.tokenizer import load_tokenizer
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n")
  return load_tokenizer(str(path), do_lower_case=True)


# ------------------------------------------------------------------ real GLUE files

def test_sst2_real_files(shared_data):
  spec = registry.get("SST-2")
  d = str(shared_data / "glue" / "SST-2")
  train, dev, test = (spec.read(d, s, None) for s in ("train", "dev", "test"))
  assert (len(train), len(dev), len(test)) == (67349, 872, 1821)
  assert dev[0].text_a.startswith("it 's a charming") and dev[0].label == "1"
  assert test[0].label is None and test[0].guid == "0"
  assert {e.label for e in train} == {"0", "1"}


def test_cola_has_no_header_and_four_columns(shared_data):
  spec = registry.get("cola")
  d = str(shared_data / "glue" / "CoLA")
  train, dev, test = (spec.read(d, s, None) for s in ("train", "dev", "test"))
  # No header: the first line is an example (dev also lacks a trailing newline).
  assert (len(train), len(dev), len(test)) == (8551, 1043, 1063)
  assert train[0].text_a.startswith("Our friends won't buy this analysis")
  assert dev[-1].text_a and dev[-1].label in ("0", "1")
  assert test[0].text_a == "Bill whistled past the house."


def test_mrpc_bom_and_unbalanced_quotes(shared_data):
  spec = registry.get("mrpc")
  d = str(shared_data / "glue" / "MRPC")
  train, dev = spec.read(d, "train", None), spec.read(d, "dev", None)
  assert (len(train), len(dev)) == (3668, 408)   # the BOM'd header was recognised
  # Quoting off: a leading double quote is text, not the start of a quoted field.
  assert dev[0].text_b.startswith('"The foodservice pie business')
  assert dev[0].label == "1" and train[1].label == "0"


def test_malformed_row_names_file_and_line(tmp_path):
  (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood movie\t1\nbad movie\n")
  with pytest.raises(UserError, match=r"train\.tsv:3: expected at least 2"):
    registry.get("sst2").read(str(tmp_path), "train", None)
  (tmp_path / "train.tsv").write_text("sentence\tlabel\ngood movie\t7\n")
  with pytest.raises(UserError, match=r"train\.tsv:2: label '7'"):
    registry.get("sst2").read(str(tmp_path), "train", None)
  with pytest.raises(UserError, match="no dev file"):
    registry.get("sst2").read(str(tmp_path), "dev", None)
  with pytest.raises(UserError, match="did you mean SST-2"):
    registry.get("sst")


def test_generic_csv_and_jsonl(tmp_path):
  import ml_collections
  f = ml_collections.ConfigDict(dict(text_column="review", text_b_column="", label_column="y",
                                     train_file="", dev_file="", test_file=""))
  (tmp_path / "train.csv").write_text('review,y\n"good, really",pos\nbad,neg\n')
  ex = registry.get("csv").read(str(tmp_path), "train", f)
  assert [(e.text_a, e.label) for e in ex] == [("good, really", "pos"), ("bad", "neg")]
  (tmp_path / "train.jsonl").write_text('{"review": "good", "y": 1}\n\n{"review": "bad"}\n')
  with pytest.raises(UserError, match=r"train\.jsonl:3: no label field 'y'"):
    registry.get("jsonl").read(str(tmp_path), "train", f)


# ------------------------------------------------------------------ CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O
. . O O

Peter NNP B-NP I-PER
Blacks NNP I-NP I-PER
"""


def test_conll_reader_columns_docstart_blank_lines(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text(CONLL)
  sents = conll.read_conll(str(path), "ner")
  assert [s.words for s in sents] == [["EU", "rejects", "German", "call", "."],
                                      ["Peter", "Blacks"]]
  assert sents[0].tags == ["I-ORG", "O", "I-MISC", "O", "O"]
  assert conll.read_conll(str(path), "pos")[1].tags == ["NNP", "NNP"]
  assert conll.read_conll(str(path), "2")[0].tags[0] == "B-NP"
  path.write_text(CONLL + "bad line with five fields\n")
  with pytest.raises(UserError, match=r"train\.txt:11: expected 4 columns"):
    conll.read_conll(str(path))


def test_tagging_features_label_first_subtoken(tok, tmp_path):
  from bertjax.tasks.families import tagging_features as _tagging_features
  sents = [conll.Sentence("s", ["Peter", "Blacks", "playing"], ["I-PER", "I-PER", "O"])]
  labels = {"O": 0, "I-PER": 1}
  f = _tagging_features(sents, tok, 16, labels)
  # [CLS] peter black ##s play ##ing [SEP]
  assert [tok.id_to_token(i) for i in f["input_ids"][0][:7]] == [
      "[CLS]", "peter", "black", "##s", "play", "##ing", "[SEP]"]
  np.testing.assert_array_equal(f["label_weights"][0][:7], [0, 1, 1, 0, 1, 0, 0])
  np.testing.assert_array_equal(f["label_ids"][0][[1, 2, 4]], [1, 1, 0])
  np.testing.assert_array_equal(f["word_index"][0][:7], [-1, 0, 1, -1, 2, -1, -1])
  # A sentence longer than the sequence is cut into chunks at word boundaries.
  f = _tagging_features(sents, tok, 5, labels)       # room for 3 pieces per chunk
  assert list(f["sentence_index"]) == [0, 0]
  assert sorted(w for row in f["word_index"] for w in row if w >= 0) == [0, 1, 2]


# ------------------------------------------------------------------ SQuAD

def test_squad_real_file_and_article_split(shared_data):
  import ml_collections
  d = str(shared_data / "squad")
  f = ml_collections.ConfigDict(dict(article_split=40, train_file="", dev_file="", test_file=""))
  spec = registry.get("squad")
  train, dev = spec.read(d, "train", f), spec.read(d, "dev", f)
  assert len(train) + len(dev) == 10570
  assert {e.article for e in train} == set(range(40))
  assert {e.article for e in dev} == set(range(40, 48))
  ex = dev[0]
  for text, start in zip(ex.answers, ex.answer_starts):
    assert ex.context[start:start + len(text)] == text


def _squad_example(context, question, answer):
  return squad.SquadExample("q", question, context, [answer], [context.index(answer)], 0)


def test_squad_windows_and_answer_mapping(tok):
  ctx = "the cat sat on the mat . the dog ran in paris . " * 3 + "unbelievable 1990 ."
  ex = _squad_example(ctx, "what did the dog ?", "unbelievable 1990")
  f = squad.make_features([ex], tok, 24, 8, 8, training=True)
  assert len(f["input_ids"]) > 2                     # long context -> several windows
  hits = [i for i in range(len(f["input_ids"])) if f["start_positions"][i] > 0]
  assert hits                                        # some window holds the whole answer
  for i in range(len(f["input_ids"])):
    s, e = f["start_positions"][i], f["end_positions"][i]
    if s:
      assert ctx[f["char_start"][i][s]:f["char_end"][i][e]] == "unbelievable 1990"
  # Each context token has maximum context in exactly one window.
  covered = {}
  for i in range(len(f["input_ids"])):
    for p in np.flatnonzero(f["max_context"][i]):
      covered[int(f["char_start"][i][p]), int(f["char_end"][i][p])] = \
          covered.get((int(f["char_start"][i][p]), int(f["char_end"][i][p])), 0) + 1
  n_tokens = len(featurize.word_pieces(tok, *squad.split_words(ctx))[0])   # 3 * 13 + 5
  assert len(covered) == n_tokens == 44 and set(covered.values()) == {1}
  # Decoding oracle logits maps back to the original text; sub-word precision: "believ".
  sl = np.where(np.arange(24)[None] == f["start_positions"][:, None], 10.0, 0.0)
  el = np.where(np.arange(24)[None] == f["end_positions"][:, None], 10.0, 0.0)
  sl[:, 0] = el[:, 0] = -10.0
  assert squad.decode([ex], f, sl, el)["q"] == "unbelievable 1990"
  # max_answer_length (in tokens: un ##believ ##able 1990 = 4) drops the span.
  assert squad.decode([ex], f, sl, el, max_answer_length=3)["q"] != "unbelievable 1990"


def test_squad_windows_cover_everything():
  for n, size, stride in ((10, 4, 2), (3, 8, 2), (17, 5, 5)):
    spans = squad.windows(n, size, stride)
    assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == n
    assert all(b[0] - a[0] == min(stride, a[1]) for a, b in zip(spans, spans[1:]))


def test_word_pieces_char_spans(tok):
  ids, widx, cs, ce = featurize.word_pieces(tok, ["Unbelievable", "cats", "zzz"], [4, 17, 22])
  assert [tok.id_to_token(i) for i in ids] == ["un", "##believ", "##able", "cat", "##s", "[UNK]"]
  # Pieces laid along their word; an unknown word's piece spans the whole word.
  assert (cs, ce) == ([4, 6, 12, 17, 20, 22], [6, 12, 16, 20, 21, 25])
  assert widx == [0, 0, 0, 1, 1, 2]


# ------------------------------------------------------------------ batching

def test_pack_truncates_longest_first(tok):
  ids, seg, mask = featurize.pack(tok, [5] * 6, [6] * 2, 8)
  assert list(ids) == [2, 5, 5, 5, 3, 6, 6, 3]
  assert list(seg) == [0, 0, 0, 0, 0, 1, 1, 1] and mask.sum() == 8


def test_batch_iterator_epochs_stream_and_resume():
  arrays = {"x": np.arange(10)}
  it = featurize.BatchIterator(arrays, 4, seed=3)
  first = [next(it)["x"] for _ in range(5)]          # 20 rows = exactly 2 epochs
  seen = np.concatenate(first)
  assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
  it2 = featurize.BatchIterator(arrays, 4, seed=3)
  for _ in range(2):
    next(it2)
  state = it2.get_state()
  it3 = featurize.BatchIterator(arrays, 4, seed=3)
  it3.set_state(json.loads(json.dumps(state)))
  np.testing.assert_array_equal(next(it3)["x"], first[2])


def test_batch_iterator_processes_split_the_global_batch():
  arrays = {"x": np.arange(10)}
  one = featurize.BatchIterator(arrays, 4, seed=3)
  parts = [featurize.BatchIterator(arrays, 4, seed=3, process_index=p, process_count=2)
           for p in range(2)]
  for _ in range(6):                                 # crosses epoch boundaries
    glob = next(one)["x"]
    np.testing.assert_array_equal(np.concatenate([next(it)["x"] for it in parts]), glob)
  with pytest.raises(ValueError, match="does not split"):
    featurize.BatchIterator(arrays, 5, process_count=2)


def test_glue_prediction_tsv(tmp_path):
  ex = [glue.Example("0", "a", None, None), glue.Example("1", "b", None, None)]
  glue.write_predictions(str(tmp_path / "p.tsv"), ex, ["1", "0"])
  assert (tmp_path / "p.tsv").read_text() == "index\tprediction\n0\t1\n1\t0\n"


def test_glue_pair_layouts_by_header(tmp_path):
  d = tmp_path
  (d / "train.tsv").write_text(
      "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
      "0\tmain\tf\t2012\t1\ts\ts\tA plane is taking off.\tAn air plane is taking off.\t5.000\n")
  ex = registry.get("STS-B").read(str(d), "train", None)
  assert (ex[0].text_b, ex[0].label, ex[0].guid) == ("An air plane is taking off.", 5.0, "0")
  (d / "dev_matched.tsv").write_text(
      "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label\n"
      "0\t1\t1e\tgov\tx\tx\tx\tx\tThe new rights are nice.\tEveryone loves them.\tneutral\tneutral\n")
  ex = registry.get("mnli").read(str(d), "dev_matched", None)
  assert (ex[0].text_a, ex[0].label) == ("The new rights are nice.", "neutral")
  (d / "train.tsv").write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                               "1\t1\t2\tWhy?\tHow?\t0\n2\t3\t4\tbroken question\n")
  with pytest.warns(UserWarning, match="skipped 1 rows"):
    ex = registry.get("qqp").read(str(d), "train", None)
  assert [(e.guid, e.label) for e in ex] == [("1", "0")]
