#!/usr/bin/env bash
# Provide debian:bookworm-slim for `docker build`: present, or pulled, or (where no registry can be
# reached, as on an air-gapped builder) made from Debian's mirror with debootstrap and imported.
set -euo pipefail
image=debian:bookworm-slim
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
docker image inspect "$image" >/dev/null 2>&1 && exit 0
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then exit 0; fi
echo "cannot pull $image; building it with debootstrap from $mirror" >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
docker image inspect "$image" --format "$image: {{.Size}} bytes"
