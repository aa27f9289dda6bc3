"""On-disk layout of a prepared corpus: ArrayRecord shards of documents + a small index.

Per split (train / heldout), in the prepared directory:
  {split}-NNNNN.array_record   one record per document piece:
                               int32 n_sentences, int32 lengths[n], token ids (uint16 or int32)
  {split}-sentlens.bin         uint16: every sentence's length, pieces in record order
  {split}-pieces.bin           int32 [n_pieces, 2]: (document id, n_sentences) per piece
  {split}-sentoffs.bin         int64 [n_sentences + 1]: tokens before each sentence (cumsum)
The index is what the pair planner needs (sentence lengths); tokens are read by random access.
Documents longer than MAX_PIECE_TOKENS are stored as consecutive pieces of the same document id.
"""
from __future__ import annotations

import collections
import os
import threading

import numpy as np

MAX_PIECE_TOKENS = 4096      # bounds the bytes read per training example
MAX_SENTENCE_TOKENS = 512    # longer "sentences" (e.g. lines without punctuation) are cut


def encode_record(sent_lens: np.ndarray, tokens: np.ndarray, token_dtype) -> bytes:
  head = np.empty(1 + len(sent_lens), np.int32)
  head[0] = len(sent_lens)
  head[1:] = sent_lens
  return head.tobytes() + np.asarray(tokens, token_dtype).tobytes()


def decode_record(raw: bytes, token_dtype) -> tuple[np.ndarray, np.ndarray]:
  """-> (sentence lengths [n] int32, tokens [T] token_dtype), zero-copy views."""
  n = int(np.frombuffer(raw, np.int32, 1)[0])
  lens = np.frombuffer(raw, np.int32, n, offset=4)
  toks = np.frombuffer(raw, token_dtype, offset=4 * (n + 1))
  return lens, toks


class ShardWriter:
  """Appends pieces to rotating ArrayRecord shards and the split's index files."""

  def __init__(self, out_dir: str, split: str, token_dtype, shard_bytes: int = 256 << 20):
    self.out_dir, self.split, self.token_dtype = out_dir, split, token_dtype
    self.shard_bytes = shard_bytes
    self.shards: list[dict] = []
    self._writer = None
    self._bytes = 0
    self._sent = open(os.path.join(out_dir, f"{split}-sentlens.bin.tmp"), "wb")
    self._pieces = open(os.path.join(out_dir, f"{split}-pieces.bin.tmp"), "wb")
    self.documents = self.pieces = self.sentences = self.tokens = 0

  def _rotate(self):
    from array_record.python.array_record_module import ArrayRecordWriter
    self._close_shard()
    name = f"{self.split}-{len(self.shards):05d}.array_record"
    # group_size:1 -> every record is independently seekable (random access per example).
    self._writer = ArrayRecordWriter(os.path.join(self.out_dir, name + ".tmp"), "group_size:1")
    self.shards.append({"file": name, "records": 0})
    self._bytes = 0

  def _close_shard(self):
    if self._writer is not None:
      self._writer.close()
      name = self.shards[-1]["file"]
      os.replace(os.path.join(self.out_dir, name + ".tmp"), os.path.join(self.out_dir, name))
      self._writer = None

  def add_document(self, sentences: list[np.ndarray]) -> None:
    """One document = list of token-id arrays (one per sentence, each non-empty)."""
    doc_id = self.documents
    self.documents += 1
    piece: list[np.ndarray] = []
    size = 0
    for s in sentences:
      if piece and size + len(s) > MAX_PIECE_TOKENS:
        self._add_piece(doc_id, piece)
        piece, size = [], 0
      piece.append(s)
      size += len(s)
    if piece:
      self._add_piece(doc_id, piece)

  def _add_piece(self, doc_id: int, sentences: list[np.ndarray]) -> None:
    if self._writer is None or self._bytes >= self.shard_bytes:
      self._rotate()
    lens = np.array([len(s) for s in sentences], np.int32)
    rec = encode_record(lens, np.concatenate(sentences), self.token_dtype)
    self._writer.write(rec)
    self._bytes += len(rec)
    self.shards[-1]["records"] += 1
    self._sent.write(lens.astype(np.uint16).tobytes())
    self._pieces.write(np.array([doc_id, len(lens)], np.int32).tobytes())
    self.pieces += 1
    self.sentences += len(lens)
    self.tokens += int(lens.sum())

  def close(self) -> dict:
    self._close_shard()
    for f in (self._sent, self._pieces):
      f.close()
      os.replace(f.name, f.name[:-len(".tmp")])
    # running token offsets of sentences, computed in blocks of 1M sentences read with plain
    # reads, not a memmap: memory stays ~8 MB whatever the corpus size (blocks of 4M, two
    # temporaries and mapped pages made a 1 GB corpus peak ~110 MB higher here, measured)
    sent_path = os.path.join(self.out_dir, f"{self.split}-sentlens.bin")
    with open(sent_path, "rb") as src, \
        open(os.path.join(self.out_dir, f"{self.split}-sentoffs.bin"), "wb") as f:
      total = 0
      f.write(np.zeros(1, np.int64).tobytes())
      while (block := np.fromfile(src, np.uint16, 1 << 20)).size:
        offs = np.cumsum(block, dtype=np.int64)
        offs += total
        f.write(offs.data)
        total = int(offs[-1])
    return {"shards": self.shards, "documents": self.documents, "pieces": self.pieces,
            "sentences": self.sentences, "tokens": self.tokens}


class DocStore:
  """Random access to a split's pieces (lazily opened per process, picklable), with an LRU cache
  of decoded pieces bounded by `cache_bytes` (a small corpus ends up wholly in memory)."""

  def __init__(self, prepared_dir: str, split_info: dict, token_dtype: str,
               cache_bytes: int = 256 << 20):
    self.dir = prepared_dir
    self.files = [os.path.join(prepared_dir, s["file"]) for s in split_info["shards"]]
    counts = np.array([s["records"] for s in split_info["shards"]], np.int64)
    self.starts = np.concatenate([[0], np.cumsum(counts)])   # [n_shards + 1]
    self.token_dtype = np.dtype(token_dtype)
    self._readers = None
    self._lock = threading.Lock()
    self.cache_bytes = cache_bytes
    self._cache: collections.OrderedDict = collections.OrderedDict()
    self._cached = 0

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"] = None
    state["_lock"] = None
    state["_cache"] = collections.OrderedDict()
    state["_cached"] = 0
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return int(self.starts[-1])

  def _open(self):
    from array_record.python.array_record_module import ArrayRecordReader
    with self._lock:
      if self._readers is None:
        self._readers = [ArrayRecordReader(f, "readahead_buffer_size:0,max_parallelism:0")
                         for f in self.files]
    return self._readers

  def read(self, pieces: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pieces (global indices) -> [(sentence lengths, tokens)] in the same order."""
    cache = self._cache
    out: list = []
    missing = []
    for i, p in enumerate(np.asarray(pieces, np.int64).tolist()):
      hit = cache.get(p)
      if hit is None:
        missing.append((i, p))
      else:
        cache.move_to_end(p)
      out.append(hit)
    if missing:
      readers = self._open()
      miss = np.array([p for _, p in missing], np.int64)
      shard = np.searchsorted(self.starts, miss, side="right") - 1
      for s in np.unique(shard):
        where = np.flatnonzero(shard == s)
        raws = readers[s].read([int(miss[w] - self.starts[s]) for w in where])
        for w, raw in zip(where, raws):
          i, p = missing[w]
          out[i] = decode_record(raw, self.token_dtype)
          if p not in cache:
            cache[p] = out[i]
            self._cached += len(raw)
      while self._cached > self.cache_bytes and cache:
        _, (lens, toks) = cache.popitem(last=False)
        self._cached -= lens.nbytes + toks.nbytes + 4
    return out


def load_offsets(prepared_dir: str, split: str) -> np.ndarray:
  """[n_sentences + 1] int64 (memory-mapped): tokens before each sentence of the split."""
  return np.memmap(os.path.join(prepared_dir, f"{split}-sentoffs.bin"), np.int64, "r")


def load_index(prepared_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """-> (sentence lengths [n_sentences] uint16 (memory-mapped), pieces [n_pieces, 2] int32)."""
  sl = os.path.join(prepared_dir, f"{split}-sentlens.bin")
  pc = os.path.join(prepared_dir, f"{split}-pieces.bin")
  sent = np.memmap(sl, np.uint16, "r") if os.path.getsize(sl) else np.zeros(0, np.uint16)
  pieces = np.fromfile(pc, np.int32).reshape(-1, 2)
  return sent, pieces
