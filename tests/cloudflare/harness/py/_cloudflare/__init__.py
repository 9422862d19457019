"""Stand-in for workerd's ``_cloudflare`` package: what the Python Workers SDK's patches import.

workerd (``src/pyodide/internal/topLevelEntropy``) ships ``allow_entropy`` and
``import_patch_manager``; the SDK's ``.pth`` file loads its patches only when ``_cloudflare``
can be imported. No local runtime provides it, so the harness supplies these two modules with
the same names and the same rules: entropy is refused while the Worker's top level runs
(production snapshots memory there), except where a patch allows a counted number of calls.
"""
