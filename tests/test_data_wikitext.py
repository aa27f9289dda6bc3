"""WikiText files are read one document per article (` = Title = ` lines), headings dropped."""
import os

from bertjax.data import corpus

WIKI = """ 
 = Homarus gammarus = 
 
 Homarus gammarus is a lobster . It lives in the sea . 
 
 = = Description = = 
 
 It is blue . 
 
 = Du Fu = 
 
 Du Fu was a poet . 
 
 = = = Life = = = 
 
 He lived in China . 
"""


def test_wikitext_articles_are_documents(tmp_path):
  path = tmp_path / "wiki.valid.tokens"
  path.write_text(WIKI)
  docs = list(corpus.read_documents(str(path)))
  assert docs == [["Homarus gammarus is a lobster .", "It lives in the sea .", "It is blue ."],
                  ["Du Fu was a poet .", "He lived in China ."]]


def test_one_title_or_equals_signs_in_prose_stay_one_document(tmp_path):
  one = tmp_path / "one.txt"       # a single title line is not a WikiText file
  one.write_text(" = Only Title = \n\nFirst sentence here. Second one.\n")
  assert len(list(corpus.read_documents(str(one)))) == 1
  prose = tmp_path / "p.txt"       # '=' inside ordinary lines does not split
  prose.write_text("We had a = b here. Then x = y = z.\n\nNext paragraph.\n")
  assert list(corpus.read_documents(str(prose))) == [
      ["We had a = b here.", "Then x = y = z.", "Next paragraph."]]


def test_real_wikitext_splits_into_articles(shared_data):
  stats = corpus.ReadStats()
  path = os.path.join(shared_data, "corpus", "wikitext-2", "wiki.valid.tokens")
  docs = list(corpus.read_documents(path, "auto", stats))
  assert len(docs) == 60                      # 60 ` = Title = ` lines in the valid split
  assert docs[0][0].startswith("Homarus gammarus , known as the European lobster")
  assert not any(s.startswith("= ") for d in docs for s in d)   # headings dropped
  assert stats.documents == 60
