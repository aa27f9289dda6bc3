"""benchmarks/transfer_protocol.py (docs/transfer_protocol.md): the selection slice never touches
the rows trained on nor the pretraining text, the set sizes, and the verdict rule. Budget: < 1 s
(no JAX work)."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/
from benchmarks import transfer as runner  # noqa: E402
from benchmarks import transfer_protocol as tp  # noqa: E402
from bertjax.data import corpus  # noqa: E402
from bertjax.errors import UserError  # noqa: E402

ROWS = 12_000


def _sst2(tmp_path, n_rows=ROWS, dup=()):
  """A train.tsv of distinct sentences, except `dup`: (i, j) pairs where row j repeats row i's
  sentence (SST-2 has repeated phrases)."""
  d = tmp_path / "SST-2"
  d.mkdir()
  text = {i: f"phrase number {i} , no final stop " for i in range(n_rows)}
  for i, j in dup:
    text[j] = text[i]
  rows = "".join(f"{text[i]}\t{i % 2}\n" for i in range(n_rows))
  (d / "train.tsv").write_text("sentence\tlabel\n" + rows, encoding="utf-8")
  return d


def _lines(path):
  return pathlib.Path(path).read_text(encoding="utf-8").splitlines()


def test_sets_counts_order_and_disjoint_from_the_slice(tmp_path):
  # row 100 (in N=1,000) repeats a slice sentence: it leaves the pretraining text, not the sets
  slice_row = ROWS - 5
  sets = tp.write_sets(str(_sst2(tmp_path, dup=[(slice_row, 100)])), str(tmp_path / "data"))
  assert sets["train_rows"] == ROWS
  assert {k: sets[k]["rows"] for k in ("1000", "8000", "all", "slice")} == {
      "1000": 1000, "8000": 8000, "all": ROWS - 2000, "slice": 2000}
  tables = {k: _lines(sets[k]["path"]) for k in ("1000", "8000", "all", "slice")}
  assert all(t[0] == "sentence\tlabel" for t in tables.values())
  want = lambda lo, hi: [f"phrase number {i} , no final stop \t{i % 2}" for i in range(lo, hi)]  # noqa: E731
  assert tables["1000"][1:101] == want(0, 100)                 # first rows, in file order
  assert tables["8000"][1:] == tables["all"][1:8001]
  assert tables["slice"][1:] == want(ROWS - 2000, ROWS)        # the last 2,000
  assert tables["all"][-1] == want(ROWS - 2001, ROWS - 2000)[0]
  for k in ("1000", "8000", "all"):
    assert not set(tables[k][1:]) & set(tables["slice"][1:])
  # pretraining text: labels dropped, one sentence per document, no slice sentence anywhere
  text = pathlib.Path(sets["pretrain_text"]["path"]).read_text(encoding="utf-8")
  docs = [d.strip() for d in text.split("\n\n")]
  held = {tp.sentence(r) for r in tables["slice"][1:]}
  assert len(docs) == sets["pretrain_text"]["sentences"] == ROWS - 2000 - 1   # row 100 dropped
  assert docs[0] == "phrase number 0 , no final stop" and "\t" not in text
  assert not set(docs) & held
  assert all("\n" not in d for d in docs)


def test_pretraining_file_reads_as_one_document_per_sentence(tmp_path):
  sets = tp.write_sets(str(_sst2(tmp_path, n_rows=10_100)), str(tmp_path / "data"))
  path = sets["pretrain_text"]["path"]
  (p, fmt), = corpus.expand_inputs_with_formats(path + ":bert", "auto")
  docs = list(corpus.read_documents(p, fmt))
  assert len(docs) == 8100 and all(len(d) == 1 for d in docs)
  assert docs[7] == ["phrase number 7 , no final stop"]


def test_rewriting_an_unchanged_set_keeps_its_mtime(tmp_path):
  """A second start of the runner must not make the prepared corpus look stale."""
  d = _sst2(tmp_path, n_rows=10_100)
  sets = tp.write_sets(str(d), str(tmp_path / "data"))
  path = pathlib.Path(sets["pretrain_text"]["path"])
  before = path.stat().st_mtime_ns
  tp.write_sets(str(d), str(tmp_path / "data"))
  assert path.stat().st_mtime_ns == before


def test_n_sets_may_not_reach_the_slice(tmp_path):
  with pytest.raises(UserError, match="N=8000 reaches into the selection slice"):
    tp.write_sets(str(_sst2(tmp_path, n_rows=9000)), str(tmp_path / "data"))


def test_verdict_is_gap_above_the_larger_spread():
  assert tp.verdict([80, 81, 82], [70, 71, 72]) == {"gap": 10, "spread": 2, "shown": True}
  v = tp.verdict([73, 73.5, 76], [70, 72, 72.5])   # apart, but gap 2.67 < spread 3
  assert v["shown"] is False and v["spread"] == 3
  assert tp.verdict([70, 71, 72], [80, 81, 82])["shown"] is False       # negative gap
  assert tp.verdict([80, 80], [79, 79])["shown"] is True                 # no spread, gap 1
  assert tp.verdict([80], [70])["shown"] is None                         # one seed: no verdict


def test_lr_choice_best_then_smaller():
  assert tp.choose_lr({1e-4: 80.0, 3e-4: 82.0, 1e-3: 81.0}) == 3e-4
  assert tp.choose_lr({1e-3: 82.0, 1e-4: 82.0, 3e-4: 70.0}) == 1e-4


def test_stages_and_aliases():
  assert runner.stages_of("probe,pretrain") == ["pretrain", "probe-1000", "probe-8000",
                                                "probe-all"]
  assert runner.stages_of(",".join(runner.STAGES)) == list(runner.STAGES)
  with pytest.raises(SystemExit, match="unknown stage 'finetune'"):
    runner.stages_of("finetune")


def test_protocol_2_stages_lpft_after_its_probe():
  assert runner.stages_of("scratch-1000,lpft-1000,pretrain", 2) == [
      "pretrain", "lpft-1000", "scratch-1000"]
  assert runner.stages_of(",".join(runner.STAGES_2), 2) == [
      "pretrain", "probe-1000", "lpft-1000", "scratch-1000"]
  with pytest.raises(SystemExit, match="unknown stage 'minilm' of protocol 2"):
    runner.stages_of("minilm", 2)
  with pytest.raises(SystemExit, match="unknown stage 'lpft-1000' of protocol 1"):
    runner.stages_of("lpft-1000")
  # LP-FT's second stage starts one notch below protocol 1's full fine-tuning grid
  assert max(tp.LPFT_LRS) < max(tp.FULL_LRS) and min(tp.LPFT_LRS) < min(tp.FULL_LRS)


def test_lpft_starts_each_seed_from_its_own_probe_model(tmp_path):
  import argparse
  args = argparse.Namespace(out=str(tmp_path / "out"), sst2=str(_sst2(tmp_path)), seeds="0,1",
                            minilm="", protocol=2, max_steps=0, max_eval=0)
  r = runner.Runner(args)
  export = tmp_path / "out" / "pretrain" / "export"
  (export / "tokenizer").mkdir(parents=True)
  (export / "bundle.json").write_text('{"tokenizer_file": "spm.model"}')
  (export / "model_config.json").write_text("{}")
  with pytest.raises(SystemExit, match="no probe model; run stage probe-1000 first"):
    r.lpft_arms("1000")
  for arm in ("pretrained", "random"):
    for seed in (0, 1):
      d = tmp_path / "out" / "probe-1000" / f"{arm}_seed{seed}" / "export"
      d.mkdir(parents=True)
      (d / "bundle.json").write_text("{}")
  arms = r.lpft_arms("1000")
  assert set(arms) == {"pretrained", "random"}
  for arm, (inits, model) in arms.items():
    assert model is None   # both arms start from a probe bundle: --init, no architecture flags
    assert inits == {s: str(tmp_path / "out" / "probe-1000" / f"{arm}_seed{s}" / "export")
                     for s in (0, 1)}
    cmd = r.finetune_cmd(inits[1], model, n="1000", lr=1e-4, seed=1, epochs=10, freeze="none",
                         dev="d.tsv", workdir="w")
    assert cmd[-2:] == ["--init", inits[1]]
    assert not any("freeze" in c for c in cmd)


def test_protocol_3_frozen_embeddings_and_the_best_recipe_per_arm(tmp_path):
  assert runner.stages_of("embfrozen-1000,pretrain", 3) == ["pretrain", "embfrozen-1000"]
  import argparse
  args = argparse.Namespace(out=str(tmp_path / "out"), sst2=str(_sst2(tmp_path)), seeds="0,1",
                            minilm="", protocol=3, max_steps=0, max_eval=0)
  cmd = runner.Runner(args).finetune_cmd("B", None, n="1000", lr=1e-3, seed=0, epochs=10,
                                         freeze="embeddings", dev="d.tsv", workdir="w")
  assert "--config.finetune.freeze=embeddings" in cmd

  def stage(sel_a, sel_b, dev_a, dev_b):
    """a row: selection {lr: slice acc} per arm, seeded dev runs at each arm's best rate"""
    sel = {"a": sel_a, "b": sel_b}
    row = {"selection": {arm: {f"{lr:g}": {"accuracy": x} for lr, x in s.items()}
                         for arm, s in sel.items()},
           "chosen_lr": {arm: tp.choose_lr(s) for arm, s in sel.items()}, "runs": []}
    for arm, accs in (("a", dev_a), ("b", dev_b)):
      row["runs"] += [{"arm": arm, "accuracy": x} for x in accs]
    return row
  rows = {"s1": stage({1e-4: 60.0, 1e-3: 70.0}, {1e-4: 65.0, 1e-3: 64.0}, [70, 71], [60, 61]),
          "s2": stage({1e-4: 70.0, 1e-3: 69.0}, {1e-4: 66.0, 1e-3: 66.0}, [80, 81], [62, 63]),
          "s3": stage({1e-4: 50.0, 1e-3: 55.0}, {1e-4: 67.0, 1e-3: 60.0}, [40, 41], [64, 66])}
  best = tp.best_of(rows, ("s1", "s2", "s3"))
  # a: 70.0 in s1 (1e-3) and in s2 (1e-4): the earlier stage; b: s3's 67.0
  assert best["chosen"]["a"] == {"stage": "s1", "lr": 1e-3, "slice_accuracy": 70.0}
  assert best["chosen"]["b"] == {"stage": "s3", "lr": 1e-4, "slice_accuracy": 67.0}
  assert best["a"]["accuracies"] == [70, 71] and best["b"]["accuracies"] == [64, 66]
  assert best["verdict"]["gap"] == 5.5 and best["verdict"]["spread"] == 2
  assert best["verdict"]["shown"] is True


def test_pretrain_summary_numbers_are_read_from_the_printed_summary():
  log = ("Pretraining finished: 3100/3100 steps in 40m00s (1 devices, 1 process)\n"
         "  train     loss 4.1  MLM acc 0.300  (59.2 seq/s)\n"
         "  held-out  MLM loss 4.321  MLM acc 0.312 (most-frequent-token baseline 0.066)\n"
         "  held-out, every scored token [MASK]ed: MLM acc 0.287 (baseline 0.066): what ...\n")
  s = runner.pretrain_summary("/w", log)
  assert (s["steps"], s["heldout_mlm_acc"], s["heldout_mask_only_acc"], s["mlm_baseline"]) == (
      3100, 0.312, 0.287, 0.066)


def _config_vs_demo(name: str) -> tuple[dict, set]:
  """configs/NAME as flat {group.field: value}, and the fields where it differs from the demo."""
  from bertjax.config import load_config
  configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
  flat = lambda c: {f"{g}.{k}": v for g, sub in c.items() if hasattr(sub, "items")  # noqa: E731
                    for k, v in sub.items()}
  demo = flat(load_config(str(configs / "pretrain_demo.py")).to_dict())
  ours = flat(load_config(str(configs / name)).to_dict())
  return ours, {k for k in demo if demo[k] != ours[k]}


def test_pretrain_config_is_the_demo_recipe_but_corpus_budget_and_cadence():
  ours, changed = _config_vs_demo("transfer_pretrain.py")
  # ... and the demo's short-row first phase, added after the protocol was fixed and run
  assert changed == {"data.corpus", "data.heldout_fraction", "train.budget_minutes",
                     "train.eval_every", "checkpoint.every_steps", "data.max_seq_length",
                     "train.global_batch_size", "train.phase2_fraction"}
  assert (ours["data.max_seq_length"], ours["train.global_batch_size"],
          ours["train.phase2_fraction"]) == (128, 32, 0.0)
  assert ours["train.budget_minutes"] == 40 and ours["data.heldout_fraction"] == 0.01
  assert ours["data.corpus"].endswith("sst2_train_text.txt:bert")


def test_protocol_2_pretrain_config_is_todays_demo_recipe_with_protocol_1_changes():
  v2, changed = _config_vs_demo("transfer_pretrain_v2.py")
  assert changed == {"data.corpus", "data.heldout_fraction", "train.budget_minutes",
                     "train.eval_every", "checkpoint.every_steps"}
  assert v2["train.phase2_fraction"] == 0.25 and v2["data.max_seq_length"] == 16
  assert v2["train.budget_minutes"] == 40 and v2["data.heldout_fraction"] == 0.01
  assert v2["data.corpus"].endswith("sst2_train_text.txt:bert")
