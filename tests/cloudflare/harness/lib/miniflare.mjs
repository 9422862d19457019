// Starts Miniflare with the configured KV namespaces, queues and D1 databases,
// and a small JS worker that owns the HTTP entry point and the queue consumers
// and forwards both to Node (where Pyodide runs the Python Worker) through a
// Miniflare custom service binding.

import path from "node:path";
import { Log, LogLevel, Miniflare, Response as MfResponse } from "miniflare";

import { ENVELOPE_TAG, encodeBody } from "./codec.mjs";

export const EVENT_HEADER = "x-refluxo-harness-event";
const PYTHON_SERVICE = "__REFLUXO_PYTHON";
// Highest date the bundled workerd (1.20260426) accepts is its release date.
const JS_WORKER_COMPATIBILITY_DATE = "2026-04-01";

const WORKER_SCRIPT = `
const encodeBody = ${encodeBody.toString()};
const ENVELOPE_TAG = ${JSON.stringify(ENVELOPE_TAG)};
// Bodies sent from Python arrive already encoded (see WorkerQueue in bindings.mjs).
const wireBody = (b) =>
  b !== null && typeof b === "object" && b[ENVELOPE_TAG] === "envelope" ? b.v : encodeBody(b);
const EVENT_HEADER = ${JSON.stringify(EVENT_HEADER)};

export default {
  async fetch(request, env) {
    // Never let a client pose as the harness's own queue bridge.
    const headers = new Headers(request.headers);
    headers.delete(EVENT_HEADER);
    return env.${PYTHON_SERVICE}.fetch(new Request(request, { headers }));
  },

  async scheduled(controller, env) {
    const res = await env.${PYTHON_SERVICE}.fetch("http://refluxo-harness.invalid/scheduled", {
      method: "POST",
      headers: { [EVENT_HEADER]: "scheduled", "content-type": "application/json" },
      body: JSON.stringify({ cron: controller.cron, scheduledTime: controller.scheduledTime }),
    });
    const out = await res.json();
    if (out.error !== null && out.error !== undefined) throw new Error(out.error);
  },

  async queue(batch, env) {
    const payload = {
      queue: batch.queue,
      metadata: batch.metadata ?? null,
      messages: batch.messages.map((m) => ({
        id: m.id,
        timestamp: m.timestamp.getTime(),
        attempts: m.attempts,
        body: wireBody(m.body),
      })),
    };
    const res = await env.${PYTHON_SERVICE}.fetch("http://refluxo-harness.invalid/queue", {
      method: "POST",
      headers: { [EVENT_HEADER]: "queue", "content-type": "application/json" },
      body: JSON.stringify(payload),
    });
    if (!res.ok) {
      throw new Error("harness queue bridge failed: " + res.status + " " + (await res.text()));
    }
    const out = await res.json();
    const byId = new Map(batch.messages.map((m) => [m.id, m]));
    const decided = new Set();
    let batchDecided = false;
    for (const op of out.ops) {
      if (op.op === "ack") { byId.get(op.id)?.ack(); decided.add(op.id); }
      else if (op.op === "retry") { byId.get(op.id)?.retry(op.options); decided.add(op.id); }
      else if (op.op === "ackAll") { batch.ackAll(); batchDecided = true; }
      else if (op.op === "retryAll") { batch.retryAll(op.options); batchDecided = true; }
    }
    if (out.error !== null && out.error !== undefined && !batchDecided) {
      // Production: when the consumer throws, every message it did not explicitly
      // ack() or retry() is redelivered, and the ones it acked stay acked.
      // Miniflare's broker would instead retry the whole batch on a throw, so
      // the production rule is applied here and the handler returns normally.
      for (const m of batch.messages) if (!decided.has(m.id)) m.retry();
    }
  },
};
`;

/**
 * @param {object} config  normalised harness config (see config.mjs)
 * @param {(request: Request) => Promise<Response>} pythonService
 */
export async function startMiniflare(config, pythonService) {
  const queueProducers = {};
  const queueConsumers = {};
  for (const [binding, q] of Object.entries(config.queues)) {
    queueProducers[binding] = { queueName: q.queue };
    if (q.consumer) {
      queueConsumers[q.queue] = Object.fromEntries(
        Object.entries({
          maxBatchSize: q.maxBatchSize,
          maxBatchTimeout: q.maxBatchTimeout,
          maxRetries: q.maxRetries,
          deadLetterQueue: q.deadLetterQueue,
          retryDelay: q.retryDelay,
        }).filter(([, v]) => v !== undefined && v !== null),
      );
    }
  }
  const persist = config.persist
    ? {
        kvPersist: path.join(config.persist, "kv"),
        d1Persist: path.join(config.persist, "d1"),
        durableObjectsPersist: path.join(config.persist, "do"),
      }
    : {};

  const mf = new Miniflare({
    host: config.host,
    port: config.port,
    log: new Log(config.verbose ? LogLevel.DEBUG : LogLevel.WARN),
    // The default fetches a Request.cf sample from the internet; use Miniflare's
    // built-in placeholder instead.
    cf: false,
    // GET /cdn-cgi/handler/scheduled?cron=... fires the cron trigger, as workerd would.
    unsafeTriggerHandlers: true,
    // workerd's own stdout would otherwise land on ours, which carries the
    // ready line (serve) or the Python program's output (run).
    handleRuntimeStdio(stdout, stderr) {
      stdout.pipe(process.stderr);
      stderr.pipe(process.stderr);
    },
    ...persist,
    workers: [
      {
        name: "refluxo-harness",
        modules: true,
        script: WORKER_SCRIPT,
        compatibilityDate: JS_WORKER_COMPATIBILITY_DATE,
        kvNamespaces: Object.fromEntries(config.kv.map((b) => [b, `kv-${b}`])),
        d1Databases: Object.fromEntries(config.d1.map((b) => [b, `d1-${b}`])),
        queueProducers,
        queueConsumers,
        serviceBindings: {
          [PYTHON_SERVICE]: async (request) => {
            const res = await pythonService(request);
            // Hand Miniflare a Response of its own undici, not Node's global one.
            const body = res.body === null ? null : await res.arrayBuffer();
            return new MfResponse(body, {
              status: res.status,
              statusText: res.statusText,
              headers: res.headers,
            });
          },
        },
      },
    ],
  });
  const url = await mf.ready;

  const bindings = {};
  for (const name of config.kv) bindings[name] = { kind: "kv", proxy: await mf.getKVNamespace(name) };
  for (const name of Object.keys(config.queues)) {
    bindings[name] = { kind: "queue", proxy: await mf.getQueueProducer(name) };
  }
  for (const name of config.d1) bindings[name] = { kind: "d1", proxy: await mf.getD1Database(name) };
  return { mf, url, bindings };
}
