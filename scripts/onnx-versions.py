#!/usr/bin/env python3
"""Print, for every op ecc imports, its since_versions in the installed onnx package's schemas
up to the package's newest opset, in the form of src/import/versions.rs's OPS table, and the
package's IR version and opset: rerun it against a newer onnx to see what changed.

    ~/.cache/ecc/venv/bin/python scripts/onnx-versions.py   (the venv of scripts/fetch-fixtures.sh)
"""
import re
import sys
from pathlib import Path

import onnx
from onnx import defs

src = (Path(__file__).resolve().parent.parent / "src/import/versions.rs").read_text()
ops = re.findall(r'^\s*\("([A-Za-z]+)", &\[', src, re.M)
newest = defs.onnx_opset_version()
print(f"// onnx {onnx.__version__}: IR {onnx.IR_VERSION}, opset {newest}")
differ = 0
for op in ops:
    seen = set()
    for v in range(1, newest + 1):
        try:
            seen.add(defs.get_schema(op, v).since_version)
        except Exception:
            pass
    line = f'    ("{op}", &[{", ".join(map(str, sorted(seen)))}]),'
    if line.strip() not in src:
        differ += 1
        line += "  // differs from versions.rs"
    print(line)
sys.exit(1 if differ else 0)
