#!/usr/bin/env node
// refluxo Cloudflare test harness: a Python Worker in Node Pyodide, with
// Miniflare's real KV, Queues and D1 as its bindings. See README.md.
//
//   node harness.mjs serve --src DIR --entry MODULE [--kv NAME] [--queue B[=Q]] [--d1 NAME] ...
//   node harness.mjs run   --src DIR [--entry MODULE] [bindings...] FILE.py

// stdout carries only the ready line (serve) or the Python program's output
// (run); anything JS libraries log goes to stderr.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

import fs from "node:fs";

import {
  D1Database,
  ExecutionContext,
  KvNamespace,
  QueueController,
  ScheduledController,
  WorkerQueue,
  patchWaitUntil,
  recordedOperations,
} from "./lib/bindings.mjs";
import { decodeBody, encodeBody } from "./lib/codec.mjs";
import { USAGE, UsageError, parseArgs } from "./lib/config.mjs";
import { EVENT_HEADER, startMiniflare } from "./lib/miniflare.mjs";
import { SetupError, bootPython, entryModuleName } from "./lib/python.mjs";

const t0 = performance.now();
let cfg;

// A Python exception escaping a background asyncio task surfaces here; print
// the Python traceback rather than the minified Pyodide source line.
// serve keeps serving, as workerd would after logging the error.
process.on("uncaughtException", (e) => {
  process.stderr.write(`[harness] uncaught error: ${e?.message ?? e}\n`);
  if (cfg?.mode !== "serve") process.exit(1);
});
process.on("unhandledRejection", (e) => {
  process.stderr.write(`[harness] unhandled rejection: ${e?.message ?? e}\n`);
});

function log(msg) {
  process.stderr.write(`[harness] ${msg}\n`);
}

function pyErrorText(e) {
  // PythonError.message is the formatted Python traceback.
  return e?.message ?? String(e);
}

try {
  cfg = parseArgs(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) {
    process.stderr.write(`harness: ${e.message}\n\n${USAGE}`);
    process.exit(2);
  }
  throw e;
}

// ---------------------------------------------------------------- bindings

const env = {};
for (const [k, v] of Object.entries(cfg.vars)) env[k] = v;

const globalWaitUntil = (p) => {
  Promise.resolve(p).catch((e) => log(`waitUntil() promise rejected: ${pyErrorText(e)}`));
};
class JsWorkerEntrypoint {}
class JsDurableObject {}
class JsWorkflowEntrypoint {}
class JsRpcTarget {}
const cloudflareWorkersModule = {
  env,
  waitUntil: globalWaitUntil,
  WorkerEntrypoint: JsWorkerEntrypoint,
  DurableObject: JsDurableObject,
  WorkflowEntrypoint: JsWorkflowEntrypoint,
  RpcTarget: JsRpcTarget,
};
const cloudflareSocketsModule = {
  connect() {
    throw new Error("cloudflare:sockets is not available in the refluxo harness");
  },
};

// Stands in for workerd's `_pyodide_entrypoint_helper` (python-entrypoint-helper.ts).
const helper = {
  cloudflareWorkersModule,
  cloudflareSocketsModule,
  workerEntrypoint: JsWorkerEntrypoint,
  patchWaitUntil,
  async doAnImport(name) {
    if (name === "cloudflare:workers") return cloudflareWorkersModule;
    if (name === "cloudflare:sockets") return cloudflareSocketsModule;
    throw new Error(`the refluxo harness cannot import JS module ${name}`);
  },
  // workers.patch_env(): override env entries for the duration of a `with`.
  *patch_env_helper(kwds) {
    const saved = [];
    for (const [k, v] of Object.entries(kwds ?? {})) {
      saved.push([k, Object.getOwnPropertyDescriptor(env, k)]);
      env[k] = v;
    }
    try {
      yield;
    } finally {
      for (const [k, d] of saved.reverse()) {
        if (d) Object.defineProperty(env, k, d);
        else delete env[k];
      }
    }
  },
};

// ---------------------------------------------------------------- Python

let py; // { pyodide, rt, entryCls, hasQueue }
let queueHandler = null; // PyProxy set by harness_env.set_queue_handler
let queueHandlerWaiters = [];
const pythonReady = Promise.withResolvers
  ? Promise.withResolvers()
  : (() => {
      let resolve, reject;
      const promise = new Promise((a, b) => ((resolve = a), (reject = b)));
      return { promise, resolve, reject };
    })();
pythonReady.promise.catch(() => {});

async function handleFetch(mfRequest) {
  if (!py.entryCls) {
    return new Response("refluxo harness: no --entry Worker to handle fetch\n", { status: 500 });
  }
  const hasBody = !["GET", "HEAD"].includes(mfRequest.method);
  const request = new Request(mfRequest.url, {
    method: mfRequest.method,
    headers: mfRequest.headers,
    body: hasBody ? await mfRequest.arrayBuffer() : undefined,
  });
  if (mfRequest.cf) Object.defineProperty(request, "cf", { value: mfRequest.cf });

  const ctx = new ExecutionContext();
  let inst;
  try {
    inst = py.rt.new_instance(py.entryCls, ctx, env);
    const result = await py.rt.invoke(true, inst, "fetch", request);
    if (!(result instanceof Response)) {
      throw new TypeError(
        `fetch() must return a workers.Response, got ${result?.constructor?.name ?? typeof result}`,
      );
    }
    return result;
  } catch (e) {
    log(`Worker fetch() raised:\n${pyErrorText(e)}`);
    return new Response("Internal Server Error\n", { status: 500 });
  } finally {
    // waitUntil work outlives the response, as in workerd.
    ctx.settle().finally(() => inst?.destroy?.());
  }
}

async function waitForQueueHandler() {
  if (queueHandler) return;
  await new Promise((resolve) => queueHandlerWaiters.push(resolve));
}

// workerd calls every handler but `fetch` strictly with its JavaScript
// arguments: queue(batch, env, ctx), scheduled(controller, env, ctx). A method
// declared with fewer parameters raises TypeError here as it does there.
async function runQueueBatch(payload) {
  payload.messages = payload.messages.map((m) => ({ ...m, body: decodeBody(m.body) }));
  const batch = new QueueController(payload);
  const ctx = new ExecutionContext();
  let error = null;
  let inst;
  try {
    if (!queueHandler && !py.hasQueue && cfg.mode === "run") await waitForQueueHandler();
    if (queueHandler) {
      await py.rt.call_queue_handler(queueHandler, batch);
    } else if (py.hasQueue) {
      inst = py.rt.new_instance(py.entryCls, ctx, env);
      await py.rt.invoke(false, inst, "queue", batch, env, ctx);
    } else {
      throw new Error(
        `no queue() handler: ${py.entryCls ? "the Worker entry class has no queue method" : "no --entry"}`,
      );
    }
    await ctx.settle();
  } catch (e) {
    error = pyErrorText(e);
    log(`queue handler for ${payload.queue} raised; messages not acked are retried:\n${error}`);
  } finally {
    inst?.destroy?.();
  }
  return { ops: recordedOperations(batch), error };
}

async function handleQueue(mfRequest) {
  return Response.json(await runQueueBatch(await mfRequest.json()));
}

// A cron trigger: `scheduled(controller, env, ctx)` on a fresh instance.
let lastScheduled = null;
async function runScheduled({ cron, scheduledTime }) {
  const controller = new ScheduledController({ cron, scheduledTime });
  const ctx = new ExecutionContext();
  let error = null;
  let inst;
  try {
    if (!py.entryCls || !py.rt.has_method(py.entryCls, "scheduled")) {
      throw new Error("no scheduled() handler on the Worker entry class");
    }
    inst = py.rt.new_instance(py.entryCls, ctx, env);
    await py.rt.invoke(false, inst, "scheduled", controller, env, ctx);
    await ctx.settle();
  } catch (e) {
    error = pyErrorText(e);
    log(`scheduled handler for ${cron} raised:\n${error}`);
  } finally {
    inst?.destroy?.();
  }
  lastScheduled = { error, noRetry: controller.noRetryCalled, cron, scheduledTime };
  return lastScheduled;
}

async function handleScheduled(mfRequest) {
  return Response.json(await runScheduled(await mfRequest.json()));
}

async function pythonService(mfRequest) {
  await pythonReady.promise;
  const event = mfRequest.headers.get(EVENT_HEADER);
  if (event === "queue") return handleQueue(mfRequest);
  if (event === "scheduled") return handleScheduled(mfRequest);
  return handleFetch(mfRequest);
}

// ---------------------------------------------------------------- start

const timings = {};
let mfHandle;
async function shutdown(code) {
  try {
    await mfHandle?.mf.dispose();
  } catch (e) {
    log(`miniflare dispose failed: ${e?.message ?? e}`);
  }
  process.exit(code);
}

// Miniflare installs its own SIGTERM/SIGINT hook once started: it kills workerd
// and exits 143/130 synchronously. These cover the time before that.
process.on("SIGTERM", () => shutdown(143));
process.on("SIGINT", () => shutdown(130));

try {
  const mfStart = performance.now();
  const mfPromise = startMiniflare(cfg, pythonService).then((h) => {
    timings.miniflare_ms = Math.round(performance.now() - mfStart);
    return h;
  });
  mfPromise.catch(() => {});
  const pyodide = await bootPython(cfg, {
    stdout: cfg.mode === "serve" ? process.stderr : process.stdout,
    helper,
    timings,
  });
  mfHandle = await mfPromise;
  for (const [name, b] of Object.entries(mfHandle.bindings)) {
    env[name] =
      b.kind === "kv" ? new KvNamespace(b.proxy) : b.kind === "queue" ? new WorkerQueue(b.proxy) : new D1Database(b.proxy);
  }

  const rt = pyodide.pyimport("_refluxo_harness");
  py = { pyodide, rt, entryCls: null, hasQueue: false };
  if (cfg.entry) {
    const t = performance.now();
    const [cls, warning] = rt.load_entry(entryModuleName(cfg), cfg.entryClass).toJs({ depth: 1 });
    if (warning) log(`warning: ${warning}`);
    py.entryCls = cls;
    py.hasQueue = rt.has_method(cls, "queue");
    timings.entry_import_ms = Math.round(performance.now() - t);
  }
  timings.total_ms = Math.round(performance.now() - t0);
  pythonReady.resolve();
} catch (e) {
  pythonReady.reject(e);
  const msg = e instanceof SetupError ? e.message : e?.stack ?? String(e);
  log(`startup failed: ${e?.type === undefined ? msg : pyErrorText(e)}`);
  await shutdown(3);
}

if (cfg.mode === "serve") {
  const url = new URL(mfHandle.url);
  process.stdout.write(
    JSON.stringify({
      ready: true,
      url: url.origin,
      host: url.hostname,
      port: Number(url.port),
      bindings: Object.keys(env),
      timings,
    }) + "\n",
  );
  log(`serving ${url.origin} (boot ${timings.total_ms} ms: ${JSON.stringify(timings)})`);
  // A parent that holds our stdin as a pipe stops us by closing it (no orphan
  // if it dies); a terminal or /dev/null stdin is not watched.
  const st = fs.fstatSync(0);
  if (st.isFIFO() || st.isSocket()) {
    process.stdin.on("end", () => shutdown(0));
    process.stdin.on("error", () => shutdown(0));
    process.stdin.resume();
  }
} else {
  const api = {
    env,
    ctx: new ExecutionContext(),
    bindingNames: Object.keys(env),
    setQueueHandler(fn) {
      queueHandler?.destroy?.();
      // A PyProxy passed into JS is only borrowed for the call: keep a copy.
      queueHandler = fn ? fn.copy() : null;
      if (queueHandler) for (const w of queueHandlerWaiters.splice(0)) w();
    },
    // What Miniflare's consumer hands the Worker, without Miniflare's broker:
    // the batch goes to the entry's queue() exactly as a delivery would.
    async deliverBatch(queueName, messages) {
      const now = Date.now();
      const payload = {
        queue: queueName,
        metadata: null,
        messages: Array.from(messages, (m, i) => ({
          id: m.id ?? `harness-${i}`,
          timestamp: m.timestamp ?? now,
          attempts: m.attempts ?? 1,
          body: encodeBody(m.body),
        })),
      };
      return runQueueBatch(payload);
    },
    // Through Miniflare's own trigger and the JS worker's scheduled(), as a cron would.
    async triggerScheduled(cron, scheduledTime) {
      const url = new URL("/cdn-cgi/handler/scheduled", mfHandle.url);
      url.searchParams.set("cron", cron);
      if (scheduledTime !== undefined && scheduledTime !== null) {
        url.searchParams.set("time", String(scheduledTime));
      }
      lastScheduled = null;
      const r = await mfHandle.mf.dispatchFetch(url.href);
      const text = await r.text();
      if (lastScheduled === null) {
        return { error: `the cron trigger did not reach the Worker: ${r.status} ${text}`, noRetry: false };
      }
      return lastScheduled;
    },
    async dispatchFetch(url, init) {
      const r = await mfHandle.mf.dispatchFetch(new URL(url, mfHandle.url).href, init ?? undefined);
      const body = r.body === null ? null : await r.arrayBuffer();
      return new Response(body, { status: r.status, statusText: r.statusText, headers: r.headers });
    },
  };
  const harnessEnv = py.rt.install_harness_env(api);
  if (py.entryCls) harnessEnv.entrypoint = py.entryCls;
  log(`booted in ${timings.total_ms} ms ${JSON.stringify(timings)}; running ${cfg.file}`);
  const code = fs.readFileSync(cfg.file, "utf8");
  const tRun = performance.now();
  let exitCode;
  try {
    exitCode = await py.rt.run_program(code, cfg.file);
  } catch (e) {
    process.stderr.write(`${pyErrorText(e)}\n`);
    exitCode = 1;
  }
  log(`program finished in ${Math.round(performance.now() - tRun)} ms, exit ${exitCode}`);
  await shutdown(exitCode);
}
