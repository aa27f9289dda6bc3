"""The bundled demo corpus: every file is UTF-8, so the main job prepares it without a warning."""
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bundled_corpus_is_utf8():
  files = sorted(glob.glob(os.path.join(REPO, "data", "corpus", "*.txt")))
  assert len(files) == 125
  bad = []
  for f in files:
    try:
      with open(f, "rb") as fh:
        fh.read().decode("utf-8")
    except UnicodeDecodeError:
      bad.append(os.path.basename(f))
  assert not bad, bad
