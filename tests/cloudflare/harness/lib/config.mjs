// Command line and JSON config of the harness. See README.md for the format.

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const HARNESS_DIR = path.resolve(HERE, "..");
export const REPO_ROOT = path.resolve(HARNESS_DIR, "..", "..", "..");

export const USAGE = `usage:
  node harness.mjs serve [options]
  node harness.mjs run [options] FILE.py

options (repeatable ones marked +):
  --config FILE          JSON config; command-line options add to / override it
  --src DIR +            Python source root, merged with the others into one
                         directory on sys.path (like a Worker bundle)
  --entry MODULE         Worker main module: dotted name, or a .py path inside a --src
  --entry-class NAME     WorkerEntrypoint subclass to run (default: Default)
  --kv NAME +            KV namespace binding
  --queue BINDING[=QUEUE] +
                         Queue producer binding + consumer of that queue
                         (queue name defaults to the binding name lower-cased)
  --d1 NAME +            D1 database binding
  --var NAME=VALUE +     plain-text variable binding
  --wheels DIR           wheels to install into Pyodide (default .tools/pyodide-wheels)
  --host HOST            serve: address to listen on (default 127.0.0.1)
  --port N               serve: port (default 0: any free port)
  --persist DIR          keep KV/D1/queue state there (default: in memory)
  --max-batch-size N     queue consumer defaults (per queue in --config)
  --max-batch-timeout S  (default 0: deliver as soon as a message is due)
  --max-retries N        (Miniflare default 2)
  --retry-delay S
  --verbose              Miniflare debug logs on stderr
`;

function defaults() {
  return {
    mode: null,
    file: null,
    src: [],
    entry: null,
    entryClass: "Default",
    kv: [],
    queues: {},
    d1: [],
    vars: {},
    wheels: path.join(REPO_ROOT, ".tools", "pyodide-wheels"),
    host: "127.0.0.1",
    port: 0,
    persist: null,
    verbose: false,
    compatibilityFlags: {},
    queueDefaults: { maxBatchTimeout: 0 },
  };
}

function queueEntry(binding, spec, base) {
  const q = typeof spec === "string" ? { queue: spec } : { ...(spec ?? {}) };
  return {
    queue: q.queue ?? binding.toLowerCase(),
    consumer: q.consumer ?? true,
    ...base,
    ...Object.fromEntries(Object.entries(q).filter(([k]) => k !== "queue" && k !== "consumer")),
  };
}

function applyFile(cfg, file) {
  const raw = JSON.parse(fs.readFileSync(file, "utf8"));
  const rel = (p) => path.resolve(path.dirname(path.resolve(file)), p);
  if (raw.src) cfg.src.push(...[].concat(raw.src).map(rel));
  if (raw.entry) cfg.entry = raw.entry;
  if (raw.entryClass) cfg.entryClass = raw.entryClass;
  if (raw.kv) cfg.kv.push(...[].concat(raw.kv));
  if (raw.d1) cfg.d1.push(...[].concat(raw.d1));
  if (raw.vars) Object.assign(cfg.vars, raw.vars);
  if (raw.queues) {
    const qs = Array.isArray(raw.queues)
      ? Object.fromEntries(raw.queues.map((b) => [b, {}]))
      : raw.queues;
    for (const [b, spec] of Object.entries(qs)) cfg.queues[b] = spec;
  }
  if (raw.queueDefaults) Object.assign(cfg.queueDefaults, raw.queueDefaults);
  if (raw.wheels) cfg.wheels = rel(raw.wheels);
  if (raw.host) cfg.host = raw.host;
  if (raw.port !== undefined) cfg.port = Number(raw.port);
  if (raw.persist) cfg.persist = rel(raw.persist);
  if (raw.compatibilityFlags) Object.assign(cfg.compatibilityFlags, raw.compatibilityFlags);
}

export function parseArgs(argv) {
  const cfg = defaults();
  const args = [...argv];
  cfg.mode = args.shift() ?? null;
  if (cfg.mode === "-h" || cfg.mode === "--help") {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  if (cfg.mode !== "serve" && cfg.mode !== "run") {
    throw new UsageError(`first argument must be "serve" or "run", got ${JSON.stringify(cfg.mode)}`);
  }
  // --config first, so that the command line adds to it whatever the order.
  const ci = args.indexOf("--config");
  if (ci !== -1) {
    applyFile(cfg, args[ci + 1]);
    args.splice(ci, 2);
  }
  const positional = [];
  while (args.length) {
    const a = args.shift();
    const take = () => {
      if (!args.length) throw new UsageError(`${a} needs a value`);
      return args.shift();
    };
    switch (a) {
      case "--src":
        cfg.src.push(path.resolve(take()));
        break;
      case "--entry":
        cfg.entry = take();
        break;
      case "--entry-class":
        cfg.entryClass = take();
        break;
      case "--kv":
        cfg.kv.push(take());
        break;
      case "--d1":
        cfg.d1.push(take());
        break;
      case "--queue": {
        const [b, q] = take().split("=");
        cfg.queues[b] = q ? { queue: q } : {};
        break;
      }
      case "--var": {
        const v = take();
        const i = v.indexOf("=");
        if (i < 1) throw new UsageError(`--var wants NAME=VALUE, got ${v}`);
        cfg.vars[v.slice(0, i)] = v.slice(i + 1);
        break;
      }
      case "--wheels":
        cfg.wheels = path.resolve(take());
        break;
      case "--host":
        cfg.host = take();
        break;
      case "--port":
        cfg.port = Number(take());
        break;
      case "--persist":
        cfg.persist = path.resolve(take());
        break;
      case "--max-batch-size":
        cfg.queueDefaults.maxBatchSize = Number(take());
        break;
      case "--max-batch-timeout":
        cfg.queueDefaults.maxBatchTimeout = Number(take());
        break;
      case "--max-retries":
        cfg.queueDefaults.maxRetries = Number(take());
        break;
      case "--retry-delay":
        cfg.queueDefaults.retryDelay = Number(take());
        break;
      case "--verbose":
        cfg.verbose = true;
        break;
      default:
        if (a.startsWith("--")) throw new UsageError(`unknown option ${a}`);
        positional.push(a);
    }
  }
  if (cfg.mode === "run") {
    if (positional.length !== 1) throw new UsageError("run needs exactly one FILE.py");
    cfg.file = path.resolve(positional[0]);
  } else if (positional.length) {
    throw new UsageError(`unexpected argument ${positional[0]}`);
  }
  if (cfg.mode === "serve" && !cfg.entry) throw new UsageError("serve needs --entry");
  for (const [b, spec] of Object.entries(cfg.queues)) {
    cfg.queues[b] = queueEntry(b, spec, cfg.queueDefaults);
  }
  const names = [...cfg.kv, ...cfg.d1, ...Object.keys(cfg.queues), ...Object.keys(cfg.vars)];
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new UsageError(`binding ${dup} is declared twice`);
  return cfg;
}

export class UsageError extends Error {}
