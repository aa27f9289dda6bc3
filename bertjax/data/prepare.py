"""`bertjax prepare`: tokenise a corpus once into ArrayRecord shards + manifest.json.

Work is split into tasks (a text file, a chunk of a JSONL/Parquet/Arrow file, or a range of
TFDS examples), tokenised in parallel worker processes and written in task order, so the output
does not depend on the number of workers; memory holds a few chunks, not the corpus (stream.py).
With data.id_field set, {split}-docids.jsonl lists each document's record id (JSON, one a line,
in document order; null for documents of plain text files).

Each document goes to `heldout` when a hash of (seed, its token ids) falls below
data.heldout_fraction: deterministic, independent of file order, and identical duplicate
documents never straddle the split.

Re-running with the same inputs (paths, sizes, mtimes), tokenizer and settings returns the
existing manifest without work; anything else rewrites the directory's shards.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import shutil
import time
import warnings

import numpy as np

from bertjax.data import corpus, records, shards, stream
from bertjax.data.tokenizer import load_tokenizer
from bertjax.errors import UserError

# Bumped whenever readers or shard layout change what a prepared dir holds (3: WikiText
# files split into one document per article), so older prepared dirs are redone.
FORMAT_VERSION = 3
TFDS_TASK_EXAMPLES = 5000

def _tasks(data_cfg, stats: corpus.ReadStats) -> tuple:
  """-> (tasks (an iterator: record files are chunked as it is consumed), fingerprint of the
  inputs)."""
  spec = data_cfg.corpus.strip()
  if spec.startswith("tfds:") or data_cfg.corpus_format == "tfds":
    name, split = corpus.parse_tfds(spec if spec.startswith("tfds:") else "tfds:" + spec)
    source = corpus.open_tfds(name, split, data_cfg.tfds_data_dir)
    n = len(source)
    tasks = [("tfds", name, split, data_cfg.tfds_data_dir, data_cfg.tfds_text_field, a,
              min(a + TFDS_TASK_EXAMPLES, n)) for a in range(0, n, TFDS_TASK_EXAMPLES)]
    return tasks, [f"tfds:{name}:{split}", data_cfg.tfds_data_dir, data_cfg.tfds_text_field, n]
  fmt = data_cfg.corpus_format
  if fmt not in ("auto", "bert", "prose"):
    raise UserError(f"data.corpus_format={fmt!r}: use auto, bert, prose or tfds")
  files = corpus.expand_inputs_with_formats(spec, fmt)
  inputs = []
  for f, f_fmt in files:
    st = os.stat(f)
    # a file's own `:FORMAT` joins the fingerprint; others keep theirs from before suffixes
    inputs.append([os.path.abspath(f), st.st_size, st.st_mtime_ns]
                  + ([f_fmt] if f_fmt != fmt else []))
  if any(records.record_kind(f) for f, _ in files):   # text-only corpora keep their fingerprint
    if not data_cfg.text_field:
      raise UserError("data.text_field is empty; set it to the field / column holding the text")
    inputs.append({"text_field": data_cfg.text_field, "id_field": data_cfg.id_field})
  return stream.plan_file_tasks(files, data_cfg.text_field, data_cfg.id_field, stats), inputs


def _is_heldout(doc: list[np.ndarray], seed: int, fraction: float) -> bool:
  if fraction <= 0:
    return False
  h = hashlib.blake2b(digest_size=8, key=str(seed).encode())
  for s in doc:
    h.update(np.asarray(s, np.int32).tobytes())
    h.update(b"|")
  return int.from_bytes(h.digest(), "little") / 2.0**64 < fraction


def prepare_corpus(data_cfg, out_dir: str, num_workers: int = 0) -> dict:
  """Tokenise `data_cfg.corpus` into `out_dir`; returns the manifest (also out_dir/manifest.json)."""
  tok = load_tokenizer(data_cfg.tokenizer, data_cfg.do_lower_case)
  if not 0.0 <= data_cfg.heldout_fraction < 1.0:
    raise UserError(f"data.heldout_fraction={data_cfg.heldout_fraction}: use a value in [0, 1)")
  stats = corpus.ReadStats()
  tasks, inputs = _tasks(data_cfg, stats)
  tfds = data_cfg.corpus.strip().startswith("tfds:") or data_cfg.corpus_format == "tfds"
  id_field = "" if tfds else data_cfg.id_field
  fingerprint = {"version": FORMAT_VERSION, "inputs": inputs, "tokenizer": tok.identity(),
                 "corpus_format": data_cfg.corpus_format,
                 "heldout_fraction": float(data_cfg.heldout_fraction), "seed": int(data_cfg.seed)}
  manifest_path = os.path.join(out_dir, "manifest.json")
  old = None
  if os.path.isfile(manifest_path):
    try:
      old = _read_manifest(manifest_path)
    except UserError as e:                 # regenerable: prepare again over it
      warnings.warn(f"{e}; preparing the corpus again")
  if old is not None:
    needed = [s["file"] for sp in old.get("splits", {}).values() for s in sp["shards"]]
    needed += [f"{sp}-{kind}.bin" for sp in ("train", "heldout")
               for kind in ("sentlens", "pieces", "sentoffs")] + ["token_tables.npz"]
    needed += [f"{sp}-docids.jsonl" for sp in ("train", "heldout") if id_field]
    if old.get("fingerprint") == fingerprint and all(
        os.path.isfile(os.path.join(out_dir, f)) for f in needed):
      return old
  # Written into a staging dir first: an earlier preparation is replaced only once this one
  # has succeeded, so a bad corpus (an error below) leaves a good prepared dir as it was.
  # Staging dirs are named by host and pid: only this host's, of processes that are gone
  # (killed runs), are removed; another host's pid means nothing here.
  host = platform.node()  # the hostname, without importing a network module
  for old_stage in glob.glob(os.path.join(out_dir, ".preparing-*")):
    owner, _, pid = os.path.basename(old_stage)[len(".preparing-"):].rpartition("-")
    if owner == host and pid.isdigit() and not _alive(int(pid)):
      shutil.rmtree(old_stage, ignore_errors=True)
  stage = os.path.join(out_dir, f".preparing-{host}-{os.getpid()}")
  shutil.rmtree(stage, ignore_errors=True)
  os.makedirs(stage)

  t0 = time.time()
  token_dtype = "uint16" if tok.vocab_size <= 65535 else "int32"
  writers = {s: shards.ShardWriter(stage, s, np.dtype(token_dtype)) for s in ("train", "heldout")}
  docids = {s: open(os.path.join(stage, f"{s}-docids.jsonl"), "w", encoding="utf-8")
            for s in writers} if id_field else {}
  try:
    notes = []
    for task_stats, docs, ids, msgs in stream.tokenized_groups(tasks, tok, num_workers):
      notes += msgs
      stats.merge(task_stats)
      for doc, doc_id in zip(docs, ids):
        split = "heldout" if _is_heldout(doc, data_cfg.seed, data_cfg.heldout_fraction) else "train"
        writers[split].add_document(doc)
        if docids:
          docids[split].write(json.dumps(doc_id, ensure_ascii=False, default=str) + "\n")
  except BaseException:
    for f in docids.values():
      f.close()
    shutil.rmtree(stage, ignore_errors=True)
    raise
  for f in docids.values():
    f.close()
  splits = {s: w.close() for s, w in writers.items()}
  if notes:  # one warning naming every file (e.g. each Latin-1 file), not one per file
    shown = "; ".join(notes[:20]) + (f"; and {len(notes) - 20} more" if len(notes) > 20 else "")
    warnings.warn(f"{len(notes)} input warning(s): {shown}", stacklevel=2)

  summary = stats.as_dict()
  if splits["train"]["tokens"] == 0:
    shutil.rmtree(stage, ignore_errors=True)
    raise UserError(
        f"data.corpus={data_cfg.corpus!r}: no text left after reading ({summary['files']} files, "
        f"{summary['empty_files']} empty, {summary['empty_documents']} documents empty after "
        "tokenising); check the globs, data.corpus_format and the tokenizer")
  if data_cfg.heldout_fraction > 0 and splits["heldout"]["documents"] == 0:
    warnings.warn(f"{out_dir}: no document fell in the heldout split "
                  f"({splits['train']['documents']} documents, heldout_fraction="
                  f"{data_cfg.heldout_fraction}); evaluation will have no data", stacklevel=2)
  manifest = {
      "fingerprint": fingerprint, "tokenizer": tok.identity(), "token_dtype": token_dtype,
      "special_ids": {"pad": tok.pad_id, "unk": tok.unk_id, "cls": tok.cls_id,
                      "sep": tok.sep_id, "mask": tok.mask_id},
      "splits": splits, "summary": summary, "seconds": round(time.time() - t0, 2),
  }
  # Per-id tables the pipeline needs, so a prepared dir works without the tokenizer file.
  np.savez(os.path.join(stage, "token_tables.npz"), special=tok.special_ids,
           word_start=tok.word_start, pool=tok.random_token_pool())
  if os.path.isfile(manifest_path):
    os.remove(manifest_path)  # the earlier preparation goes now (the manifest is written last)
  for name in os.listdir(out_dir):  # our files of the earlier preparation only
    if re.fullmatch(r"(train|heldout)-\w+\.(array_record|bin|jsonl)(\.tmp)?", name):
      os.remove(os.path.join(out_dir, name))
  for name in os.listdir(stage):
    os.replace(os.path.join(stage, name), os.path.join(out_dir, name))
  os.rmdir(stage)
  tmp = manifest_path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, manifest_path)
  return manifest


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  return True


def load_manifest(prepared_dir: str) -> dict:
  path = os.path.join(prepared_dir, "manifest.json")
  if not os.path.isfile(path):
    raise UserError(f"{prepared_dir}: no manifest.json; run `bertjax prepare --out {prepared_dir}`")
  return _read_manifest(path)


def _read_manifest(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a valid manifest ({e}); delete the prepared directory and "
                    "run again") from None
  if not isinstance(manifest, dict) or "splits" not in manifest:
    raise UserError(f"{path}: not a bertjax manifest (no 'splits'); delete the prepared "
                    "directory and run again")
  # Valid JSON of the wrong shape (hand-edited, or another tool's): name it here, not as a
  # KeyError deep in the pipeline.
  splits = manifest["splits"]
  problem = None
  if not isinstance(splits, dict) or not splits:
    problem = "'splits' is not a mapping of splits"
  else:
    for name, sp in splits.items():
      missing = [k for k in _SPLIT_KEYS if not isinstance(sp, dict) or k not in sp]
      if missing:
        problem = f"split {name!r} lacks {', '.join(missing)}"
        break
  for key, kind in (("fingerprint", dict), ("special_ids", dict), ("token_dtype", str)):
    if problem is None and not isinstance(manifest.get(key), kind):
      problem = f"no valid {key!r}"
  if problem:
    raise UserError(f"{path}: damaged manifest ({problem}); delete the prepared directory and "
                    "run again")
  return manifest


_SPLIT_KEYS = ("documents", "pieces", "sentences", "tokens", "shards")


def format_summary(manifest: dict) -> str:
  """Human-readable lines: counts per split and what was skipped."""
  s = manifest["summary"]
  lines = [f"{name}: {sp['documents']} documents, {sp['pieces']} pieces, {sp['sentences']} "
           f"sentences, {sp['tokens']} tokens, {len(sp['shards'])} shards"
           for name, sp in manifest["splits"].items()]
  records = f", {s['records']} records" if s.get("records") else ""
  lines.append(f"read {s['files']} files{records} (formats {s['formats']}); skipped: "
               f"{s['empty_files']} empty files, {s['empty_documents']} empty documents, "
               f"{s['empty_sentences']} "
               f"empty sentences; {s['one_sentence_documents']} one-sentence documents (NotNext "
               f"only); {s['long_sentences_split']} sentences over {shards.MAX_SENTENCE_TOKENS} "
               f"tokens cut; {len(s['latin1_files'])} files decoded as Latin-1")
  return "\n".join(lines)
