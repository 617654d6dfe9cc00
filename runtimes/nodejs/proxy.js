// Squall's Node.js action proxy: OpenWhisk's action protocol on PROXY_PORT (default 8080).
//
// POST /init {"value": {"name", "main", "code", "binary", "env"}} once, then
// POST /run {"value": params, "namespace", "action_name", "activation_id", "deadline", "api_key", ...}
// per activation, several at once when the action allows concurrency. Every run ends stdout and
// stderr with the sentinel line so the invoker can cut the logs per activation. Core modules only.
'use strict';

const http = require('http');
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');
const Module = require('module');

const SENTINEL = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX';
const MAX_BODY = 64 * 1024 * 1024;

class InitError extends Error {}

let action = null;   // the initialized main function

// A zip reader (stored and deflated entries), enough for action archives.
function unzip(buffer, dest) {
  let eocd = -1;
  for (let i = buffer.length - 22; i >= Math.max(0, buffer.length - 65557); i--) {
    if (buffer.readUInt32LE(i) === 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) throw new InitError('Unable to decompress the action archive: not a zip file.');
  const count = buffer.readUInt16LE(eocd + 10);
  let at = buffer.readUInt32LE(eocd + 16);
  const names = [];
  for (let n = 0; n < count; n++) {
    if (buffer.readUInt32LE(at) !== 0x02014b50) throw new InitError('Unable to decompress the action archive: bad directory.');
    const method = buffer.readUInt16LE(at + 10);
    const size = buffer.readUInt32LE(at + 20);
    const nameLen = buffer.readUInt16LE(at + 28);
    const extraLen = buffer.readUInt16LE(at + 30);
    const commentLen = buffer.readUInt16LE(at + 32);
    const local = buffer.readUInt32LE(at + 42);
    const name = buffer.toString('utf8', at + 46, at + 46 + nameLen);
    at += 46 + nameLen + extraLen + commentLen;
    const target = path.resolve(dest, name);
    if (!target.startsWith(path.resolve(dest) + path.sep)) continue;   // no escaping the folder
    names.push(name);
    if (name.endsWith('/')) { fs.mkdirSync(target, { recursive: true }); continue; }
    const dataAt = local + 30 + buffer.readUInt16LE(local + 26) + buffer.readUInt16LE(local + 28);
    const raw = buffer.subarray(dataAt, dataAt + size);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    if (method === 0) fs.writeFileSync(target, raw);
    else if (method === 8) fs.writeFileSync(target, zlib.inflateRawSync(raw));
    else throw new InitError(`Unable to decompress the action archive: compression method ${method}.`);
  }
  return names;
}

function loadZip(code, entry) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'action-'));
  unzip(Buffer.from(code, 'base64'), dir);
  let file = path.join(dir, 'index.js');
  const pkg = path.join(dir, 'package.json');
  if (fs.existsSync(pkg)) {
    const main = JSON.parse(fs.readFileSync(pkg, 'utf8')).main;
    if (main) file = path.join(dir, main);
  } else if (!fs.existsSync(file)) {
    throw new InitError('Zip file does not include mandatory files.');
  }
  process.chdir(dir);
  const exported = require(file);
  return typeof exported === 'function' && entry === 'main' ? exported : exported[entry];
}

function loadSource(code, entry) {
  // The code runs as a CommonJS module; `function main` at top level counts as well as exports.
  const filename = path.join(os.tmpdir(), 'action.js');
  const mod = new Module(filename);
  mod.filename = filename;
  mod.paths = Module._nodeModulePaths(os.tmpdir());
  const lookup = /^[A-Za-z_$][\w$]*$/.test(entry) ? `typeof ${entry} === 'function' ? ${entry} : undefined` : 'undefined';
  const fn = new Function('module', 'exports', 'require', '__filename', '__dirname',
    `${code}\n;return (${lookup});`);
  const local = fn.call(mod.exports, mod, mod.exports, Module.createRequire(filename), filename, os.tmpdir());
  const exported = mod.exports;
  if (typeof exported[entry] === 'function') return exported[entry];
  if (typeof exported === 'function' && entry === 'main') return exported;
  return local;
}

function init(value) {
  for (const [k, v] of Object.entries(value.env || {})) process.env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  const entry = value.main || 'main';
  if (typeof value.code !== 'string' || !value.code) throw new InitError('Missing main/no code to execute.');
  let fn;
  try {
    fn = value.binary ? loadZip(value.code, entry) : loadSource(value.code, entry);
  } catch (err) {
    throw err instanceof InitError ? err : new InitError(`Initialization has failed due to: ${err.stack || err}`);
  }
  if (typeof fn !== 'function') throw new InitError(`Action failed to generate a main function: '${entry}' is not defined.`);
  action = fn;
}

async function run(body) {
  for (const [k, v] of Object.entries(body)) {
    if (k !== 'value') process.env[`__OW_${k.toUpperCase()}`] = typeof v === 'string' ? v : JSON.stringify(v);
  }
  const params = body.value && typeof body.value === 'object' && !Array.isArray(body.value) ? body.value : {};
  let result;
  try {
    result = await action(params);
  } catch (err) {
    if (err instanceof Error) {
      console.error(err.stack || String(err));
      return [502, { error: `An error has occurred: ${err}` }];
    }
    // A rejection with a value is the action's own error answer, as in OpenWhisk.
    return [200, { error: err === undefined ? 'The action rejected without a value.' : err }];
  }
  if (result === null || typeof result !== 'object' || Array.isArray(result)) {
    return [502, { error: 'The action did not return a dictionary.' }];
  }
  try {
    return [200, JSON.stringify(result)];   // encoded once: the check that it is JSON, and the reply
  } catch (err) {
    return [502, { error: `The action did not produce a valid JSON response: ${err.message}` }];
  }
}

function endLogs() {
  // Writes to pipes and files are synchronous on Linux, so the sentinel follows the action's output.
  process.stdout.write(SENTINEL + '\n');
  process.stderr.write(SENTINEL + '\n');
}

function reply(res, status, doc) {   // doc: a value, or JSON already encoded
  const data = Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => { size += chunk.length; if (size <= MAX_BODY) chunks.push(chunk); });
    req.on('end', () => {
      if (size > MAX_BODY) return resolve(null);
      try {
        const doc = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
        resolve(doc && typeof doc === 'object' && !Array.isArray(doc) ? doc : null);
      } catch (err) {
        resolve(null);
      }
    });
  });
}

const server = http.createServer(async (req, res) => {
  const body = await readBody(req);
  if (req.method !== 'POST' || (req.url !== '/init' && req.url !== '/run')) {
    return reply(res, 404, { error: 'Not found.' });
  }
  if (req.url === '/init') {
    if (action) return reply(res, 403, { error: 'Cannot initialize the action more than once.' });
    const value = body && body.value;
    if (!value || typeof value !== 'object') {
      return reply(res, 403, { error: 'The action failed to initialize: missing or malformed value.' });
    }
    try {
      init(value);
    } catch (err) {
      return reply(res, 502, { error: err.message });
    }
    return reply(res, 200, { ok: true });
  }
  if (!action) return reply(res, 403, { error: 'Cannot run the action: it has not been initialized.' });
  if (!body) return reply(res, 400, { error: 'The request body is not a JSON object.' });
  let outcome;
  try {
    outcome = await run(body);
  } finally {
    endLogs();
  }
  reply(res, outcome[0], outcome[1]);
});

server.keepAliveTimeout = 10 * 60 * 1000;   // the invoker keeps one connection per container
server.headersTimeout = server.keepAliveTimeout + 1000;
server.requestTimeout = 0;                   // an action may run as long as its limit says
server.listen(Number(process.env.PROXY_PORT || 8080), '0.0.0.0');
process.on('SIGTERM', () => process.exit(0));
// An action's stray async failure is its own problem: log it, keep serving.
process.on('unhandledRejection', (err) => console.error('Unhandled rejection:', err));
process.on('uncaughtException', (err) => console.error('Uncaught exception:', err));
