"""`make bench`: run every benchmarks/bench_*.py and write benchmarks/results.md + results.json.

Each module exposes `run(out_dir) -> {"title", "markdown", "data"}` and compares side by side in
the same run (ours vs a peer, or vs the machine peak measured in this run), reporting ratios:
these machines are shared and noisy, so only same-run ratios mean much.
Run one: `python -m benchmarks.run data checkpoint` (names without the bench_ prefix).
"""
from __future__ import annotations

import datetime
import importlib
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
import traceback

HERE = pathlib.Path(__file__).resolve().parent


def machine_info() -> dict:
  import jax
  import numpy as np
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "python": platform.python_version(),
      "platform": platform.platform(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "numpy": np.__version__,
      "devices": [str(d) for d in jax.devices()],
  }
  try:
    info["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
                             if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  try:
    info["git_commit"] = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"],
                                                 cwd=HERE.parent, text=True).strip()
  except (OSError, subprocess.CalledProcessError):
    pass
  return info


def main(argv: list[str]) -> int:
  names = argv or sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
  out_dir = HERE / "out"
  out_dir.mkdir(exist_ok=True)
  info = machine_info()
  sections, data, failed = [], {"machine": info}, []
  for name in names:
    t0 = time.time()
    print(f"[bench] {name} ...", flush=True)
    try:
      result = importlib.import_module(f"benchmarks.bench_{name}").run(str(out_dir))
    except Exception:  # one broken benchmark must not hide the others' results
      failed.append(name)
      sections.append(f"## {name}\n\nFAILED:\n```\n{traceback.format_exc()}```\n")
      continue
    sections.append(f"## {result['title']}\n\n{result['markdown']}\n\n"
                    f"_(took {time.time() - t0:.0f} s)_\n")
    data[name] = result["data"]
  header = ["# bertjax benchmark results", "",
            "Written by `make bench` (benchmarks/run.py). Machine and versions:", ""]
  header += [f"- {k}: {v}" for k, v in info.items()]
  (HERE / "results.md").write_text("\n".join(header) + "\n\n" + "\n".join(sections))
  (HERE / "results.json").write_text(json.dumps(data, indent=2, default=str))
  print(f"[bench] wrote {HERE / 'results.md'}" + (f"; FAILED: {failed}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
