"""Corpus preparation on several processes: process 0 prepares, the others wait for it.

Every process of a multi-host run needs the same prepared directory, and two processes writing
it at once would swap its manifest and shards under each other. So process 0 runs
`prepare_corpus` (idempotent: a prepared dir that matches is reused at once) and publishes the
outcome in the key-value store of JAX's distributed runtime; the others block on that key,
then read the manifest. An error on process 0 (a bad corpus path, no text) reaches every
process as the same one-line `UserError`, instead of leaving them waiting.

The prepared directory must be on a filesystem every host sees (as the workdir is); a host that
does not see process 0's manifest is told so in one line.
"""
from __future__ import annotations

import hashlib
import os

import jax

from bertjax.data.prepare import load_manifest, prepare_corpus
from bertjax.errors import UserError

# How long the other processes wait for process 0 (a large corpus takes hours to tokenise).
WAIT_HOURS = 24


def _kv_client():
  from jax._src import distributed  # the store jax.experimental.multihost_utils uses too
  return distributed.global_state.client


def prepare_once(data_cfg, out_dir: str, num_workers: int = 0) -> dict:
  """`prepare_corpus` on process 0 only; every process returns the manifest."""
  if jax.process_count() == 1:
    return prepare_corpus(data_cfg, out_dir, num_workers=num_workers)
  client = _kv_client()
  if client is None:
    raise UserError("several JAX processes but no distributed runtime: start them with "
                    "--coordinator/--num-processes/--process-id")
  key = "bertjax/prepare/" + hashlib.sha256(os.path.abspath(out_dir).encode()).hexdigest()[:16]
  if jax.process_index() == 0:
    try:
      manifest = prepare_corpus(data_cfg, out_dir, num_workers=num_workers)
    except UserError as e:
      client.key_value_set(key, f"error: {e}", allow_overwrite=True)
      raise
    except BaseException as e:
      client.key_value_set(key, f"error: process 0 failed to prepare {out_dir} "
                                f"({type(e).__name__}: {str(e)[:300]})", allow_overwrite=True)
      raise
    client.key_value_set(key, "ok", allow_overwrite=True)
    return manifest
  status = client.blocking_key_value_get(key, WAIT_HOURS * 3600 * 1000)
  if status != "ok":
    raise UserError(status.removeprefix("error: "))
  if not os.path.isfile(os.path.join(out_dir, "manifest.json")):
    raise UserError(f"{out_dir}: process 0 prepared the corpus there, but process "
                    f"{jax.process_index()} does not see it; put data.prepared_dir (or the "
                    f"workdir) on a filesystem every host shares")
  return load_manifest(out_dir)
