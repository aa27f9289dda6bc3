"""`make bench`: run every benchmarks/bench_*.py and write benchmarks/results.md + results.json.

Each module exposes `run(out_dir) -> {"title", "markdown", "data"}` and compares side by side in
the same run (ours vs a peer, or vs the machine peak measured in this run), reporting ratios:
these machines are shared and noisy, so only same-run ratios mean much.
Run some: `python -m benchmarks.run data checkpoint` (names without the bench_ prefix): their
sections replace the earlier ones in results.md/json, the other sections are kept.
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


def _load_previous() -> tuple[dict, dict]:
  """(results.json's data, {name: section}) of an earlier run; sections of a file written before
  they were stored in the JSON are recovered from results.md, keyed by their title."""
  try:
    data = json.loads((HERE / "results.json").read_text())
  except (OSError, ValueError):
    return {}, {}
  sections = data.pop("sections", None)
  if sections is None:
    sections = {}
    try:
      md = (HERE / "results.md").read_text()
    except OSError:
      md = ""
    for chunk in md.split("\n## ")[1:]:
      title = chunk.split("\n", 1)[0].strip()
      sections[f"title:{title}"] = {"title": title, "markdown": "## " + chunk.rstrip() + "\n"}
  return data, sections


def main(argv: list[str]) -> int:
  """Run the named benchmarks (all when none) and merge their sections into results.md/json:
  sections of benchmarks not run this time are kept as they were (each says when it ran)."""
  all_names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
  names = argv or all_names
  out_dir = HERE / "out"
  out_dir.mkdir(exist_ok=True)
  info = machine_info()
  data, sections = _load_previous() if argv else ({}, {})
  failed = []
  for name in names:
    t0 = time.time()
    print(f"[bench] {name} ...", flush=True)
    stamp = f"{info['date']}, commit {info.get('git_commit', '?')}"
    try:
      result = importlib.import_module(f"benchmarks.bench_{name}").run(str(out_dir))
    except Exception:  # one broken benchmark must not hide the others' results
      failed.append(name)
      sections[name] = {"title": name, "markdown": f"## {name}\n\nFAILED ({stamp}):\n```\n"
                                                    f"{traceback.format_exc()}```\n"}
      continue
    # A section from an older results.md under the same title is this one's earlier run.
    sections.pop(f"title:{result['title']}", None)
    sections[name] = {"title": result["title"], "machine": info,
                      "markdown": f"## {result['title']}\n\n{result['markdown']}\n\n"
                                  f"_(ran {stamp}; took {time.time() - t0:.0f} s)_\n"}
    data[name] = result["data"]
  data["machine"] = info
  order = [n for n in all_names if n in sections] + [n for n in sections if n not in all_names]
  header = ["# bertjax benchmark results", "",
            "Written by `make bench` (benchmarks/run.py); `python -m benchmarks.run NAME...` "
            "reruns some sections and keeps the others. Machine and versions of the latest run:",
            ""]
  header += [f"- {k}: {v}" for k, v in info.items()]
  (HERE / "results.md").write_text("\n".join(header) + "\n\n" +
                                   "\n".join(sections[n]["markdown"] for n in order))
  (HERE / "results.json").write_text(json.dumps(dict(data, sections=sections), indent=2,
                                                default=str))
  print(f"[bench] wrote {HERE / 'results.md'}" + (f"; FAILED: {failed}" if failed else ""))
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
