"""hostmem.cpu_only: whether the CLI may set glibc's malloc options before the backend starts."""
from bertjax import hostmem


def test_cpu_only_follows_jax_platforms(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert hostmem.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
  assert not hostmem.cpu_only()
  monkeypatch.setenv("JAX_PLATFORMS", "tpu")
  assert not hostmem.cpu_only()
