"""Write a directory atomically: an export or a bundle is either complete or absent."""
from __future__ import annotations

import os
import shutil
import tempfile

from bertjax.errors import UserError


class atomic_dir:
  """`with atomic_dir(out) as tmp:` write into tmp; on success tmp is renamed to `out`.

  A failure leaves no half-written `out`. An existing non-empty `out` is an error unless
  overwrite=True, in which case it is replaced only after the new one is complete.
  """

  def __init__(self, out_dir: str, overwrite: bool = False):
    self.out = os.path.abspath(out_dir)
    self.overwrite = overwrite

  def __enter__(self) -> str:
    if os.path.exists(self.out) and not os.path.isdir(self.out):
      raise UserError(f"{self.out}: exists and is not a directory; choose another output path")
    if os.path.isdir(self.out) and os.listdir(self.out) and not self.overwrite:
      raise UserError(f"{self.out}: exists and is not empty; delete it or pass --overwrite")
    parent = os.path.dirname(self.out)
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.tmp-", dir=parent)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    # mkdtemp makes 0700 dirs (and safetensors 0600 files): give them the usual umask modes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self.tmp, 0o777 & ~umask)
    for root, dirs, files in os.walk(self.tmp):
      for d in dirs:
        os.chmod(os.path.join(root, d), 0o777 & ~umask)
      for f in files:
        os.chmod(os.path.join(root, f), 0o666 & ~umask)
    old = None
    if os.path.isdir(self.out):
      old = self.tmp + ".old"
      os.rename(self.out, old)
    os.rename(self.tmp, self.out)
    if old:
      shutil.rmtree(old, ignore_errors=True)
    return False
