#!/usr/bin/env bash
# SeaweedFS (`weed mini`: master, volume, filer and the S3 API on 8333) for the Compose stack.
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are required by the S3 API; S3_BUCKET is created.
set -euo pipefail
: "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}" "${S3_BUCKET:?}"
exec weed mini -dir=/data -ip="$(hostname)" -ip.bind=0.0.0.0 -s3.port.iceberg=0 -s3.port.lance=0 -debug.port=0
