"""A small blocking client of the refluxo HTTP API (standard library only), for the CLI."""

from __future__ import annotations

import getpass
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ApiError(Exception):
    """The API answered with an error status."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def _who() -> str | None:
    """The label a retry or rerun records as who asked (the login name), if there is one."""
    try:
        name = getpass.getuser()
        return f"cli:{name}" if name.isascii() and name.isprintable() else None
    except (OSError, KeyError):
        return None


class Client:
    """Calls one refluxo deployment at ``url`` (with ``token`` when the API requires one)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 10.0,
        caller: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.caller = caller if caller is not None else _who()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        if self.token:
            request.add_header("authorization", f"Bearer {self.token}")
        if self.caller:
            request.add_header("x-refluxo-caller", self.caller)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(exc.code, payload) from None

    def start(self, workflow: str, run_id: str | None = None, input: Any = None) -> Any:
        body: dict[str, Any] = {"input": input}
        if run_id:
            body["id"] = run_id
        return self.call("POST", f"/workflows/{workflow}/runs", body)[1]

    def get(self, run_id: str) -> Any:
        return self.call("GET", f"/runs/{run_id}")[1]

    def event(
        self, run_id: str, payload: Any, name: str | None = None, event_id: str | None = None
    ) -> Any:
        body: dict[str, Any] = {"payload": payload}
        if name:
            body["name"] = name
        if event_id:
            body["id"] = event_id
        return self.call("POST", f"/runs/{run_id}/events", body)[1]

    def cancel(self, run_id: str, reason: str | None = None) -> Any:
        return self.call("POST", f"/runs/{run_id}/cancel", {"reason": reason} if reason else {})[1]

    def list_runs(self, **filters: Any) -> Any:
        """One page of ``GET /runs``: ``{"runs": [...], "cursor"}``; filters left out when None."""
        query = urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
        return self.call("GET", "/runs" + (f"?{query}" if query else ""))[1]

    def retry(self, run_id: str, reason: str | None = None, force: bool = False) -> Any:
        body: dict[str, Any] = {"force": force}
        if reason:
            body["reason"] = reason
        return self.call("POST", f"/runs/{run_id}/retry", body)[1]

    def rerun(
        self, run_id: str, from_node: str, input: Any = None, new_id: str | None = None
    ) -> Any:
        body: dict[str, Any] = {"from": from_node}
        if input is not None:
            body["input"] = input
        if new_id:
            body["id"] = new_id
        return self.call("POST", f"/runs/{run_id}/rerun", body)[1]

    def timeline(self, run_id: str) -> Any:
        return self.call("GET", f"/runs/{run_id}/timeline")[1]

    def workflows(self) -> Any:
        return self.call("GET", "/workflows")[1]

    def workflow(self, name: str) -> Any:
        return self.call("GET", f"/workflows/{name}")[1]

    def export(self, run_id: str, to: str, version: int) -> Any:
        """End the run here as moved to ``to`` (if still at ``version``); its snapshot."""
        return self.call("POST", f"/runs/{run_id}/export", {"to": to, "version": version})[1]

    def import_run(self, snapshot: Any, source: str | None = None) -> Any:
        body: dict[str, Any] = {"snapshot": snapshot}
        if source:
            body["from"] = source
        return self.call("POST", "/runs/import", body)[1]
