"""Cloud Function entry point: serves refluxo's HTTP API (``--entry-point refluxo``)."""

import functions_framework

from refluxo.gcp.function import create_handler

_handler = create_handler()


@functions_framework.http
def refluxo(request):  # type: ignore[no-untyped-def]
    return _handler(request)
