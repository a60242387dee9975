#!/usr/bin/env bash
# Install what `make bench` needs besides the virtualenv: nginx (the TLS
# upstream), hey (load generator that speaks CONNECT through an HTTP proxy),
# wrk (a second load generator, direct only: it has no proxy support) and curl
# (200 MiB transfers, HTTP/2 checks). Debian/Ubuntu only; idempotent.
set -euo pipefail

missing=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have nginx || missing+=(nginx-light)
have hey || missing+=(hey)
have wrk || missing+=(wrk)
have curl || missing+=(curl)

if [ ${#missing[@]} -eq 0 ]; then
    echo "bench/setup.sh: nginx, hey, wrk and curl are installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: missing ${missing[*]} and no apt-get; install them by hand" >&2
    exit 2
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "bench/setup.sh: installing ${missing[*]} needs root (or sudo)" >&2
        exit 2
    }
    sudo=(sudo)
fi

echo "bench/setup.sh: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
# policy-rc.d-free containers do not start services; on a systemd host the
# distribution's nginx may start on port 80, which the bench does not use.
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
