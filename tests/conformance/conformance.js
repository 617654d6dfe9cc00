// A user following OpenWhisk's documentation, with Apache OpenWhisk's official JavaScript client
// (npm package `openwhisk`), pointed at Squall by APIHOST and AUTH only.
// Run by tests/test_conformance.py; prints one line per check and exits non-zero on the first failure.
'use strict';

const assert = require('assert');
const openwhisk = require('openwhisk');

const ow = openwhisk({ apihost: process.env.APIHOST, api_key: process.env.AUTH, namespace: '_' });
const unique = process.env.UNIQUE || `c${Date.now()}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const HELLO = 'function main(params) { console.log("hi", params.name); return {payload: "Hello, " + (params.name || "stranger") + "!", greeting: params.greeting}; }';
const PY_INC = 'def main(args):\n    return {"n": args.get("n", 0) + 1}\n';
const WEB = 'function main(params) { return {statusCode: 200, headers: {"content-type": "application/json"}, body: {path: params.__ow_path, method: params.__ow_method}}; }';

async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (err) {
    console.log(`FAIL ${name}: ${err && err.stack || err}`);
    process.exitCode = 1;
    throw err;
  }
}

async function activationOf(id) {
  for (let i = 0; i < 100; i++) {
    try {
      return await ow.activations.get({ name: id });
    } catch (err) {
      if (err.statusCode !== 404) throw err;
      await sleep(200);
    }
  }
  throw new Error(`activation ${id} never recorded`);
}

async function main() {
  const a = `${unique}-hello`;

  await check('actions: create, get, list, update', async () => {
    const created = await ow.actions.create({ name: a, action: HELLO, kind: 'nodejs' });
    assert.strictEqual(created.name, a);
    const got = await ow.actions.get({ name: a });
    assert.strictEqual(got.exec.code, HELLO);
    const listed = await ow.actions.list({ limit: 200 });
    assert(listed.some((x) => x.name === a));
    const updated = await ow.actions.update({ name: a, action: HELLO, kind: 'nodejs', params: { greeting: 'hey' } });
    assert.strictEqual(updated.version, '0.0.2');
  });

  await check('actions: invoke blocking, result only, non-blocking', async () => {
    const result = await ow.actions.invoke({ name: a, params: { name: 'OpenWhisk' }, blocking: true, result: true });
    assert.deepStrictEqual(result, { payload: 'Hello, OpenWhisk!', greeting: 'hey' });
    const activation = await ow.actions.invoke({ name: a, blocking: true });
    assert.strictEqual(activation.response.success, true);
    assert(activation.logs.some((l) => l.includes('hi')));
    const started = await ow.actions.invoke({ name: a });
    assert.strictEqual(started.activationId.length, 32);
    const record = await activationOf(started.activationId);
    assert.strictEqual(record.response.result.payload, 'Hello, stranger!');
  });

  await check('activations: list, result, logs', async () => {
    const listed = await ow.activations.list({ name: a, limit: 5 });
    assert(listed.length >= 2);
    const id = listed[0].activationId;
    const result = await ow.activations.result({ name: id });
    assert.strictEqual(result.success, true);
    const logs = await ow.activations.logs({ name: id });
    assert(Array.isArray(logs.logs));
  });

  await check('packages: create, bind, invoke through the binding', async () => {
    const p = `${unique}-pkg`;
    await ow.packages.create({ name: p, package: { publish: true, parameters: [{ key: 'greeting', value: 'from package' }] } });
    await ow.actions.create({ name: `${p}/hello`, action: HELLO, kind: 'nodejs' });
    const pkg = await ow.packages.get({ name: p });
    assert(pkg.actions.some((x) => x.name === 'hello'));
    const ns = (await ow.namespaces.list())[0];
    await ow.packages.create({ name: `${p}-bound`, package: { binding: { namespace: ns, name: p }, parameters: [{ key: 'greeting', value: 'from binding' }] } });
    const result = await ow.actions.invoke({ name: `${p}-bound/hello`, blocking: true, result: true });
    assert.strictEqual(result.greeting, 'from binding');
  });

  await check('sequences', async () => {
    const inc = `${unique}-inc`;
    await ow.actions.create({ name: inc, action: PY_INC, kind: 'python:3' });
    const ns = (await ow.namespaces.list())[0];
    await ow.actions.create({ name: `${unique}-seq`, action: { exec: { kind: 'sequence', components: [`/${ns}/${inc}`, `/${ns}/${inc}`] } } });
    const result = await ow.actions.invoke({ name: `${unique}-seq`, params: { n: 1 }, blocking: true, result: true });
    assert.deepStrictEqual(result, { n: 3 });
  });

  await check('triggers and rules', async () => {
    const t = `${unique}-trigger`;
    await ow.triggers.create({ name: t, trigger: { parameters: [{ key: 'name', value: 'trigger' }] } });
    await ow.rules.create({ name: `${unique}-rule`, action: a, trigger: t });
    const fired = await ow.triggers.invoke({ name: t, params: { extra: 1 } });
    const record = await activationOf(fired.activationId);
    const entry = JSON.parse(record.logs[0]);
    const ran = await activationOf(entry.activationId);
    assert.strictEqual(ran.response.result.payload, 'Hello, trigger!');
    await ow.rules.disable({ name: `${unique}-rule` });
    assert.strictEqual((await ow.rules.get({ name: `${unique}-rule` })).status, 'inactive');
    await ow.rules.enable({ name: `${unique}-rule` });
    await ow.rules.delete({ name: `${unique}-rule` });
    await ow.triggers.delete({ name: t });
  });

  await check('web actions', async () => {
    const w = `${unique}-web`;
    await ow.actions.create({ name: w, action: WEB, kind: 'nodejs', annotations: { 'web-export': true } });
    const ns = (await ow.namespaces.list())[0];
    const res = await fetch(`${process.env.APIHOST}/api/v1/web/${ns}/default/${w}.http/a/b`);
    assert.strictEqual(res.status, 200);
    assert.deepStrictEqual(await res.json(), { path: '/a/b', method: 'get' });
  });

  await check('errors as OpenWhisk reports them', async () => {
    await assert.rejects(ow.actions.get({ name: `${unique}-missing` }), (err) => err.statusCode === 404);
    await assert.rejects(ow.actions.create({ name: a, action: HELLO }), (err) => err.statusCode === 409);
    const stranger = openwhisk({ apihost: process.env.APIHOST, api_key: 'nobody:wrong' });
    await assert.rejects(stranger.actions.list(), (err) => err.statusCode === 401);
    const failing = `${unique}-fail`;
    await ow.actions.create({ name: failing, action: 'function main() { throw new Error("boom"); }', kind: 'nodejs' });
    await assert.rejects(ow.actions.invoke({ name: failing, blocking: true }), (err) => err.statusCode === 502);
  });

  await check('cleanup: delete actions and packages', async () => {
    for (const x of await ow.actions.list({ limit: 200 })) {
      // An action inside a package is listed as namespace "ns/pkg", name "action".
      if (x.name.startsWith(unique) || x.namespace.includes(`/${unique}`)) await ow.actions.delete({ name: `/${x.namespace}/${x.name}` });
    }
    for (const x of await ow.packages.list({ limit: 200 })) {
      if (x.name.startsWith(unique)) await ow.packages.delete({ name: x.name });
    }
  });
}

main().catch(() => { process.exitCode = 1; });
