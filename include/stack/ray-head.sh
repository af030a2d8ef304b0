#!/usr/bin/env bash
# The Ray head of the Compose stack: the cluster, then the pipelines' Serve config
# (include/serve/serve.yaml). Each application serves its `champion` from the registry; one
# with no champion yet fails to deploy until the lifecycle's canary step deploys it.
set -euo pipefail
: "${RAY_AUTH_TOKEN:?}" "${MLCYCLE_SERVING_API_KEYS:?}"
export RAY_AUTH_MODE=token
# Serve as `mlcycle serve start` runs it (serving/deploy.py serve_env): HAProxy as the ingress
# proxy (one thread), user code on the replicas' event loops; HAProxy's listeners follow the
# HTTP host (0.0.0.0 in the container, published on 127.0.0.1 by Compose)
export RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_HAPROXY_NBTHREAD=1 \
  RAY_SERVE_HAPROXY_BINARY_PATH=/opt/venv/bin/mlcycle-haproxy
ray start --head --port=6379 --node-ip-address="$(hostname -i | awk '{print $1}')" \
  --dashboard-host=0.0.0.0 --dashboard-port=8265 --ray-client-server-port=10001 \
  --metrics-export-port=8080 --num-cpus="${RAY_NUM_CPUS:-2}" --disable-usage-stats
serve start --http-host 0.0.0.0 --http-port 8000 || true
serve deploy /opt/mlcycle/include/serve/serve.yaml || echo "serve deploy failed; the canary step deploys later"
# stay in the foreground while the node lives; `ray stop` on SIGTERM
trap 'ray stop --force; exit 0' TERM INT
while ray status >/dev/null 2>&1; do sleep 10 & wait $!; done
echo "the Ray head stopped" >&2
exit 1
