"""The soak's verdict (what failed, if anything) and its Markdown report."""

from __future__ import annotations

import argparse
from typing import Any


def samples_a_minute(opts: argparse.Namespace) -> int:
    """How many RSS samples --sample-every-s takes a minute (at least 1): the console and the .md show one of them."""
    every_s: float = opts.sample_every_s
    return max(1, round(60 / every_s))


def verdict(opts: argparse.Namespace, result: dict[str, Any]) -> list[str]:
    """What failed, empty when the soak passed."""
    leaks = result["leaks"]
    failed = []
    if result["lost"]:
        failed.append(f"{len(result['lost'])} lost streams")
    if result["violations"]:
        failed.append(f"{len(result['violations'])} contract violations")
    never = {k: v for k, v in result["codes"].items() if k.split()[0] in ("UNKNOWN", "INTERNAL")}
    if never:
        failed.append(f"UNKNOWN/INTERNAL seen: {never}")
    if not leaks["slots_ok"]:
        failed.append("slots not all free after the soak")
    if not leaks["threads_ok"] or not leaks["fds_ok"]:
        failed.append("threads or fds above baseline")
    if result["rss"]["late_growth_mb"] > opts.max_late_growth_mb:
        failed.append(f"RSS grew {result['rss']['late_growth_mb']:.1f} MB over the second half")
    if result["server_log"]["errors"]:
        failed.append(f"{result['server_log']['errors']} ERROR lines in the server log")
    if result["server_exit"] != 0:
        failed.append(f"server exited {result['server_exit']} on SIGTERM")
    return failed


def report(opts: argparse.Namespace, meta: dict[str, Any], result: dict[str, Any], failed: list[str]) -> str:
    leaks = result["leaks"]
    md = [
        f"# Rillet soak {meta['date']}: {'PASS' if not failed else 'FAIL: ' + '; '.join(failed)}",
        "",
        *(f"- {k}: {v}" for k, v in meta.items()),
        "",
        f"{result['elapsed_s']:.0f} s of load; calls open at once (sampled each second): mean "
        f"{result['open_calls']['mean']:.0f}, peak {result['open_calls']['max']}.",
        "",
        "## Verification",
        "",
        f"- streams verified (seq 0..n without a gap, one terminal, nothing after it): {result['streams_verified']}",
        f"- lost (no terminal, a seq gap, a message after the terminal, a hang): **{len(result['lost'])}**",
        f"- contract violations (an unexpected code, reason or message; UNKNOWN; INTERNAL): "
        f"**{len(result['violations'])}**",
        f"- leaked: **{'none' if leaks['slots_ok'] and leaks['threads_ok'] and leaks['fds_ok'] else 'YES'}** (below)",
        "",
        "## Served (completed requests) by kind",
        "",
        "| kind | served |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["served"].items()),
        f"| **total** | **{sum(result['served'].values())}** |",
        "",
        "## Cancelled by the client (where the cancel landed, from the server's Finished timings)",
        "",
        "| request: where | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["cancelled"].items()),
        "",
        "## Bad input (each got its expected code and reason)",
        "",
        "| input | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["bad_input"].items()),
        "",
        "## Every non-OK status seen, by code and reason",
        "",
        "RESOURCE_EXHAUSTED (admission queue full, with a RetryInfo hint) is expected under this load: the client",
        "waited retry_after and retried. The other codes are the bad inputs' expected answers.",
        "",
        "| code reason | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["codes"].items()),
        "",
        "## Events",
        "",
        "| event | count |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in result["events"].items()),
        "",
        "## Latency",
        "",
        "Client: from sending the start (of the attempt that was admitted) to the first output. Server:",
        "Finished.timings (time_to_first_output and queue_duration, from arrival), completed requests only. Both",
        "include the admission queue, full for most of the run.",
        "",
        "| metric | n | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {k} | {v['n']} | {v['p50_s'] * 1e3:.0f} | {v['p99_s'] * 1e3:.0f} |"
            for k, v in result["latency"].items()
        ),
        "",
        "## Server process (/proc)",
        "",
        "| elapsed s | RSS MB | threads | open fds | calls open | served so far |",
        "|---|---|---|---|---|---|",
        *(
            f"| {s['elapsed_s']:.0f} | {s['rss_mb']:.1f} | {s['threads']} | {s['fds']} | {s['open_calls']} "
            f"| {s['served']} |"
            for s in result["rss"]["samples"][:: samples_a_minute(opts)]  # a row a minute
        ),
        "",
        f"RSS at start {result['rss']['start_mb']:.1f} MB (after the warm-up slot check), at the end "
        f"{result['rss']['end_mb']:.1f} MB; rise over the second half by its trend line (least squares through "
        f"every sample of it, the JSON has them all) {result['rss']['late_growth_mb']:+.1f} MB (allowed "
        f"{opts.max_late_growth_mb} MB); its highest sample minus the first "
        f"{result['rss']['late_peak_rise_mb']:+.1f} MB.",
        "",
        "## Leak check (every client gone)",
        "",
    ]
    for when in ("before", "after"):
        for kind in ("generate", "synthesize"):
            c = leaks[f"slot_check_{when}"][kind]
            queue = max(c["queue_s"], default=float("nan"))
            md.append(
                f"- {when} the soak{' (the warm-up, not judged)' if when == 'before' else ''}, "
                f"{c['slots']} concurrent {kind} requests: {len(c['queue_s'])} finished "
                f"({', '.join(sorted(set(c['reasons'])))}), server queue_duration max {queue * 1e3:.1f} ms "
                f"(allowed {opts.slot_queue_max_s * 1e3:.0f} ms), total max {max(c['total_s'], default=0):.2f} s"
                + (f"; problems: {c['problems'][:3]}" if c["problems"] else "")
            )
    for kind, c in leaks["slot_check_after_30s_more"].items():
        md.append(
            f"- the after-soak check failed, so again 30 s later: {len(c['queue_s'])} of {c['slots']} {kind} requests "
            f"finished, queue_duration max {max(c['queue_s'], default=float('nan')) * 1e3:.1f} ms"
            + (f"; problems: {c['problems'][:3]}" if c["problems"] else "")
        )
    b, a = leaks["baseline"], leaks["after"]
    md += [
        f"- threads: baseline {b['threads']}, after {a['threads']} (allowed +{leaks['thread_slack']}: asyncio's "
        f"default executor grows on demand and keeps its threads); open fds: baseline {b['fds']}, after {a['fds']} "
        f"(allowed +{leaks['fd_slack']}); RSS after the leak check {a['rss_mb']:.1f} MB.",
        f"- server fds by kind: baseline {leaks['fd_kinds_baseline']}, after {leaks['fd_kinds_after']}; TCP "
        f"connections on the server's port after: {leaks['tcp_states_after'] or 'none'}.",
        "",
        f"Server log ({result['server_log']['lines']} lines at WARNING and above): {result['server_log']['errors']} "
        f"ERROR lines; exit status on SIGTERM: {result['server_exit']}.",
    ]
    if result["server_log"]["first_errors"]:
        md += ["", "```", *result["server_log"]["first_errors"], "```"]
    if result["lost"] or result["violations"]:
        md += ["", "## Lost and violations (first 30 each)", "", *(f"- lost: {x}" for x in result["lost"][:30])]
        md += [f"- violation: {x}" for x in result["violations"][:30]]
    return "\n".join(md) + "\n"
