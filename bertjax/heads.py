"""Fine-tuning heads on the BERT encoder, and the one model that carries them. Which head a
task gets is its family's choice (bertjax.tasks.families: `Family.head`).

Shapes: B = batch, S = sequence, H = hidden, C = labels. As in Hugging Face's BertFor* classes
(so imported checkpoints fine-tune the same way):
  classification: dropout(pooled [B, H]) -> Dense(C)          -> logits [B, C]
                  pooled = BERT's pooler tanh(W h_CLS + b) (pooling="pooler", the default),
                  h_CLS ("cls") or the mean of the last layer over the example's tokens ("mean",
                  as sentence-transformers; [CLS] and [SEP] included)
  regression:     dropout(pooled [B, H]) -> Dense(1)          -> scores [B]
  tagging:        dropout(sequence [B, S, H]) -> Dense(C)     -> logits [B, S, C]
  span (QA):      sequence [B, S, H] -> Dense(2)              -> start, end logits [B, S] each
Packed rows (bertjax.tasks.batching, finetune.batching=pack) hold several examples each: the
encoder gets position_ids that restart per example and input_mask example ids (block-diagonal
attention); sentence heads then read K slots per row (cls_positions [B, K]): each example's own
[CLS] (through the same pooler) or the mean over its own tokens -> logits [B, K, C] / scores
[B, K]. Token and span heads read every token as before.
Heads compute in the config's dtype and return float32. The encoder sits under "bert" and the
head under "classifier" (span: "qa_outputs"), so a pretrained encoder drops in at params["bert"]
and a frozen-encoder predicate is `path[0] == "bert"`.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax.model import BertEncoder, Dense, add_bias, dtype_of, matmul

Array = jax.Array
POOLINGS = ("pooler", "cls", "mean")


def pool(seq: Array, pooler: Array, input_mask: Array, pooling: str) -> Array:
  """The vector a sentence-level head reads: [B, S, H], [B, H], [B, S] -> [B, H] float32."""
  if pooling == "pooler":
    return pooler
  if pooling == "cls":
    return seq[:, 0].astype(jnp.float32)
  if pooling == "mean":
    m = input_mask[..., None].astype(jnp.float32)                        # [B, S, 1]
    return (seq.astype(jnp.float32) * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
  raise ValueError(f"unknown pooling {pooling!r}")


def pool_packed(seq: Array, input_mask: Array, cls_positions: Array, pooling: str,
                pooler_params: dict, config) -> Array:
  """Each packed example's vector: [B, K] slots -> [B, K, H] float32.

  seq: the last layer, at cls_positions for pooler / cls ([B, K, H]: `reads_cls_only`), at
  every position for mean ([B, S, H]). pooler: BERT's pooler tanh(W h_CLS + b) on each
  example's own [CLS] (the encoder's pooler weights, computed as its Dense does); cls: h_CLS;
  mean: the mean over the tokens whose input_mask ([B, S] ids) is the slot's example id (k + 1).
  Empty slots give finite values (weight 0)."""
  if pooling == "mean":
    ids = jnp.arange(1, cls_positions.shape[1] + 1)                             # [K]
    onehot = (input_mask[:, :, None] == ids).astype(jnp.float32)               # [B, S, K]
    total = jnp.einsum("bsk,bsh->bkh", onehot, seq.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)                   # [B, K, H]
    return total / jnp.maximum(onehot.sum(1), 1.0)[..., None]
  cls = seq                                                                   # [B, K, H]
  if pooling == "cls":
    return cls.astype(jnp.float32)
  if pooling == "pooler":
    y = add_bias(matmul("bkh,hn->bkn", cls, pooler_params["kernel"], config),
                 pooler_params["bias"])                                        # [B, K, H]
    return jnp.tanh(y.astype(dtype_of(config)).astype(jnp.float32))
  raise ValueError(f"unknown pooling {pooling!r}")


def reads_cls_only(head) -> bool:
  """Whether a head reads nothing of the last layer but the examples' [CLS] vectors: then the
  encoder computes its last layer only there (BertEncoder's query_positions)."""
  return getattr(head, "pooling", None) in ("pooler", "cls")


class Encoded(NamedTuple):
  """What a head reads from the encoder."""
  # [B, S, H] last layer; a head that `reads_cls_only` gets it at the [CLS] positions only:
  # [B, K, H] (cls_positions) for packed rows, else [B, 1, H]
  seq: Array
  pooled: Array                  # [B, H] BERT's pooler output
  input_mask: Array              # [B, S] 0/1, or packed rows' example ids
  cls_positions: Optional[Array]  # [B, K] packed rows: where each example starts; else None
  pooler_params: Optional[dict]  # the encoder's pooler weights (packed rows' pooler pooling)


class ClassificationHead(nn.Module):
  """The pooled vector (`pooling`) -> C logits (C = 1: a regression score)."""
  num_labels: int
  config: Any
  pooling: str = "pooler"

  @nn.compact
  def __call__(self, enc: Encoded, deterministic: bool) -> Array:
    if enc.cls_positions is None:
      pooled = pool(enc.seq, enc.pooled, enc.input_mask, self.pooling)                # [B, H]
    else:
      pooled = pool_packed(enc.seq, enc.input_mask, enc.cls_positions, self.pooling,
                           enc.pooler_params, self.config)                        # [B, K, H]
    x = nn.Dropout(self.config.hidden_dropout_prob)(pooled, deterministic=deterministic)
    logits = Dense(self.num_labels, self.config, name="dense")(x).astype(jnp.float32)  # [.., C]
    return logits[..., 0] if self.num_labels == 1 else logits                 # [..] | [.., C]


class TokenClassificationHead(nn.Module):
  """Every token's final hidden state -> C logits."""
  num_labels: int
  config: Any

  @nn.compact
  def __call__(self, enc: Encoded, deterministic: bool) -> Array:
    x = nn.Dropout(self.config.hidden_dropout_prob)(enc.seq, deterministic=deterministic)
    return Dense(self.num_labels, self.config, name="dense")(x).astype(jnp.float32)  # [B, S, C]


class SpanHead(nn.Module):
  """Every token -> (start, end) logits (BERT's SQuAD head: no dropout, one [H, 2] matmul)."""
  config: Any

  @nn.compact
  def __call__(self, enc: Encoded, deterministic: bool) -> tuple[Array, Array]:
    logits = Dense(2, self.config, name="dense")(enc.seq).astype(jnp.float32)  # [B, S, 2]
    return logits[..., 0], logits[..., 1]                                      # [B, S], [B, S]


class FineTuneModel(nn.Module):
  """BertEncoder ("bert") + the head its family builds ("classifier" / "qa_outputs")."""
  config: Any
  # A bertjax.tasks.families.Family: `family.head(config, num_labels, pooling)` is the head.
  family: Any
  num_labels: int = 2
  pooling: str = "pooler"   # classification / regression input: pooler | cls | mean

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array, input_mask: Array,
               deterministic: bool = True, position_ids: Array | None = None,
               cls_positions: Array | None = None):
    """cls_positions [B, K] (packed rows): sentence heads score each row's K examples."""
    c = self.config
    head = self.family.head(c, self.num_labels, self.pooling)
    query = None
    if reads_cls_only(head):
      # Only the [CLS] vectors reach the head: the last layer's query, attention output and FFN
      # run at those positions only (a sixth of MiniLM-L6's matmuls). Packed rows' first
      # example starts at position 0, as the encoder's pooler requires.
      query = (cls_positions if cls_positions is not None
               else jnp.zeros((input_ids.shape[0], 1), jnp.int32))          # [B, K] | [B, 1]
    encoder = BertEncoder(c, name="bert")
    seq, pooled = encoder(input_ids, segment_ids, input_mask, deterministic,
                          position_ids=position_ids, query_positions=query)  # [B, S|K|1, H], [B, H]
    pooler = encoder.variables["params"]["pooler"] if cls_positions is not None else None
    return head(Encoded(seq, pooled, input_mask, cls_positions, pooler), deterministic)
