#!/usr/bin/env bash
# SeaweedFS (`weed server`: master, volume server, filer and the S3 API) for the Compose stack and
# the integration tests. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are the S3 API's one (admin)
# identity; S3_BUCKET is created once the S3 API answers.
#
# Not `weed mini`: its volume server refuses to create a volume while the disk has less than 1 %
# free (2.5 GB of a 250 GB disk) or less than one volume's size (1 GiB on a large disk), and then
# every PutObject fails with InternalError; mini has no flag for either. Here volumes are 64 MiB,
# sparse, at most WEED_MAX_VOLUMES of them, and the volume server stops taking writes below
# WEED_MIN_FREE_SPACE.
#
# Environment: WEED (the binary), WEED_DIR (/data), WEED_IP (the host name), WEED_BIND (0.0.0.0:
# where the master, volume server and filer listen), WEED_S3_BIND (WEED_BIND: where the S3 API
# listens), WEED_MASTER_PORT (9333), WEED_VOLUME_PORT (8080), WEED_FILER_PORT (8888), WEED_S3_PORT
# (8333), each gRPC port being the port + 10000. The Compose stack keeps the master, volume server
# and filer on the container's loopback (only the S3 API, which checks its credentials, answers the
# network) and sets the JWT signing keys SeaweedFS reads from the environment (security.toml's
# keys as WEED_JWT_SIGNING_KEY, WEED_JWT_SIGNING_READ_KEY, WEED_JWT_FILER_SIGNING_KEY,
# WEED_JWT_FILER_SIGNING_READ_KEY): a volume or filer read or write without a token signed with
# them is refused with 401.
set -euo pipefail
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${S3_BUCKET:?}"
weed=${WEED:-weed}
dir=${WEED_DIR:-/data}
ip=${WEED_IP:-$(hostname)}
master_port=${WEED_MASTER_PORT:-9333}

mkdir -p "$dir"
config="$dir/s3-identities.json"
(
  umask 077
  cat >"$config" <<EOF
{"identities": [{"name": "mlcycle",
  "credentials": [{"accessKey": "$AWS_ACCESS_KEY_ID", "secretKey": "$AWS_SECRET_ACCESS_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
EOF
)

"$weed" server -dir="$dir" -ip="$ip" -ip.bind="${WEED_BIND:-0.0.0.0}" \
  -master.port="$master_port" -master.volumeSizeLimitMB=64 \
  -volume.port="${WEED_VOLUME_PORT:-8080}" -volume.max="${WEED_MAX_VOLUMES:-100}" \
  -volume.minFreeSpace="${WEED_MIN_FREE_SPACE:-256MiB}" -volume.preStopSeconds=1 \
  -filer -filer.port="${WEED_FILER_PORT:-8888}" \
  -s3 -s3.port="${WEED_S3_PORT:-8333}" -s3.ip.bind="${WEED_S3_BIND:-${WEED_BIND:-0.0.0.0}}" -s3.config="$config" -s3.port.iceberg=0 -s3.port.lance=0 \
  -metricsPort=0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT

# the bucket, once the master answers (an existing bucket is kept)
for _ in $(seq 1 120); do
  kill -0 "$server" 2>/dev/null || break
  if echo "s3.bucket.create -name $S3_BUCKET" | timeout 10 "$weed" shell -master="$ip:$master_port" >"$dir/bucket.log" 2>&1 \
    && grep -Eqi "created bucket|already exist" "$dir/bucket.log"; then
    break
  fi
  sleep 0.5
done
# until the server has exited (a TERM or INT is passed on to it by the trap)
status=0
while :; do
  wait "$server" && status=0 || status=$?
  kill -0 "$server" 2>/dev/null || break
done
exit "$status"
