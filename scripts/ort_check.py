#!/usr/bin/env python3
"""Independent-runtime check of ecc's results with onnxruntime and the ONNX checker.

Usage: ort_check.py MANIFEST.json

The manifest is a list of jobs {"name", "original", "exported", "io", "inputs", "outputs",
"ort"}: `io` holds the inputs ecc ran on and the outputs it computed, as input_K.pb /
output_K.pb TensorProto files. For each job this script
  1. runs `original` in onnxruntime on those inputs and compares with ecc's outputs;
  2. runs the ONNX checker (full_check, with shape inference) on `exported`, ecc's round
     trip of the model, and runs it in onnxruntime on the same inputs, comparing again.
Jobs with "check_original": true (files ecc wrote, such as EC graphs) also put
`original` through the full checker. Jobs with "ort": false (models of opset 6, which onnxruntime no longer implements) get
step 2's checker only. Relative error is max|a - b| / max(max|b|, 1e-6); the limit is 5e-6 (worst measured: 1.4e-6, vgg19 with random weights). Prints one line per
job and exits 1 if any job fails.
"""
import json
import sys

import numpy as np
import onnx
import onnx.numpy_helper as nh
import onnxruntime as ort

LIMIT = 5e-6


def load_pb(path):
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        t.ParseFromString(f.read())
    return nh.to_array(t)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-6))


def run(path, io, n_in, n_out):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3  # errors only: opset-6 models draw warnings
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {}
    for k, inp in enumerate(sess.get_inputs()[:n_in]):
        x = load_pb(f"{io}/input_{k}.pb")
        want = np.float64 if inp.type == "tensor(double)" else np.float32
        feeds[inp.name] = x.astype(want)
    return sess.run(None, feeds)[:n_out]


def main():
    jobs = json.load(open(sys.argv[1]))
    failed = 0
    for job in jobs:
        if not job.get("ort", True):
            try:
                onnx.checker.check_model(onnx.load(job["exported"]), full_check=True)
                ok, msg = True, "checker ok (opset too old for onnxruntime)"
            except Exception as e:
                ok, msg = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {job['name']}: {msg}", flush=True)
            continue
        io = job["io"]
        n_in = job["inputs"]
        n_out = job["outputs"]
        ecc_out = [load_pb(f"{io}/output_{k}.pb") for k in range(n_out)]
        try:
            if job.get("check_original"):
                onnx.checker.check_model(onnx.load(job["original"]), full_check=True)
            orig = run(job["original"], io, n_in, n_out)
            e1 = max(rel_err(a, b) for a, b in zip(ecc_out, orig))
            onnx.checker.check_model(onnx.load(job["exported"]), full_check=True)
            exp = run(job["exported"], io, n_in, n_out)
            e2 = max(rel_err(a, b) for a, b in zip(exp, orig))
            ok = e1 <= LIMIT and e2 <= LIMIT
            msg = f"ecc vs ort {e1:.2e}, exported vs original in ort {e2:.2e}, checker ok"
        except Exception as e:  # a failure of the checker or the runtime is a failed job
            ok = False
            msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {job['name']}: {msg}", flush=True)
    print(f"ort_check: {len(jobs) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
