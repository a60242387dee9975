// The Node.js clients of the `egress exec` matrix (global fetch, https.get), no proxy settings.
// Run inside the step by matrix.sh; prints the RESULT lines described there.
const https = require('https');

const GUESS = { Authorization: 'Bearer sandbox-guess' };
const url = (kind, client) => process.env[`MATRIX_${kind.toUpperCase()}`].replaceAll('{client}', client);
const reasonOf = (body) => { const m = /"reason": *"([^"]*)"/.exec(body); return m ? m[1] : '-'; };

async function viaFetch(u) {
  const r = await fetch(u, { headers: GUESS });
  return [r.status, r.headers.get('x-egress-blocked') || '-', reasonOf(await r.text()), '1.1'];
}

function viaHttps(u) {
  return new Promise((resolve, reject) => {
    https.get(u, { headers: GUESS }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve([res.statusCode, res.headers['x-egress-blocked'] || '-', reasonOf(body), res.httpVersion]));
    }).on('error', reject);
  });
}

(async () => {
  for (const [name, get] of [['node-fetch', viaFetch], ['node-https', viaHttps]]) {
    for (const kind of ['allow', 'block', 'host']) {
      try {
        console.log(`RESULT ${name} ${kind} ${(await get(url(kind, name))).join(' ')}`);
      } catch (e) {
        const cause = e.cause ? ` (${e.cause.code || e.cause.message})` : '';
        console.log(`RESULT ${name} ${kind} error ${e.name}: ${e.message}${cause}`);
      }
    }
  }
})();
