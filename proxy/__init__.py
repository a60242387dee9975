"""egress-proxy's domain core: pure Python, no mitmproxy import."""

__version__ = "0.1.0"
