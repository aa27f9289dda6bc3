"""Every relative link of README.md and docs/*.md resolves: the file exists, and an `#anchor`
names a heading of that file (GitHub's slugs). Links inside code blocks are not links."""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _pages() -> list[pathlib.Path]:
  return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip())
  return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  text = _FENCE.sub("", path.read_text(encoding="utf-8"))
  seen: dict[str, int] = {}
  out = set()
  for m in re.finditer(r"^#{1,6}\s+(.*)$", text, re.M):
    s = slug(m.group(1))
    n = seen.get(s, 0)
    seen[s] = n + 1
    out.add(s if n == 0 else f"{s}-{n}")
  return out


def links(path: pathlib.Path) -> list[str]:
  text = _FENCE.sub("", path.read_text(encoding="utf-8"))
  text = re.sub(r"`[^`\n]*`", "", text)   # inline code is not a link either
  return [m.group(1) for m in _LINK.finditer(text)]


def test_slug_follows_github():
  assert slug("What a resume may change") == "what-a-resume-may-change"
  assert slug("Transfer: a bertjax-pretrained encoder vs random init") == \
      "transfer-a-bertjax-pretrained-encoder-vs-random-init"
  assert slug("Pretraining (`bertjax pretrain`)") == "pretraining-bertjax-pretrain"


def test_every_relative_link_and_anchor_resolves():
  broken, checked = [], 0
  for page in _pages():
    for target in links(page):
      if re.match(r"^[a-z]+:", target):   # http:, https:, mailto:
        continue
      file, _, anchor = target.partition("#")
      dest = (page.parent / file).resolve() if file else page
      checked += 1
      if not dest.exists():
        broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
      elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        broken.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor})")
  assert checked >= 20
  assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
  readme = set(links(REPO / "README.md"))
  for page in sorted((REPO / "docs").glob("*.md")):
    assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
