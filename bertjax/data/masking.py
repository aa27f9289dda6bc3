"""Dynamic MLM masking for a whole batch at once (vectorised numpy).

Per sequence: k = min(P, max(1, round(masked_lm_prob * maskable tokens))) positions are chosen
uniformly among the maskable ones (not [CLS]/[SEP]/[PAD] or any special token); each chosen
token becomes [MASK] 80%, stays 10%, or becomes a random non-special token 10% (BERT's rule).
Whole-word masking picks words in random order, skipping a word that would overshoot k
(BERT's create_masked_lm_predictions), so a word is masked entirely or not at all; a word is a
token with word_start plus the following non-start tokens (WordPiece `##x`, SentencePiece pieces
without `▁`). Differences from BERT: k counts maskable tokens (BERT counted [CLS]/[SEP] too),
and the random token never is a special token.
Randomness: for sequence i, draws hash (key[i], stream, position) — see rng.uniform_grid.
"""
from __future__ import annotations

import numpy as np

from bertjax.data import rng

_SELECT, _ACTION, _RANDOM = 11, 12, 13


def mask_batch(ids: np.ndarray, maskable: np.ndarray, keys: np.ndarray, *, masked_lm_prob: float,
               max_predictions: int, mask_id: int, random_pool: np.ndarray,
               word_start: np.ndarray | None = None) -> dict:
  """Mask `ids` in place; return masked_lm_positions/ids/weights.

  ids: [B, S] int32 token ids; maskable: [B, S] bool; keys: [B] uint64 per-example hash keys;
  word_start: [V] bool table, given for whole-word masking (else None).
  """
  b, s = ids.shape
  p = max_predictions
  n_cand = maskable.sum(1)                                                    # [B]
  k = np.minimum(np.minimum(p, np.maximum(1, np.rint(n_cand * masked_lm_prob))), n_cand)
  k = k.astype(np.int64)                                                      # [B]
  u = rng.uniform_grid(keys, _SELECT, s)                                      # [B, S]
  if word_start is None:
    score = np.where(maskable, u, 2.0)                                        # [B, S]
    order = np.argsort(score, axis=1, kind="stable")[:, :p]                   # [B, P]
    chosen = np.arange(order.shape[1])[None, :] < k[:, None]                  # [B, P]
    pos = np.where(chosen, order, s)
  else:
    pos = _whole_word_positions(ids, maskable, u, k, word_start, p)           # [B, P]
    chosen = pos < s
  pos = np.sort(pos, axis=1)                                                  # [B, P] ascending
  chosen = np.sort(~chosen, axis=1) == 0  # chosen first, same count: sort moved them left
  if pos.shape[1] < p:  # S < P
    pad = np.full((b, p - pos.shape[1]), s)
    pos, chosen = np.concatenate([pos, pad], 1), np.concatenate([chosen, pad < 0], 1)
  pos = np.where(chosen, pos, 0).astype(np.int32)                             # [B, P]
  rows = np.arange(b)[:, None]
  labels = np.where(chosen, ids[rows, pos], 0).astype(np.int32)               # [B, P]

  act = rng.uniform_grid(keys, _ACTION, s)[rows, pos]                         # [B, P]
  rnd = rng.uniform_grid(keys, _RANDOM, s)[rows, pos]                         # [B, P]
  random_tok = random_pool[(rnd * len(random_pool)).astype(np.int64)]
  new = np.where(act < 0.8, mask_id, np.where(act < 0.9, labels, random_tok))
  ids[rows, pos] = np.where(chosen, new, ids[rows, pos])
  return {"masked_lm_positions": pos, "masked_lm_ids": labels,
          "masked_lm_weights": chosen.astype(np.float32)}


def _whole_word_positions(ids, maskable, u, k, word_start, p) -> np.ndarray:
  """[B, P] positions (S = unused) of whole words chosen in random order up to k tokens."""
  b, s = ids.shape
  starts = word_start[ids] | ~maskable                                        # [B, S]
  starts[:, 1:] |= ~maskable[:, :-1]      # a token after [CLS]/[SEP] starts a word
  first = np.maximum.accumulate(np.where(starts, np.arange(s), 0), axis=1)    # [B, S] word head
  wscore = np.take_along_axis(u, first, 1)                                    # [B, S]
  out = np.full((b, p), s, np.int64)
  for r in range(b):
    heads = np.flatnonzero(starts[r] & maskable[r])
    if not len(heads):
      continue
    ends = np.append(heads[1:], s)
    # a word runs from its head to the next start (maskable tokens only)
    lengths = [int(maskable[r, h:e].sum()) for h, e in zip(heads, ends)]
    taken, n = [], 0
    for w in np.argsort(wscore[r, heads], kind="stable"):
      if n >= k[r]:
        break
      if n + lengths[w] > k[r]:
        continue
      h = heads[w]
      taken.extend(range(h, h + lengths[w]))
      n += lengths[w]
    out[r, :len(taken)] = taken
  return out
