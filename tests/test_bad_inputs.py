"""Bad inputs through the real CLI (issue 8): every user mistake -> one line naming the
file / line / field, exit code 2, no Python traceback, and nothing already written touched.

Each case runs `.venv/bin/bertjax ...` in a subprocess (three at a time) with --workdir
pointing at a "precious" directory that looks like a finished run (checkpoints, metrics,
export, and a prepared corpus the corpus cases re-prepare into); its bytes are compared before
and after every case has run. Each case names the protection it checks: the `UserError` raised
where the input is read. Budget: ~40 s of CPU on 2 cores.
"""
import concurrent.futures
import json
import os

import pytest

import reliability_util as R

PRECIOUS = {"metrics.jsonl": b'{"step": 2, "loss": 9.1}\n',
            "checkpoints/2/state/d/abc": b"\x00\x01weights",
            "checkpoints/2/manifest.json": b'{"files": {}}',
            "export/model.safetensors": b"\x00" * 64, "export/bertjax_bundle.json": b"{}"}

SST2_OK = "sentence\tlabel\na fine film\t1\na dull film\t0\n"
SQUAD_CONTEXT = "The cat sat on the mat in the sun."


def squad(answer_start=4, text="cat", answers=True) -> str:
  qa = {"id": "q1", "question": "Who sat?"}
  if answers:
    qa["answers"] = [{"text": text, "answer_start": answer_start}]
  return json.dumps({"data": [{"title": "t", "paragraphs": [
      {"context": SQUAD_CONTEXT, "qas": [qa]}]}]})


# id -> (files to create under the case dir: {relative path: str | bytes},
#        argv builder (case_dir, precious) -> args, needles in the one error line,
#        the protection checked)
def pretrain(extra):
  return lambda d, w: R.tiny_pretrain_args(w, d / "prepared", 2, extra(d))


def pretrain_on_precious_prepared(extra):
  """A corpus mistake pointed at an existing, good prepared dir (WORKDIR/prepared of the
  precious workdir): prepare stages its output, so the good one must survive the error."""
  return lambda d, w: R.tiny_pretrain_args(w, w / "prepared", 2, extra(d))


def finetune(task, extra=lambda d: []):
  return lambda d, w: ["finetune", "--task", task, "--data", str(d / "data"), "--workdir", str(w),
                       "--no-progress", *extra(d)]


CASES = {
    # ---- config files and command-line flags (bertjax/config.py, cli/common.py)
    "flag_unknown_config_key": (
        {}, pretrain(lambda d: ["--config.train.num_stepz=5"]),
        ["--config.train.num_stepz", "did you mean --config.train.num_steps"],
        "config.set_key: unknown keys are errors with a suggestion"),
    "flag_wrong_type": (
        {}, pretrain(lambda d: ["--config.train.num_steps=ten"]),
        ["--config.train.num_steps=ten", "expected a int"],
        "config._parse_value: values parsed to the field's type"),
    "flag_wrong_bool": (
        {}, pretrain(lambda d: ["--config.checkpoint.async_save=maybe"]),
        ["--config.checkpoint.async_save=maybe", "expected true or false"],
        "config._parse_value: booleans"),
    "flag_unknown": (
        {}, pretrain(lambda d: ["--epochs", "3"]), ["unknown flag '--epochs'"],
        "cli/common.split_overrides: stray flags"),
    "config_file_missing": (
        {}, pretrain(lambda d: ["--config", str(d / "nope.py")]),
        ["config file not found", "nope.py"], "config.load_config: missing file"),
    "config_file_syntax_error": (
        {"cfg.py": "def get_config(:\n  pass\n"},
        pretrain(lambda d: ["--config", str(d / "cfg.py")]),
        ["cfg.py", "SyntaxError", "line 1"], "config.load_config: broken file named"),
    "config_file_unknown_key": (
        {"cfg.py": "from bertjax.config import base_config\ndef get_config():\n"
                   "  c = base_config()\n  c.model.hiden_size = 64\n  return c\n"},
        pretrain(lambda d: ["--config", str(d / "cfg.py")]),
        ["cfg.py", "unknown config key model.hiden_size", "did you mean model.hidden_size"],
        "config.check_known_keys: typos inside config files"),
    "config_no_get_config": (
        {"cfg.py": "x = 1\n"}, pretrain(lambda d: ["--config", str(d / "cfg.py")]),
        ["cfg.py", "defines no get_config()"], "config.load_config"),
    "config_heads_do_not_divide": (
        {}, pretrain(lambda d: ["--config.model.num_attention_heads=3"]),
        ["model.hidden_size=32", "model.num_attention_heads=3"], "config.validate"),
    "config_sequence_too_long": (
        {}, pretrain(lambda d: ["--config.data.max_seq_length=128"]),
        ["exceeds model.max_position_embeddings=64"], "config.validate"),
    # ---- tokenizer files (bertjax/data/tokenizer.py, train/pretrain.py)
    "tokenizer_missing": (
        {}, pretrain(lambda d: [f"--config.data.tokenizer={d / 'missing.model'}"]),
        ["data.tokenizer=", "missing.model", "file not found"], "pretrain._check_paths"),
    "tokenizer_binary": (
        {"bad.model": os.urandom(2048)},
        pretrain(lambda d: [f"--config.data.tokenizer={d / 'bad.model'}"]),
        ["bad.model", "not a SentencePiece model"], "tokenizer.SentencePieceTokenizer"),
    "tokenizer_vocab_without_specials": (
        {"vocab.txt": "the\nof\n##s\n"},
        pretrain(lambda d: [f"--config.data.tokenizer={d / 'vocab.txt'}"]),
        ["vocab.txt", "lacks"], "tokenizer.WordPieceTokenizer: the five special tokens"),
    "tokenizer_empty_vocab": (
        {"vocab.txt": ""}, pretrain(lambda d: [f"--config.data.tokenizer={d / 'vocab.txt'}"]),
        ["vocab.txt"], "tokenizer.WordPieceTokenizer: an empty vocab"),
    # ---- corpus files (bertjax/data/corpus.py, prepare.py)
    "corpus_missing": (
        {}, pretrain(lambda d: [f"--config.data.corpus={d / 'nothing*.txt'}"]),
        ["nothing*.txt", "no file matches"], "pretrain._check_paths / corpus.expand_inputs"),
    "corpus_all_empty": (
        {"c/a.txt": "", "c/b.txt": "\n \n\t\n"},
        pretrain_on_precious_prepared(lambda d: [f"--config.data.corpus={d / 'c' / '*.txt'}"]),
        ["no text left", "2 empty"], "prepare: never a silently empty dataset"),
    "corpus_binary_file": (
        {"c/good.txt": "One sentence here.\nAnother one here.\n",
         "c/model.bin": b"\x1f\x8b\x08\x00" + os.urandom(4000) + b"\x00"},
        pretrain_on_precious_prepared(lambda d: [f"--config.data.corpus={d / 'c' / '*'}"]),
        ["model.bin", "binary or UTF-16"], "corpus.read_text: NUL bytes are not text"),
    "corpus_utf16": (
        {"c/u16.txt": "One sentence here.\nAnother one here.\n".encode("utf-16")},
        pretrain_on_precious_prepared(lambda d: [f"--config.data.corpus={d / 'c' / '*.txt'}"]),
        ["u16.txt", "binary or UTF-16"], "corpus.read_text: wrong encoding"),
    # ---- GLUE TSVs (bertjax/tasks/glue.py, registry.py, finetune.py)
    "glue_unknown_task": (
        {"data/train.tsv": SST2_OK}, finetune("sst3"),
        ["unknown task 'sst3'", "did you mean SST-2"], "registry.get"),
    "glue_data_not_a_folder": (
        {}, lambda d, w: ["finetune", "--task", "sst2", "--data", str(d / "nope"),
                          "--workdir", str(w)],
        ["--data", "nope", "not a folder"], "finetune.build"),
    "glue_no_train_file": (
        {"data/dev.tsv": SST2_OK}, finetune("sst2"),
        ["no train file", "train.tsv"], "registry.split_file"),
    "glue_wrong_columns": (
        {"data/train.tsv": "text\tlabel\na fine film\t1\n"}, finetune("sst2"),
        ["train.tsv:1", "lacks the text column", "sentence"], "glue.read_layout: header"),
    "glue_label_outside_set": (
        {"data/train.tsv": SST2_OK + "a film\t2\n"}, finetune("sst2"),
        ["train.tsv:4", "label '2' is not one of"], "glue.read_layout: label set"),
    "glue_short_row": (
        {"data/train.tsv": SST2_OK + "no label here\n"}, finetune("sst2"),
        ["train.tsv:4", "expected at least 2 tab-separated fields"], "glue.read_layout: row"),
    "glue_latin1": (
        {"data/train.tsv": b"sentence\tlabel\ncaf\xe9 film\t1\n"}, finetune("sst2"),
        ["train.tsv", "not UTF-8"], "glue.read_rows: encoding"),
    "glue_binary_nul": (
        {"data/train.tsv": b"sentence\tlabel\n\x00\x01\x02\t1\n"}, finetune("sst2"),
        ["train.tsv:2", "NUL byte"], "glue.read_rows: binary data"),
    "glue_empty_train": (
        {"data/train.tsv": ""}, finetune("sst2"), ["data", "no examples"],
        "finetune.build: an empty training file"),
    "stsb_score_not_a_number": (
        {"data/train.tsv": "sentence1\tsentence2\tscore\na\tb\thigh\n"}, finetune("stsb"),
        ["train.tsv:2", "'high' is not a number"], "glue.read_layout: regression labels"),
    "jsonl_bad_line": (
        {"data/train.jsonl": '{"text": "ok", "label": "1"}\n{"text": oops}\n'},
        finetune("jsonl"), ["train.jsonl:2", "not a JSON object"], "glue.read_generic"),
    # ---- SQuAD JSON (bertjax/tasks/squad.py)
    "squad_invalid_json": (
        {"data/train-v1.1.json": '{"data": [\n  {"title": '}, finetune("squad"),
        ["train-v1.1.json:2", "not valid JSON"], "squad.read_squad: JSON errors"),
    "squad_not_squad": (
        {"data/train-v1.1.json": "[1, 2]"}, finetune("squad"),
        ["train-v1.1.json", "not a SQuAD file"], "squad.read_squad: structure"),
    "squad_answer_outside_context": (
        {"data/train-v1.1.json": squad(answer_start=400)}, finetune("squad"),
        ["train-v1.1.json", "qas[0].answers[0]", "not in the context at answer_start=400"],
        "squad.read_squad: answers inside their context"),
    "squad_answer_text_mismatch": (
        {"data/train-v1.1.json": squad(answer_start=8, text="cat")}, finetune("squad"),
        ["train-v1.1.json", "answers[0]", "answer_start=8"],
        "squad.read_squad: answer text at its offset"),
    "squad_missing_answers": (
        {"data/train-v1.1.json": squad(answers=False)}, finetune("squad"),
        ["train-v1.1.json", "qas[0]", "malformed question"], "squad.read_squad: fields"),
    "squad_latin1": (
        {"data/train-v1.1.json": squad().replace("mat", "m\u00e9t").encode("latin-1")},
        finetune("squad"), ["train-v1.1.json", "not UTF-8"], "squad.read_squad: encoding"),
    # ---- CoNLL (bertjax/tasks/conll.py)
    "conll_wrong_columns": (
        {"data/train.txt": "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman JJ\n"},
        finetune("conll2003"), ["train.txt:3", "expected 4 columns"], "conll.read_conll"),
    "conll_binary": (
        {"data/train.txt": b"EU NNP B-NP B-ORG\n" + b"\xff\xfe\x00\x81" * 50 + b"\n"},
        finetune("conll2003"), ["train.txt", "not UTF-8"], "conll.read_conll: encoding"),
    "conll_label_column": (
        {"data/train.txt": "EU NNP B-NP B-ORG\n"},
        finetune("conll2003", lambda d: ["--config.finetune.label_column=7"]),
        ["train.txt:1", "label column 7"], "conll.read_conll: label column"),
    # ---- other commands
    "export_without_checkpoints": (
        {"empty_wd/.keep": ""}, lambda d, w: ["export", str(d / "empty_wd"), str(d / "out")],
        ["empty_wd", "no checkpoints here"], "export.load_source"),
    "finetune_unknown_override": (
        {"data/train.tsv": SST2_OK},
        finetune("sst2", lambda d: ["--config.finetune.taks=sst2"]),
        ["--config.finetune.taks", "did you mean --config.finetune.task"], "config.set_key"),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Run every case (three subprocesses at a time); -> {id: CompletedProcess}, and the
  precious workdir's hashes before and after all of them."""
  root = tmp_path_factory.mktemp("bad")
  precious = root / "precious"
  for rel, data in PRECIOUS.items():
    (precious / rel).parent.mkdir(parents=True, exist_ok=True)
    (precious / rel).write_bytes(data)
  from bertjax.config import base_config
  from bertjax.data.prepare import prepare_corpus
  data_cfg = base_config().data
  data_cfg.corpus = os.path.join(R.REPO, "data", "corpus", "bert_sample_text.txt")
  data_cfg.tokenizer = R.SPM
  data_cfg.heldout_fraction = 0.0
  prepare_corpus(data_cfg, str(precious / "prepared"))
  before = R.tree_hash(precious)
  assert any(k.startswith("prepared/train-") for k in before)
  env = R.fault_env(root)

  def one(case_id):
    files, argv, _, _ = CASES[case_id]
    d = root / case_id
    d.mkdir()
    for rel, data in files.items():
      p = d / rel
      p.parent.mkdir(parents=True, exist_ok=True)
      if isinstance(data, str):
        p.write_text(data, encoding="utf-8")
      else:
        p.write_bytes(data)
    return case_id, R.run(argv(d, precious), env, timeout=240)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    out = dict(pool.map(one, CASES))
  return {"runs": out, "before": before, "after": R.tree_hash(precious)}


def test_at_least_20_cases_across_every_kind_of_input():
  kinds = {k.split("_")[0] for k in CASES}
  assert len(CASES) >= 20
  assert {"flag", "config", "tokenizer", "corpus", "glue", "squad", "conll"} <= kinds


@pytest.mark.slow  # (the fixture runs 40 CLI processes)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input_is_one_clear_line(results, case_id):
  """Exit 2, no traceback, one `bertjax CMD: error:` line naming the file/line/field."""
  R.assert_user_error(results["runs"][case_id], *CASES[case_id][2])


@pytest.mark.slow  # (the fixture runs 40 CLI processes)
def test_nothing_already_written_is_touched(results):
  """The workdir every case pointed at (checkpoints, metrics, export) is byte-identical."""
  assert results["after"] == results["before"]
