"""Dynamic MLM masking for a whole batch at once (vectorised numpy).

Per sequence: k = min(P, max(1, round(masked_lm_prob * maskable tokens))) positions are chosen
uniformly among the maskable ones (not [CLS]/[SEP]/[PAD] or any special token); each chosen
token becomes [MASK] with mask_token_prob, a random non-special token with random_token_prob, and
stays itself otherwise (BERT's rule is 0.8 / 0.1, leaving 0.1 unchanged).
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


def derived_max_predictions(masked_lm_prob: float, max_seq_length: int) -> int:
  """P for a rate when max_predictions_per_seq is 0: ceil(rate * S) (BERT: 20 at 0.15, S=128)."""
  return max(1, min(max_seq_length, int(np.ceil(round(masked_lm_prob * max_seq_length, 6)))))


def rate_at(step: int, *, start: float, end: float, num_steps: int) -> float:
  """The masking rate of a step: constant `start` when end <= 0, else linear from `start` at
  step 0 to `end` at num_steps (mmBERT lowers 0.3 towards 0.05 over training)."""
  if end <= 0 or num_steps <= 1:
    return start
  f = min(max(step / (num_steps - 1), 0.0), 1.0)
  return end if f == 1.0 else start + (end - start) * f


def mask_batch(ids: np.ndarray, maskable: np.ndarray, keys: np.ndarray, *, masked_lm_prob: float,
               max_predictions: int, mask_id: int, random_pool: np.ndarray,
               word_start: np.ndarray | None = None, mask_token_prob: float = 0.8,
               random_token_prob: float = 0.1) -> dict:
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
    if p < s:  # the P smallest scores (unordered), then order just those
      cand = np.argpartition(score, p - 1, axis=1)[:, :p]                     # [B, P]
      order = np.take_along_axis(
          cand, np.argsort(np.take_along_axis(score, cand, 1), axis=1), 1)    # [B, P]
    else:
      order = np.argsort(score, axis=1)                                       # [B, S]
    chosen = np.arange(order.shape[1])[None, :] < k[:, None]                  # [B, P]
    pos = np.where(chosen, order, s)
  else:
    pos = _whole_word_positions(maskable, u, k, word_start[ids], p)           # [B, P]
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
  # act in [0, m): [MASK]; [m, 1 - r): unchanged; [1 - r, 1): random (0.8 / 0.9 for BERT's rule)
  keep_below = 1.0 - random_token_prob
  new = np.where(act < mask_token_prob, mask_id, np.where(act < keep_below, labels, random_tok))
  ids[rows, pos] = np.where(chosen, new, ids[rows, pos])
  return {"masked_lm_positions": pos, "masked_lm_ids": labels,
          "masked_lm_weights": chosen.astype(np.float32)}


def _whole_word_positions(maskable, u, k, token_starts, p) -> np.ndarray:
  """[B, P] positions (S = unused) of whole words taken in random order, a word skipped when it
  would overshoot k (BERT's rule); exact, vectorised over rows, looping over word ranks."""
  b, s = maskable.shape
  pos = np.arange(s)
  starts = token_starts | ~maskable                                          # [B, S]
  starts[:, 1:] |= ~maskable[:, :-1]      # a token after [CLS]/[SEP] starts a word
  heads = starts & maskable                                                  # [B, S]
  # next word start after each position (non-maskable positions count as starts)
  nxt = np.where(starts, pos, s)[:, ::-1]
  nxt = np.minimum.accumulate(nxt, axis=1)[:, ::-1]                          # [B, S] first start >= t
  nxt = np.concatenate([nxt[:, 1:], np.full((b, 1), s)], 1)                  # first start > t
  length = np.where(heads, nxt - pos, 0)                                     # [B, S] word length
  order = np.argsort(np.where(heads, u, 2.0), axis=1)                        # [B, S] random words
  lens = np.take_along_axis(length, order, 1)                                # [B, S] 0 = no word
  n = np.zeros(b, np.int64)
  taken = np.zeros((b, s), bool)
  for t in range(int(heads.sum(1).max(initial=0))):
    take = (lens[:, t] > 0) & (n + lens[:, t] <= k)                          # [B]
    n += np.where(take, lens[:, t], 0)
    taken[:, t] = take
  head_taken = np.zeros((b, s), bool)
  np.put_along_axis(head_taken, order, taken, 1)                             # [B, S] by position
  first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)            # [B, S] word head
  masked = np.take_along_axis(head_taken, first, 1) & maskable               # [B, S]
  out = np.argsort(~masked, axis=1, kind="stable")[:, :p]                    # [B, P]
  return np.where(np.take_along_axis(masked, out, 1), out, s)
