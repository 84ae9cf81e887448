"""CPU text benchmark: Rillet against llama.cpp's `llama-server -np 8` and llama-cpp-python's `llama_cpp.server`.

Same GGUF, threads, context and prompts for all three; Rillet through its gRPC SDK, the peers through their
streaming OpenAI-compatible HTTP APIs (/v1/completions, SSE). Rillet runs with its own slot count (default: sized
from the context) unless --rillet-slots is given; llama-server with -np --slots.
Prompt caches: `rillet` and `llama-server` run with theirs on (Rillet's prefix cache, llama-server's cache_prompt);
`rillet-nocache` and `llama-server-nocache` with them off (--prompt-cache both adds those variants).
Workloads (rillet.bench.cpu.workloads), each with its own defaults that any flag given overrides: `standard` (12
short prompts), `shared-prefix` (each of them behind one shared system prompt of --prefix-tokens tokens, as a chat
deployment sends them), and issue 26's prefill-heavy ones, whose every request has a prompt of its own:
`distinct-long` (--prompt-tokens 512, 8 streams, 32 output tokens, 16,384 KV cells: llama-server -np 8 gets 2,048 per
slot), `long-prompt` (one 3,500-token prompt at a time; llama-server -np 1 -c 4096, Rillet one slot) and `mixed`
(rillet.bench.cpu.mixed: --chat-streams streams decoding --chat-tokens tokens from short prompts, alone, then again
while --long-requests requests with distinct --prompt-tokens prompts arrive at once: the chat streams' gap p99
beside them against their own alone, and the long prompts' TTFT against llama-server's on the same mix).
Per concurrency level: client-side TTFT p50/p99, inter-token latency p50/p99 (per token: a delta covering k tokens
counts k gaps of 1/k), aggregate tokens/s (tokens of the level / its wall time), peak server RSS, and server and
client CPU-seconds. The whole sweep is repeated (`--sweeps`, system order rotated each time) so machine noise shows:
the tables give the median over sweeps and the min-max spread.

Needs bench/build_llama_server.sh (the llama-server binary) and, for llama_cpp.server, its server dependencies: the
`bench` extra (pip install -e ".[bench]"), or a folder given by --peer-site (put first on that server's PYTHONPATH,
e.g. pip install --target bench/.build/peer-site --no-deps ...). A system whose prerequisites are missing is
skipped with a note.
Run: .venv/bin/python bench/bench_cpu.py [--threads 2] [--sweeps 3] [--systems rillet llama-server llama_cpp.server]
     [--workload shared-prefix|distinct-long|long-prompt|mixed] [--prompt-cache both]
"""
