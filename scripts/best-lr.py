#!/usr/bin/env python3
"""Issue 18: each optimizer's best learning rate in the PlainNet-20 sweep
(experiments/bn-plain20-lr*.json): the final test accuracy of every finished run (all its
epochs), a table learning rate x optimizer, and the best per optimizer (ties: the smaller
learning rate) as the "lr" map of an experiment description. Reads the committed metrics;
trains nothing. Usage: scripts/best-lr.py [PATTERN] (default experiments/bn-plain20-lr*.json)"""
import glob, json, os, sys

pattern = sys.argv[1] if len(sys.argv) > 1 else "experiments/bn-plain20-lr*.json"
acc = {}  # (optimizer, lr) -> final test accuracy
all_lrs, all_opts = set(), []
for path in sorted(glob.glob(pattern)):
    exp = json.load(open(path))
    all_lrs.add(exp["lr"])
    all_opts += [o for o in exp["optimizers"] if o not in all_opts]
    for opt in exp["optimizers"]:
        for seed in exp["seeds"]:
            f = f"results/{exp['name']}/{opt}-seed{seed}.jsonl"
            if not os.path.exists(f):
                continue
            rows = [json.loads(l) for l in open(f)]
            rows = [r for r in rows if r.get("epoch", 0) > 0 and "diverged" not in r]
            if len(rows) >= exp["epochs"]:
                acc.setdefault((opt, exp["lr"]), []).append(rows[-1]["test_accuracy"])
opts = all_opts
lrs = sorted(all_lrs)
print("| lr | " + " | ".join(opts) + " |")
print("|---" * (len(opts) + 1) + "|")
for lr in lrs:
    cells = [f"{sum(acc[(o, lr)]) / len(acc[(o, lr)]):.4f}" if (o, lr) in acc else "-" for o in opts]
    print(f"| {lr} | " + " | ".join(cells) + " |")
best = {}
for o in opts:
    mine = [(sum(v) / len(v), -lr, lr) for (oo, lr), v in acc.items() if oo == o]
    if len(mine) == len(lrs):
        best[o] = max(mine)[2]
missing = [o for o in opts if o not in best]
print("best:", json.dumps(best))
if missing:
    print("not every learning rate has finished for:", ", ".join(missing))
