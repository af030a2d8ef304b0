#!/bin/sh
# `venv <role>`: a virtualenv at /opt/venv with the packages of include/images/<role>.lock (made by
# `make lock` from <role>.txt: every package pinned with its hashes), from the wheelhouse only.
# VARIANT=gpu installs <role>-gpu.lock where there is one (CUDA torch, onnxruntime-gpu).
set -e
python3 -m venv /opt/venv
lock="/images/$1.lock"
if [ "$VARIANT" = gpu ] && [ -f "/images/$1-gpu.lock" ]; then lock="/images/$1-gpu.lock"; fi
pip install --quiet --no-index --find-links /wheels --require-hashes -r "$lock"
# the project's code lives once, in /opt/mlcycle (PYTHONPATH); no copy in site-packages. Its console
# scripts (pyproject.toml): `mlcycle`, and `mlcycle-haproxy` (Serve's HAProxy, see serving/haproxy.py)
script() {
  printf '%s\n' '#!/opt/venv/bin/python' 'import sys' "from $2 import main" 'sys.exit(main())' > "/opt/venv/bin/$1"
  chmod 755 "/opt/venv/bin/$1"
}
script mlcycle pipelines.cli
script mlcycle-haproxy serving.haproxy
