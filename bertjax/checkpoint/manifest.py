"""The checkpoint manifest (size + CRC32 of every file) and the evidence that a checkpoint is
damaged: what moves a latest checkpoint aside, and what leaves it in place.

A manifest is written by the Checkpointer's pre-commit callback, after every item is written
and before Orbax renames the step directory into place (bertjax/checkpoint/checkpointer.py).
"""
from __future__ import annotations

import json
import os
import re
import zlib
from typing import Optional

MANIFEST = "manifest.json"
# Files Orbax may still touch after our manifest is written (commit markers, step metadata).
_UNHASHED = {MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA"}


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      crc = zlib.crc32(chunk, crc)
  return crc


def _list_files(root: str) -> list[str]:
  out = []
  for dirpath, _, names in os.walk(root):
    for n in names:
      rel = os.path.relpath(os.path.join(dirpath, n), root)
      if os.path.basename(rel) not in _UNHASHED:
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str) -> None:
  """Record size and CRC32 of every file of a checkpoint (atomic: tmp file + rename)."""
  files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)),
                 "crc32": _crc32(os.path.join(step_dir, rel))} for rel in _list_files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"files": files}, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> None:
  """Raise `CorruptCheckpoint` if a file listed in the manifest is missing, truncated or altered.

  A checkpoint without a manifest (killed between commit and manifest, or written by another
  tool) is not rejected here; a damaged one then fails in the restore itself.
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    raise CorruptCheckpoint(f"{path}: unreadable manifest ({e})") from None
  for rel, want in files.items():
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      raise CorruptCheckpoint(f"{full}: missing")
    size = os.path.getsize(full)
    if size != want["size"]:
      raise CorruptCheckpoint(f"{full}: {size} bytes, expected {want['size']} (truncated?)")
    if _crc32(full) != want["crc32"]:
      raise CorruptCheckpoint(f"{full}: checksum mismatch (corrupted)")


class CorruptCheckpoint(Exception):
  """A checkpoint on disk that cannot be trusted (bad manifest, missing or altered file)."""


# Files of a checkpoint that hold JSON (Orbax's metadata, our meta and data items): one that
# does not parse is evidence of damage, as a failed checksum is.
_JSON_FILES = {"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata", MANIFEST}


def find_damage(step_dir: str) -> Optional[str]:
  """Evidence that a checkpoint is damaged, as one sentence, or None when its files pass.

  Evidence is: a manifest entry that is missing, truncated or fails its CRC32; an item
  directory (state, meta) that is absent; a JSON file that is empty or does not parse. An
  OSError while looking (EIO, a stale network mount) is *not* evidence: the files may be fine,
  so the caller leaves the checkpoint where it is.
  """
  try:
    verify_manifest(step_dir)
  except CorruptCheckpoint as e:
    return str(e)
  for item in ("state", os.path.join("meta", "metadata")):
    if not os.path.exists(os.path.join(step_dir, item)):
      return f"{os.path.join(step_dir, item)}: missing"
  for dirpath, _, names in os.walk(step_dir):
    for n in names:
      if n in _JSON_FILES or n.endswith(".json"):
        path = os.path.join(dirpath, n)
        with open(path, "rb") as f:
          raw = f.read()
        try:
          json.loads(raw)
        except ValueError as e:
          return f"{path}: not valid JSON ({e})"
  return None



def unreadable_file(e: BaseException) -> Optional[str]:
  """Evidence in a restore error itself: TensorStore read a file shorter than its index says
  (OUT_OF_RANGE) or one failing its own checks (DATA_LOSS). Other statuses (an I/O error,
  UNAVAILABLE ...) are not evidence."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    m = re.search(r"\b(?:DATA_LOSS|OUT_OF_RANGE): [^\n]{0,300}", str(e))
    if m and not isinstance(e, OSError):
      return m.group(0)
    e = e.__cause__ or e.__context__
  return None
