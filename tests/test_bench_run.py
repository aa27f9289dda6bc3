"""benchmarks/run.py: running some benchmarks merges into results.md/json, keeping the others.

Budget: < 2 s (fake benchmark modules, no JAX work).
"""
import json
import pathlib
import sys
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/
from benchmarks import run as run_mod  # noqa: E402


def _fake(title, value):
  return types.SimpleNamespace(run=lambda out_dir: {"title": title, "markdown": f"| x |\n| {value} |",
                                                    "data": {"value": value}})


def _setup(tmp_path, monkeypatch, modules):
  for name in ("a", "b"):
    (tmp_path / f"bench_{name}.py").write_text("")
  monkeypatch.setattr(run_mod, "HERE", tmp_path)
  monkeypatch.setattr(run_mod, "machine_info", lambda: {"date": "D", "git_commit": "c0"})
  monkeypatch.setattr(run_mod.importlib, "import_module",
                      lambda name: modules[name.rsplit("bench_", 1)[1]])


def test_subset_run_keeps_other_sections(tmp_path, monkeypatch):
  modules = {"a": _fake("Section A", 1), "b": _fake("Section B", 2)}
  _setup(tmp_path, monkeypatch, modules)
  assert run_mod.main([]) == 0
  modules["b"] = _fake("Section B", 3)
  assert run_mod.main(["b"]) == 0
  md = (tmp_path / "results.md").read_text()
  data = json.loads((tmp_path / "results.json").read_text())
  assert "## Section A" in md and "| 1 |" in md          # kept
  assert "| 3 |" in md and "| 2 |" not in md              # replaced
  assert md.index("## Section A") < md.index("## Section B")
  assert data["a"] == {"value": 1} and data["b"] == {"value": 3}
  # A full run starts afresh.
  assert run_mod.main([]) == 0
  assert (tmp_path / "results.md").read_text().count("## Section") == 2


def test_subset_run_keeps_sections_of_an_older_results_md(tmp_path, monkeypatch):
  modules = {"b": _fake("Section B", 5)}
  _setup(tmp_path, monkeypatch, modules)
  (tmp_path / "results.md").write_text("# old\n\n## Section A\n\nold a\n\n## Section B\n\nold b\n")
  (tmp_path / "results.json").write_text(json.dumps({"machine": {}, "a": {"value": 0}}))
  assert run_mod.main(["b"]) == 0
  md = (tmp_path / "results.md").read_text()
  assert "old a" in md and "old b" not in md and "| 5 |" in md
  assert json.loads((tmp_path / "results.json").read_text())["a"] == {"value": 0}


def test_recipes_table_shows_each_phase_step_time():
  from benchmarks.bench_recipes import markdown
  row = dict(size="tiny", recipe="mlm", steps=3, step_s=[0.1, 0.25], wall_s=1.0,
             heldout_mlm_loss=5.0, heldout_mlm_acc=0.2, real_tokens_per_s=9.0,
             padding_fraction=0.0, command="x")
  md = markdown([dict(row, recipe="bert2018", step_s=0.3, heldout_mlm_loss=6.0), row], 3, 8)
  assert "| tiny | mlm | 3 | 0.100 / 0.250 |" in md and "| tiny | bert2018 | 3 | 0.300 |" in md
  assert "held-out loss 5.000 vs BERT-2018's 6.000 (below)" in md
