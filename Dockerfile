# egress-proxy sidecar image.
#   docker build -t egress-proxy .
#   docker run -v egress-state:/var/lib/egress -v $PWD/connectors.yaml:/etc/egress/connectors.yaml:ro \
#     -e STRIPE_API_KEY -p 8080:8080 egress-proxy
FROM python:3.12-slim

RUN useradd --system --uid 10001 --home-dir /var/lib/egress --shell /usr/sbin/nologin egress \
 && mkdir -p /var/lib/egress /etc/egress \
 && chown egress:egress /var/lib/egress

WORKDIR /opt/egress
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY addons ./addons
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY deploy/entrypoint.sh /usr/local/bin/egress-entrypoint

USER egress
ENV EGRESS_HOME=/var/lib/egress PYTHONUNBUFFERED=1
VOLUME ["/var/lib/egress"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/egress-entrypoint"]
