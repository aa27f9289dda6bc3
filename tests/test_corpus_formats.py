"""Record corpora (JSONL plain/.gz/.zst, .json.gz, Parquet, a datasets save_to_disk folder):
the same token ids as the .txt path on the same real text, document ids, malformed input named by
file and line / row group, and a parent that reads ahead only a few chunks."""
import gzip
import json
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bertjax.config import base_config
from bertjax.data import corpus, records, shards, stream
from bertjax.data.prepare import load_manifest, prepare_corpus
from bertjax.data.tokenizer import load_tokenizer
from bertjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "corpus")
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")
# real text in both layouts: sentence per line (several documents in one file) and prose
FILES = ["bert_sample_text.txt", "inaugural_1789-Washington.txt", "inaugural_1861-Lincoln.txt",
         "inaugural_1933-Roosevelt.txt", "inaugural_2001-Bush.txt", "state_union_1962-Kennedy.txt",
         "gutenberg_carroll-alice.txt", "inaugural_1801-Jefferson.txt",
         "inaugural_1865-Lincoln.txt", "inaugural_1961-Kennedy.txt", "state_union_1945-Truman.txt"]


def data_cfg(corpus_glob, **kw):
  d = base_config().data
  d.corpus, d.tokenizer, d.heldout_fraction = corpus_glob, SPM, 0.25
  for k, v in kw.items():
    d[k] = v
  return d


def rows():
  """One record per bundled file: its whole text, and its name as the id (in name order, as the
  .txt glob is read)."""
  return [{"id": name, "text": corpus.read_text(os.path.join(CORPUS, name))}
          for name in sorted(FILES)]


def jsonl_bytes(recs) -> bytes:
  return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


def write_format(d, fmt: str, recs) -> str:
  """Writes `recs` in `fmt` under d; returns what data.corpus should say."""
  os.makedirs(d, exist_ok=True)
  half = len(recs) // 2      # two files each: order across files must be kept
  parts = [recs[:half], recs[half:]]
  if fmt in ("jsonl", "jsonl.gz", "jsonl.zst", "json.gz"):
    for i, part in enumerate(parts):
      raw = jsonl_bytes(part)
      raw = {"gz": gzip.compress, "zst": zstandard.ZstdCompressor().compress}.get(
          fmt.rsplit(".", 1)[-1], lambda b: b)(raw)
      with open(os.path.join(d, f"part-{i}.{fmt}"), "wb") as f:
        f.write(raw)
    return os.path.join(d, f"*.{fmt}")
  if fmt == "parquet":
    for i, part in enumerate(parts):   # 2 rows per row group: several row groups per file
      pq.write_table(pa.Table.from_pylist(part), os.path.join(d, f"part-{i}.parquet"),
                     row_group_size=2)
    return os.path.join(d, "*.parquet")
  if fmt == "hf":   # what datasets' save_to_disk writes: Arrow IPC streams + state.json
    names = []
    for i, part in enumerate(parts):
      names.append(f"data-{i:05d}-of-{len(parts):05d}.arrow")
      table = pa.Table.from_pylist(part)
      with pa.OSFile(os.path.join(d, names[-1]), "wb") as sink, \
          pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)
    with open(os.path.join(d, "state.json"), "w") as f:
      json.dump({"_data_files": [{"filename": n} for n in names], "_fingerprint": "x",
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}, f)
    with open(os.path.join(d, "dataset_info.json"), "w") as f:
      json.dump({"features": {"id": {"dtype": "string", "_type": "Value"},
                              "text": {"dtype": "string", "_type": "Value"}}}, f)
    return d
  raise ValueError(fmt)


def stored(prepared: str) -> dict:
  """Every split's pieces as token ids, in record order, and the split counts."""
  m = load_manifest(prepared)
  out = {}
  for split, info in m["splits"].items():
    store = shards.DocStore(prepared, info, m["token_dtype"])
    out[split] = ([t.tolist() for _, t in store.read(np.arange(len(store)))],
                  {k: info[k] for k in ("documents", "pieces", "sentences", "tokens")})
  return out


def prepare(cfg, out, **kw) -> str:
  with warnings.catch_warnings():
    warnings.simplefilter("error")   # the bundled corpus is UTF-8: no warning expected
    prepare_corpus(cfg, str(out), **kw)
  return str(out)


@pytest.fixture(scope="module")
def txt_reference(tmp_path_factory):
  d = tmp_path_factory.mktemp("txt")
  for name in FILES:
    os.symlink(os.path.join(CORPUS, name), d / name)
  return stored(prepare(data_cfg(str(d / "*.txt")), d / "prepared"))


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "jsonl.zst", "json.gz", "parquet", "hf"])
def test_same_token_ids_as_txt(fmt, tmp_path, txt_reference):
  glob = write_format(str(tmp_path / "in"), fmt, rows())
  got = stored(prepare(data_cfg(glob), tmp_path / "prepared"))
  assert got["train"][1]["documents"] > 10 and got["heldout"][1]["documents"] > 0
  assert got == txt_reference


def test_chunks_and_workers_change_nothing(tmp_path, txt_reference, monkeypatch):
  """Tiny chunks (many per file, lines cut mid-file) read by 2 worker processes."""
  monkeypatch.setattr(records, "CHUNK_BYTES", 1000)
  recs = [{"text": line} for r in rows() for line in r["text"].split("\n\n")]  # paragraphs
  glob = write_format(str(tmp_path / "in"), "jsonl.zst", recs)
  chunks = [c for p in sorted(corpus.expand_inputs(glob)) for c in records.plan_chunks(p)]
  assert len(chunks) > 50 and chunks[1][2] > 1          # later chunks start at later lines
  assert sum(len(records.read_chunk(c, "text")) for c in chunks) == len(recs)
  serial = stored(prepare(data_cfg(glob, corpus_format="prose"), tmp_path / "p0"))
  parallel = stored(prepare(data_cfg(glob, corpus_format="prose"), tmp_path / "p2",
                            num_workers=2))
  assert serial == parallel and serial["train"][1]["documents"] > 200


@pytest.mark.parametrize("fmt", ["jsonl.gz", "parquet"])
def test_document_ids(fmt, tmp_path):
  glob = write_format(str(tmp_path / "in"), fmt, rows())
  out = prepare(data_cfg(glob, id_field="id"), tmp_path / "prepared")
  m = load_manifest(out)
  seen = []
  for split in ("train", "heldout"):
    with open(os.path.join(out, f"{split}-docids.jsonl")) as f:
      ids = [json.loads(line) for line in f]
    assert len(ids) == m["splits"][split]["documents"]
    seen += ids
  # bert_sample_text.txt holds several documents (blank-line separated): its id repeats
  assert set(seen) == set(FILES) and seen.count("bert_sample_text.txt") > 1
  assert m["summary"]["records"] == len(FILES)


def test_malformed_input_is_named(tmp_path):
  def fails(fmt, recs, match, raw=None, **kw):
    d = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    glob = write_format(str(d), fmt, recs)
    if raw is not None:
      for p in corpus.expand_inputs(glob):
        with open(p, "wb") as f:
          f.write(raw(p))
    good = tmp_path / "good"
    with pytest.raises(UserError, match=match):
      prepare(data_cfg(glob, **kw), good)
    assert not good.exists() or not any(good.iterdir())   # nothing half-written left behind

  ok = [{"id": 1, "text": "A sentence here."}] * 4
  fails("jsonl.gz", ok, r"part-1\.jsonl\.gz:2: not valid JSON",
        raw=lambda p: gzip.compress(b'{"text": "fine."}\n{"text": "cut\n') if "part-1" in p
        else gzip.compress(jsonl_bytes(ok)))
  fails("jsonl", ok, r"part-0\.jsonl:1: no 'body' field .*data\.text_field", text_field="body")
  fails("jsonl", [{"text": 3}] * 2, r"part-0\.jsonl:1: 'text' is int, not a string")
  fails("jsonl", ok, r"part-0\.jsonl:2: a list", raw=lambda p: b'{"text": "a."}\n[1]\n')
  fails("jsonl", ok, r"a JSON array, not JSON lines", raw=lambda p: json.dumps(ok).encode())
  fails("jsonl", ok, r"part-0\.jsonl:1: no 'doc' field", id_field="doc")
  fails("jsonl.zst", ok, r"part-0\.jsonl\.zst: cannot decompress after line 1",
        raw=lambda p: zstandard.ZstdCompressor().compress(jsonl_bytes(ok * 50))[:40])
  fails("parquet", ok + [{"id": 5, "text": None}] + ok,
        r"part-1\.parquet: row group 0, row 0: 'text' is null")
  fails("parquet", ok, r"part-0\.parquet: no column 'body'", text_field="body")
  fails("parquet", [{"text": 1}] * 2, r"part-0\.parquet: row group 0: column 'text' is int64")
  fails("parquet", ok, r"part-0\.parquet: not a readable Parquet file", raw=lambda p: b"PAR1xx")
  fails("hf", ok, r"data-00000-of-00002\.arrow: no column 'body'", text_field="body")
  # a DatasetDict folder: point at one split
  dd = tmp_path / "dd"
  write_format(str(dd / "train"), "hf", ok)
  (dd / "dataset_dict.json").write_text('{"splits": ["train"]}')
  with pytest.raises(UserError, match=r"DatasetDict; point it at one split's folder.*train"):
    corpus.expand_inputs(str(dd))


def test_parent_reads_ahead_a_bounded_number_of_chunks(tmp_path, monkeypatch):
  """The parent hands out at most 2 * workers + 1 groups before taking a result back (imap
  would read the whole task iterator ahead, text and all)."""
  monkeypatch.setattr(records, "CHUNK_BYTES", 200)
  path = str(tmp_path / "c.jsonl")
  with open(path, "wb") as f:
    f.write(jsonl_bytes([{"text": f"Sentence number {i} is here."} for i in range(400)]))
  consumed = []

  def tasks():
    for chunk in records.plan_chunks(path):
      consumed.append(chunk)
      yield ("records", chunk, "bert", "text", "")

  tok = load_tokenizer(SPM)
  it = stream.tokenized_groups(tasks(), tok, num_workers=1)
  first = next(it)
  assert len(first[1]) > 0 and 3 <= len(consumed) <= 6   # 3 groups of 1-2 chunks
  rest = list(it)
  assert len(consumed) > 50 and sum(len(r[1]) for r in rest) + len(first[1]) == 400


def test_tokenizer_training_reads_records(tmp_path):
  """`bertjax tokenizer train --input` sees the same sentences in a Parquet file as in the .txt."""
  glob = write_format(str(tmp_path / "in"), "parquet", rows())
  from_records = [d for p in corpus.expand_inputs(glob) for d in corpus.read_documents(p)]
  from_txt = [d for name in sorted(FILES)
              for d in corpus.read_documents(os.path.join(CORPUS, name))]
  assert from_records == from_txt and len(from_txt) > 10


def test_cli_prepare_parquet_with_fields(tmp_path, capsys):
  """`bertjax prepare` with --config.data.text_field / id_field on a Parquet corpus; a wrong
  field is exit 2 with one line naming the column and the fields there are."""
  from bertjax.cli import main
  recs = [{"doc": r["id"], "body": r["text"]} for r in rows()[:3]]
  glob = write_format(str(tmp_path / "in"), "parquet", recs)
  cfg_file = tmp_path / "cfg.py"
  cfg_file.write_text("from bertjax.config import base_config\n"
                      "def get_config():\n  return base_config()\n")
  args = ["prepare", "--config", str(cfg_file), "--config.data.heldout_fraction=0.0",
          f"--config.data.tokenizer={SPM}", f"--config.data.corpus={glob}"]
  rc = main(args + ["--out", str(tmp_path / "p"), "--config.data.text_field=body",
                    "--config.data.id_field=doc"])
  assert rc == 0 and "3 records" in capsys.readouterr().out
  ids = [json.loads(x) for x in (tmp_path / "p" / "train-docids.jsonl").read_text().split()]
  assert ids == ["bert_sample_text.txt"] * 3 + [r["doc"] for r in recs[1:]]
  rc = main(args + ["--out", str(tmp_path / "q")])
  err = capsys.readouterr().err
  assert rc == 2 and "no column 'text' (columns: ['doc', 'body']); set data.text_field" in err


def test_format_suffix_reads_one_file_as_bert(tmp_path):
  """`PATH:bert` beside prose: SST-2-like phrases (no terminal punctuation, which `auto` reads
  as one prose document) become one document each; the other files keep corpus_format."""
  phrases = [f"a charming and often affecting journey number {i}" for i in range(40)]
  (tmp_path / "sst.txt").write_text("\n\n".join(phrases) + "\n", encoding="utf-8")
  os.symlink(os.path.join(CORPUS, "gutenberg_carroll-alice.txt"), tmp_path / "alice.txt")
  sst, alice = str(tmp_path / "sst.txt"), str(tmp_path / "alice.txt")
  assert corpus.split_format(sst + ":bert") == (sst, "bert")
  assert corpus.split_format("tfds:wiki") == ("tfds:wiki", None)   # not a format: kept
  assert corpus.expand_inputs_with_formats(f"{alice},{sst}:bert", "auto") == [
      (alice, "auto"), (sst, "bert")]
  assert corpus.expand_inputs(f"{sst}:bert") == [sst]
  cfg = data_cfg(f"{alice},{sst}:bert", heldout_fraction=0.0)
  m = prepare_corpus(cfg, str(tmp_path / "p"))
  auto = prepare_corpus(data_cfg(f"{alice},{sst}", heldout_fraction=0.0), str(tmp_path / "q"))
  assert m["summary"]["formats"] == {"prose": 1, "bert": 1}
  assert m["splits"]["train"]["documents"] == 1 + len(phrases)
  assert auto["splits"]["train"]["documents"] == 2                     # without the suffix
  assert m["fingerprint"] != auto["fingerprint"]
