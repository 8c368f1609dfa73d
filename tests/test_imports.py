"""``import kvlab`` on a CPU loads no Pallas lowering (Mosaic GPU or Triton) and no private JAX
module: the kernel modules load when a step first launches them. The one private JAX import
(Mosaic GPU's interpreter parameters, public in no JAX release kvlab supports) sits inside the
interpret-mode path of the Hopper kernel."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWED_PRIVATE = ("kvlab/attention/pallas/mosaic_prefill.py", "_interpret_params")

PROBE = """
import json, sys
import jax, jax.numpy, flax.nnx, numpy        # kvlab's own dependencies load what they load
before = set(sys.modules)
import kvlab
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_import_kvlab_loads_no_pallas_lowering():
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
    new = json.loads(result.stdout.strip().splitlines()[-1])
    assert "kvlab.attention.pallas.backend" in new                      # the backend itself is there
    lowering = [m for m in new if "mosaic" in m or "triton" in m or m.startswith("jax.experimental.pallas")
                or m.startswith("jax._src.pallas")]
    assert lowering == [], lowering


def test_no_private_jax_import_outside_the_interpret_path():
    hits = []
    for path in sorted((ROOT / "kvlab").rglob("*.py")):
        text = path.read_text()
        if "jax._src" not in text:
            continue
        rel = path.relative_to(ROOT).as_posix()
        spans = {node.name: (node.lineno, node.end_lineno) for node in ast.walk(ast.parse(text))
                 if isinstance(node, ast.FunctionDef)}
        for lineno, line in enumerate(text.splitlines(), 1):
            if "jax._src" in line:
                allowed = rel == ALLOWED_PRIVATE[0] and (
                    spans[ALLOWED_PRIVATE[1]][0] < lineno <= spans[ALLOWED_PRIVATE[1]][1])
                if not allowed:
                    hits.append(f"{rel}:{lineno}: {line.strip()}")
    assert hits == [], hits
