"""Record files: corpora as they ship (C4, FineWeb, Dolma, RedPajama, Hugging Face exports).

A record is one document: its text is `data.text_field` (read like a .txt file's text, with
data.corpus_format), its optional id `data.id_field`. File kinds, by name:
  jsonl    .jsonl .json, plain or compressed (.gz, .zst): one JSON object per line
  parquet  .parquet: one row per record; read one row group at a time
  arrow    .arrow: Arrow IPC (the stream format `datasets` writes, or the file format)
A directory written by Hugging Face `datasets.Dataset.save_to_disk` (state.json + data-*.arrow)
is read through its state.json, with pyarrow alone: the `datasets` package is not needed.

Reading is split into chunks so memory stays bounded whatever the corpus size:
  `plan_chunks(path)` (in the parent) yields small descriptors: for jsonl the raw bytes of
  consecutive whole lines (a compressed file can only be read from its start), for parquet a row
  group, for arrow a range of record batches (workers open the file themselves);
  `read_chunk(chunk, text_field, id_field)` (in a worker) -> [(text, id)].
A malformed line or row raises one UserError naming the file and the line (or row group, row).
"""
from __future__ import annotations

import gzip
import json
import os
from typing import Iterator

from bertjax.errors import UserError

CHUNK_BYTES = 4 << 20   # text per chunk: a few MB keeps workers busy and results small
_JSONL = (".jsonl", ".json")
_COMPRESSION = {"": None, ".gz": "gzip", ".zst": "zstd"}


def record_kind(path: str) -> str | None:
  """'jsonl' | 'parquet' | 'arrow' by file name; None for a plain text file."""
  name = path.lower()
  if name.endswith(".parquet"):
    return "parquet"
  if name.endswith(".arrow"):
    return "arrow"
  for comp in _COMPRESSION:
    if any(name.endswith(ext + comp) for ext in _JSONL):
      return "jsonl"
  return None


def hf_dataset_files(directory: str) -> list[str] | None:
  """Arrow files of a `save_to_disk` directory in their order (state.json), or None if `directory`
  is not one. A DatasetDict (dataset_dict.json, one folder per split) is an error naming splits."""
  dd = os.path.join(directory, "dataset_dict.json")
  if os.path.isfile(dd):
    try:
      with open(dd, encoding="utf-8") as f:
        splits = json.load(f).get("splits", [])
    except (OSError, ValueError, AttributeError):
      splits = []
    raise UserError(f"data.corpus={directory!r} is a Hugging Face DatasetDict; point it at one "
                    f"split's folder, e.g. {os.path.join(directory, (splits or ['train'])[0])}")
  state = os.path.join(directory, "state.json")
  if not os.path.isfile(state):
    return None
  try:
    with open(state, encoding="utf-8") as f:
      names = [d["filename"] for d in json.load(f)["_data_files"]]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{state}: not a Hugging Face datasets state.json ({type(e).__name__}: {e}); "
                    "write the dataset again with save_to_disk") from None
  files = [os.path.join(directory, n) for n in names]
  missing = [p for p in files if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{state}: lists {missing[0]}, which does not exist; the dataset folder is "
                    "incomplete")
  return files


# ---------------------------------------------------------------- parent: chunk descriptors
def plan_chunks(path: str, chunk_bytes: int = 0) -> Iterator[tuple]:
  """Descriptors of `path`'s chunks, in file order (see the module docstring)."""
  chunk_bytes = chunk_bytes or CHUNK_BYTES
  kind = record_kind(path)
  if kind == "jsonl":
    yield from _jsonl_chunks(path, chunk_bytes)
  elif kind == "parquet":
    pf = _open_parquet(path)
    for rg in range(pf.metadata.num_row_groups):
      yield ("parquet", path, rg)
  elif kind == "arrow":
    start, size, n = 0, 0, 0
    for n, nbytes in enumerate(_arrow_batch_sizes(path), 1):
      size += nbytes
      if size >= chunk_bytes:
        yield ("arrow", path, start, n)
        start, size = n, 0
    if n > start:
      yield ("arrow", path, start, n)
  else:
    raise ValueError(f"{path}: not a record file")


def _blocks(path: str, size: int) -> Iterator[bytes]:
  """Decompressed bytes of a plain / .gz / .zst file, about `size` at a time."""
  comp = _COMPRESSION.get(os.path.splitext(path.lower())[1])
  try:
    f = gzip.open(path, "rb") if comp == "gzip" else open(path, "rb")
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror}); check the corpus globs") from None
  with f:
    if comp != "zstd":
      yield from iter(lambda: f.read(size), b"")   # gzip raises on a damaged or cut file
      return
    # zstd by hand: its stream reader ends quietly at a cut frame; several frames are fine
    import zstandard
    dobj, started = zstandard.ZstdDecompressor().decompressobj(), False
    while raw := f.read(size):
      started = True
      while raw:
        out = dobj.decompress(raw)
        if out:
          yield out
        raw = dobj.unused_data if dobj.eof else b""
        if raw:
          dobj = zstandard.ZstdDecompressor().decompressobj()
    if started and not dobj.eof:
      raise EOFError("the last zstd frame is cut short")


def _jsonl_chunks(path: str, chunk_bytes: int) -> Iterator[tuple]:
  """('jsonl', path, first line number, bytes of whole lines) with about chunk_bytes each."""
  line, tail = 1, b""
  blocks = _blocks(path, chunk_bytes)
  while True:
    try:
      block = next(blocks, b"")
    except UserError:
      raise
    except Exception as e:  # gzip: OSError/EOFError, zstd: ZstdError; damaged or truncated
      raise UserError(f"{path}: cannot decompress after line {line} ({type(e).__name__}: "
                      f"{e}); the file is damaged or truncated") from None
    if not block:
      break
    tail += block
    # whole lines, about chunk_bytes each (a decompressor may hand back much more at once)
    while (cut := tail.find(b"\n", chunk_bytes - 1) + 1) > 0:
      yield ("jsonl", path, line, tail[:cut])
      line += tail.count(b"\n", 0, cut)
      tail = tail[cut:]
  if tail.strip():
    yield ("jsonl", path, line, tail)


def _open_parquet(path: str):
  import pyarrow.parquet as pq
  try:
    return pq.ParquetFile(path)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e}); check the corpus globs") from None
  except Exception as e:   # pyarrow raises ArrowInvalid etc. with its own text
    raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def _open_arrow(path: str):
  """(reader, is_file_format) over a memory map: record batches are read without copying."""
  import pyarrow as pa
  try:
    source = pa.memory_map(path)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror or e}); check the corpus globs") from None
  try:
    return pa.ipc.open_file(source), True
  except pa.ArrowInvalid:
    source.seek(0)
  try:
    return pa.ipc.open_stream(source), False
  except Exception as e:
    raise UserError(f"{path}: not an Arrow IPC file or stream ({type(e).__name__}: {e})") from None


def _arrow_batches(path: str, start: int = 0, stop: int | None = None):
  """Record batches [start, stop) of an Arrow file; errors name the batch."""
  import pyarrow as pa
  reader, is_file = _open_arrow(path)
  if is_file:
    stop = reader.num_record_batches if stop is None else stop
    for i in range(start, stop):
      yield i, reader.get_batch(i)
    return
  i = 0
  while stop is None or i < stop:
    try:
      batch = reader.read_next_batch()
    except StopIteration:
      return
    except pa.ArrowException as e:
      raise UserError(f"{path}: record batch {i}: cannot read ({type(e).__name__}: {e}); "
                      "the file is damaged or truncated") from None
    if i >= start:
      yield i, batch
    i += 1


def _arrow_batch_sizes(path: str) -> Iterator[int]:
  for _, batch in _arrow_batches(path):
    yield batch.nbytes


# ---------------------------------------------------------------- worker: chunk -> records
def read_chunk(chunk: tuple, text_field: str, id_field: str = "") -> list[tuple[str, object]]:
  """One descriptor of `plan_chunks` -> [(text, id or None)] in file order."""
  kind, path = chunk[0], chunk[1]
  if kind == "jsonl":
    return _jsonl_records(path, chunk[2], chunk[3], text_field, id_field)
  if kind == "parquet":
    pf = _open_parquet(path)
    where = f"{path}: row group {chunk[2]}"
    names = pf.schema_arrow.names
    _check_columns(path, names, text_field, id_field)
    columns = [text_field] + ([id_field] if id_field else [])
    try:
      table = pf.read_row_group(chunk[2], columns=columns)
    except Exception as e:   # damaged pages, bad compression: pyarrow's own exception types
      raise UserError(f"{where}: cannot read ({type(e).__name__}: {e}); the file is damaged "
                      "or truncated") from None
    return _table_records(where, table, text_field, id_field)
  if kind == "arrow":
    out = []
    for i, batch in _arrow_batches(path, chunk[2], chunk[3]):
      _check_columns(path, batch.schema.names, text_field, id_field)
      out += _table_records(f"{path}: record batch {i}", batch, text_field, id_field)
    return out
  raise ValueError(f"unknown chunk kind {kind!r}")


def _check_columns(path: str, names: list[str], text_field: str, id_field: str) -> None:
  for field, key in ((text_field, "text_field"), (id_field, "id_field")):
    if field and field not in names:
      raise UserError(f"{path}: no column {field!r} (columns: {names}); set data.{key}")


def _table_records(where: str, table, text_field: str, id_field: str) -> list:
  """Arrow table/batch -> [(text, id)]; a null or non-string text names its row."""
  import pyarrow as pa
  col = table.column(text_field)
  if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
    raise UserError(f"{where}: column {text_field!r} is {col.type}, not text; set "
                    "data.text_field to the text column")
  if col.null_count:
    row = next(i for i, v in enumerate(col.is_null().to_pylist()) if v)
    raise UserError(f"{where}, row {row}: {text_field!r} is null ({col.null_count} null rows "
                    "there); drop those rows or fill them")
  texts = col.to_pylist()
  if not id_field:
    return [(t, None) for t in texts]
  return list(zip(texts, table.column(id_field).to_pylist()))


def _jsonl_records(path: str, first_line: int, data: bytes, text_field: str, id_field: str
                   ) -> list:
  out = []
  for k, raw in enumerate(data.split(b"\n")):
    if not raw.strip():       # blank lines (a trailing newline, CRLF) are not records
      continue
    where = f"{path}:{first_line + k}"
    try:
      rec = json.loads(raw)
    except ValueError as e:   # JSONDecodeError and invalid UTF-8 both
      if k == 0 and first_line == 1 and raw.lstrip()[:1] == b"[":
        raise UserError(f"{path}: a JSON array, not JSON lines (one object per line); convert "
                        "it, e.g. with `jq -c '.[]'`") from None
      raise UserError(f"{where}: not valid JSON ({e}); fix or remove the line") from None
    if not isinstance(rec, dict):
      if isinstance(rec, list) and k == 0 and first_line == 1:
        raise UserError(f"{path}: a JSON array, not JSON lines (one object per line); convert "
                        "it, e.g. with `jq -c '.[]'`")
      raise UserError(f"{where}: a {type(rec).__name__}, not a JSON object with a "
                      f"{text_field!r} field")
    text = rec.get(text_field)
    if not isinstance(text, str):
      if text_field not in rec:
        raise UserError(f"{where}: no {text_field!r} field (fields: {sorted(rec)[:20]}); set "
                        "data.text_field")
      raise UserError(f"{where}: {text_field!r} is {type(text).__name__}, not a string")
    if id_field:
      if id_field not in rec:
        raise UserError(f"{where}: no {id_field!r} field (fields: {sorted(rec)[:20]}); set "
                        "data.id_field, or '' for no document ids")
      out.append((text, rec[id_field]))
    else:
      out.append((text, None))
  return out
