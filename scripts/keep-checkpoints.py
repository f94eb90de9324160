#!/usr/bin/env python3
"""Stage the checkpoints of part-way experiment runs for the next commit, so that a run
longer than one working session resumes on another machine (a fresh clone has no
git-ignored files), and unstage those of runs that have finished.

Checkpoints (results/<experiment>/<run>.safetensors) are git-ignored: they change every
epoch and most runs finish within a session. At a session's end, after stopping the runs
with Ctrl-C (each writes its checkpoint), run

    scripts/keep-checkpoints.py && git commit -m "Part-way checkpoints"

A run is part-way when its metrics file has fewer epochs than its experiment's "epochs"
and it has not diverged. `ecc experiment` resumes such a run from the committed
checkpoint exactly as from a local one. Only the standard library is needed.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def epochs_done(metrics: pathlib.Path) -> tuple[int, bool]:
    """(last epoch recorded, diverged) of one run's metrics file."""
    last, diverged = 0, False
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            diverged |= "diverged" in row
            last = max(last, row.get("epoch", 0))
    return last, diverged


def tracked(path: pathlib.Path) -> bool:
    rel = str(path.relative_to(ROOT))
    out = subprocess.run(["git", "ls-files", "--", rel], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() != ""


def main() -> int:
    kept, dropped = [], []
    for ckpt in sorted(ROOT.glob("results/*/*.safetensors")):
        spec = ROOT / "experiments" / f"{ckpt.parent.name}.json"
        if not spec.exists():
            continue
        epochs = json.loads(spec.read_text())["epochs"]
        done, diverged = epochs_done(ckpt.with_suffix(".jsonl"))
        rel = str(ckpt.relative_to(ROOT))
        if done < epochs and not diverged:
            subprocess.run(["git", "add", "-f", "--", rel], cwd=ROOT, check=True)
            kept.append(f"{rel} (epoch {done} of {epochs})")
        elif tracked(ckpt):
            subprocess.run(["git", "rm", "-q", "--cached", "--", rel], cwd=ROOT, check=True)
            dropped.append(rel)
    for k in kept:
        print(f"staged   {k}")
    for d in dropped:
        print(f"unstaged {d} (run finished)")
    if not kept and not dropped:
        print("no part-way runs with checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
