"""egress-proxy's mitmproxy side: thin adapters from hooks to core decisions."""
