"""benchmarks/transfer_sst2.py: the learning-rate selection slice never touches the rows trained
on (nor dev), and the verdict rule. Budget: < 1 s (no JAX work)."""
import pathlib
import sys
import types

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/
from benchmarks import transfer_sst2 as tr  # noqa: E402


def _args(tmp_path, n_rows, max_train, holdout):
  data = tmp_path / "SST-2"
  data.mkdir()
  rows = [f"sentence number {i}\t{i % 2}\n" for i in range(n_rows)]
  (data / "train.tsv").write_text("sentence\tlabel\n" + "".join(rows), encoding="utf-8")
  return types.SimpleNamespace(data=str(data), out=str(tmp_path / "out"), max_train=max_train,
                               select_holdout=holdout)


def test_selection_slices_are_disjoint_and_keep_the_header(tmp_path):
  out = pathlib.Path(tr.selection_data(_args(tmp_path, 100, 60, 30)))
  train = (out / "train.tsv").read_text().splitlines()
  dev = (out / "dev.tsv").read_text().splitlines()
  assert train[0] == dev[0] == "sentence\tlabel"
  assert train[1:] == [f"sentence number {i}\t{i % 2}" for i in range(60)]      # what runs train on
  assert dev[1:] == [f"sentence number {i}\t{i % 2}" for i in range(70, 100)]   # the last 30
  assert not set(train[1:]) & set(dev[1:])


def test_selection_refuses_overlap(tmp_path):
  with pytest.raises(SystemExit, match="exceeds the 100 rows"):
    tr.selection_data(_args(tmp_path, 100, 80, 30))


def test_verdict_needs_worst_pretrained_above_best_random_and_gap_above_spread():
  runs = lambda p, r: ([{"arm": "pretrained", "accuracy": a} for a in p]  # noqa: E731
                       + [{"arm": "random", "accuracy": a} for a in r])
  assert tr.summarise(runs([80, 81, 82], [70, 71, 72]))["transfer_shown"] is True
  assert tr.summarise(runs([80, 81, 70], [70, 71, 72]))["transfer_shown"] is False  # overlap
  # Arms apart but the gap (1.0) is below a spread (3.0): not shown.
  assert tr.summarise(runs([73, 73.5, 76], [70, 72, 72.5]))["transfer_shown"] is False
  assert tr.summarise(runs([80], [70]))["transfer_shown"] is None                   # no spread
