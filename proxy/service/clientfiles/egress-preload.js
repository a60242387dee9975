// egress-proxy: route Node's fetch and http/https modules through HTTPS_PROXY.
// Loaded with NODE_OPTIONS=--require by `egress env` (after `egress env --setup-node`
// installed undici and global-agent next to this file). Node < 24 ignores
// HTTPS_PROXY; Node >= 24 honours it itself with NODE_USE_ENV_PROXY=1, so this
// steps aside there. TLS trusts NODE_EXTRA_CA_CERTS, which Node adds to its
// default roots at start. A failure here warns and never stops the program.
'use strict';
(function egressPreload() {
  const [major, minor] = process.versions.node.split('.').map(Number);
  const native = process.env.NODE_USE_ENV_PROXY === '1';
  if (native && major >= 24) {
    if (major > 24 || minor >= 5) return; // fetch, http and https honour the proxy variables
  } else {
    try {
      const { EnvHttpProxyAgent, setGlobalDispatcher } = require('undici');
      setGlobalDispatcher(new EnvHttpProxyAgent());
    } catch (e) {
      process.emitWarning(`egress-proxy preload: fetch not proxied (${e && e.message})`);
    }
  }
  try {
    // The "" namespace makes global-agent read HTTP_PROXY, HTTPS_PROXY and NO_PROXY.
    require('global-agent').bootstrap({ environmentVariableNamespace: '' });
  } catch (e) {
    process.emitWarning(`egress-proxy preload: http/https not proxied (${e && e.message})`);
  }
})();
