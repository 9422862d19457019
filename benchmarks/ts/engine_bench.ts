// Runs the TypeScript engine (read from its source, path in argv) on the workloads of the
// vs_typescript section and prints steps per second as JSON. Mirrors benchmarks/workflows.py:
// the same definitions, node outputs and stepping (executeStep until the run is not active).
//
//   tsx engine_bench.ts ENGINE_DIR '{"workloads": [...], "repeats": 3}'
import { pathToFileURL } from "node:url"
import { join } from "node:path"

type Workload = { name: string; kind: "linear" | "loop"; n: number; roundtrip: boolean; repeats?: number }

const FILLER = "x".repeat(48)

function linearDefinition(n: number) {
  const nodes = []
  const edges = []
  for (let i = 0; i < n; i++) nodes.push({ id: `s${i}`, type: "step", data: { i } })
  for (let i = 0; i < n - 1; i++) edges.push({ id: `e${i}`, source: `s${i}`, target: `s${i + 1}` })
  return { nodes, edges }
}

function loopDefinition() {
  return {
    nodes: [{ id: "loop", type: "loop", data: { label: "tick" } }],
    edges: [{ id: "back", source: "loop", target: "loop", sourceHandle: "again" }],
  }
}

async function main() {
  const [engineDir, spec] = process.argv.slice(2)
  const { WorkflowEngine } = await import(pathToFileURL(join(engineDir, "src", "index.ts")).href)
  const { workloads, repeats } = JSON.parse(spec) as { workloads: Workload[]; repeats: number }
  const out: Record<string, number[]> = {}
  for (const w of workloads) {
    const limit = w.n
    const nodeDefinitions =
      w.kind === "linear"
        ? { step: { executor: async (data: any) => ({ data: { i: data.i, status: "ok", note: FILLER } }) } }
        : {
            loop: {
              executor: async (_data: any, context: any) => {
                const n = (context.loop?.length ?? 0) + 1
                return { data: { i: n, status: "ok", note: FILLER }, nextHandle: n < limit ? "again" : undefined }
              },
            },
          }
    const engine = new WorkflowEngine({
      workflow: w.kind === "linear" ? linearDefinition(w.n) : loopDefinition(),
      nodeDefinitions,
    })
    const start = w.kind === "linear" ? "s0" : "loop"
    const rates: number[] = []
    for (let r = 0; r < (w.repeats ?? repeats); r++) {
      let snap: any = {
        workflowId: `bench-${w.name}`, status: "active", currentNodeId: start, context: {},
        version: 0, metadata: {}, lastStartedAt: Date.now(), totalExecutionTime: 0,
      }
      let steps = 0
      const t0 = process.hrtime.bigint()
      while (snap.status === "active") {
        snap = await engine.executeStep(snap)
        if (w.roundtrip) snap = JSON.parse(JSON.stringify(snap))
        steps++
      }
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9
      if (snap.status !== "completed") throw new Error(`run ended ${snap.status}`)
      rates.push(steps / seconds)
    }
    out[w.name] = rates
  }
  process.stdout.write(JSON.stringify({ node: process.version, rates: out }) + "\n")
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
