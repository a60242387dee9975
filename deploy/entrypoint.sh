#!/bin/sh
# Sidecar entrypoint: state on a volume, connectors from a mounted file,
# grants required, then exec the proxy so it receives SIGTERM/SIGHUP directly.
#
#   EGRESS_HOME              state directory (default /var/lib/egress, a volume)
#   EGRESS_CONFIG            connectors YAML (default /etc/egress/connectors.yaml)
#   EGRESS_LISTEN            proxy address (default 0.0.0.0:8080)
#   EGRESS_ADMIN             /healthz and /metrics (default 0.0.0.0:9090)
#   EGRESS_INSECURE_NO_AUTH  1 = accept clients without a grant (trusted networks only)
#   EGRESS_EXPORT_DIR        if set: write ca.pem and ca-bundle.pem here for the sandbox
#   EGRESS_GRANT_CONNECTORS  with EGRESS_EXPORT_DIR: mint a grant for these
#                            (comma-separated) and write its proxy URL to proxy-url
#   EGRESS_GRANT_TTL         lifetime of that grant (default 12h)
# Extra arguments are passed to `egress run`.
set -eu
export EGRESS_HOME="${EGRESS_HOME:-/var/lib/egress}"
config="${EGRESS_CONFIG:-/etc/egress/connectors.yaml}"
listen="${EGRESS_LISTEN:-0.0.0.0:8080}"
admin="${EGRESS_ADMIN:-0.0.0.0:9090}"

egress init >/dev/null
if [ -f "$config" ]; then
  egress apply -f "$config" --prune
else
  echo "egress-entrypoint: no connectors file at $config; starting with the stored connectors" >&2
fi

if [ -n "${EGRESS_EXPORT_DIR:-}" ]; then
  mkdir -p "$EGRESS_EXPORT_DIR"
  egress ca --pem > "$EGRESS_EXPORT_DIR/ca.pem"
  egress ca --bundle "$EGRESS_EXPORT_DIR/ca-bundle.pem" >/dev/null
  if [ -n "${EGRESS_GRANT_CONNECTORS:-}" ]; then
    grant_args=""
    for c in $(echo "$EGRESS_GRANT_CONNECTORS" | tr ',' ' '); do grant_args="$grant_args --connector $c"; done
    # shellcheck disable=SC2086
    egress grant $grant_args --ttl "${EGRESS_GRANT_TTL:-12h}" --label sidecar \
      --proxy "${EGRESS_PROXY_HOST:-127.0.0.1}:${listen##*:}" > "$EGRESS_EXPORT_DIR/proxy-url"
  fi
fi

auth="--require-grant"
if [ "${EGRESS_INSECURE_NO_AUTH:-}" = "1" ]; then auth="--insecure-no-auth"; fi
if [ -f "$config" ]; then
  exec egress run --listen "$listen" --admin "$admin" "$auth" --config "$config" "$@"
fi
exec egress run --listen "$listen" --admin "$admin" "$auth" "$@"
