"""bertjax pretraining vs transformers' BertForPreTraining (PyTorch): same start, same batches.

    # once: the peer's env, as for benchmarks/finetune_compare.py (torch CPU + transformers)
    python3 -m venv .venv-peer && .venv-peer/bin/pip install torch==2.13.0 \\
        transformers==4.57.6 safetensors numpy
    # everything (ours in .venv, the peer in .venv-peer, one after the other):
    .venv/bin/python benchmarks/pretrain_compare.py --out runs/pretrain_cmp
    # one part: --parts deterministic | seeded | handover (comma-separated)

The model is BERT-Mini (configs/bert.py:mini: L=4, H=256, A=4) with an uncased WordPiece
vocabulary of 8,192 pieces trained on the bundled corpus (data/corpus; a vocab.txt, so the peer's
BertTokenizerFast reads it too), pretrained with BERT-2018's objective (segment pairs, MLM 15% at
P=20 + NSP) at S=128 on that corpus.

  data       bertjax's pipeline makes --steps training batches and the held-out batches once;
             they are saved (OUT/batches/*.npz) and both sides read them from there.
  init       bertjax's init from seed s, written as a Hugging Face directory (OUT/init/seed<s>);
             ours loads the same numbers, the peer `BertForPreTraining.from_pretrained`s it.
  optimizer  ours: bertjax.optim (optax: global-norm clip, then AdamW with bias correction,
             decay mask = not LayerNorm, not biases, linear warmup then linear decay). The peer:
             the same written out for torch -- clip by global norm as optax does it
             (g * c / |g| when |g| > c), torch.optim.AdamW with two parameter groups (weight
             decay off for names ending in `bias` and for `LayerNorm.weight`), LambdaLR with
             bertjax's schedule formula. Both report the gradient norm before clipping.
  losses     the peer scores the P masked positions (model.bert, then model.cls.predictions on
             the gathered rows), as bertjax and google-research/bert do; at step 1 it also runs
             transformers' own labels path (full [B, S, V] logits, -100 elsewhere) and records
             the difference, so the gather is shown to be the same loss.

Parts:
  deterministic  dropout off, seed 0: per-step loss, MLM loss, NSP loss and gradient norm on both
                 sides, the final parameters' difference, held-out MLM/NSP loss and accuracy.
  seeded         dropout 0.1 (BERT's), seeds --seeds per side: the same init and batches for a
                 seed on both sides, each side's own dropout stream; held-out metrics compared
                 with the seed spread.
  handover       a pretraining checkpoint (--handover-from; default the deterministic run's):
                 `bertjax finetune --init` on its bertjax bundle vs transformers fine-tuning its
                 `bertjax export --format hf` directory, through benchmarks/finetune_compare.py
                 --deterministic (SST-2, --ft-max-train rows, dev predictions compared row by
                 row, with how often each side predicts each class). --ft-head-seed: both sides
                 start from one random SST-2 head written into both (else a zero head).
Results: OUT/compare.json (every step of every run) and a markdown summary on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

STAMP: dict = {}  # date, commit and command of this invocation (set in main)
STEP_KEYS = ("loss", "mlm_loss", "nsp_loss", "grad_norm")
EVAL_KEYS = ("eval_mlm_loss", "eval_mlm_acc", "eval_nsp_loss", "eval_nsp_acc")


def train_vocab(args) -> str:
  """An uncased WordPiece vocab.txt of --vocab-size pieces trained on the bundled corpus (once):
  transformers' BertTokenizerFast and bertjax's WordPiece reader give the same ids with it."""
  from tokenizers import BertWordPieceTokenizer
  out = os.path.join(args.out, "vocab")
  if not os.path.isfile(os.path.join(out, "vocab.txt")):
    os.makedirs(out, exist_ok=True)
    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train(sorted(str(p) for p in (REPO / "data" / "corpus").glob("*.txt")),
              vocab_size=args.vocab_size, show_progress=False,
              special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.save_model(out)
  return os.path.join(out, "vocab.txt")


def run_dir(args, part: str, side: str, seed: int) -> str:
  return os.path.join(args.out, part, f"{side}_seed{seed}")


# --------------------------------------------------------------- ours (JAX, .venv)

def ours_config(args, dropout: float, seed: int):
  from bertjax import config as config_lib
  overrides = [
      f"data.corpus={REPO / 'data' / 'corpus'}/*.txt", f"data.tokenizer={args.vocab}",
      f"data.prepared_dir={os.path.join(args.out, 'prepared')}", "data.heldout_fraction=0.06",
      "model.dtype=float32",
      f"model.hidden_dropout_prob={dropout}", f"model.attention_probs_dropout_prob={dropout}",
      f"optim.learning_rate={args.lr}", f"optim.warmup_steps={args.warmup}",
      f"train.global_batch_size={args.batch}", f"train.num_steps={args.steps}",
      "train.phase2_start=0", f"train.seed={seed}", "train.log_every=1", "train.eval_every=0",
      f"train.eval_batches={args.eval_batches}", "checkpoint.every_steps=1000000",
      "checkpoint.async_save=false"]
  return config_lib.load_config(str(REPO / "configs" / "bert.py") + ":mini", overrides)


def recipe(cfg) -> dict:
  """What the peer needs to train as ours does (written to OUT/recipe.json)."""
  from bertjax.optim import warmup_steps
  o, t = cfg.optim, cfg.train
  return {"learning_rate": o.learning_rate, "end_learning_rate": o.end_learning_rate,
          "warmup_steps": warmup_steps(o, t.num_steps), "num_steps": t.num_steps,
          "b1": o.b1, "b2": o.b2, "eps": o.eps, "weight_decay": o.weight_decay,
          "clip_norm": o.clip_norm, "schedule": o.schedule, "optimizer": o.name}


def prepare_data(args) -> None:
  """The training and held-out batches, from bertjax's pipeline, saved once."""
  from bertjax.data.replay import save_batches
  from bertjax.train.pretrain import pretrain_task
  out = os.path.join(args.out, "batches")
  if os.path.isfile(os.path.join(out, "train.npz")):
    return
  os.makedirs(out, exist_ok=True)
  cfg = ours_config(args, 0.0, 0)
  task = pretrain_task(cfg, args.out)
  train = [next(task.train_iter) for _ in range(args.steps)]
  heldout = list(task.eval_batches())
  save_batches(os.path.join(out, "heldout.npz"), heldout)
  save_batches(os.path.join(out, "train.npz"), train)
  with open(os.path.join(args.out, "recipe.json"), "w") as f:
    json.dump(recipe(cfg), f, indent=1)


def init_dir(args, seed: int) -> str:
  """bertjax's initial parameters for `seed`, as a Hugging Face directory (written once)."""
  import jax
  import optax
  from bertjax.weights import interop
  from bertjax.data.replay import load_batches
  from bertjax.train.pretrain import pretrain_task
  from bertjax.train.state import batch_spec, init_state
  path = os.path.join(args.out, "init", f"seed{seed}")
  if os.path.isdir(path):
    return path
  cfg = ours_config(args, 0.0, seed)
  task = pretrain_task(cfg, args.out)
  first = load_batches(os.path.join(args.out, "batches", "heldout.npz"))[0]
  # the trainer's own init (bertjax.train.state.init_state), without an optimizer
  params = jax.jit(lambda: init_state(task.init_params, optax.identity(), seed,
                                      batch_spec(first)).params)()
  params = jax.tree_util.tree_map(lambda x: jax.device_get(x), params)
  interop.save_hf(params, cfg.model, path, [args.vocab], do_lower_case=True)
  return path


def ours_run(args, part: str, seed: int) -> dict:
  import jax
  import numpy as np
  from bertjax.data.replay import ReplayIterator, load_batches
  from bertjax.train import metrics as mlib
  from bertjax.train.loop import train
  from bertjax.train.pretrain import pretrain_task
  from bertjax.weights import export, interop
  from safetensors.numpy import save_file
  workdir = run_dir(args, part, "ours", seed)
  if os.path.exists(workdir):
    import shutil
    shutil.rmtree(workdir)
  cfg = ours_config(args, args.dropout if part == "seeded" else 0.0, seed)
  batches = os.path.join(args.out, "batches")
  task = pretrain_task(cfg, workdir)
  task.train_iter = ReplayIterator(load_batches(os.path.join(batches, "train.npz")))
  heldout = load_batches(os.path.join(batches, "heldout.npz"))
  task.eval_batches = lambda: heldout
  init, _, _ = interop.load_hf(init_dir(args, seed))
  task.load_pretrained = lambda fresh: init
  t0 = time.time()
  summary = train(task, cfg, workdir, progress=False)
  wall = time.time() - t0
  params = jax.tree_util.tree_map(np.asarray, jax.device_get(summary["state"].params))
  save_file(interop.hf_tensors(params), os.path.join(workdir, "final.safetensors"))
  if part == "deterministic":  # the bundle `bertjax finetune --init` reads (handover)
    export.export(workdir, os.path.join(workdir, "export"))
  rows = mlib.read_metrics(workdir)
  steps = [{k: r[k] for k in STEP_KEYS + ("lr",)} for r in rows if "loss" in r]
  ev = next(r for r in reversed(rows) if "eval_mlm_loss" in r)
  return {"steps": steps, "eval": {k: ev[k] for k in EVAL_KEYS}, "wall_s": wall,
          "seq_per_s": summary["train"].get("seq_per_s")}


# --------------------------------------------------------------- the peer (PyTorch, .venv-peer)

def _lr_factor(r: dict):
  """bertjax.optim.make_schedule (linear) as a LambdaLR factor of the peak."""
  peak, end, warm, n = (r["learning_rate"], r["end_learning_rate"], r["warmup_steps"],
                        r["num_steps"])
  decay = max(n - warm, 1)

  def factor(t: int) -> float:
    if t < warm:
      return t / warm
    return (peak + (end - peak) * min(t - warm, decay) / decay) / peak
  return factor


def _npz(path: str) -> list[dict]:
  import numpy as np
  with np.load(path) as z:
    fields = {k: z[k] for k in z.files}
  return [{k: v[i] for k, v in fields.items()} for i in range(len(next(iter(fields.values()))))]


def _peer_forward(model, b: dict, torch):
  """(mlm_logits [B, P, V], nsp_logits [B, 2]) of a saved batch, MLM at the masked positions."""
  ids = torch.as_tensor(b["input_ids"]).long()
  seq, pooled = model.bert(input_ids=ids, attention_mask=torch.as_tensor(b["input_mask"]).long(),
                           token_type_ids=torch.as_tensor(b["segment_ids"]).long(),
                           return_dict=False)[:2]                              # [B,S,H], [B,H]
  pos = torch.as_tensor(b["masked_lm_positions"]).long()                      # [B, P]
  gathered = seq.gather(1, pos[..., None].expand(-1, -1, seq.shape[-1]))      # [B, P, H]
  return model.cls.predictions(gathered), model.cls.seq_relationship(pooled)


def _peer_sums(mlm_logits, nsp_logits, b: dict, torch) -> dict:
  """bertjax.losses.pretraining_sums, in torch: weighted sums and their weights."""
  f = torch.nn.functional
  v = mlm_logits.shape[-1]
  labels = torch.as_tensor(b["masked_lm_ids"]).long().reshape(-1)
  w = torch.as_tensor(b["masked_lm_weights"]).float().reshape(-1)
  nsp_y = torch.as_tensor(b["next_sentence_labels"]).long().reshape(-1)
  nsp_w = torch.as_tensor(b["input_mask"][:, 0]).float()
  ce = f.cross_entropy(mlm_logits.reshape(-1, v).float(), labels, reduction="none")
  nsp_ce = f.cross_entropy(nsp_logits.float(), nsp_y, reduction="none")
  hit = (mlm_logits.reshape(-1, v).argmax(-1) == labels).float()
  nsp_hit = (nsp_logits.argmax(-1) == nsp_y).float()
  return {"mlm_loss": (ce * w).sum(), "mlm_w": w.sum(), "mlm_acc": (hit * w).sum(),
          "nsp_loss": (nsp_ce * nsp_w).sum(), "nsp_w": nsp_w.sum(),
          "nsp_acc": (nsp_hit * nsp_w).sum()}


def _hf_labels_loss(model, b: dict, torch) -> float:
  """transformers' own pretraining loss: labels [B, S] (-100 where nothing is predicted)."""
  labels = torch.full(b["input_ids"].shape, -100, dtype=torch.long)
  for r in range(labels.shape[0]):
    for p, t, w in zip(b["masked_lm_positions"][r], b["masked_lm_ids"][r],
                       b["masked_lm_weights"][r]):
      if w > 0:
        labels[r, int(p)] = int(t)
  out = model(input_ids=torch.as_tensor(b["input_ids"]).long(),
              attention_mask=torch.as_tensor(b["input_mask"]).long(),
              token_type_ids=torch.as_tensor(b["segment_ids"]).long(), labels=labels,
              next_sentence_label=torch.as_tensor(b["next_sentence_labels"]).long())
  return float(out.loss)


def peer_run(args, part: str, seed: int) -> dict:
  import numpy as np
  import torch
  import transformers
  from safetensors.torch import save_file
  torch.set_num_threads(args.threads or torch.get_num_threads())
  torch.manual_seed(seed)  # the peer's dropout stream
  r = json.load(open(os.path.join(args.out, "recipe.json")))
  dropout = 0.0 if part == "deterministic" else args.dropout
  model = transformers.BertForPreTraining.from_pretrained(
      os.path.join(args.out, "init", f"seed{seed}"), hidden_dropout_prob=dropout,
      attention_probs_dropout_prob=dropout)
  train = _npz(os.path.join(args.out, "batches", "train.npz"))
  heldout = _npz(os.path.join(args.out, "batches", "heldout.npz"))
  decay, no_decay = [], []
  for name, p in model.named_parameters():  # tied weights appear once
    (no_decay if name.endswith("bias") or "LayerNorm.weight" in name else decay).append(p)
  params = decay + no_decay
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=r["learning_rate"], betas=(r["b1"], r["b2"]), eps=r["eps"])
  sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_factor(r))
  steps, check = [], None
  workdir = run_dir(args, part, "peer", seed)
  os.makedirs(workdir, exist_ok=True)
  progress = open(os.path.join(workdir, "steps.jsonl"), "w")
  model.train()
  t0 = time.time()
  for i, b in enumerate(train[:r["num_steps"]]):
    if i == 0:  # transformers' labels path on the same batch and weights (dropout off for it)
      model.eval()
      with torch.no_grad():
        full = _hf_labels_loss(model, b, torch)
        s = _peer_sums(*_peer_forward(model, b, torch), b, torch)
        gathered = float(s["mlm_loss"] / s["mlm_w"] + s["nsp_loss"] / s["nsp_w"])
      check = {"hf_labels_loss": full, "gathered_loss": gathered,
               "rel_diff": abs(full - gathered) / abs(full)}
      model.train()
    lr = opt.param_groups[0]["lr"]
    s = _peer_sums(*_peer_forward(model, b, torch), b, torch)
    mlm = s["mlm_loss"] / s["mlm_w"].clamp_min(1e-9)
    nsp = s["nsp_loss"] / s["nsp_w"].clamp_min(1e-9)
    loss = mlm + nsp
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).float()
    if r["clip_norm"] > 0 and norm > r["clip_norm"]:  # bertjax.optim.clip_by_global_norm
      for p in params:
        p.grad.mul_(r["clip_norm"] / norm)
    opt.step()
    sched.step()
    steps.append({"loss": float(loss.detach()), "mlm_loss": float(mlm.detach()),
                  "nsp_loss": float(nsp.detach()), "grad_norm": float(norm), "lr": lr})
    progress.write(json.dumps(steps[-1]) + "\n")  # readable while the run goes on
    progress.flush()
    if (i + 1) % 50 == 0:
      print(f"[peer] {part} seed {seed} step {i + 1} loss {float(loss):.4f} "
            f"{time.time() - t0:.0f}s", flush=True)
  wall = time.time() - t0
  model.eval()
  tot = {}
  with torch.no_grad():
    for b in heldout:
      for k, v in _peer_sums(*_peer_forward(model, b, torch), b, torch).items():
        tot[k] = tot.get(k, 0.0) + float(v)
  ev = {"eval_mlm_loss": tot["mlm_loss"] / tot["mlm_w"], "eval_mlm_acc": tot["mlm_acc"] / tot["mlm_w"],
        "eval_nsp_loss": tot["nsp_loss"] / tot["nsp_w"], "eval_nsp_acc": tot["nsp_acc"] / tot["nsp_w"]}
  progress.close()
  state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
           if not k.startswith("cls.predictions.decoder.")}  # tied: written once, as save_hf
  save_file(state, os.path.join(workdir, "final.safetensors"))
  out = {"steps": steps, "eval": ev, "wall_s": wall, "labels_path_check": check,
         "seq_per_s": len(steps) * len(train[0]["input_ids"]) / wall,
         "torch": torch.__version__, "transformers": transformers.__version__,
         "threads": torch.get_num_threads()}
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump(out, f)
  return out


# --------------------------------------------------------------- comparison (.venv)

def _rel(a: float, b: float) -> float:
  return abs(a - b) / max(abs(b), 1e-12)


def compare_steps(ours: list[dict], peer: list[dict], tol: float) -> dict:
  """Largest relative difference per quantity, its step, and the first step above `tol`."""
  out = {}
  for k in STEP_KEYS:
    rel = [_rel(a[k], b[k]) for a, b in zip(ours, peer)]
    worst = max(range(len(rel)), key=rel.__getitem__)
    above = next((i + 1 for i, x in enumerate(rel) if x > tol), None)
    out[k] = {"max_rel": rel[worst], "at_step": worst + 1, "first_step_above_tol": above,
              "max_rel_first_100": max(rel[:100]), "median_rel": sorted(rel)[len(rel) // 2],
              "steps_compared": len(rel),
              "max_rel_upto": {n: max(rel[:n]) for n in (10, 50, 100, 150, 200, 250, 300)
                               if n <= len(rel)}}
  out["lr_max_abs_diff"] = max(abs(a["lr"] - b["lr"]) for a, b in zip(ours, peer))
  return out


def compare_params(path_a: str, path_b: str) -> dict:
  """Final parameters: largest |a - b|, and |a - b| / |b| (L2) over all and per tensor."""
  import numpy as np
  from safetensors.numpy import load_file
  a, b = load_file(path_a), load_file(path_b)
  missing = sorted(set(a) ^ set(b))
  num = den = 0.0
  worst = ("", 0.0)
  max_abs = 0.0
  for k in sorted(set(a) & set(b)):
    x, y = a[k].astype(np.float64), b[k].astype(np.float64)
    d = float(np.sum((x - y) ** 2))
    num, den = num + d, den + float(np.sum(y ** 2))
    rel = math.sqrt(d) / max(math.sqrt(float(np.sum(y ** 2))), 1e-30)
    if rel > worst[1]:
      worst = (k, rel)
    max_abs = max(max_abs, float(np.max(np.abs(x - y))))
  return {"rel_l2": math.sqrt(num / den), "max_abs": max_abs, "worst_tensor": worst[0],
          "worst_tensor_rel_l2": worst[1], "tensors": len(set(a) & set(b)),
          "names_differing": missing}


def run_part(args, part: str, seed: int) -> dict:
  """Ours and the peer side by side (two processes at once: they share only the saved files)."""
  init_dir(args, seed)
  peer_py = REPO / ".venv-peer" / "bin" / "python"
  peer_proc = subprocess.Popen([str(peer_py), __file__, "--side", "peer", "--part", part,
                                "--seed", str(seed), "--out", args.out,
                                "--dropout", str(args.dropout), "--threads", str(args.threads)])
  try:
    ours = ours_run(args, part, seed)
  except BaseException:
    peer_proc.kill()
    raise
  if peer_proc.wait() != 0:
    raise RuntimeError(f"the peer failed ({part}, seed {seed}): exit {peer_proc.returncode}")
  peer = json.load(open(os.path.join(run_dir(args, part, "peer", seed), "run.json")))
  return {"ours": ours, "peer": peer,
          "steps": compare_steps(ours["steps"], peer["steps"], args.tol),
          "params": compare_params(os.path.join(run_dir(args, part, "ours", seed),
                                                "final.safetensors"),
                                   os.path.join(run_dir(args, part, "peer", seed),
                                                "final.safetensors"))}


def seeded_summary(runs: dict) -> dict:
  out = {}
  for k in EVAL_KEYS:
    per = {side: [r[side]["eval"][k] for r in runs.values()] for side in ("ours", "peer")}
    mean = {s: sum(v) / len(v) for s, v in per.items()}
    spread = {s: max(v) - min(v) for s, v in per.items()}
    out[k] = {"ours": per["ours"], "peer": per["peer"], "mean": mean, "spread": spread,
              "mean_gap": abs(mean["ours"] - mean["peer"]),
              "within_larger_spread": abs(mean["ours"] - mean["peer"]) <= max(spread.values())}
  return out


def class_balance(preds: list, gold: list) -> dict:
  """How often each class is predicted and is the answer, and the accuracy of always answering
  the commoner one: a handover whose models predict one class for every row proves little."""
  classes = sorted(set(map(str, gold)))
  count = lambda xs: {c: sum(str(x) == c for x in xs) for c in classes}
  answers = count(gold)
  return {"predicted": count(preds), "gold": answers,
          "majority_accuracy": 100 * max(answers.values()) / len(gold)}


def with_starting_head(bundle_dir: str, out: str, seed: int,
                       std: float = 0.0) -> tuple[str, str]:
  """The pretrained encoder of `bundle_dir` with one SST-2 head drawn once (normal, std
  initializer_range, bias 0: BERT's and transformers' init; `std` > 0 replaces the std), written
  by bertjax as a bundle (OUT/bundle) and as a Hugging Face BertForSequenceClassification
  (OUT/hf). Both sides start fine-tuning from these same numbers: a zero head (finetune_compare's
  default when deterministic) barely moves an encoder whose [CLS] hardly varies between inputs."""
  import numpy as np
  from bertjax.tasks import registry
  from bertjax.weights import bundle, interop
  params, model_cfg, tokenizer, meta = bundle.load_bundle(bundle_dir)
  spec = registry.get("sst2")
  h, n = model_cfg.hidden_size, len(spec.labels)
  rng = np.random.RandomState(seed)
  params = {"bert": params["bert"], "classifier": {"dense": {
      "kernel": (rng.standard_normal((h, n)) * (std or model_cfg.initializer_range)
                 ).astype(np.float32),
      "bias": np.zeros(n, np.float32)}}}                                          # [H, 2], [2]
  head = {"family": spec.family, "task": spec.name, "labels": list(spec.labels),
          "pooling": "pooler"}
  paths = (os.path.join(out, "bundle"), os.path.join(out, "hf"))
  bundle.save_bundle(paths[0], params, model_cfg, [tokenizer],
                     meta={"head": head, "source": meta.get("source"), "step": meta.get("step")},
                     overwrite=True)
  interop.save_hf(params, model_cfg, paths[1], [tokenizer], overwrite=True, head=head)
  return paths


def handover(args) -> dict:
  """Fine-tune a pretraining checkpoint on both sides (two processes at once): ours from the
  bertjax bundle, the peer from the Hugging Face export of the same checkpoint."""
  from benchmarks.finetune_compare import DATA
  from bertjax.tasks import registry
  src = args.handover_from or run_dir(args, "deterministic", "ours", 0)
  hf, bundle = (os.path.join(args.out, "handover", name) for name in ("hf", "bundle"))
  bertjax = str(REPO / ".venv" / "bin" / "bertjax")
  for out, fmt in ((hf, "hf"), (bundle, "bertjax")):
    subprocess.run([bertjax, "export", src, out, "--format", fmt, "--overwrite"], check=True)
  head = []
  if args.ft_head_seed >= 0:
    bundle, hf = with_starting_head(bundle, os.path.join(args.out, "handover", "with_head"),
                                    args.ft_head_seed, args.ft_head_std)
    head = ["--init-head"]
    enc = compare_params(os.path.join(hf, "model.safetensors"),  # the encoder is the export's
                         os.path.join(args.out, "handover", "hf", "model.safetensors"))
    if enc["max_abs"] != 0.0 or enc["tensors"] < 5:
      raise RuntimeError(f"handover: the encoder with the head is not the export's: {enc}")
  common = [str(REPO / "benchmarks" / "finetune_compare.py"), "--task", "sst2", "--init", hf,
            "--ours-init", bundle, "--deterministic"] + head + [
            "--max-train", str(args.ft_max_train), "--epochs", str(args.ft_epochs),
            "--lr", str(args.ft_lr), "--seq", str(args.ft_seq), "--batch", str(args.ft_batch),
            "--threads", str(args.threads), "--warmup", str(args.ft_warmup),
            "--freeze", args.ft_freeze] + (["--dynamic-padding"] if args.ft_dynamic_padding
                                           else [])
  outs = {side: os.path.join(args.out, "handover", side) for side in ("ours", "peer")}
  procs = {"ours": subprocess.Popen([sys.executable] + common + ["--side", "ours", "--out",
                                                                  outs["ours"]]),
           "peer": subprocess.Popen([str(REPO / ".venv-peer" / "bin" / "python")] + common
                                    + ["--side", "peer", "--out", outs["peer"]])}
  for side, proc in procs.items():
    if proc.wait() != 0:
      raise RuntimeError(f"handover: the {side} fine-tuning failed (exit {proc.returncode})")
  rec = {side: json.load(open(os.path.join(out, "compare.json")))[side]
         for side, out in outs.items()}
  a, b = rec["ours"]["dev_predictions"], rec["peer"]["dev_predictions"]
  same = sum(x == y for x, y in zip(a, b))
  spec = registry.get("sst2")
  gold = [e.label for e in spec.read(str(REPO / DATA["sst2"]), spec.eval_splits[0], None)]
  return {"source": src, "command": " ".join(["python"] + common + ["--side", "ours|peer"]),
          "agreement": same / len(a), "rows": len(a), "differing_rows": len(a) - same,
          "ours_metrics": rec["ours"]["metrics"], "peer_metrics": rec["peer"]["metrics"],
          "ours_balance": class_balance(a, gold), "peer_balance": class_balance(b, gold),
          "steps": [rec["ours"]["steps"], rec["peer"]["steps"]],
          "loss_max_rel": max(_rel(x, y) for x, y in zip(rec["ours"]["losses"],
                                                          rec["peer"]["losses"]))}


def rounding(args) -> dict:
  """The same bertjax run on 2 devices (data parallel: gradients all-reduced, so summed in
  another order) instead of 1. Set beside the peer it is a second deterministic comparison;
  set beside the 1-device run it is the control: how far float32 rounding alone moves bertjax
  from itself over these steps (steps compared: those both runs have, so a 1-device run still
  in progress can be read)."""
  from bertjax.train import metrics as mlib
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  done = run_dir(args, "rounding", "ours", 0) + ".json"
  if not os.path.isfile(done):  # (a finished run is reused)
    subprocess.run([sys.executable, __file__, "--side", "ours", "--part", "rounding", "--out",
                    args.out, "--vocab", args.vocab], check=True, env=env)
  two = json.load(open(done))
  final = lambda part, side: os.path.join(run_dir(args, part, side, 0), "final.safetensors")
  out = {"ours_2dev": two}
  peer_json = os.path.join(run_dir(args, "deterministic", "peer", 0), "run.json")
  if os.path.isfile(peer_json):
    peer = json.load(open(peer_json))
    out["vs_peer"] = {"steps": compare_steps(two["steps"], peer["steps"], args.tol),
                      "params": compare_params(final("rounding", "ours"),
                                               final("deterministic", "peer")),
                      "eval": {"ours_2dev": two["eval"], "peer": peer["eval"]},
                      "labels_path_check": peer.get("labels_path_check")}
  one_dir = run_dir(args, "deterministic", "ours", 0)
  if os.path.isfile(os.path.join(one_dir, mlib.METRICS_FILE)):
    one = [r for r in mlib.read_metrics(one_dir) if "loss" in r]
    out["vs_ours_1dev"] = {"steps": compare_steps(two["steps"], one, args.tol),
                           "num_steps": min(len(one), len(two["steps"]))}
    if os.path.isfile(final("deterministic", "ours")):
      out["vs_ours_1dev"]["params"] = compare_params(final("rounding", "ours"),
                                                     final("deterministic", "ours"))
  return out


def save(path: str, update: dict) -> None:
  """Merge `update` into OUT/compare.json (parts may run as separate commands)."""
  record = json.load(open(path)) if os.path.exists(path) else {}
  for v in update.values():  # each part keeps the date, commit and command of its own run
    if isinstance(v, dict):
      v.setdefault("run", STAMP)
  record.update(update)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=1)
  os.replace(path + ".tmp", path)


def print_summary(record: dict, tol: float) -> None:
  det = record.get("deterministic")
  if det:
    print("\n## deterministic (dropout off)\n| quantity | max rel diff | at step | first step > "
          f"{tol:g} | max rel, steps 1-100 |\n|---|---|---|---|---|")
    for k in STEP_KEYS:
      s = det["steps"][k]
      print(f"| {k} | {s['max_rel']:.2e} | {s['at_step']} | {s['first_step_above_tol']} | "
            f"{s['max_rel_first_100']:.2e} |")
    p = det["params"]
    print(f"final params: rel L2 {p['rel_l2']:.2e}, max abs {p['max_abs']:.2e} "
          f"(worst {p['worst_tensor']} {p['worst_tensor_rel_l2']:.2e})")
    for side in ("ours", "peer"):
      print(f"{side}: " + ", ".join(f"{k} {v:.4f}" for k, v in det[side]["eval"].items())
            + f"; {det[side]['wall_s']:.0f}s")
  rnd = record.get("rounding")
  for key, title in (("vs_peer", "bertjax on 2 devices vs transformers (dropout off)"),
                     ("vs_ours_1dev", "rounding control: bertjax on 2 devices vs 1")):
    if not rnd or key not in rnd:
      continue
    r = rnd[key]
    print(f"\n## {title}\n| quantity | max rel diff | at step | first step > {tol:g} | "
          "max rel, steps 1-100 | median |\n|---|---|---|---|---|---|")
    for k in STEP_KEYS:
      s = r["steps"][k]
      print(f"| {k} | {s['max_rel']:.2e} | {s['at_step']} | {s['first_step_above_tol']} | "
            f"{s['max_rel_first_100']:.2e} | {s['median_rel']:.2e} |")
    if "params" in r:
      print(f"final params: rel L2 {r['params']['rel_l2']:.2e}, max abs "
            f"{r['params']['max_abs']:.2e} (worst {r['params']['worst_tensor']})")
    if "eval" in r:
      print(f"held-out: {r['eval']}")
  seeded = record.get("seeded")
  if seeded:
    print("\n## seeded (dropout 0.1)\n| metric | ours (per seed) | peer (per seed) | mean gap | "
          "larger spread | within |\n|---|---|---|---|---|---|")
    for k, s in seeded["summary"].items():
      print(f"| {k} | {', '.join(f'{x:.4f}' for x in s['ours'])} | "
            f"{', '.join(f'{x:.4f}' for x in s['peer'])} | {s['mean_gap']:.4f} | "
            f"{max(s['spread'].values()):.4f} | {s['within_larger_spread']} |")
  h = record.get("handover")
  if h:
    print(f"\n## handover\nidentical dev predictions: {100 * h['agreement']:.2f}% "
          f"({h['differing_rows']} of {h['rows']} rows differ); ours {h['ours_metrics']}, "
          f"peer {h['peer_metrics']}; largest relative per-step loss difference "
          f"{h['loss_max_rel']:.2e}")
    if "ours_balance" in h:
      print(f"predicted classes: ours {h['ours_balance']['predicted']}, peer "
            f"{h['peer_balance']['predicted']}; dev answers {h['ours_balance']['gold']} "
            f"(majority class {h['ours_balance']['majority_accuracy']:.2f}%)")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True)
  p.add_argument("--parts", default="deterministic,seeded,handover")
  p.add_argument("--side", default="both", choices=["both", "peer", "ours"])
  p.add_argument("--part", default="", help="(internal: the peer's part)")
  p.add_argument("--seed", type=int, default=0, help="(internal: the peer's seed)")
  p.add_argument("--seeds", default="0,1,2", help="seeded part: seeds per side")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=4,
                 help="sequences per step (small: 300 steps x 2 sides must fit a loaded CPU)")
  p.add_argument("--lr", type=float, default=5e-4, help="peak lr (configs/bert.py:mini)")
  p.add_argument("--warmup", type=int, default=30)
  p.add_argument("--eval-batches", type=int, default=8)
  p.add_argument("--dropout", type=float, default=0.1, help="seeded part: hidden and attention")
  p.add_argument("--vocab", default="",
                 help="WordPiece vocab.txt (default: one of --vocab-size trained on the corpus)")
  p.add_argument("--vocab-size", type=int, default=8192)
  p.add_argument("--tol", type=float, default=1e-4, help="relative per-step loss tolerance")
  p.add_argument("--threads", type=int, default=0, help="peer torch threads (0 = default)")
  p.add_argument("--ft-max-train", type=int, default=2000)
  p.add_argument("--ft-epochs", type=float, default=1.0)
  p.add_argument("--ft-lr", type=float, default=2e-4)
  p.add_argument("--ft-batch", type=int, default=32)
  p.add_argument("--ft-dynamic-padding", action="store_true",
                 help="handover peer: pad each batch to its longest row (same function, less work)")
  p.add_argument("--handover-from", default="",
                 help="handover: a `bertjax pretrain` workdir (default: the deterministic run's)")
  p.add_argument("--ft-seq", type=int, default=64)
  p.add_argument("--ft-head-std", type=float, default=0.0,
                 help="handover: the shared head's std (0: the model's initializer_range)")
  p.add_argument("--ft-warmup", type=float, default=0.1,
                 help="handover: warmup proportion of the fine-tuning steps")
  p.add_argument("--ft-freeze", default="none", choices=["none", "encoder"],
                 help="handover: encoder = only the head trains (a linear probe), both sides")
  p.add_argument("--ft-head-seed", type=int, default=-1,
                 help="handover: both sides start from one random SST-2 head drawn with this "
                      "seed (-1: from a zero head)")
  args = p.parse_args(argv)
  args.out = os.path.abspath(args.out)
  if args.side == "peer":
    peer_run(args, args.part, args.seed)
    return 0
  if args.side == "ours":  # (internal: the rounding control, in its own process)
    args.vocab = args.vocab or train_vocab(args)
    result = ours_run(args, args.part, args.seed)
    with open(run_dir(args, args.part, "ours", args.seed) + ".json", "w") as f:
      json.dump(result, f)
    return 0
  os.makedirs(args.out, exist_ok=True)
  args.vocab = args.vocab or train_vocab(args)
  path = os.path.join(args.out, "compare.json")
  record = {}
  commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
  STAMP.update(commit=commit, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               command=" ".join([os.path.relpath(sys.executable, REPO)] + sys.argv))
  record.update(args=vars(args), **STAMP)
  prepare_data(args)
  record["recipe"] = json.load(open(os.path.join(args.out, "recipe.json")))
  record["args"]["parts"] = args.parts
  parts = args.parts.split(",")
  save(path, record)
  if "deterministic" in parts:
    save(path, {"deterministic": run_part(args, "deterministic", 0)})
  if "rounding" in parts:
    save(path, {"rounding": rounding(args)})
  if "seeded" in parts:
    runs = {}
    for seed in map(int, args.seeds.split(",")):
      runs[str(seed)] = run_part(args, "seeded", seed)
    save(path, {"seeded": {"runs": runs, "summary": seeded_summary(runs)}})
  if "handover" in parts:
    save(path, {"handover": handover(args)})
  print_summary(json.load(open(path)), args.tol)
  return 0


if __name__ == "__main__":
  sys.exit(main())
