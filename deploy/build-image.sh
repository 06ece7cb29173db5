#!/usr/bin/env bash
# Build cgshim's image from this checkout with podman (deploy/Containerfile), as CI does.
#
# usage: deploy/build-image.sh [--base IMAGE] [--tag NAME] [--wheelhouse DIR]
#   --base IMAGE      base for both stages (default: localhost/cgshim-base:bookworm, made here
#                     from Debian's packages when missing: mmdebstrap minbase bookworm with
#                     python3 + python3-venv, imported with `podman import`; no registry needed)
#   --tag NAME        image name (default: localhost/cgshim:VERSION)
#   --wheelhouse DIR  also copy the build stage's sdist, wheel and dependency wheels to DIR
#
# Prints the image name and size last. The host's CA bundle, if any, is passed to the build as
# a secret (pip in the build stage may need it; it never lands in a layer). On a host where
# crun refuses hybrid cgroups or the hard nofile limit is below podman's default, point
# CONTAINERS_CONF at a file setting runtime = "runc" and default_ulimits (.ci/containers.conf).
set -euo pipefail
cd "$(dirname "$0")/.."

base="" tag="" wheelhouse=""
while [ $# -gt 0 ]; do
    case "$1" in
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --wheelhouse) wheelhouse=$2; shift 2 ;;
        *) echo "usage: $0 [--base IMAGE] [--tag NAME] [--wheelhouse DIR]" >&2; exit 2 ;;
    esac
done
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' cgshim/__init__.py)
[ -n "$version" ] || { echo "no __version__ in cgshim/__init__.py" >&2; exit 1; }
tag=${tag:-localhost/cgshim:$version}

if [ -z "$base" ]; then
    base=localhost/cgshim-base:bookworm
    if ! podman image exists "$base"; then
        echo "+ making $base from Debian's packages (mmdebstrap)"
        # merged /usr as bookworm's debootstrap does; no docs, man pages or locales.
        mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            bookworm - | podman import --change 'CMD ["/usr/bin/python3"]' - "$base"
    fi
fi

secret=()
for ca in /etc/ssl/certs/ca-certificates.crt; do
    [ -s "$ca" ] && secret=(--secret "id=cacert,src=$ca")
done

echo "+ podman build $tag (BASE=$base)"
podman build --layers -f deploy/Containerfile --build-arg "BASE=$base" "${secret[@]}" -t "$tag" .
if [ -n "$wheelhouse" ]; then
    # The build stage again (every layer cached), to copy out what it built.
    podman build --layers -q -f deploy/Containerfile --build-arg "BASE=$base" "${secret[@]}" \
        --target build -t "$tag-build" . >/dev/null
    mkdir -p "$wheelhouse"
    ctr=$(podman create "$tag-build")
    trap 'podman rm -f "$ctr" >/dev/null' EXIT
    podman cp "$ctr:/wheelhouse/." "$wheelhouse/"
    podman cp "$ctr:/dist/." "$wheelhouse/"
fi
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag: $((size / 1000000)) MB"
