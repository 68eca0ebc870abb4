// The TypeScript SDK's own MCP client (`@modelcontextprotocol/sdk` 1.x) signing in to credgate with OAuth, for
// tests/test_sign_in_clients.py. Nothing here knows credgate: it is what an application built on the SDK does.
//
// Usage: node ts_sdk_client.mjs MCP_URL REDIRECT_URI TOKENS_FILE
// (TOKENS_FILE: where it writes, on its way out, every token it was given, for the test's leak checks)
//
// It talks to the test in JSON lines. Out (stdout), each {"event": ..., "at": its time in ms since the epoch}:
//   start                           before its first request
//   authorize {url}                 the SDK wants the person at a browser: the test drives it, then writes the
//                                   code it got back (one line on stdin)
//   connected {tools: [names]}      signed in, tools listed
//   called {phase, isError, text}   a call of `clock` (phase: "first", "refreshed", "revoked")
//   refreshed {access, refresh}     whether the access and refresh tokens changed (never the tokens themselves)
//   waiting                         between phases: the test writes a line on stdin to go on
//   refused {unauthorized, message} a call after the grant was revoked, failing as it should (unauthorized:
//                                   the SDK's UnauthorizedError)
//   failed {name, message}          anything else going wrong (exit 1)
// The flow: connect (401, sign in, finishAuth, connect again), list tools, call clock; the server stops taking
// the access token (it is replaced by one it never issued, as an expired one would be): the SDK refreshes on the
// 401 and the call goes through; the test revokes the agent; the next call must be refused, not hang.
import { writeFileSync } from 'node:fs';
import { createInterface } from 'node:readline';

import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const [mcpUrl, redirectUri, tokensFile] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields, at: Date.now() })}\n`);
const CALL_TIMEOUT_MS = 20_000;

async function nextLine() {
  const { value, done } = await lines.next();
  if (done) throw new Error('the test closed stdin');
  return value.trim();
}

// The SDK's OAuthClientProvider, everything in memory.
class MemoryProvider {
  constructor() {
    this.saved = { client: undefined, tokens: undefined, verifier: undefined, discovery: undefined };
    this.given = []; // every token the server gave
  }
  get redirectUrl() {
    return redirectUri;
  }
  get clientMetadata() {
    return {
      client_name: 'TS SDK Client',
      redirect_uris: [redirectUri],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
    };
  }
  clientInformation() {
    return this.saved.client;
  }
  saveClientInformation(info) {
    this.saved.client = info;
  }
  tokens() {
    return this.saved.tokens;
  }
  saveTokens(tokens) {
    this.saved.tokens = tokens;
    this.given.push(tokens.access_token, tokens.refresh_token);
  }
  redirectToAuthorization(url) {
    say('authorize', { url: url.toString() });
  }
  saveCodeVerifier(verifier) {
    this.saved.verifier = verifier;
  }
  codeVerifier() {
    if (!this.saved.verifier) throw new Error('no code verifier saved');
    return this.saved.verifier;
  }
  saveDiscoveryState(state) {
    this.saved.discovery = state;
  }
  discoveryState() {
    return this.saved.discovery;
  }
  invalidateCredentials(scope) {
    if (scope === 'all' || scope === 'client') this.saved.client = undefined;
    if (scope === 'all' || scope === 'tokens') this.saved.tokens = undefined;
    if (scope === 'all' || scope === 'verifier') this.saved.verifier = undefined;
    if (scope === 'all' || scope === 'discovery') this.saved.discovery = undefined;
  }
}

const provider = new MemoryProvider();

async function connect() {
  const client = new Client({ name: 'credgate-ts-sdk-test', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
  await client.connect(transport);
  return client;
}

async function callClock(client, phase) {
  const result = await client.callTool({ name: 'clock', arguments: {} }, undefined, { timeout: CALL_TIMEOUT_MS });
  const text = result.content
    .filter((c) => c.type === 'text')
    .map((c) => c.text)
    .join('\n');
  say('called', { phase, isError: Boolean(result.isError), text });
}

async function main() {
  let client;
  say('start');
  try {
    client = await connect();
  } catch (error) {
    if (!(error instanceof UnauthorizedError)) throw error;
    // the browser part happens in the test; the code comes back on stdin, as a loopback listener would get it
    const first = new StreamableHTTPClientTransport(new URL(mcpUrl), { authProvider: provider });
    await first.finishAuth(await nextLine());
    client = await connect();
  }
  const { tools } = await client.listTools();
  say('connected', { tools: tools.map((t) => t.name) });
  await callClock(client, 'first');

  const before = provider.saved.tokens;
  provider.saved.tokens = { ...before, access_token: `cgo_${'0'.repeat(43)}` }; // one the server never issued
  await callClock(client, 'refreshed');
  const after = provider.saved.tokens;
  say('refreshed', {
    access: after.access_token !== before.access_token,
    refresh: after.refresh_token !== before.refresh_token,
  });

  say('waiting');
  await nextLine(); // the test revokes the agent meanwhile
  try {
    await callClock(client, 'revoked');
  } catch (error) {
    say('refused', { unauthorized: error instanceof UnauthorizedError, message: String(error?.message ?? error) });
  }
  await client.close();
}

main()
  .finally(() => writeFileSync(tokensFile, JSON.stringify(provider.given.filter(Boolean))))
  .then(
    () => process.exit(0),
    (error) => {
      say('failed', { name: error?.name ?? 'Error', message: String(error?.stack ?? error) });
      process.exit(1);
    },
  );
