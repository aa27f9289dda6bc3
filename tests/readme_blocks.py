"""The README's shell command blocks, parsed: what tests/test_readme.py checks and runs.

A block is a fenced ```bash or ```sh code block; a command is one logical line (backslash
continuations joined, comments dropped).
"""
from __future__ import annotations

import pathlib
import re
import shlex

REPO = pathlib.Path(__file__).resolve().parents[1]
_FENCE = re.compile(r"^```(bash|sh)\s*\n(.*?)^```\s*$", re.S | re.M)


def blocks(path: pathlib.Path = REPO / "README.md") -> list[str]:
  """The text of every ```bash / ```sh block, in order."""
  return [m.group(2) for m in _FENCE.finditer(path.read_text(encoding="utf-8"))]


def commands(block: str) -> list[str]:
  """Logical command lines of a block: continuations joined, blank and comment-only lines dropped."""
  out, cur = [], ""
  for line in block.splitlines():
    if line.rstrip().endswith("\\"):
      cur += line.rstrip()[:-1] + " "
      continue
    cur += _uncomment(line)
    if shlex.split(cur, comments=True):
      out.append(" ".join(cur.split()) if "'" not in cur and '"' not in cur else cur.strip())
    cur = ""
  return out


def _uncomment(line: str) -> str:
  """The line without its `# comment` (a # that starts a word, outside quotes)."""
  quote = ""
  for i, ch in enumerate(line):
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i].rstrip()
  return line


def words(command: str) -> list[str]:
  """The command's words as the shell splits them, comments and a trailing `&` removed."""
  w = shlex.split(command, comments=True)
  return w[:-1] if w and w[-1] == "&" else w
