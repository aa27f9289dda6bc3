"""Feature extraction: run a pretrained encoder over text and write its vectors to disk.

    bertjax extract-features --init DIR --input FILE --out OUT [--layers -1,-2]
        [--pool cls|mean|pooler|none] [--batch-size N] [--max-seq-length S]

Input: UTF-8 text, one example per line: a sentence, or a pair `A ||| B` (the separator of the
original BERT's extract_features.py). Blank lines are skipped (their line numbers are kept in the
index). Each example is tokenised with the `--init` checkpoint's own tokenizer and packed as
`[CLS] A [SEP] (B [SEP])`, truncated to --max-seq-length by BERT's longest-first rule.

Layers count as transformers' `hidden_states`: 0 is the embedding output, 1..L the transformer
layers; negative indices count from the end (-1 = the last layer, -2 the one below, as in the
original BERT). Pooled vectors come from the last layer: `cls` its [CLS] vector, `mean` the mean
over the example's tokens ([CLS] and [SEP] included, as sentence-transformers' mean pooling),
`pooler` BERT's pooler (tanh(W h_CLS + b)).

Output: a directory OUT (written shard by shard, so memory stays bounded by one shard):

    OUT/features.json      {"format": "bertjax-features", "version": 1, "init", "layers"
                            (absolute indices), "pool", "hidden_size", "max_seq_length",
                            "num_examples", "shards": [names]}; written last: its presence
                            means the extraction finished
    OUT/index.jsonl        one line per example, in input order: {"index", "line" (1-based
                            input line), "shard", "row", "num_tokens", "tokens" (pieces incl.
                            [CLS]/[SEP]), "segment_ids"}
    OUT/shard-00000.npz    float32 arrays for `--shard-size` examples:
                            layer_<k>     [T, H]  token vectors of layer k, the shard's examples'
                                                  tokens concatenated (no padding)
                            token_offsets [N + 1] example r's tokens are rows
                                                  token_offsets[r]:token_offsets[r + 1]
                            pooled        [N, H]  when --pool is not none

`load_features(OUT)` reads it back; `iter_features(OUT)` streams it shard by shard.
The forward pass is jitted once per padded length bucket and the batch is split over every
device on the `data` mesh axis (bertjax.sharding), like training.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterator, Optional

import numpy as np

from bertjax.errors import UserError

FORMAT = "bertjax-features"
VERSION = 1
POOLS = ("cls", "mean", "pooler", "none")
PAIR_SEP = re.compile(r"^(.*?) \|\|\| (.*)$")


# --------------------------------------------------------------- input

def count_examples(path: str) -> int:
  """Non-blank lines of `path`; UserError for a missing, non-UTF-8 or empty file."""
  n = 0
  for _ in read_examples(path):
    n += 1
  if not n:
    raise UserError(f"{path}: no text (the file is empty or blank); put one sentence or "
                    f"`A ||| B` pair per line")
  return n


def read_examples(path: str) -> Iterator[tuple[int, str, Optional[str]]]:
  """(1-based line number, text_a, text_b or None) per non-blank line, streamed."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise UserError(f"--input {path}: cannot read ({e.strerror}); pass a UTF-8 text file") \
        from None
  with f:
    for line_no, raw in enumerate(f, 1):
      try:
        line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
      except UnicodeDecodeError as e:
        raise UserError(f"{path}:{line_no}: not UTF-8 ({e.reason} at byte {e.start}); "
                        f"re-encode the file as UTF-8") from None
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      m = PAIR_SEP.match(line)
      yield (line_no, m.group(1), m.group(2)) if m else (line_no, line, None)


def resolve_layers(spec: str, num_layers: int) -> list[int]:
  """'-1,-2' -> absolute hidden-state indices [L, L-1]; '' or 'none' -> []."""
  spec = spec.strip()
  if spec.lower() in ("", "none"):
    return []
  out = []
  for part in spec.split(","):
    try:
      k = int(part)
    except ValueError:
      raise UserError(f"--layers {spec!r}: {part!r} is not an integer; use e.g. -1,-2") from None
    if not -(num_layers + 1) <= k <= num_layers:
      raise UserError(f"--layers {spec!r}: layer {k} does not exist; the model has "
                      f"{num_layers} layers: use 0 (embeddings) .. {num_layers}, or "
                      f"-1 .. -{num_layers + 1}")
    k = k % (num_layers + 1)
    if k not in out:
      out.append(k)
  return out


# --------------------------------------------------------------- the forward pass

def make_forward(model, mesh, layers: tuple[int, ...], pool: str):
  """jit of (params, batch) -> {"layer_k": [B, S, H], "pooled": [B, H]}, batch split over the
  mesh's data axes, params replicated."""
  import jax
  import jax.numpy as jnp

  from bertjax import sharding as shd
  from bertjax.heads import pool as pool_fn

  def forward(params, batch):
    _, pooler, hidden = model.apply({"params": params}, batch["input_ids"],
                                    batch["segment_ids"], batch["input_mask"],
                                    deterministic=True, output_hidden_states=True)
    out = {f"layer_{k}": hidden[k].astype(jnp.float32) for k in layers}        # [B, S, H]
    if pool != "none":  # the fine-tuning heads' pooling (cls | mean | pooler) of the last layer
      out["pooled"] = pool_fn(hidden[-1], pooler, batch["input_mask"],
                              pool).astype(jnp.float32)                        # [B, H]
    return out

  return jax.jit(forward, in_shardings=(shd.replicated(mesh), shd.batch_sharding(mesh)),
                 out_shardings=shd.batch_sharding(mesh))


def _bucket(n: int, max_len: int) -> int:
  """Padded length for a batch whose longest example has n tokens: a power of two >= 16
  (few shapes, few compilations), at most max_len."""
  b = 16
  while b < n:
    b *= 2
  return min(b, max_len)


class Extractor:
  """A loaded checkpoint + tokenizer + jitted forward; `run` streams a file to OUT."""

  def __init__(self, init: str, layers: str = "-1", pool: str = "cls",
               max_seq_length: int = 128, batch_size: int = 32, mesh=None):
    import jax

    from bertjax import sharding as shd
    from bertjax.weights import bundle, warm_start
    from bertjax.config import base_config
    from bertjax.data.tokenizer import load_tokenizer
    from bertjax.model import BertEncoder

    if pool not in POOLS:
      raise UserError(f"--pool {pool!r}: use one of {', '.join(POOLS)}")
    if jax.process_count() > 1:  # every process would read the whole file
      raise UserError("extract-features runs in one process (over all its local devices); "
                      "split the input and run one process per part")
    params, model_cfg, tok_path, lower = bundle.load_encoder(init)
    model_cfg.dtype = "float32"  # features for downstream use: full precision
    model_cfg.remat = False
    self.layers = resolve_layers(layers, model_cfg.num_hidden_layers)
    if not self.layers and pool == "none":
      raise UserError("--layers none with --pool none asks for nothing; choose layers, a pool "
                      "or both")
    if not 2 < max_seq_length <= model_cfg.max_position_embeddings:
      raise UserError(f"--max-seq-length {max_seq_length}: use 3 .. "
                      f"{model_cfg.max_position_embeddings} (the model's positions)")
    if batch_size < 1:
      raise UserError(f"--batch-size {batch_size}: must be >= 1")
    self.init, self.pool, self.max_len = init, pool, max_seq_length
    self.model_cfg = model_cfg
    self.tok = load_tokenizer(tok_path, lower)
    self.mesh = mesh if mesh is not None else shd.make_mesh(base_config().mesh)
    n_dev = shd.mesh_size(self.mesh)
    self.batch_size = -(-batch_size // n_dev) * n_dev  # a multiple of the device count
    self.params = jax.device_put(warm_start.encoder_of(params), shd.replicated(self.mesh))
    self.forward = make_forward(BertEncoder(model_cfg), self.mesh, tuple(self.layers), pool)

  def featurize(self, examples: list) -> dict:
    """[(line, a, b)] -> padded numpy inputs [B, S_bucket] plus tokens per example."""
    from bertjax.tasks import featurize
    a = featurize.encode_texts(self.tok, [e[1] for e in examples])
    b = featurize.encode_texts(self.tok, [e[2] or "" for e in examples])
    rows = [featurize.pack(self.tok, x, y if e[2] is not None else None, self.max_len)
            for e, x, y in zip(examples, a, b)]
    n_tok = [int(r[2].sum()) for r in rows]
    s = _bucket(max(n_tok), self.max_len)
    out = {k: np.stack([r[i][:s] for r in rows]) for i, k in
           enumerate(("input_ids", "segment_ids", "input_mask"))}                # [B, S]
    out["num_tokens"] = np.asarray(n_tok)
    return out

  def batch_outputs(self, examples: list) -> tuple[dict, dict]:
    """-> (inputs, {"layer_k" [n, S, H], "pooled" [n, H]}) for up to batch_size examples."""
    import jax

    from bertjax import sharding as shd
    feats = self.featurize(examples)
    n = len(examples)
    batch = shd.pad_rows({k: feats[k] for k in ("input_ids", "segment_ids", "input_mask")},
                         self.batch_size)                                     # [batch_size, S]
    out = jax.device_get(self.forward(self.params, shd.shard_batch(batch, self.mesh)))
    return feats, {k: np.asarray(v)[:n] for k, v in out.items()}

  def run(self, input_path: str, out_dir: str, shard_size: int = 1000,
          progress: bool = True) -> dict:
    """Extract every example of `input_path` into `out_dir` (see the module doc)."""
    from tqdm import tqdm
    total = count_examples(input_path)
    if os.path.exists(os.path.join(out_dir, "features.json")) or (
        os.path.isdir(out_dir) and os.listdir(out_dir)):
      raise UserError(f"--out {out_dir}: exists and is not empty; choose a new directory")
    os.makedirs(out_dir, exist_ok=True)
    shards, pending = [], []
    bar = tqdm(total=total, unit="ex", disable=not progress, desc="extract-features")
    writer = _ShardWriter(out_dir, self.layers, self.pool != "none")
    with open(os.path.join(out_dir, "index.jsonl"), "w", encoding="utf-8") as idx:

      def flush(batch):
        feats, out = self.batch_outputs(batch)
        for r, e in enumerate(batch):
          n = int(feats["num_tokens"][r])
          row = writer.add({k: (v[r, :n] if k.startswith("layer_") else v[r])
                            for k, v in out.items()})
          ids = feats["input_ids"][r, :n]
          idx.write(json.dumps({
              "index": writer.count - 1, "line": e[0], "shard": writer.name, "row": row,
              "num_tokens": n, "tokens": [self.tok.id_to_token(int(i)) for i in ids],
              "segment_ids": feats["segment_ids"][r, :n].tolist()}, ensure_ascii=False) + "\n")
          if writer.rows >= shard_size:
            shards.append(writer.close())
        bar.update(len(batch))

      for ex in read_examples(input_path):
        pending.append(ex)
        if len(pending) == self.batch_size:
          flush(pending)
          pending = []
      if pending:
        flush(pending)
    if writer.rows:
      shards.append(writer.close())
    bar.close()
    meta = {"format": FORMAT, "version": VERSION, "init": os.path.abspath(self.init),
            "input": os.path.abspath(input_path), "layers": self.layers, "pool": self.pool,
            "hidden_size": int(self.model_cfg.hidden_size), "max_seq_length": self.max_len,
            "num_examples": writer.count, "shards": shards}
    tmp = os.path.join(out_dir, "features.json.tmp")
    with open(tmp, "w") as f:
      json.dump(meta, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "features.json"))
    return meta


class _ShardWriter:
  """Accumulates one shard's rows in memory and writes it as an .npz (temp file + rename)."""

  def __init__(self, out_dir: str, layers: list[int], pooled: bool):
    self.out_dir, self.layers, self.pooled = out_dir, layers, pooled
    self.count = 0       # examples written in all shards
    self.shard = 0
    self._reset()

  def _reset(self):
    self.rows = 0
    self.name = f"shard-{self.shard:05d}.npz"
    self.parts = {f"layer_{k}": [] for k in self.layers}
    self.pooled_rows = []
    self.offsets = [0]

  def add(self, item: dict) -> int:
    for k in self.layers:
      self.parts[f"layer_{k}"].append(item[f"layer_{k}"])                      # [n, H]
    if self.pooled:
      self.pooled_rows.append(item["pooled"])                                  # [H]
    n = len(item[f"layer_{self.layers[0]}"]) if self.layers else 0
    self.offsets.append(self.offsets[-1] + n)
    self.rows += 1
    self.count += 1
    return self.rows - 1

  def close(self) -> str:
    arrays = {k: np.concatenate(v).astype(np.float32) for k, v in self.parts.items()}
    arrays["token_offsets"] = np.asarray(self.offsets, np.int64)
    if self.pooled:
      arrays["pooled"] = np.stack(self.pooled_rows).astype(np.float32)
    path = os.path.join(self.out_dir, self.name)
    with open(path + ".tmp", "wb") as f:
      np.savez(f, **arrays)
    os.replace(path + ".tmp", path)
    name = self.name
    self.shard += 1
    self._reset()
    return name


# --------------------------------------------------------------- reading back

def _meta(out_dir: str) -> dict:
  path = os.path.join(out_dir, "features.json")
  if not os.path.isfile(path):
    raise UserError(f"{path}: not found; is {out_dir} a finished `bertjax extract-features` "
                    f"output?")
  with open(path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
    raise UserError(f"{path}: format {meta.get('format')!r} v{meta.get('version')} is not "
                    f"{FORMAT} v{VERSION}")
  return meta


def iter_features(out_dir: str) -> Iterator[dict]:
  """Per shard: {"layer_k": [list of [n_i, H]], "pooled": [N, H]} in input order."""
  meta = _meta(out_dir)
  for name in meta["shards"]:
    with np.load(os.path.join(out_dir, name)) as z:
      off = z["token_offsets"]
      item = {f"layer_{k}": [z[f"layer_{k}"][off[i]:off[i + 1]] for i in range(len(off) - 1)]
              for k in meta["layers"]}
      if "pooled" in z:
        item["pooled"] = z["pooled"]
      yield item


def load_features(out_dir: str) -> dict:
  """The whole output in memory: {"meta", "index" (list of dicts), "layer_k" (list of [n, H]),
  "pooled" [N, H] (when pooled)}."""
  meta = _meta(out_dir)
  with open(os.path.join(out_dir, "index.jsonl"), encoding="utf-8") as f:
    index = [json.loads(line) for line in f]
  out = {"meta": meta, "index": index}
  for item in iter_features(out_dir):
    for k, v in item.items():
      if k == "pooled":
        out.setdefault(k, []).append(v)
      else:
        out.setdefault(k, []).extend(v)
  if "pooled" in out:
    out["pooled"] = np.concatenate(out["pooled"])
  return out
