"""`bertjax compile`: the real train steps cross-compiled by the TPU compiler (libtpu) for TPU
slices this machine does not have, with the compiler's memory and FLOP counts.

libtpu is in the test extra; on Linux x86-64 (where it installs) a missing libtpu fails these
tests instead of skipping them, so CI always runs them.
"""
import dataclasses
import platform
import sys

import jax
import pytest

from bertjax import aot, targets
from bertjax.config import base_config, load_config, model_config
from bertjax.errors import UserError

CONFIGS = __import__("pathlib").Path(__file__).resolve().parents[1] / "configs"

try:
  import libtpu  # noqa: F401
except ImportError:
  if sys.platform == "linux" and platform.machine() == "x86_64":
    raise ImportError("libtpu is missing: pip install -e '.[test]' (libtpu==0.0.42.*)") from None
  pytest.skip("libtpu has no wheel for this platform (Linux x86-64 only)", allow_module_level=True)


def tiny_cfg(batch=64):
  cfg = base_config()
  cfg.model = model_config("tiny")
  cfg.model.dtype = "bfloat16"
  cfg.train.global_batch_size = batch
  return cfg


@pytest.fixture(scope="module")
def tiny_v4_32():
  (report,) = aot.compile_steps(tiny_cfg(), targets.get("v4-32"))
  return report


@pytest.mark.slow
def test_bert_base_pretraining_compiles_for_v5e_8():
  """configs/accel_tpu_v5e_base.py's phase 1 (BERT-base, S=128, bf16), 8 v5e chips, 64 rows."""
  cfg = load_config(str(CONFIGS / "accel_tpu_v5e_base.py"),
                    ["--config.train.phase2_start=0", "--config.train.global_batch_size=64"])
  (r,) = aot.compile_steps(cfg, targets.get("v5e-8"))
  assert r.chip == "TPU v5e" and r.devices == 8 and r.mesh == {"data": 8, "fsdp": 1}
  assert r.flops_source == "compiled"
  # The TPU program does the model's FLOPs: a doubled backward or a [B, S, V] MLM head would not.
  assert 0.75 < r.compiler_flops / r.formula_flops < 1.25, r.compiler_flops / r.formula_flops
  # f32 params + 2 Adam moments of 110M params (~1.3 GB) replicated per chip, and they are
  # donated: the new state is written into the old one.
  assert 1.2 * 2**30 < r.arg_bytes < 1.6 * 2**30, r.arg_bytes
  assert r.alias_bytes > 0.9 * r.out_bytes
  assert r.fits and r.total_bytes < r.hbm_bytes == 16 * 2**30


def test_tiny_pretraining_compiles_for_v4_32(tiny_v4_32):
  r = tiny_v4_32
  assert r.chip == "TPU v4" and r.devices == 16 and r.global_batch == 64
  assert 0.75 < r.compiler_flops / r.formula_flops < 1.25, r.compiler_flops / r.formula_flops
  assert r.fits and 0 < r.total_bytes < r.hbm_bytes
  assert r.step_s_at_peak * r.peak_flops * 16 == pytest.approx(r.compiler_flops)
  assert r.expected_step_s == pytest.approx(r.step_s_at_peak / aot.DEFAULT_MFU)
  text = aot.format_report(r)
  assert "fits" in text and "assumed MFU of 40%" in text and "32.00 GiB HBM" in text
  # The TPU compile left the host backend alone: the tests still run on the CPU devices.
  assert jax.default_backend() == "cpu"


def test_tiny_finetuning_compiles_for_v4_32_with_fsdp():
  """The fine-tuning step (SST-2 head) with params split over a 2-way fsdp axis."""
  cfg = tiny_cfg(batch=32)
  cfg.mesh.fsdp = 2
  (r,) = aot.compile_steps(cfg, targets.get("v4-32"), step="finetune")
  assert r.step.startswith("finetune SST-2") and r.mesh == {"data": 8, "fsdp": 2}
  assert 0.75 < r.compiler_flops / r.formula_flops < 1.25, r.compiler_flops / r.formula_flops
  assert r.fits


def test_not_fitting_names_the_fields_to_change(tiny_v4_32):
  small = dataclasses.replace(tiny_v4_32, hbm_bytes=tiny_v4_32.total_bytes // 2)
  assert not small.fits
  msg = aot.not_fit_message(small, tiny_cfg())
  assert "v4-32" in msg and "GiB" in msg
  for field in ("model.remat", "train.grad_accum_steps", "train.global_batch_size", "mesh.fsdp"):
    assert field in msg, msg


def test_compiler_out_of_memory_is_one_line(capsys):
  """131,072 sequences on 8 v5e chips: the TPU compiler refuses it; one line names the fields."""
  from bertjax.cli import main
  code = main(["compile", "--config", str(CONFIGS / "bert.py") + ":tiny", "--target", "v5e-8",
               "--config.train.phase2_start=0", "--config.train.global_batch_size=131072"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  assert "ran out of device memory" in err[0] and "train.global_batch_size" in err[0], err


@pytest.mark.parametrize("override, field", [
    (["--config.train.global_batch_size=60"], "train.global_batch_size"),  # 60 % 16 != 0
    (["--config.mesh.fsdp=3"], "mesh.fsdp"),                                # 16 % 3 != 0
])
def test_sharding_that_does_not_divide_is_one_line(override, field, capsys):
  from bertjax.cli import main
  code = main(["compile", "--config", str(CONFIGS / "bert.py") + ":tiny", "--target", "v4-32",
               "--config.train.phase2_start=0", *override])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and field in err[0], err


def test_unknown_target_is_a_user_error():
  with pytest.raises(UserError, match="v5e-256"):
    targets.get("v5e-9")


def test_gpu_target_without_the_cuda_plugin_names_the_install(capsys):
  """The H100 target needs the gpu-compile extra (not in the test extra: 480 MB); without it,
  one line says what to install."""
  import importlib.util
  if importlib.util.find_spec("jax_plugins") and importlib.util.find_spec("jax_plugins.xla_cuda12"):
    pytest.skip("the CUDA plugin is installed here")
  from bertjax.cli import main
  code = main(["compile", "--config", str(CONFIGS / "bert.py") + ":tiny", "--target", "h100x8"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "jax-cuda12-plugin==0.10.2" in err[0], err
