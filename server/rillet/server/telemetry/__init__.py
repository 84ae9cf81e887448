"""OpenTelemetry for Rillet: RPC spans and metrics (rpc.py), a span per request (requests.py), Prometheus, logs.

Set up once at the entrypoint (cli.py): `exports(config, os.environ)` (plan.py) says what is on; when anything is,
`runtime.Telemetry` builds the providers and hands the server its `observer` and `rpc` guard. Off, the server
keeps NULL_OBSERVER and no guard, and OpenTelemetry is not even imported (this package's root and plan.py and
logs.py import none of it). What Rillet does beside the SDK to make it cheap (its own histogram store, plain request
spans, an exporter child) is fastpath/, whose docstring says what of the SDK it skips.
"""
