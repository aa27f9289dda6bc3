"""Ahead-of-time compiles of the real train steps for a named target: memory, FLOPs, fit.

`compile_steps(cfg, target)` builds the pretraining (every phase the config trains) or the
fine-tuning train step exactly as `bertjax.train.loop.train` does -- the task's loss, the
optimizer of config.optim, the state's shapes and shardings from `abstract_state`, the batch
split over ('data', 'fsdp'), the state donated -- on a Mesh of the target's devices, then
`lower(...).compile()`s it with no data and no accelerator. The compiler reports, per device:
argument bytes (state + batch), temporaries (activations, gradients, optimizer scratch) and
output bytes; the donated state's outputs alias its inputs, so the footprint is
args + temps + outputs - aliased. Its FLOP count (per device, times the devices) is compared
with the model-FLOPs formula of bertjax.train.metrics, and the step time at the chip's peak is
that FLOP count / peak; an expected time divides by an assumed MFU (stated in the report).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import time
from typing import Optional

import jax
import jax.numpy as jnp

from bertjax import config_steps, sharding as shd
from bertjax import targets as targets_lib
from bertjax.config import validate
from bertjax.errors import UserError
from bertjax.train import metrics as mlib
from bertjax.train import setup

# Assumed model-FLOPs utilisation for the "expected" step time: a round figure for BERT-size
# models with bf16 matmuls (tuned BERT-large pretraining reports roughly 40-60%).
DEFAULT_MFU = 0.40
GiB = targets_lib.GiB


@dataclasses.dataclass
class Report:
  target: str
  chip: str
  step: str                 # "pretrain phase 1 (S=128, P=20)" / "finetune sst2 (S=128)"
  devices: int
  mesh: dict
  global_batch: int
  seq_len: int
  arg_bytes: int            # per device: state + batch
  temp_bytes: int           # per device: activations, gradients, scratch
  out_bytes: int            # per device: new state + metrics
  alias_bytes: int          # per device: outputs written into donated inputs
  hbm_bytes: int
  compiler_flops: float     # whole step, all devices
  flops_source: str         # compiled (partitioned: per device x devices) | unpartitioned
  formula_flops: float      # bertjax.train.metrics formula for the same step
  peak_flops: float         # per device
  mfu: float                # assumed, for expected_step_s
  compile_s: float

  @property
  def total_bytes(self) -> int:
    return self.arg_bytes + self.temp_bytes + self.out_bytes - self.alias_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.hbm_bytes

  @property
  def step_s_at_peak(self) -> float:
    return self.compiler_flops / (self.peak_flops * self.devices)

  @property
  def expected_step_s(self) -> float:
    return self.step_s_at_peak / self.mfu

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d.update(total_bytes=self.total_bytes, fits=self.fits, step_s_at_peak=self.step_s_at_peak,
             expected_step_s=self.expected_step_s,
             expected_seq_per_s=self.global_batch / self.expected_step_s)
    return d


def _gib(n: float) -> str:
  return f"{n / GiB:.2f} GiB"


def format_report(r: Report) -> str:
  margin = r.hbm_bytes - r.total_bytes
  mesh = " x ".join(f"{k} {v}" for k, v in r.mesh.items())
  ratio = r.compiler_flops / r.formula_flops if r.formula_flops else float("nan")
  counted = "" if r.flops_source == "compiled" else ", XLA's count of the unpartitioned step"
  lines = [
      f"{r.target} ({r.devices} x {r.chip}), {r.step}: global batch {r.global_batch}, "
      f"mesh {mesh}; compiled in {r.compile_s:.1f} s",
      f"  memory per device: args {_gib(r.arg_bytes)} + temps {_gib(r.temp_bytes)} + output "
      f"{_gib(r.out_bytes)} - aliased (donated) {_gib(r.alias_bytes)} = {_gib(r.total_bytes)} "
      f"of {_gib(r.hbm_bytes)} HBM: {'fits' if r.fits else 'DOES NOT FIT'}, margin "
      f"{_gib(margin)} ({100 * margin / r.hbm_bytes:.0f}%)",
      f"  FLOPs per step: compiler {r.compiler_flops / 1e12:.3g} TFLOP (all devices{counted}), "
      f"formula "
      f"{r.formula_flops / 1e12:.3g} TFLOP, ratio {ratio:.3f}",
      f"  step time: {1e3 * r.step_s_at_peak:.3g} ms at the peak ({r.peak_flops / 1e12:.0f} "
      f"TFLOP/s per device); expected {1e3 * r.expected_step_s:.3g} ms = "
      f"{r.global_batch / r.expected_step_s:,.0f} seq/s at an assumed MFU of {100 * r.mfu:.0f}%",
  ]
  return "\n".join(lines)


def not_fit_message(r: Report, cfg) -> str:
  """One line: how much the step needs, and the config fields to change, the likeliest first:
  the state (params + Adam moments, in the arguments) shards with mesh.fsdp; activations
  (temporaries) shrink with model.remat, accumulation or a smaller batch."""
  fsdp = r.mesh.get("fsdp", 1)
  state_heavy = r.arg_bytes > r.temp_bytes
  shard = f"mesh.fsdp (now {fsdp}; splits params and Adam moments)" if fsdp < r.devices else ""
  act = ([] if cfg.model.remat else ["model.remat=true (recomputes layer activations)"]) + [
      f"train.grad_accum_steps (now {cfg.train.grad_accum_steps})",
      f"train.global_batch_size (now {r.global_batch})"]
  fields = ([shard] if shard and state_heavy else []) + act + ([shard] if shard and not
                                                               state_heavy else [])
  return (f"{r.target}, {r.step}: needs {r.total_bytes / GiB:.2f} GiB per device of "
          f"{r.hbm_bytes / GiB:.0f} GiB HBM; raise or set " + ", ".join(fields))


# --------------------------------------------------------------- the steps, as training builds them

def _abstract_batch(spec: dict, mesh) -> dict:
  sharding = shd.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in spec.items()}


def _train_step(task, cfg, mesh, spec: dict):
  """(StepFn, abstract state, abstract batch): what loop.train compiles for this batch."""
  pieces = setup.build(task, cfg, mesh, spec)
  return pieces.make_step(), pieces.abstract, _abstract_batch(spec, mesh)


def pretrain_steps(cfg, mesh) -> list:
  """[(label, StepFn, abstract state, abstract batch, formula FLOPs)] per pretraining phase."""
  from bertjax.train.pretrain import batch_spec, phase_shapes, pretrain_task, two_phase
  task = pretrain_task(cfg, synthetic=True)
  out = []
  for phase in ([0, 1] if two_phase(cfg) else [0]):
    b, s, p = phase_shapes(cfg, phase)
    spec = batch_spec(cfg, phase)
    step, state, batch = _train_step(task, cfg, mesh, spec)
    out.append((f"pretrain phase {phase + 1} (S={s}, P={p})", step, state, batch,
                mlib.bert_pretraining_flops(cfg.model, b, s, p)))
  return out


def finetune_steps(cfg, mesh) -> list:
  """The fine-tuning step of cfg.finetune.task (sst2 when unset) at finetune.max_seq_length.

  Built from the pieces `bertjax.tasks.finetune.build` assembles -- FineTuneModel, the family's
  loss, the freeze predicate -- without reading the task's files: only shapes matter here.
  Tasks whose labels come from the data (conll2003, tsv...) get a 9-way head (CoNLL NER's).
  """
  from bertjax.heads import FineTuneModel, reads_cls_only
  from bertjax.tasks import families, registry
  from bertjax.tasks import finetune as ft
  from bertjax.train.task import TrainTask
  f, b = cfg.finetune, cfg.train.global_batch_size
  spec = registry.get(f.task or "sst2")
  fam = families.get(spec.family)
  num_labels = len(spec.labels) if spec.labels else (fam.fixed_num_labels or 9)
  model = FineTuneModel(cfg.model, fam, num_labels, f.pooling)

  def init_params(rng, example):
    return model.init({"params": rng, "dropout": rng}, example["input_ids"],
                      example["segment_ids"], example["input_mask"])["params"]

  task = TrainTask(name=f"finetune-{spec.name}", model=model, init_params=init_params,
                   loss_fn=functools.partial(ft.loss_fn, model, fam), train_iter=iter(()),
                   frozen=ft.freeze_predicate(f.freeze, f.freeze_layers))
  s = f.max_seq_length
  batch = {k: jax.ShapeDtypeStruct((b, s), jnp.int32) for k in families.INPUTS}
  batch.update({k: jax.ShapeDtypeStruct((b, s) if per == "token" else (b,), dtype)
                for k, (per, dtype) in fam.targets.items()})
  step, state, abatch = _train_step(task, cfg, mesh, batch)
  # Encoder FLOPs (the formula without MLM predictions); the task head is a few H x C matmuls.
  # A head that reads only [CLS] gets the last layer at that one position of each padded row.
  frozen = "" if f.freeze == "none" else f", freeze={f.freeze}: the formula counts a full backward"
  queries = 1 if reads_cls_only(fam.head(cfg.model, num_labels, f.pooling)) else 0
  return [(f"finetune {spec.name} (S={s}{frozen})", step, state, abatch,
           mlib.bert_pretraining_flops(cfg.model, b, s, 0, last_layer_queries=queries))]


# --------------------------------------------------------------- compile and measure

def _resource_error(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "out of memory" in text


def _compiled_flops(compiled, num_devices: int) -> Optional[float]:
  """FLOPs of the whole step from the partitioned program (per device x devices), or None
  where the compiler gives no count (a GPU program compiled without a GPU)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost["flops"]) * num_devices if cost and "flops" in cost else None


def _unpartitioned_flops(cfg, step: str) -> list[float]:
  """XLA's FLOP count of each step's unpartitioned program, lowered for one host CPU device
  (the count does not depend on the mesh); used when the target's compiler gives none."""
  cpu = copy.deepcopy(cfg)
  with cpu.unlocked():
    cpu.mesh.data, cpu.mesh.fsdp = 1, 1
  mesh = shd.make_mesh(cpu.mesh, jax.devices("cpu")[:1])
  built = pretrain_steps(cpu, mesh) if step == "pretrain" else finetune_steps(cpu, mesh)
  out = []
  for _, fn, state, batch, _ in built:
    cost = fn.lower(state, batch).cost_analysis()
    out.append(float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]))
  return out


def compile_steps(cfg, target: Optional[targets_lib.Target], *, step: str = "pretrain",
                  mfu: float = DEFAULT_MFU, devices=None) -> list[Report]:
  """Compile every train step of `step` (pretrain | finetune) for `target` (None: the local
  devices, `devices`); returns one Report per compiled step. Config mistakes (a batch or fsdp
  that does not divide) are UserErrors naming the field."""
  if step == "finetune" and cfg.finetune.max_seq_length > cfg.model.max_position_embeddings:
    raise UserError(f"finetune.max_seq_length={cfg.finetune.max_seq_length} exceeds "
                    f"model.max_position_embeddings={cfg.model.max_position_embeddings}")
  devs = devices if devices is not None else (targets_lib.devices(target) if target
                                              else jax.devices())
  if cfg.mesh.fsdp < 1 or len(devs) % cfg.mesh.fsdp:
    raise UserError(f"mesh.fsdp={cfg.mesh.fsdp} does not divide the {len(devs)} devices of "
                    f"{target.name if target else 'this host'}; use a divisor of {len(devs)}")
  mesh = shd.make_mesh(cfg.mesh, devs)
  n = shd.mesh_size(mesh)
  if step == "finetune":
    config_steps.use_finetune_lengths(cfg)  # as finetune.build does: validate checks them
  validate(cfg, n)
  built = pretrain_steps(cfg, mesh) if step == "pretrain" else finetune_steps(cfg, mesh)
  hbm = target.chip.hbm_bytes if target else 0
  peak = target.chip.peak_flops if target else (mlib.peak_flops_per_device() or 1.0)
  reports = []
  for i, (label, fn, state, batch, formula) in enumerate(built):
    t0 = time.time()
    try:
      lowered = fn.lower(state, batch)
      compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001  (the compiler's OOM is a config problem)
      if not _resource_error(e):
        raise
      first = next((ln for ln in str(e).splitlines() if "memory" in ln.lower()),
                   str(e).splitlines()[0])
      raise UserError(f"{target.name if target else 'host'}, {label}: the compiler ran out of "
                      f"device memory ({first.strip()[:200]}); change mesh.fsdp, "
                      f"model.remat, train.grad_accum_steps or train.global_batch_size") from None
    mem = compiled.memory_analysis()
    flops, flops_source = _compiled_flops(compiled, n), "compiled"
    if flops is None:
      flops, flops_source = _unpartitioned_flops(cfg, step)[i], "unpartitioned"
    b = batch["input_ids"].shape[0]
    reports.append(Report(
        target=target.name if target else f"host ({jax.default_backend()})",
        chip=target.chip.name if target else devs[0].device_kind, step=label, devices=n,
        mesh=dict(mesh.shape), global_batch=b, seq_len=batch["input_ids"].shape[1],
        arg_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        out_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
        hbm_bytes=hbm, compiler_flops=flops, flops_source=flops_source, formula_flops=formula,
        peak_flops=peak, mfu=mfu, compile_s=time.time() - t0))
  return reports
