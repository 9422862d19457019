// Boots Pyodide in Node, installs local wheels (no network), supplies the two
// runtime-internal modules workers-runtime-sdk imports, and lays out the
// Python sources the way a Worker bundle is laid out.

import fs from "node:fs";
import path from "node:path";
import { loadPyodide } from "pyodide";

import { HARNESS_DIR } from "./config.mjs";

// Where workerd puts a Worker's modules; the harness merges every --src root here.
export const BUNDLE_DIR = "/session/metadata";
const HARNESS_PY_DIR = "/session/refluxo_harness";

// The compatibility flags the SDK reads, as a Worker with a 2026 compatibility
// date and python_workers gets them; --config "compatibilityFlags" overrides.
export const DEFAULT_COMPAT_FLAGS = {
  python_workers: true,
  python_no_global_handlers: true,
  python_workflows: true,
  python_workflows_implicit_dependencies: true,
  python_request_headers_preserve_commas: true,
  python_dedicated_snapshot: true,
  python_check_rng_state: true,
  enable_python_external_sdk: true,
  python_process_pth_files: true,
};

const SKIP_DIRS = new Set([
  "__pycache__",
  ".git",
  ".venv",
  "node_modules",
  ".pytest_cache",
  ".mypy_cache",
  ".ruff_cache",
]);

export class SetupError extends Error {}

function listWheels(dir) {
  if (!fs.existsSync(dir)) {
    throw new SetupError(`wheel directory ${dir} does not exist: run \`make setup-cloudflare\``);
  }
  const wheels = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith(".whl"))
    .sort()
    .map((f) => path.join(dir, f));
  const need = ["pydantic_core-", "pydantic-", "workers_runtime_sdk-"];
  for (const prefix of need) {
    if (!wheels.some((w) => path.basename(w).startsWith(prefix))) {
      throw new SetupError(`no ${prefix}*.whl in ${dir}: run \`make setup-cloudflare\``);
    }
  }
  return wheels;
}

function writer(stream) {
  return {
    write(buf) {
      stream.write(Buffer.from(buf));
      return buf.length;
    },
  };
}

/**
 * @param {object} cfg normalised config
 * @param {object} opts { stdout: Writable for Python's stdout, helper, timings }
 */
export async function bootPython(cfg, { stdout, helper, timings }) {
  const wheels = listWheels(cfg.wheels);
  let t = performance.now();
  const pyodide = await loadPyodide({ env: { HOME: "/home/pyodide" } });
  pyodide.setStdout(writer(stdout));
  pyodide.setStderr(writer(process.stderr));
  timings.pyodide_ms = Math.round(performance.now() - t);

  t = performance.now();
  const errors = [];
  await pyodide.loadPackage(wheels, {
    messageCallback: () => {},
    errorCallback: (m) => errors.push(m),
    checkIntegrity: false,
  });
  if (errors.length) throw new SetupError(`installing wheels failed:\n${errors.join("\n")}`);
  timings.wheels_ms = Math.round(performance.now() - t);

  pyodide.registerJsModule("_refluxo_entropy", guardEntropy());

  const flags = { ...DEFAULT_COMPAT_FLAGS, ...cfg.compatibilityFlags };
  pyodide.registerJsModule("_cloudflare_compat_flags", flags);
  pyodide.registerJsModule("_pyodide_entrypoint_helper", helper);

  t = performance.now();
  pyodide.FS.mkdirTree(BUNDLE_DIR);
  const origin = new Map();
  for (const root of cfg.src) copyTree(pyodide.FS, root, BUNDLE_DIR, root, origin);
  pyodide.FS.mkdirTree(HARNESS_PY_DIR);
  copyTree(pyodide.FS, path.join(HARNESS_DIR, "py"), HARNESS_PY_DIR, null, new Map());
  pyodide.runPython(
    `import sys
sys.dont_write_bytecode = True
sys.path[0:0] = [${JSON.stringify(BUNDLE_DIR)}, ${JSON.stringify(HARNESS_PY_DIR)}]
import random  # imported before the Worker's top level, whose rules then block its functions
import _refluxo_harness
_refluxo_harness.process_pth_files()`,
  );
  timings.sources_ms = Math.round(performance.now() - t);
  return pyodide;
}

// Copies a host directory into Pyodide's in-memory FS. Several roots merge into
// one tree, which is how PEP 420 namespace packages (refluxo/ without an
// __init__.py in core/ and in adapters/*) end up side by side in a bundle. The
// same file coming from two roots with different content is an error.
function copyTree(FS, hostDir, fsDir, root, origin) {
  if (!fs.statSync(hostDir, { throwIfNoEntry: false })?.isDirectory()) {
    throw new SetupError(`source directory ${hostDir} does not exist`);
  }
  for (const ent of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const host = path.join(hostDir, ent.name);
    const dest = `${fsDir}/${ent.name}`;
    if (ent.isDirectory()) {
      if (SKIP_DIRS.has(ent.name) || ent.name.endsWith(".egg-info")) continue;
      if (!FS.analyzePath(dest).exists) FS.mkdir(dest);
      copyTree(FS, host, dest, root, origin);
    } else if (ent.isFile()) {
      if (ent.name.endsWith(".pyc")) continue;
      const data = fs.readFileSync(host);
      if (FS.analyzePath(dest).exists) {
        const prev = FS.readFile(dest);
        if (Buffer.compare(Buffer.from(prev), data) !== 0) {
          throw new SetupError(`${dest} comes from both ${origin.get(dest)} and ${root}`);
        }
        continue;
      }
      FS.writeFile(dest, data);
      origin.set(dest, root);
    }
  }
}

/** Dotted module name for --entry (a dotted name, or a .py path inside a --src root). */
export function entryModuleName(cfg) {
  const e = cfg.entry;
  if (!e.endsWith(".py")) return e;
  const abs = path.resolve(e);
  for (const root of cfg.src) {
    const rel = path.relative(root, abs);
    if (!rel.startsWith("..") && !path.isAbsolute(rel)) {
      return rel.slice(0, -3).split(path.sep).join(".");
    }
  }
  // Relative to a root, as written in wrangler.toml's `main`.
  return e.slice(0, -3).split("/").join(".");
}

// Pyodide's getentropy() ends in crypto.getRandomValues. While the Worker's top
// level runs (guard(true), see worker_top_level in _refluxo_harness.py) a call
// is refused unless an import patch allowed a counted number of them, as in
// workerd, where such a call is a fatal error.
function guardEntropy() {
  const state = { guarded: false, allowed: 0 };
  const real = globalThis.crypto.getRandomValues.bind(globalThis.crypto);
  globalThis.crypto.getRandomValues = (view) => {
    if (state.guarded) {
      if (state.allowed <= 0) {
        throw new Error(
          "getentropy() while the Worker's top level runs: randomness is not allowed " +
            "while a Worker is starting (workerd refuses it; the harness does too)",
        );
      }
      state.allowed -= 1;
    }
    return real(view);
  };
  return {
    guard(on) {
      state.guarded = Boolean(on);
      state.allowed = 0;
    },
    guarded: () => state.guarded,
    allow(n) {
      state.allowed = Number(n);
    },
    remaining: () => state.allowed,
  };
}
