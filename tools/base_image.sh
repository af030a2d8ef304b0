#!/usr/bin/env bash
# Provide debian:bookworm-slim for `docker build`: present, or pulled, or (where no registry can be
# reached, as on an air-gapped builder) made with debootstrap from the Debian mirror this machine's
# apt uses (DEBIAN_MIRROR overrides it) and imported.
set -euo pipefail
image=debian:bookworm-slim
docker image inspect "$image" >/dev/null 2>&1 && exit 0
# one maker at a time (CI builds the images beside the tests, whose Docker test asks for it too):
# a second caller waits for the first and finds the image made
exec 9>"${TMPDIR:-/tmp}/mlcycle-base-image.lock"
flock 9
docker image inspect "$image" >/dev/null 2>&1 && exit 0
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then exit 0; fi

# The first Debian archive (not the security one) in apt's sources: deb822 files, then sources.list.
apt_mirror() {
  {
    awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
    awk '$1 == "deb" {print ($2 ~ /^\[/ ? $3 : $2)}' /etc/apt/sources.list 2>/dev/null || true
  } | grep -v -- '-security' | head -1
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror)}
if [ -z "$mirror" ]; then
  echo "cannot pull $image and apt names no Debian mirror here: set DEBIAN_MIRROR" >&2
  exit 1
fi
echo "cannot pull $image; building it with debootstrap from $mirror (apt's mirror)" >&2
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
docker image inspect "$image" --format "$image: {{.Size}} bytes"
