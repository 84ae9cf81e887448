"""Browser-side TTFT and TTFA, beside WebSocket and gRPC clients: rillet.bench.browser_latency (`--help`)."""

from rillet.bench.browser_latency import main

if __name__ == "__main__":
    main()
