"""Compile the accelerator configs and the FSDP study for their targets; write the numbers.

  python -m benchmarks.compile_targets [NAME ...]     # all runs, or those named

Each run is one `bertjax compile ... --json` subprocess (a crash inside libtpu costs that run
only). Results go to benchmarks/compile_targets.json (merged by run name) and the tables of
docs/targets_results.md, each with the date, commit and command. No accelerator is used.
"""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
OUT_JSON = HERE / "compile_targets.json"
OUT_MD = REPO / "docs" / "targets_results.md"
ONE_PHASE = "--config.train.phase2_start=0"

# name -> (config, target, step, overrides, what it shows)
RUNS = {
    "v5e32-base": ("accel_tpu_v5e_base.py", "v5e-32", "pretrain", [], "the config as shipped"),
    "v4_32-large": ("accel_tpu_v4_large.py", "v4-32", "pretrain", [], "the config as shipped"),
    "h100x8-base": ("accel_h100x8_base.py", "h100x8", "pretrain", [], "the config as shipped"),
    "h100x8-large": ("accel_h100x8_large.py", "h100x8", "pretrain", [], "the config as shipped"),
    "v4_8-base": ("accel_tpu_v5e_base.py", "v4-8", "pretrain", [ONE_PHASE], "BERT-base b256"),
    "v5e8-base": ("accel_tpu_v5e_base.py", "v5e-8", "pretrain", [ONE_PHASE], "BERT-base b256"),
    "v5e8-base-ft": ("accel_tpu_v5e_base.py", "v5e-8", "finetune",
                     ["--config.train.global_batch_size=32"], "SST-2 fine-tuning, b32"),
    "v5p128-base": ("accel_tpu_v5e_base.py", "v5p-128", "pretrain", [ONE_PHASE], "BERT-base b256"),
    "v5e256-base": ("accel_tpu_v5e_base.py", "v5e-256", "pretrain", [ONE_PHASE], "BERT-base b256"),
    "large4k-data": ("accel_tpu_v5e256_large.py", "v5e-256", "pretrain", [], "data only"),
    "large4k-fsdp16": ("accel_tpu_v5e256_large.py", "v5e-256", "pretrain",
                       ["--config.mesh.fsdp=16"], "fsdp 16"),
    "large4k-remat": ("accel_tpu_v5e256_large.py", "v5e-256", "pretrain",
                      ["--config.model.remat=true"], "data only + remat"),
    "1b-data": ("accel_tpu_v5e256_1b.py", "v5e-256", "pretrain", ["--config.mesh.fsdp=1"],
                "data only"),
    "1b-remat": ("accel_tpu_v5e256_1b.py", "v5e-256", "pretrain",
                 ["--config.mesh.fsdp=1", "--config.model.remat=true"], "data only + remat"),
    "1b-fsdp16": ("accel_tpu_v5e256_1b.py", "v5e-256", "pretrain", [], "fsdp 16 (as shipped)"),
    "1b-fsdp16-remat": ("accel_tpu_v5e256_1b.py", "v5e-256", "pretrain",
                        ["--config.model.remat=true"], "fsdp 16 + remat"),
}
# The target list, each compiled with the smallest model: that the slice's compiler and topology
# work from this machine (the full-size runs above cover v5e-32, v5e-256, v4-32 and h100x8).
TINY = ["--config.train.global_batch_size=1024"]
RUNS.update({f"{t.replace('-', '_')}-tiny": ("bert.py:tiny", t, "pretrain", TINY,
                                             "BERT-Tiny b1024, both phases: the target compiles")
             for t in ("v4-8", "v4-32", "v5e-8", "v5e-256", "v5p-128", "h100x8")})


def command(name: str, json_path: str = "") -> list[str]:
  config, target, step, overrides, _ = RUNS[name]
  cmd = ["bertjax", "compile", "--config", f"configs/{config}", "--target", target]
  cmd += (["--step", step] if step != "pretrain" else []) + overrides
  return cmd + (["--json", json_path] if json_path else [])


def run_one(name: str) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "r.json")
    cmd = command(name, path)
    exe = [str(pathlib.Path(sys.executable).parent / "bertjax")] + cmd[1:]
    proc = subprocess.run(exe, cwd=REPO, capture_output=True, text=True)
    reports = json.load(open(path)) if os.path.isfile(path) else []
  err = [ln for ln in proc.stderr.splitlines() if ln.startswith("bertjax compile: error:")]
  crash = proc.returncode < 0 or (proc.returncode not in (0, 2) and not err)
  return {"name": name, "command": " ".join(command(name)), "returncode": proc.returncode,
          "error": err[-1].removeprefix("bertjax compile: error: ") if err else (
              crash_message(proc.returncode, proc.stderr) if crash else ""),
          "note": RUNS[name][4], "reports": reports}


def crash_message(returncode: int, stderr: str) -> str:
  """Why a compile died: the signal by name (SIGKILL is most often the kernel's OOM killer:
  the compiler's host memory, not the target's HBM), else the last line that is not a log line
  (absl/XLA log lines such as libtpu's or the CUDA stub's say nothing about the failure)."""
  if returncode < 0:
    sig = signal.Signals(-returncode).name
    why = "; on a host short of free memory, the kernel's OOM killer" if sig == "SIGKILL" else ""
    return f"killed by {sig} during the compile{why}"
  lines = [ln for ln in stderr.strip().splitlines()
           if ln.strip() and not re.match(r"[IWEF]\d{4} |WARNING: All log messages", ln)]
  return f"crashed (exit {returncode}): {lines[-1][:300] if lines else 'no message'}"


def _row(run: dict, r: dict) -> str:
  gib = 1024 ** 3
  mesh = " x ".join(str(v) for v in r["mesh"].values())
  return (f"| {run['name']} | {r['target']} | {r['step']} | {r['global_batch']} | {mesh} | "
          f"{r['arg_bytes'] / gib:.2f} | {r['temp_bytes'] / gib:.2f} | "
          f"{r['total_bytes'] / gib:.2f} / {r['hbm_bytes'] / gib:.0f} | "
          f"{'yes' if r['fits'] else '**no**'} | "
          f"{r['compiler_flops'] / r['formula_flops']:.3f}{'' if r['flops_source'] == 'compiled' else '*'} | "
          f"{1e3 * r['step_s_at_peak']:.1f} | {r['expected_seq_per_s']:,.0f} |")


def write_markdown(results: dict, meta: dict) -> None:
  lines = [
      "# Compiled for the targets: memory and FLOPs (generated)",
      "",
      f"Written by `python -m benchmarks.compile_targets` (last run {meta['date'][:16]}Z, commit "
      f"{meta['commit']}; each command below carries its own), jax {meta['jax']}, libtpu "
      f"{meta['libtpu']}, on a CPU-only machine. "
      "Each row is one `bertjax compile` command (listed below the table). Memory is per device "
      "(args + temps + output - donated aliases), against the chip's HBM; FLOP ratio = "
      "the compiler's FLOPs / the formula's (* = XLA's count of the unpartitioned step, where the "
      "GPU compiler gives none); step time at the chip's peak from the compiler's FLOPs; "
      "seq/s at an assumed MFU of 40%.",
      "",
      "| run | target | step | batch | mesh (data x fsdp) | args GiB | temps GiB | total / HBM GiB "
      "| fits | FLOP ratio | ms at peak | seq/s at 40% MFU |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name in RUNS:
    run = results.get(name)
    if run is None:
      continue
    for r in run["reports"]:
      lines.append(_row(run, r))
    if run["error"]:
      lines.append(f"| {name} | {RUNS[name][1]} | | | | | | | **{run['error'][:400]}** | | | |")
  lines += ["", "Commands:", ""]
  lines += [f"- {name} ({results[name]['note']}; {results[name]['date'][:16]}Z, commit "
            f"{results[name]['commit']}): `{results[name]['command']}`"
            for name in RUNS if name in results]
  OUT_MD.write_text("\n".join(lines) + "\n")


def main(argv: list[str]) -> int:
  names = argv or list(RUNS)
  unknown = [n for n in names if n not in RUNS]
  if unknown:
    print(f"unknown runs {unknown}; choose from {list(RUNS)}", file=sys.stderr)
    return 2
  import jax
  from importlib.metadata import version
  meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                   capture_output=True, text=True).stdout.strip(),
          "jax": jax.__version__, "libtpu": version("libtpu")}
  for name in names:
    print(f"[compile_targets] {name}: {' '.join(command(name))}", flush=True)
    result = dict(run_one(name), **meta)
    result["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Re-read before writing, so runs written meanwhile by another invocation are kept.
    results = json.loads(OUT_JSON.read_text())["runs"] if OUT_JSON.exists() else {}
    results[name] = result
    print(f"[compile_targets] {name}: exit {results[name]['returncode']} "
          f"{results[name]['error']}", flush=True)
    OUT_JSON.write_text(json.dumps({"runs": results}, indent=1) + "\n")
    write_markdown(results, meta)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
