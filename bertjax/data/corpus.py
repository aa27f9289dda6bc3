"""Corpus readers: files -> documents -> sentences (strings). Tokenisation happens in prepare.py.

Formats (data.corpus_format):
  bert   one sentence per line, a blank line between documents (google-research/bert's format).
  prose  raw text, one document per file. Paragraphs are blocks separated by blank lines; a block
         whose lines are long (> 100 characters: one paragraph per line) keeps each line as its
         own paragraph, a block of short lines (hard-wrapped text) is joined with spaces. Each
         paragraph is split into sentences by `split_sentences` (rules below). A WikiText file
         (>= 2 top-level ` = Title = ` lines) is one document per article; its heading lines are
         dropped (without this the ~60 articles of a split would be one document, and NSP's
         NotNext segments would rarely come from another topic).
  auto   per file: `bert` when >= 80% of its first 1,000 non-empty lines are exactly one sentence
         ending in . ! ? or a closing quote, otherwise `prose`.
  tfds   `tfds:NAME[:SPLIT]`: each example's `data.tfds_text_field` is one document, read as prose
         (newlines separate paragraphs), through TFDS's array_record data source (no TensorFlow).

Record files (.jsonl/.json[.gz|.zst], .parquet, .arrow, a `datasets` save_to_disk folder; see
records.py) hold one document per record: its `data.text_field` is read with the rules above,
exactly as if it were the text of a .txt file.

Files are decoded as UTF-8 (a BOM is dropped, CRLF/CR line ends are fine); a file that is not
valid UTF-8 is decoded as Latin-1 with a warning naming it, and counted in the summary.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import warnings
from typing import Iterator

from bertjax.errors import UserError

# ---------------------------------------------------------------- sentence splitting
# A boundary: terminal punctuation (+ closing quotes/brackets), whitespace, then something that
# can start a sentence (capital, digit, opening quote/bracket). Abbreviations and initials
# ("Mr.", "Harry S. Truman", "A. M.") are not boundaries.
_BOUNDARY = re.compile(
    r"([.!?]+[\"'\u201d\u2019)\]]*)\s+(?=[\"'\u201c\u2018(\[_]*[A-Z0-9\u00c0-\u00de])")
_CJK_BOUNDARY = re.compile(r"(?<=[\u3002\uff01\uff1f])")
_ABBREV = frozenset("""mr mrs ms dr st jr sr prof gen col capt lt sgt rev hon gov sen rep pres
  messrs mme mlle vs etc e.g i.e viz cf no nos vol vols ch chap fig figs pp p art sec u.s u.k
  jan feb mar apr jun jul aug sep sept oct nov dec mt ft lieut maj esq inc ltd co corp""".split())


def split_sentences(paragraph: str) -> list[str]:
  """Rule-based splitter for English-like prose (no model, deterministic, fast)."""
  text = " ".join(paragraph.split())
  if not text:
    return []
  out, start = [], 0
  for m in _BOUNDARY.finditer(text):
    if m.group(1)[0] == ".":
      before = text[start:m.start()].rsplit(None, 1)
      word = before[-1].lstrip("\"'(\u201c\u2018[_").lower() if before else ""
      if word in _ABBREV or (len(word) == 1 and word.isalpha()):
        continue
    out.append(text[start:m.end(1)])
    start = m.end()
  out.append(text[start:])
  sentences = []
  for s in out:
    sentences += [p for p in _CJK_BOUNDARY.split(s) if p.strip()] if "\u3002" in s or \
        "\uff01" in s or "\uff1f" in s else [s]
  return [s.strip() for s in sentences if s.strip()]


# ---------------------------------------------------------------- statistics
@dataclasses.dataclass
class ReadStats:
  """Counts of what reading and preparation kept and skipped (reported in the manifest)."""
  files: int = 0
  records: int = 0                     # records read from JSONL / Parquet / Arrow files
  empty_files: int = 0
  latin1_files: list = dataclasses.field(default_factory=list)
  documents: int = 0
  sentences: int = 0
  empty_documents: int = 0             # documents with no text left after cleaning/tokenising
  one_sentence_documents: int = 0      # kept: their pairs are always NotNext
  empty_sentences: int = 0             # sentences that tokenised to nothing
  long_sentences_split: int = 0        # sentences longer than MAX_SENTENCE_TOKENS, cut in pieces
  formats: dict = dataclasses.field(default_factory=dict)

  def merge(self, other: "ReadStats") -> None:
    for f in dataclasses.fields(self):
      a, b = getattr(self, f.name), getattr(other, f.name)
      if isinstance(a, list):
        a.extend(b)
      elif isinstance(a, dict):
        for k, v in b.items():
          a[k] = a.get(k, 0) + v
      else:
        setattr(self, f.name, a + b)

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


# ---------------------------------------------------------------- inputs
FORMATS = ("auto", "bert", "prose")


def split_format(entry: str) -> tuple[str, str | None]:
  """'sst2.txt:bert' -> ('sst2.txt', 'bert'): a corpus entry may name its own format, so one
  file (sentences without terminal punctuation, which `auto` reads as prose) is read as `bert`
  beside files that keep data.corpus_format. No suffix -> (entry, None)."""
  head, sep, tail = entry.rpartition(":")
  if sep and head and tail in FORMATS:
    return head, tail
  return entry, None


def expand_inputs(corpus: str | list[str]) -> list[str]:
  """Comma-separated globs (or a list of them) -> sorted unique files; each glob must match.
  A Hugging Face save_to_disk folder stands for its arrow files, in the dataset's order.
  A `:FORMAT` suffix on a glob (see split_format) is dropped here."""
  return [path for path, _ in expand_inputs_with_formats(corpus, "auto")]


def expand_inputs_with_formats(corpus: str | list[str], default: str) -> list[tuple[str, str]]:
  """Like expand_inputs, each file with its format: its glob's `:FORMAT` suffix, else
  `default` (data.corpus_format). The first glob naming a file decides its format."""
  from bertjax.data.records import hf_dataset_files
  globs = corpus.split(",") if isinstance(corpus, str) else list(corpus)
  globs = [g.strip() for g in globs if g.strip()]
  if not globs:
    raise UserError("data.corpus is empty; give comma-separated file globs or tfds:NAME")
  files = []
  for entry in globs:
    g, fmt = split_format(entry)
    fmt = fmt or default
    if os.path.isdir(g):
      hf = hf_dataset_files(g)
      if hf is not None:
        files += [(f, fmt) for f in hf]
        continue
      g = os.path.join(g, "**", "*")
    matched = sorted(p for p in glob.glob(os.path.expanduser(g), recursive=True)
                     if os.path.isfile(p))
    if not matched:
      raise UserError(f"data.corpus: {g!r} matches no file; check the path or glob")
    files += [(p, fmt) for p in matched]
  return _first_wins(files)


def _first_wins(files: list[tuple[str, str]]) -> list[tuple[str, str]]:
  seen: dict[str, str] = {}
  for path, fmt in files:
    seen.setdefault(path, fmt)
  return list(seen.items())


def read_text(path: str, stats: ReadStats | None = None) -> str:
  """Whole file as str: UTF-8 (BOM dropped), else Latin-1 with a warning naming the file."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror}); check the corpus globs") from None
  nul = raw.find(b"\x00")
  if nul >= 0:  # Latin-1 would "decode" any bytes: catch binary and UTF-16 files here
    raise UserError(f"{path}: binary or UTF-16 data (NUL byte at offset {nul}), not text; "
                    "remove it from data.corpus or convert it to UTF-8")
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    warnings.warn(f"{path}: not valid UTF-8 (byte {e.start}); decoded as Latin-1", stacklevel=2)
    if stats is not None:
      stats.latin1_files.append(path)
    return raw.decode("latin-1")


_TERMINAL = re.compile(r"[.!?][\"'\u201d\u2019)\]]*$")


def detect_format(lines: list[str]) -> str:
  sample = [ln for ln in (ln.strip() for ln in lines[:5000]) if ln][:1000]
  if not sample:
    return "bert"
  ok = sum(1 for ln in sample if _TERMINAL.search(ln) and len(split_sentences(ln)) == 1)
  return "bert" if ok >= 0.8 * len(sample) else "prose"


def _prose_paragraphs(lines: list[str]) -> Iterator[str]:
  block: list[str] = []
  for ln in lines + [""]:
    ln = ln.strip()
    if ln:
      block.append(ln)
      continue
    if block:
      if max(len(b) for b in block) > 100:   # one paragraph per line
        yield from block
      else:                                  # hard-wrapped paragraph
        yield " ".join(block)
      block = []


_WIKI_TITLE = re.compile(r"^ ?= [^=].* = ?$")       # ' = Homarus gammarus = '
_WIKI_HEADING = re.compile(r"^ ?(= )+[^=].*( =)+ ?$")  # any level: ' = = Description = = '


def _wikitext_articles(lines: list[str]) -> Iterator[list[str]]:
  """WikiText: lines of each article (headings dropped); any other text: all its lines."""
  titles = [i for i, ln in enumerate(lines) if _WIKI_TITLE.match(ln)]
  if len(titles) < 2:
    yield lines
    return
  for lo, hi in zip([0] + titles, titles + [len(lines)]):
    yield [ln for ln in lines[lo:hi] if not _WIKI_HEADING.match(ln)]


def documents_from_text(text: str, fmt: str, stats: ReadStats, name: str = "") -> Iterator[list[str]]:
  """Split one file's text into documents (lists of sentence strings)."""
  lines = text.splitlines()
  if fmt == "auto":
    fmt = detect_format(lines)
  stats.formats[fmt] = stats.formats.get(fmt, 0) + 1
  if fmt == "bert":
    doc: list[str] = []
    for ln in lines + [""]:
      ln = " ".join(ln.split())
      if ln:
        doc.append(ln)
      elif doc:
        yield doc
        doc = []
  elif fmt == "prose":
    for article in _wikitext_articles(lines):
      doc = [s for para in _prose_paragraphs(article) for s in split_sentences(para)]
      if doc:
        yield doc
  else:
    raise UserError(f"data.corpus_format={fmt!r}: use auto, bert, prose or tfds")


def record_documents(recs, fmt: str, stats: ReadStats) -> Iterator[tuple[list[str], object]]:
  """(text, id) records -> (document, its record's id); one record may hold several documents
  (a blank-line separated `bert` text), a record with no text is counted as empty."""
  for text, doc_id in recs:
    stats.records += 1
    n = 0
    for doc in documents_from_text(text, fmt, stats):
      stats.documents += 1
      stats.sentences += len(doc)
      n += 1
      yield doc, doc_id
    if n == 0:
      stats.empty_documents += 1


def read_documents(path: str, fmt: str = "auto", stats: ReadStats | None = None,
                   text_field: str = "text") -> Iterator[list[str]]:
  """Documents (lists of sentences) of one file (text or record file, see records.py); empty
  files are counted, not errors."""
  from bertjax.data import records
  stats = stats if stats is not None else ReadStats()
  stats.files += 1
  if records.record_kind(path):
    for chunk in records.plan_chunks(path):
      yield from (doc for doc, _ in record_documents(
          records.read_chunk(chunk, text_field), fmt, stats))
    return
  text = read_text(path, stats)
  if not text.strip():
    stats.empty_files += 1
    return
  for doc in documents_from_text(text, fmt, stats, path):
    stats.documents += 1
    stats.sentences += len(doc)
    yield doc


# ---------------------------------------------------------------- TFDS
def parse_tfds(corpus: str) -> tuple[str, str]:
  """'tfds:wikipedia/20230601.en[:train]' -> (name, split)."""
  spec = corpus[len("tfds:"):].strip()
  name, _, split = spec.partition(":")
  if not name:
    raise UserError(f"data.corpus={corpus!r}: expected tfds:NAME or tfds:NAME:SPLIT")
  return name, split or "train"


def open_tfds(name: str, split: str, data_dir: str):
  """TFDS random-access data source (ArrayRecord files; no TensorFlow needed)."""
  import tensorflow_datasets as tfds
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # tfds raises many types; the user must fix name/data_dir/format
    first = (str(e).strip().splitlines() or [""])[0][:300]
    raise UserError(f"tfds:{name}:{split} (data_dir={data_dir or 'default'}): cannot open as an "
                    f"array_record data source ({type(e).__name__}: {first}); prepare it with "
                    "file_format=array_record and set data.tfds_data_dir") from None


def tfds_documents(source, start: int, stop: int, text_field: str, stats: ReadStats
                   ) -> Iterator[list[str]]:
  for i in range(start, stop):
    ex = source[i]
    if text_field not in ex:
      raise UserError(f"data.tfds_text_field={text_field!r} is not a feature of the dataset "
                      f"(features: {sorted(ex)}); set it to the text feature")
    text = ex[text_field]
    if isinstance(text, bytes):
      text = text.decode("utf-8", errors="replace")
    yield from _count(documents_from_text(str(text), "prose", stats), stats)


def _count(docs: Iterator[list[str]], stats: ReadStats) -> Iterator[list[str]]:
  for doc in docs:
    stats.documents += 1
    stats.sentences += len(doc)
    yield doc
