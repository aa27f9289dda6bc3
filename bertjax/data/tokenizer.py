"""Tokenizers: SentencePiece models (trained by `bertjax tokenizer train`) and WordPiece vocab.txt.

Both expose one interface (`Tokenizer`): ids without special tokens, the five special ids, and
`word_start[id]` (does this token begin a word?) for whole-word masking.

SentencePiece models trained here have fixed special ids, so configs and checkpoints agree:
  [PAD]=0  [UNK]=1  [CLS]=2  [SEP]=3  [MASK]=4
(no <s>/</s>). Text is NFKC-normalised and, when `lowercase` (default), case-folded by the
model itself, so the .model file alone decides how text becomes ids.

A WordPiece `vocab.txt` (BERT's format) is run through the `tokenizers` library's BERT pipeline
(clean text, CJK split, optional lowercase + accent strip, punctuation split, greedy WordPiece),
which gives exactly the ids of transformers' BertTokenizerFast.
"""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import numpy as np

from bertjax.errors import UserError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SPM_WORD_PREFIX = "\u2581"  # '▁' marks a SentencePiece piece that follows a space


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def tokenizer_files(path: str) -> list[str]:
  """The files that make up a tokenizer: a SentencePiece .model (+ its .vocab) or a vocab.txt."""
  files = [path]
  root, ext = os.path.splitext(path)
  if ext == ".model" and os.path.isfile(root + ".vocab"):
    files.append(root + ".vocab")
  return files


def tokenizer_kind(tokenizer_files) -> str:
  """'wordpiece' (vocab.txt), 'sentencepiece' (*.model) or 'none'."""
  names = [os.path.basename(p) for p in tokenizer_files]
  if any(n.endswith(".model") for n in names):
    return "sentencepiece"
  if "vocab.txt" in names:
    return "wordpiece"
  return "none"


def tokenizer_identity(path: str, tokenizer: "Tokenizer | None" = None) -> dict:
  """What identifies a tokenizer across machines (a prepared corpus and every checkpoint record
  it): its file name and the SHA-256 of its bytes; given the loaded `tokenizer`, also its kind,
  vocabulary size and case folding."""
  out = {"file": os.path.basename(path), "sha256": file_sha256(path)}
  if tokenizer is not None:
    out.update(kind=tokenizer.kind, vocab_size=int(tokenizer.vocab_size),
               do_lower_case=bool(tokenizer.do_lower_case))
  return out


def checkpoint_tokenizer(path, identity: "dict | None" = None) -> "tuple[dict | None, list[str]]":
  """The tokenizer a run's checkpoints record, from the path in use (`data.tokenizer`, which
  fine-tuning sets to --init's): (identity, files to copy into the workdir). `identity` is the
  task's own (`Tokenizer.identity()`), else the file identity of `path`; a path that is not a
  file (synthetic data) gives the task's identity and no files."""
  if not (isinstance(path, str) and os.path.isfile(path)):
    return identity, []
  return (identity if identity is not None else tokenizer_identity(path)), tokenizer_files(path)


class Tokenizer:
  """Common interface; see SentencePieceTokenizer and WordPieceTokenizer."""
  kind: str
  path: str
  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  word_start: np.ndarray    # [V] bool: token begins a word (specials: True)
  special_ids: np.ndarray   # [V] bool: [PAD]/[UNK]/[CLS]/[SEP]/[MASK] and other control tokens
  do_lower_case: bool

  def encode(self, text: str) -> list[int]:
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    raise NotImplementedError

  def decode(self, ids: Sequence[int]) -> str:
    raise NotImplementedError

  def id_to_token(self, i: int) -> str:
    raise NotImplementedError

  def identity(self) -> dict:
    """What a prepared corpus / checkpoint records to detect a tokenizer change."""
    return tokenizer_identity(self.path, self)

  def files(self) -> list[str]:
    """Files to copy into an export so the tokenizer travels with the weights."""
    return [self.path]

  def random_token_pool(self) -> np.ndarray:
    """Ids that masking may substitute as the '10% random token' (no specials / unused)."""
    return np.flatnonzero(~self.special_ids).astype(np.int32)


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, path: str):
    import sentencepiece as spm
    self.path = path
    try:
      self.sp = spm.SentencePieceProcessor(model_file=path)
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with C++ text
      raise UserError(f"{path}: not a SentencePiece model ({e}); "
                      "train one with `bertjax tokenizer train`") from None
    self.vocab_size = self.sp.get_piece_size()
    ids = {}
    for name in SPECIALS:
      i = self.sp.piece_to_id(name)
      if i == self.sp.unk_id() and name != "[UNK]":
        raise UserError(f"{path}: SentencePiece model lacks the {name} piece; train it with "
                        "`bertjax tokenizer train` (which adds [PAD] [UNK] [CLS] [SEP] [MASK])")
      ids[name] = i
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (ids[n] for n in SPECIALS)
    pieces = [self.sp.id_to_piece(i) for i in range(self.vocab_size)]
    self.special_ids = np.array([self.sp.is_control(i) or self.sp.is_unknown(i)
                                 for i in range(self.vocab_size)], dtype=bool)
    self.word_start = np.array([p.startswith(SPM_WORD_PREFIX) for p in pieces], bool)
    self.word_start |= self.special_ids
    # Case folding lives in the model's normaliser; record what it does.
    self.do_lower_case = self.sp.encode("A", out_type=str) == self.sp.encode("a", out_type=str)

  def encode(self, text: str) -> list[int]:
    return self.sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self.sp.encode(list(texts)) if texts else []

  def decode(self, ids: Sequence[int]) -> str:
    return self.sp.decode([int(i) for i in ids])

  def id_to_token(self, i: int) -> str:
    return self.sp.id_to_piece(int(i))


class WordPieceTokenizer(Tokenizer):
  kind = "wordpiece"

  def __init__(self, path: str, do_lower_case: bool = True):
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers
    self.path = path
    self.do_lower_case = bool(do_lower_case)
    with open(path, encoding="utf-8") as f:
      vocab = [line.rstrip("\n").rstrip("\r") for line in f]
    while vocab and vocab[-1] == "":
      vocab.pop()
    index = {t: i for i, t in enumerate(vocab)}
    missing = [s for s in SPECIALS if s not in index]
    if missing:
      raise UserError(f"{path}: WordPiece vocab lacks {' '.join(missing)}; "
                      "use a BERT vocab.txt (one token per line with the [PAD]..[MASK] entries)")
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (index[s] for s in SPECIALS)
    # Same settings as BertTokenizerFast(vocab, do_lower_case): strip_accents follows lowercase.
    self.tok = HFTokenizer(models.WordPiece(index, unk_token="[UNK]", max_input_chars_per_word=100))
    self.tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None,
        lowercase=self.do_lower_case)
    self.tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    self.tok.decoder = decoders.WordPiece(prefix="##")
    self.vocab_size = self.tok.get_vocab_size()
    self.vocab = vocab
    self.special_ids = np.array([t in SPECIALS or (t.startswith("[") and t.endswith("]"))
                                 for t in vocab], dtype=bool)
    self.word_start = np.array([not t.startswith("##") for t in vocab], dtype=bool)
    self.word_start |= self.special_ids

  def encode(self, text: str) -> list[int]:
    return self.tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
      return []
    return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self.tok.decode([int(i) for i in ids])

  def id_to_token(self, i: int) -> str:
    return self.vocab[int(i)]


def load_tokenizer(path: str, do_lower_case: bool = True) -> Tokenizer:
  """A `.model` file is SentencePiece; a `.txt` file (BERT's vocab.txt) is WordPiece.

  `do_lower_case` applies to WordPiece only (a SentencePiece model carries its own normaliser).
  """
  if not path:
    raise UserError("data.tokenizer is empty; set it to a SentencePiece .model or a vocab.txt")
  if os.path.isdir(path) and os.path.isfile(os.path.join(path, "vocab.txt")):
    path = os.path.join(path, "vocab.txt")
  if not os.path.isfile(path):
    raise UserError(f"tokenizer file not found: {path}; train one with `bertjax tokenizer train` "
                    "or point data.tokenizer at a vocab.txt")
  if path.endswith(".model"):
    return SentencePieceTokenizer(path)
  if path.endswith(".txt"):
    return WordPieceTokenizer(path, do_lower_case)
  raise UserError(f"{path}: unknown tokenizer file type; use a SentencePiece .model "
                  "or a WordPiece vocab.txt")


def train_sentencepiece(inputs: list[str], out_prefix: str, vocab_size: int = 8000,
                        model_type: str = "unigram", lowercase: bool = True,
                        character_coverage: float = 0.9995,
                        input_sentence_size: int = 2_000_000, seed_sentencepiece_size: int = 1_000_000,
                        num_threads: int = 0, corpus_format: str = "auto") -> str:
  """Train a SentencePiece model on the sentences of `inputs` (files, read like `prepare` does).

  Returns the path of the written `<out_prefix>.model` (a `.vocab` file is written beside it).
  Sentences are streamed to SentencePiece, which samples `input_sentence_size` of them.
  """
  import sentencepiece as spm
  from bertjax.data import corpus

  if model_type not in ("unigram", "bpe"):
    raise UserError(f"--model-type={model_type!r}: use unigram or bpe")
  if vocab_size < len(SPECIALS) + 16:
    raise UserError(f"--vocab-size={vocab_size} is too small; use at least {len(SPECIALS) + 16}")
  files = corpus.expand_inputs_with_formats(inputs, corpus_format)  # `:FORMAT` suffixes too
  stats = corpus.ReadStats()

  def sentences():
    for path, fmt in files:
      for doc in corpus.read_documents(path, fmt, stats):
        yield from doc

  os.makedirs(os.path.dirname(os.path.abspath(out_prefix)), exist_ok=True)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=sentences(), model_prefix=out_prefix, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=list(SPECIALS[2:]),  # -> ids 2, 3, 4
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
        input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size, max_sentence_length=1 << 16,
        num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    raise UserError(f"sentencepiece training failed: {e}; lower --vocab-size or add text") from None
  if stats.sentences == 0:
    raise UserError(f"no sentences found in {inputs}; check the globs")
  return out_prefix + ".model"
