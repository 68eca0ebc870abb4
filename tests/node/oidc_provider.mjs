// A real OpenID Connect provider for the SSO tests: panva's oidc-provider (OpenID-certified) on 127.0.0.1.
//
// Usage: node oidc_provider.mjs CONFIG.json
// CONFIG: {"clients": [{client_id, client_secret, redirect_uris, token_endpoint_auth_method?}],
//          "accounts": [{sub, email?, email_verified?, preferred_username?, name?}],
//          "idTokenClaims": true}   (false: the ID token carries `sub` alone, the rest is at the userinfo endpoint,
//                                    as oidc-provider does by default)
// It listens on an ephemeral port and prints one JSON line, {"issuer": "http://127.0.0.1:PORT"}, once it
// accepts connections. Its own sign-in page (GET /interaction/UID) lists the accounts, each a button
// (`<button name="sub" value="SUB">`); choosing one signs in and consents to `openid email profile` at once.
// Nothing asks for a password: the tests are about credgate's side of the flow.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = new Map(config.accounts.map((a) => [a.sub, a]));

function signingKey(kid, options) {
  const { privateKey } = generateKeyPairSync(options.type, options.params);
  return { ...privateKey.export({ format: 'jwk' }), kid, use: 'sig', alg: options.alg };
}

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function start() {
  const server = createServer();
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: {
      keys: [
        signingKey('rsa-1', { type: 'rsa', params: { modulusLength: 2048 }, alg: 'RS256' }),
        signingKey('ec-1', { type: 'ec', params: { namedCurve: 'P-256' }, alg: 'ES256' }),
      ],
    },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'preferred_username'] },
    // the scopes' claims in the ID token too, as most organisations' providers do (unless told otherwise)
    conformIdTokenClaims: config.idTokenClaims === false,
    features: { devInteractions: { enabled: false } },
    pkce: { required: () => true },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    async findAccount(ctx, sub) {
      const account = accounts.get(sub);
      if (!account) return undefined;
      return { accountId: sub, claims: async () => ({ ...account }) };
    },
  });
  const callback = provider.callback();

  async function interaction(req, res, uid) {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error('interaction mismatch');
    if (req.method === 'GET') {
      const buttons = [...accounts.values()]
        .map((a) => `<button type="submit" name="sub" value="${escape(a.sub)}">${escape(a.name || a.sub)}</button>`)
        .join('\n');
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
      res.end(`<!doctype html><title>Test provider</title><h1>Sign in at the test provider</h1>
<form method="post" action="/interaction/${escape(uid)}">${buttons}</form>`);
      return;
    }
    let body = '';
    for await (const chunk of req) body += chunk;
    const sub = new URLSearchParams(body).get('sub');
    if (!accounts.has(sub)) {
      res.writeHead(400, { 'Content-Type': 'text/plain' });
      res.end('no such account');
      return;
    }
    const grant = new provider.Grant({ accountId: sub, clientId: details.params.client_id });
    grant.addOIDCScope('openid email profile');
    const grantId = await grant.save();
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: sub }, consent: { grantId } },
      { mergeWithLastSubmission: false },
    );
  }

  server.on('request', (req, res) => {
    const found = /^\/interaction\/([A-Za-z0-9_-]+)$/.exec(req.url.split('?')[0]);
    if (!found) {
      callback(req, res);
      return;
    }
    interaction(req, res, found[1]).catch((err) => {
      res.writeHead(500, { 'Content-Type': 'text/plain' });
      res.end(`interaction failed: ${err.message}`);
    });
  });
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
}

start().catch((err) => {
  process.stderr.write(`${err.stack}\n`);
  process.exit(1);
});
