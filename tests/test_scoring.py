"""Metrics against hand-worked cases (conlleval, SQuAD v1.1, MCC, F1, correlations)."""
import numpy as np
import pytest
import scipy.stats

from bertjax import scoring


# ------------------------------------------------------------------ conlleval

def test_conlleval_iob1_b_separates_adjacent_same_type_chunks():
  # IOB1 as CoNLL-2003 is released: I- opens a chunk, B- only splits two adjacent PER chunks.
  gold = [["I-PER", "I-PER", "B-PER", "I-PER", "O", "O", "I-LOC"]]   # PER(0-1) PER(2-3) LOC(6)
  pred = [["I-PER", "I-PER", "I-PER", "I-PER", "O", "O", "B-LOC"]]   # PER(0-3) LOC(6)
  r = scoring.conlleval(gold, pred)
  assert (r["found_gold"], r["found_pred"], r["correct"]) == (3, 2, 1)
  assert r["precision"] == pytest.approx(50.0)
  assert r["recall"] == pytest.approx(100 / 3)
  assert r["f1"] == pytest.approx(40.0)
  # Token accuracy compares whole tags: I-PER vs B-PER and I-LOC vs B-LOC differ.
  assert r["accuracy"] == pytest.approx(100 * 5 / 7)
  assert r["per_type"]["LOC"]["f1"] == pytest.approx(100.0)
  assert r["per_type"]["PER"]["f1"] == 0.0


def test_conlleval_iob1_and_iob2_spell_the_same_chunks():
  iob1 = [["O", "I-ORG", "I-ORG", "O", "I-PER", "B-PER"]]
  iob2 = [["O", "B-ORG", "I-ORG", "O", "B-PER", "B-PER"]]
  r = scoring.conlleval(iob1, iob2)
  assert (r["found_gold"], r["found_pred"], r["correct"]) == (3, 3, 3)
  assert r["f1"] == pytest.approx(100.0)


def test_conlleval_type_change_starts_a_chunk():
  r = scoring.conlleval([["I-ORG", "I-LOC"]], [["I-ORG", "I-ORG"]])
  assert (r["found_gold"], r["found_pred"], r["correct"]) == (2, 1, 0)


def test_conlleval_i_after_o_counts_as_a_chunk_start_in_bio():
  # conlleval is lenient: an IOB2-invalid I- after O still opens a chunk.
  r = scoring.conlleval([["O", "B-MISC", "O"]], [["O", "I-MISC", "O"]])
  assert r["correct"] == 1 and r["f1"] == pytest.approx(100.0)


def test_conlleval_sentence_boundary_closes_chunks():
  # Without the boundary the two I-PER tokens would be one chunk.
  gold = [["O", "I-PER"], ["I-PER", "O"]]
  r = scoring.conlleval(gold, gold)
  assert (r["found_gold"], r["correct"]) == (2, 2)
  r = scoring.conlleval(gold, [["O", "I-PER"], ["O", "O"]])
  assert (r["found_pred"], r["correct"]) == (1, 1)
  assert r["recall"] == pytest.approx(50.0)


def test_conlleval_chunk_must_end_at_the_same_token():
  r = scoring.conlleval([["B-LOC", "I-LOC", "O"]], [["B-LOC", "O", "O"]])
  assert (r["found_gold"], r["found_pred"], r["correct"]) == (1, 1, 0)
  with pytest.raises(ValueError):
    scoring.conlleval([["O", "O"]], [["O"]])


# ------------------------------------------------------------------ SQuAD v1.1

def test_squad_normalisation():
  assert scoring.normalize_answer("The  Quick, brown fox!") == "quick brown fox"
  assert scoring.normalize_answer("an apple a day") == "apple day"
  # Articles are whole words only; punctuation goes before articles are removed.
  assert scoring.normalize_answer("Theater of the Anthem") == "theater of anthem"
  assert scoring.normalize_answer("(the) U.S.") == "us"


def test_squad_multi_answer_max_and_missing_prediction():
  golds = ["Denver Broncos", "the Broncos", "Broncos"]
  assert max(scoring.squad_exact("Broncos", g) for g in golds) == 1.0
  # F1 is a max over gold answers too: "Denver" vs "Denver Broncos" = 2 * 1 * 0.5 / 1.5.
  assert max(scoring.squad_f1("Denver", g) for g in golds) == pytest.approx(2 / 3)
  r = scoring.squad_v1({"q1": golds, "q2": ["1990"]}, {"q1": "the Broncos!"})
  assert r["exact_match"] == pytest.approx(50.0)  # q2 has no prediction: scores 0
  assert r["f1"] == pytest.approx(50.0)
  r = scoring.squad_v1({"q1": golds}, {"q1": "Denver"})
  assert r["exact_match"] == 0.0 and r["f1"] == pytest.approx(200 / 3)
  assert scoring.squad_f1("a the", "an") == 0.0  # both normalise to empty: v1.1 scores 0


# ------------------------------------------------------------------ classification

def test_mcc_and_f1_hand_worked():
  preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 0, 1]   # TP 2, FP 1, TN 2, FN 0
  assert scoring.matthews_corrcoef(preds, labels) == pytest.approx(4 / 6)
  assert scoring.f1_binary(preds, labels) == pytest.approx(0.8)   # P 2/3, R 1
  assert scoring.accuracy(preds, labels) == pytest.approx(0.8)
  assert scoring.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0   # constant prediction
  assert scoring.matthews_corrcoef([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
  assert scoring.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
  assert scoring.f1_binary([0, 0], [1, 0]) == 0.0


def test_correlations_match_scipy_with_ties():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 5, 50).astype(float)   # many ties
  y = x + rng.normal(0, 1.5, 50)
  assert scoring.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y)[0])
  assert scoring.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y)[0])
  assert scoring.token_accuracy([["A", "B"], ["C"]], [["A", "C"], ["C"]]) == pytest.approx(
      200 / 3)
