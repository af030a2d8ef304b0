#!/usr/bin/env bash
# `make lock`: pin every requirement with its hashes. Inputs (edited by hand): requirements.txt,
# requirements-dev.txt, include/images/<role>.txt. Outputs (committed; installed with
# `pip install --require-hashes`):
#   requirements.lock                  what `make setup` installs (the whole test environment)
#   include/images/<role>.lock         what each image's venv installs (versions of requirements.lock)
#   include/images/<role>-gpu.lock     step and serving for VARIANT=gpu: CUDA torch, onnxruntime-gpu
# pip-tools runs in a throwaway venv (.venv-lock), not in the project's. A lock keeps the versions
# it holds (pip-compile prefers them) unless an input asks otherwise: to move a package, change its
# pin in the input, or delete its lines from the lock, and run `make lock` again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
PIP_TOOLS=${PIP_TOOLS:-pip-tools==7.7.0}
ORT_GPU=${ORT_GPU:-onnxruntime-gpu==1.31.1}
LOCKVENV=.venv-lock
test -x $LOCKVENV/bin/pip-compile || { $PYTHON -m venv $LOCKVENV && $LOCKVENV/bin/pip install --quiet "$PIP_TOOLS"; }
# the inputs made here live at a fixed path: the locks' `# via` comments name them
work=$LOCKVENV/in
mkdir -p "$work"

compile() {  # compile OUT INPUT... (pip's own configuration: its indexes and find-links)
  local out=$1
  shift
  $LOCKVENV/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header \
    --no-emit-index-url --no-emit-find-links --no-emit-trusted-host -o "$out" "$@"
}
# The images' Python (Debian's 3.11.2) needs async-timeout for redis (python_full_version < 3.11.3):
# asked for by name so that every lock holds it whatever the Python that compiles it.
echo 'async-timeout==5.0.1' > "$work/py3112.txt"
echo 'pip==26.3' > "$work/pip.txt"
compile requirements.lock requirements.txt requirements-dev.txt "$work/py3112.txt" "$work/pip.txt"
# pip first (`make setup`): a new venv's pip refuses extras such as pandas[parquet] in hash mode
{
  echo "# pip itself, from requirements.lock (tools/lock.sh copies it): \`make setup\` installs it first, since"
  echo "# the pip a new venv brings refuses extras such as pandas[parquet] in --require-hashes mode"
  awk '/^pip==/{p=1; print; next} p && /^[^ ]/{p=0} p && !/# via/' requirements.lock
} > tools/pip.lock
# versions only (hashes are not allowed in a constraints file)
grep -E '^[A-Za-z0-9._-]+==' requirements.lock | sed 's/ .*//' > "$work/versions.txt"

for role in airflow serving services; do
  compile "include/images/$role.lock" -c "$work/versions.txt" "include/images/$role.txt" "$work/py3112.txt" &
done
compile include/images/step.lock -c "$work/versions.txt" requirements.txt "$work/py3112.txt" &
wait
# GPU: torch's CUDA build and onnxruntime-gpu come from the configured index, never this disk's
# CPU wheel (find-links off); everything else keeps the CPU locks' versions.
grep -vE '^(torch|onnxruntime)==' "$work/versions.txt" > "$work/versions-gpu.txt"
sed "s/^onnxruntime==.*/$ORT_GPU/" requirements.txt > "$work/step-gpu.in"
sed "s/^onnxruntime$/$ORT_GPU/" include/images/serving.txt > "$work/serving-gpu.in"
for role in step serving; do
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 \
    $LOCKVENV/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header \
    --no-emit-index-url --no-emit-find-links -o "include/images/$role-gpu.lock" \
    -c "$work/versions-gpu.txt" "$work/$role-gpu.in" "$work/py3112.txt" &
done
wait
ls -l requirements.lock include/images/*.lock
