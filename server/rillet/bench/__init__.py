"""Rillet's benchmarks: `rillet bench`, the verifying raw client and statistics they share, and the bench/ harnesses.

Parts (each owns one thing):
- `stats`: the one percentile definition every figure uses, and the summaries built on it.
- `wire`: the one verifying raw client (rillet.v1 frames): a Stream checks one request's messages; `drain` reads a
  one-shot call into one; `RawSession` routes a Session call's messages to its requests.
- `loadgen`: `rillet bench` (workloads, closed and open loops, level summaries, the table, the command).
- `soak`: the soak's clients and scenarios, its leak checks and its report.
- `procs` and `results`: server processes and /proc readings; where results go (bench/results/ of the checkout).
- one module per harness behind a bench/*.py command (`cpu`, `floor_compare`, `ttft_breakdown`, ...).

A client tool: `rillet.server` never imports it (only the `rillet` command registers `rillet bench` from it).
"""
