"""Liveness and readiness probes: no credentials, for load balancers and CI."""

from __future__ import annotations

import time

from tornado_sched.errors import Unavailable

from .base import ApiHandler


class HealthHandler(ApiHandler):
    """Liveness: the IOLoop answers. Touches no store. 503 only when the process
    cannot recover by itself (the embedded document server stays dead)."""

    auth = "public"

    def get(self) -> None:
        problem = self.ctx.liveness_problem()
        if problem is not None:
            raise Unavailable(problem)
        self.write_envelope({"status": "ok", "uptime_seconds": round(time.time() - self.ctx.started_at, 1)})


class ReadyHandler(ApiHandler):
    """Readiness: both stores answer, else 503 naming the one that does not."""

    auth = "public"

    async def get(self) -> None:
        stores = await self.ctx.readiness()
        # Redis is not a store: without it an instance still serves its own modules.
        down = [name for name, state in stores.items() if state != "ok" and name != "redis"]
        degraded = stores.get("redis", "ok") != "ok"
        result = {"status": "degraded" if degraded else "ready", "stores": stores,
                  "failed_writes": self.ctx.store_failures()}
        if self.ctx.cluster is not None:
            result["instance"] = self.ctx.cluster.instance
            result["instances"] = sorted(self.ctx.cluster.live)
        if down:
            # Still the envelope of a 503, but with what waits in memory meanwhile.
            self.set_status(503)
            result["status"] = "unavailable"
            self.write_envelope(result, code=Unavailable.code, message=f"store unavailable: {', '.join(down)}")
            return
        self.write_envelope(result)


default_handlers = [
    (r"/health", HealthHandler),
    (r"/ready", ReadyHandler),
]
