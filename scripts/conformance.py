#!/usr/bin/env python3
"""ecc over the ONNX test suites (issue 16): every case's model run by `ecc run` on the case's
inputs, its outputs compared with the case's expected outputs, and each case counted per op as

    pass      ecc ran it and every output is within the case's tolerance
    wrong     ecc ran it and an output differs (shape or values)
    rejected  ecc refused it with a message and exit code 2 (an op, type or form it does not read)
    panic     anything else (a crash, a signal, another exit code, a timeout)

Suites (written out by scripts/conformance.sh):
  wheel     the onnx wheel's node cases (onnx.backend.test.case.node, written out by
            onnx's own loader at the pinned onnx version) and its model suites (light,
            pytorch-converted, pytorch-operator, simple, real: the ones with data sets)
  debian    Debian's libonnx-testdata node cases (files)

Integer inputs: ecc reads shapes, axes, pads and bounds as constants, while the node cases
feed them as graph inputs. A case whose graph inputs include integer or bool tensors,
scalars (rank 0: Pad's constant value, Clip's bounds, Dropout's ratio), or float operands
(Resize's roi and scales, Upsample's scales) is run with those inputs baked into the model
as initializers, from the data set (named "+const" in listings); its other inputs stay
inputs.

Tolerances: the case's own (onnx's backend test defaults rtol 1e-3, atol 1e-7, or the
case's), as onnx's backend runner applies them. A case with several data sets uses all.

    conformance.py ECC_BINARY SUITE_DIR... [--json OUT] [--list wrong|panic|all]
"""
import argparse
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper


def read_pb(path):
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(t)


def case_ops(model_path):
    try:
        m = onnx.load(str(model_path), load_external_data=False)
    except Exception:
        return ["(unreadable)"]
    ops = sorted({n.op_type for n in m.graph.node})
    return ops or ["(no nodes)"]


FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
          onnx.TensorProto.BFLOAT16}


# Float operands ecc reads as constants: inputs from this index on (Resize's roi and scales,
# Upsample's scales).
OPERAND_FROM = {"Resize": 1, "Upsample": 1}


def bake(model_path, ds, work):
    """The model with its integer/bool tensor inputs made initializers from data set `ds`, and
    a data set of the remaining inputs; None when there is nothing to bake."""
    m = onnx.load(str(model_path), load_external_data=False)
    ins = list(m.graph.input)
    init = {t.name for t in m.graph.initializer}
    real = [i for i in ins if i.name not in init]
    def scalar(i):
        tt = i.type.tensor_type
        return tt.HasField("shape") and len(tt.shape.dim) == 0
    def operand(i):
        uses = [(n.op_type, k) for n in m.graph.node for k, x in enumerate(n.input) if x == i.name]
        return uses and all(k >= OPERAND_FROM.get(op, 99) for op, k in uses)
    bake_idx = [k for k, i in enumerate(real)
                if i.type.HasField("tensor_type")
                and (i.type.tensor_type.elem_type not in FLOATS or scalar(i) or operand(i))]
    if not bake_idx or len(bake_idx) == len(real):
        return None
    out_ds = work / ds.name
    out_ds.mkdir(parents=True)
    kept = 0
    for k, i in enumerate(real):
        t = onnx.TensorProto()
        t.ParseFromString((ds / f"input_{k}.pb").read_bytes())
        if k in bake_idx:
            t.name = i.name
            m.graph.initializer.append(t)
            m.graph.input.remove(i)
        else:
            (out_ds / f"input_{kept}.pb").write_bytes(t.SerializeToString())
            kept += 1
    for f in ds.glob("output_*.pb"):
        (out_ds / f.name).write_bytes(f.read_bytes())
    path = work / f"model-{ds.name}.onnx"
    onnx.save(m, str(path))
    return path, out_ds


def run_case(ecc, case_dir, timeout):
    """(outcome, detail, baked) of one case directory (model.onnx, test_data_set_*/)."""
    model = case_dir / "model.onnx"
    sets = sorted(p for p in case_dir.glob("test_data_set_*") if p.is_dir())
    if not sets:
        return None
    meta = case_dir / "tolerance.json"
    rtol, atol = 1e-3, 1e-7
    if meta.exists():
        t = json.loads(meta.read_text())
        rtol, atol = t.get("rtol", rtol), t.get("atol", atol)
    baked = False
    for ds in sets:
        with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as work:
            run_model = model
            b = bake(model, ds, Path(work))
            if b is not None:
                run_model, ds = b
                baked = True
            try:
                r = subprocess.run(
                    [ecc, "run", str(run_model), "--inputs", str(ds), "--save", out],
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired:
                return "panic", f"timeout after {timeout} s", baked
            if r.returncode == 2:
                lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
                return "rejected", (lines[-1] if lines else "(no message)"), baked
            if r.returncode != 0:
                tail = r.stderr.strip().splitlines()[-1:] or ["(no message)"]
                return "panic", f"exit {r.returncode}: {tail[0]}", baked
            k = 0
            while (ds / f"output_{k}.pb").exists():
                want = read_pb(ds / f"output_{k}.pb")
                got_path = Path(out) / f"output_{k}.pb"
                if not got_path.exists():
                    return "wrong", f"output {k} not written", baked
                got = read_pb(got_path)
                if got.shape != want.shape:
                    return "wrong", f"output {k}: shape {got.shape}, expected {want.shape}", baked
                if want.dtype.kind not in "fc":
                    ok = np.array_equal(got.astype(want.dtype), want)
                else:
                    ok = np.allclose(got.astype(np.float64), want.astype(np.float64),
                                     rtol=rtol, atol=atol, equal_nan=True)
                if not ok:
                    g = got.astype(np.float64)
                    w = want.astype(np.float64)
                    err = float(np.max(np.abs(g - w))) if g.size else 0.0
                    return "wrong", f"output {k}: max abs error {err:.3g} ({want.dtype})", baked
                k += 1
    return "pass", "", baked


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ecc")
    ap.add_argument("suites", nargs="+")
    ap.add_argument("--json")
    ap.add_argument("--list", choices=["wrong", "panic", "all"], default="panic")
    ap.add_argument("--timeout", type=float, default=60)
    a = ap.parse_args()

    per_op = defaultdict(lambda: defaultdict(int))
    per_suite = defaultdict(lambda: defaultdict(int))
    cases = []
    for suite in a.suites:
        root = Path(suite)
        dirs = sorted(p.parent for p in root.rglob("model.onnx"))
        for d in dirs:
            res = run_case(a.ecc, d, a.timeout)
            if res is None:
                continue
            outcome, detail, baked = res
            ops = case_ops(d / "model.onnx")
            name = f"{root.name}/{d.relative_to(root)}" + ("+const" if baked else "")
            cases.append({"case": name, "ops": ops, "outcome": outcome, "detail": detail})
            per_suite[root.name][outcome] += 1
            # A node case is counted under its op; a model case under each op it uses.
            for op in ops:
                per_op[op][outcome] += 1
            if a.list == "all" or outcome == a.list or (a.list == "wrong" and outcome == "panic"):
                print(f"  {outcome:<8} {name}: {detail}", flush=True)

    cols = ["pass", "wrong", "rejected", "panic"]
    print(f"{'suite':<28}" + "".join(f"{c:>9}" for c in cols) + f"{'cases':>8}")
    for s, c in per_suite.items():
        print(f"{s:<28}" + "".join(f"{c[k]:>9}" for k in cols) + f"{sum(c.values()):>8}")
    tot = {k: sum(c[k] for c in per_suite.values()) for k in cols}
    print(f"{'total':<28}" + "".join(f"{tot[k]:>9}" for k in cols) + f"{len(cases):>8}")
    print()
    print(f"{'op (cases using it)':<28}" + "".join(f"{c:>9}" for c in cols))
    for op in sorted(per_op):
        c = per_op[op]
        print(f"{op:<28}" + "".join(f"{c[k]:>9}" for k in cols))
    # Node cases that use only op types ecc lists (`ecc ops`): what is left once the ops ecc
    # does not implement are set aside.
    listed = {l.split()[0] for l in subprocess.run([a.ecc, "ops"], capture_output=True,
                                                   text=True).stdout.splitlines() if l.strip()}
    mine = [c for c in cases if "node" in c["case"].split("/")[0] and c["ops"]
            and set(c["ops"]) <= listed]
    n = defaultdict(int)
    for c in mine:
        n[c["outcome"]] += 1
    baked = sum(c["outcome"] == "pass" and c["case"].endswith("+const") for c in mine)
    print()
    print(f"node cases using only ops ecc lists: {len(mine)}: {n['pass']} pass ({baked} with "
          f"baked constants), {n['rejected']} rejected, {n['wrong']} wrong, {n['panic']} panic")
    if a.json:
        Path(a.json).write_text(json.dumps({"cases": cases}, indent=1))
    return 1 if tot["wrong"] or tot["panic"] else 0


if __name__ == "__main__":
    sys.exit(main())
