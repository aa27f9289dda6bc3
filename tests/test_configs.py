"""Every config in configs/ loads and validates; overrides are strict."""
import pathlib

import pytest

from bertjax.config import MODEL_SIZES, load_config, validate
from bertjax.errors import UserError

CONFIGS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


def test_configs_folder_is_not_empty():
  names = {p.name for p in CONFIGS}
  assert "bert.py" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_validates(path):
  cfg = load_config(str(path))
  validate(cfg)
  assert cfg.model.hidden_size % cfg.model.num_attention_heads == 0


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_size_configs_match_their_name(size):
  path = CONFIGS[0].parent / "bert.py"
  cfg = load_config(f"{path}:{size}")
  layers, hidden, heads = MODEL_SIZES[size]
  assert (cfg.model.num_hidden_layers, cfg.model.hidden_size,
          cfg.model.num_attention_heads) == (layers, hidden, heads)
  validate(cfg, num_devices=8)  # the batch splits over the 8 test devices
  # The docstring carries the exact run command.
  assert "bertjax pretrain --config configs/bert.py:base --workdir runs/base" in path.read_text()


def test_bert_base_recipe():
  cfg = load_config(str(CONFIGS[0].parent / "bert.py") + ":base")
  assert (cfg.train.global_batch_size, cfg.optim.learning_rate, cfg.train.num_steps,
          cfg.optim.warmup_steps) == (256, 1e-4, 1_000_000, 10_000)


def test_overrides_apply_and_unknown_key_is_an_error():
  path = str(CONFIGS[0].parent / "bert.py") + ":tiny"
  cfg = load_config(path, ["--config.optim.learning_rate=3e-4", "--config.train.num_steps=7"])
  assert cfg.optim.learning_rate == 3e-4 and cfg.train.num_steps == 7
  with pytest.raises(UserError, match="optim.learning_rate"):  # suggests the right key
    load_config(path, ["--config.optim.learnin_rate=3e-4"])
  with pytest.raises(UserError, match="unknown config key"):
    load_config(path, ["--config.model.no_such_field=1"])


def test_override_of_the_wrong_type_is_an_error():
  path = str(CONFIGS[0].parent / "bert.py") + ":tiny"
  with pytest.raises(UserError, match="train.num_steps"):
    load_config(path, ["--config.train.num_steps=many"])
  with pytest.raises(UserError, match="expected a int"):
    load_config(path, ["--config.train.num_steps=1.5"])
  with pytest.raises(UserError, match="true or false"):
    load_config(path, ["--config.model.fused_qkv=maybe"])


def test_validate_rejects_bad_sizes():
  cfg = load_config(str(CONFIGS[0].parent / "bert.py") + ":tiny",
                    ["--config.model.num_attention_heads=3"])
  with pytest.raises(UserError, match="num_attention_heads"):
    validate(cfg)


def test_size_argument_errors_name_the_fix(tmp_path):
  with pytest.raises(UserError, match="unknown size; use one of tiny"):
    load_config(str(CONFIGS[0].parent / "bert.py") + ":huge")
  plain = tmp_path / "cfg.py"
  plain.write_text("from bertjax.config import base_config\n\ndef get_config():\n"
                   "  return base_config()\n")
  with pytest.raises(UserError, match="takes no argument"):
    load_config(f"{plain}:base")
  # The default size is BERT-Base.
  assert load_config(str(CONFIGS[0].parent / "bert.py")).model.hidden_size == 768
