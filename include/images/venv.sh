#!/bin/sh
# `venv <role>`: a virtualenv at /opt/venv with the packages of include/images/<role>.txt, from the
# wheelhouse only (versions pinned by its constraints.txt), and the `mlcycle` console script.
# VARIANT=gpu swaps onnxruntime for onnxruntime-gpu (the wheelhouse of `make wheels VARIANT=gpu`).
set -e
python3 -m venv /opt/venv
pip install --quiet --no-index --find-links /wheels -c /wheels/constraints.txt -r "/images/$1.txt"
if [ "$VARIANT" = gpu ] && pip show onnxruntime >/dev/null 2>&1; then
  pip uninstall -y --quiet onnxruntime
  pip install --quiet --no-index --find-links /wheels onnxruntime-gpu
fi
# the project's code lives once, in /opt/mlcycle (PYTHONPATH); no copy in site-packages. Its console
# scripts (pyproject.toml): `mlcycle`, and `mlcycle-haproxy` (Serve's HAProxy, see serving/haproxy.py)
script() {
  printf '%s\n' '#!/opt/venv/bin/python' 'import sys' "from $2 import main" 'sys.exit(main())' > "/opt/venv/bin/$1"
  chmod 755 "/opt/venv/bin/$1"
}
script mlcycle pipelines.cli
script mlcycle-haproxy serving.haproxy
