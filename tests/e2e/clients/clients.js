// The Node.js clients of the matrix (global fetch, https.get; axios and the openai SDK when
// MATRIX_NODE_MODULES holds them), each with its defaults: no proxy settings of their own.
// Run by matrix.sh; prints the RESULT lines described there.
const https = require('https');
const path = require('path');

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

function npmPackage(name) {
  return require(path.join(process.env.MATRIX_NODE_MODULES, 'node_modules', name));
}

async function viaAxios(u) {
  const axios = npmPackage('axios');
  const r = await axios.get(u, { headers: GUESS, timeout: 20000, validateStatus: () => true, responseType: 'text' });
  return [r.status, r.headers['x-egress-blocked'] || '-', reasonOf(String(r.data)), '1.1'];
}

// The SDK keeps only the body's "error" field ("blocked") on its APIError, not the reason.
async function viaOpenAI(u) {
  const { OpenAI } = npmPackage('openai');
  const client = new OpenAI({ apiKey: 'sandbox-guess', baseURL: u, maxRetries: 0, timeout: 20000 });
  try {
    const { response } = await client.models.list().withResponse();
    return [response.status, response.headers.get('x-egress-blocked') || '-', '-', '1.1'];
  } catch (e) {
    if (typeof e.status !== 'number') throw e;
    const h = e.headers;
    const blocked = (h && (typeof h.get === 'function' ? h.get('x-egress-blocked') : h['x-egress-blocked'])) || '-';
    return [e.status, blocked, '-', '1.1'];
  }
}

(async () => {
  const clients = [['node-fetch', viaFetch], ['node-https', viaHttps]];
  if (process.env.MATRIX_NODE_MODULES) clients.push(['axios', viaAxios], ['openai-node', viaOpenAI]);
  for (const [name, get] of clients) {
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
