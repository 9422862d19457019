"""Toy Python Worker for the harness smoke test (tests/cloudflare/test_harness_smoke.py).

POST /jobs/<id>  writes ``job:<id>`` = "accepted" to KV and sends ``{"id": <id>}``
                 to the STEPS queue with ``delaySeconds=1``.
GET  /jobs/<id>  answers the KV values of ``job:<id>`` and ``done:<id>`` as JSON.
POST /echo       answers the JSON body, a request header and ``env.MODE``.
POST /later/<k>  answers at once; ``ctx.waitUntil`` writes ``later:<k>`` after it.
GET  /later/<k>  answers the KV value of ``later:<k>`` ("" if absent).
GET  /boom       raises.
queue()          per message, writes ``done:<id>`` (attempt count, queue, delay), and acks.
"""

import asyncio
import json
import time

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = request.url.split("://", 1)[1].split("/", 1)[1]
        parts = path.split("/")
        if parts == ["echo"]:
            return Response.json(
                {
                    "body": await request.json(),
                    "header": request.headers.get("x-toy"),
                    "mode": self.env.MODE,
                }
            )
        if parts == ["boom"]:
            raise RuntimeError("boom")
        if len(parts) == 2 and parts[0] == "later":
            if request.method == "GET":
                return Response(await self.env.STATE.get(f"later:{parts[1]}") or "")
            self.ctx.waitUntil(self._later(parts[1]))
            return Response("scheduled", status=202)
        if len(parts) != 2 or parts[0] != "jobs":
            return Response("not found", status=404)
        job_id = parts[1]
        if request.method == "POST":
            await self.env.STATE.put(f"job:{job_id}", "accepted")
            await self.env.STEPS.send({"id": job_id, "sent_at": time.time()}, delaySeconds=1)
            return Response.json({"id": job_id, "status": "accepted"}, status=202)
        state = await self.env.STATE.get(f"job:{job_id}")
        done = await self.env.STATE.get(f"done:{job_id}", type="json")
        return Response(
            json.dumps({"id": job_id, "state": state, "done": done}),
            headers={"content-type": "application/json"},
        )

    async def _later(self, key):
        await asyncio.sleep(0.2)
        await self.env.STATE.put(f"later:{key}", "written")

    async def queue(self, batch, env, ctx):
        for message in batch.messages:
            body = message.body
            await self.env.STATE.put(
                f"done:{body['id']}",
                json.dumps(
                    {
                        "attempts": message.attempts,
                        "queue": batch.queue,
                        "delay": time.time() - body["sent_at"],
                    }
                ),
            )
            message.ack()
