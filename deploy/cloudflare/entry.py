"""The Worker's main module: refluxo's HTTP API on ``fetch``, its steps (and dead letters) on
``queue``, the reconciler on ``scheduled`` (a cron trigger).

``deploy.py`` copies this file into the bundle as ``src/entry.py``; the configuration is in
the Worker's vars (``wrangler.toml``), see :mod:`refluxo.cloudflare.worker`.
"""

from workers import WorkerEntrypoint

from refluxo.cloudflare import worker

# refluxo: import the workflows here


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return await worker.fetch(request, self.env)

    # workerd calls queue(batch, env, ctx) strictly: all three parameters are needed.
    async def queue(self, batch, env, ctx):
        await worker.queue(batch, self.env)

    async def scheduled(self, controller, env, ctx):
        await worker.scheduled(controller, self.env)
