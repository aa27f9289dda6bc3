"""Test setup: JAX on CPU with 8 virtual devices, set before jax is imported anywhere."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# model.dtype=auto -> f32 on any test machine (numeric checks compare with f32 references).
os.environ.setdefault("BERTJAX_FAST_BF16", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data():
  """../shared/data, or skip when it is absent (a fresh machine without the fixtures)."""
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data is absent")
  return SHARED_DATA
