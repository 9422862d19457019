// JS objects handed to Python as the Worker's `env`, `ctx` and queue `batch`.
//
// Miniflare's `mf.getKVNamespace()` & co. return "magic proxies" whose every
// property (even `constructor`) is a remote stub, so `binding.constructor.name`
// is "constructor". workers-runtime-sdk's `_EnvWrapper` decides how to wrap a
// binding by that name ("KvNamespace", "WorkerQueue", "D1Database"), so the real
// proxies are put behind thin classes carrying workerd's class names. Every call
// goes straight through to Miniflare; nothing is emulated here.

import { ENVELOPE_TAG, encodeBody } from "./codec.mjs";

export class KvNamespace {
  #inner;
  constructor(inner) {
    this.#inner = inner;
  }
  get(...args) {
    return this.#inner.get(...args);
  }
  getWithMetadata(...args) {
    return this.#inner.getWithMetadata(...args);
  }
  put(...args) {
    return this.#inner.put(...args);
  }
  delete(...args) {
    return this.#inner.delete(...args);
  }
  list(...args) {
    return this.#inner.list(...args);
  }
}

// Miniflare's proxy serialises call arguments in a way that turns typed arrays
// and ArrayBuffers nested in an object into plain objects ({"0": 0, "1": 255}),
// where production structured-clones the body. So a "v8" (default content type)
// body travels in an envelope of plain JSON values that the JS consumer worker
// hands back to Node unopened (codec.mjs); the consumer sees the original value.
function envelope(body, options) {
  const type = options?.contentType;
  if (type !== undefined && type !== "v8") return body;
  return { [ENVELOPE_TAG]: "envelope", v: encodeBody(body) };
}

export class WorkerQueue {
  #inner;
  constructor(inner) {
    this.#inner = inner;
  }
  send(body, options) {
    return options === undefined
      ? this.#inner.send(envelope(body))
      : this.#inner.send(envelope(body, options), options);
  }
  sendBatch(messages, options) {
    // Python lists arrive as JS arrays already (python_to_rpc); Array.from also
    // accepts any other iterable.
    const wrapped = Array.from(messages, (m) => ({ ...m, body: envelope(m.body, m) }));
    return options === undefined
      ? this.#inner.sendBatch(wrapped)
      : this.#inner.sendBatch(wrapped, options);
  }
  metrics(...args) {
    return this.#inner.metrics(...args);
  }
}

export class D1PreparedStatement {
  constructor(inner) {
    this._inner = inner;
  }
  bind(...values) {
    return new D1PreparedStatement(this._inner.bind(...values));
  }
  first(...args) {
    return this._inner.first(...args);
  }
  run(...args) {
    return this._inner.run(...args);
  }
  all(...args) {
    return this._inner.all(...args);
  }
  raw(...args) {
    return this._inner.raw(...args);
  }
}

function unwrapStatements(statements) {
  return Array.from(statements, (s) => (s instanceof D1PreparedStatement ? s._inner : s));
}

export class D1DatabaseSession {
  #inner;
  constructor(inner) {
    this.#inner = inner;
  }
  prepare(query) {
    return new D1PreparedStatement(this.#inner.prepare(query));
  }
  batch(statements) {
    return this.#inner.batch(unwrapStatements(statements));
  }
  getBookmark() {
    return this.#inner.getBookmark();
  }
}

export class D1Database {
  #inner;
  constructor(inner) {
    this.#inner = inner;
  }
  prepare(query) {
    return new D1PreparedStatement(this.#inner.prepare(query));
  }
  batch(statements) {
    return this.#inner.batch(unwrapStatements(statements));
  }
  exec(query) {
    return this.#inner.exec(query);
  }
  dump() {
    return this.#inner.dump();
  }
  withSession(...args) {
    return new D1DatabaseSession(this.#inner.withSession(...args));
  }
}

// Mirrors workerd's ExecutionContext: waitUntil() keeps work alive after the
// handler returned. The harness awaits these promises (see `settle`) and logs
// rejections, as workerd does.
export class ExecutionContext {
  #pending = [];
  constructor(props = {}) {
    this.props = props;
  }
  get [Symbol.toStringTag]() {
    return "ExecutionContext";
  }
  waitUntil(promise) {
    this.#pending.push(
      Promise.resolve(promise).catch((e) => {
        console.error("[harness] waitUntil() promise rejected:", e?.message ?? e);
      }),
    );
  }
  passThroughOnException() {}
  async settle() {
    while (this.#pending.length) {
      const batch = this.#pending.splice(0);
      await Promise.all(batch);
    }
  }
}

// Same logic as workerd's patchWaitUntil (python-entrypoint-helper.ts): a
// Python awaitable handed to waitUntil is a PyProxy that must be copied before
// the call returns and destroyed after it settles.
const waitUntilPatched = new WeakSet();
export function patchWaitUntil(ctx) {
  let tag;
  try {
    tag = Object.prototype.toString.call(ctx);
  } catch {
    return;
  }
  if (tag !== "[object ExecutionContext]" || waitUntilPatched.has(ctx)) {
    return;
  }
  const orig = ctx.waitUntil.bind(ctx);
  ctx.waitUntil = function waitUntil(p) {
    orig(
      (async () => {
        if (p && typeof p.copy === "function") p = p.copy();
        await p;
        if (p && typeof p.destroy === "function") p.destroy();
      })(),
    );
  };
  waitUntilPatched.add(ctx);
}

// What a queue consumer sees: workerd's QueueController / QueueMessage, with
// ack/retry recorded as operations that the JS worker inside Miniflare replays,
// in the same order, on the real message objects.
const batchOps = new WeakMap();

export class QueueMessage {
  #ops;
  constructor({ id, timestamp, attempts, body }, ops) {
    this.id = id;
    this.timestamp = new Date(timestamp);
    this.attempts = attempts;
    this.body = body;
    this.#ops = ops;
  }
  ack() {
    this.#ops.push({ op: "ack", id: this.id });
  }
  retry(options) {
    this.#ops.push({ op: "retry", id: this.id, options: plainOptions(options) });
  }
}

export class QueueController {
  #ops = [];
  constructor({ queue, messages, metadata }) {
    batchOps.set(this, this.#ops);
    this.queue = queue;
    this.metadata = metadata ?? { metrics: {} };
    this.messages = messages.map((m) => new QueueMessage(m, this.#ops));
  }
  ackAll() {
    this.#ops.push({ op: "ackAll" });
  }
  retryAll(options) {
    this.#ops.push({ op: "retryAll", options: plainOptions(options) });
  }
}

// The `controller` of a cron trigger, as workerd hands it to scheduled().
export class ScheduledController {
  constructor({ cron, scheduledTime }) {
    this.cron = cron;
    this.scheduledTime = scheduledTime;
    this.type = "scheduled";
    this.noRetryCalled = false;
  }
  get [Symbol.toStringTag]() {
    return "ScheduledController";
  }
  noRetry() {
    this.noRetryCalled = true;
  }
}

// The ack/retry calls made on `batch`, in call order.
export function recordedOperations(batch) {
  return batchOps.get(batch) ?? [];
}

function plainOptions(options) {
  if (options === undefined || options === null) return undefined;
  const out = {};
  if (options.delaySeconds !== undefined) out.delaySeconds = Number(options.delaySeconds);
  return out;
}
