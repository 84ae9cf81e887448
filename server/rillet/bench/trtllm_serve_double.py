"""trtllm-serve's stand-in over the TensorRT-LLM TEST DOUBLE, for `bench_gpu.py --double` only: never a benchmark.

It answers what bench_gpu.py asks of trtllm-serve, `GET /health` and a streaming `POST /v1/completions` (SSE chunks of
`choices[0].text`, then a usage chunk and `data: [DONE]`), by driving the double's `LLM.generate_async` as
trtllm-serve drives the real one. So `make gpu-check` can run its whole logic on a machine without a GPU.
Usage: python bench/trtllm_serve_double.py --port 8000 --step-seconds 0.002 [--llm-args '{"max_batch_size": 8}']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from rillet.bench.results import ROOT


async def serve(port: int, llm: Any, sampling_params: Any) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            method, path, _ = (await reader.readline()).decode("latin-1").split(" ", 2)
            length = 0
            while (line := (await reader.readline()).strip()) != b"":
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            if method == "GET" and path == "/health":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            elif method == "POST" and path == "/v1/completions":
                await complete(json.loads(body), writer)
            else:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

    async def complete(request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        params = sampling_params(max_tokens=int(request["max_tokens"]), temperature=request.get("temperature", 0.0))
        result = llm.generate_async(request["prompt"], sampling_params=params, streaming=True)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        sent = 0
        try:
            async for output in result:
                text = output.outputs[0].text
                if len(text) > sent:
                    chunk = {"choices": [{"index": 0, "text": text[sent:]}]}
                    writer.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    sent = len(text)
                    await writer.drain()
        finally:
            if not result.finished:
                result.abort()  # the client went away (trtllm-serve polls for that; the double aborts at once)
        usage = {"choices": [], "usage": {"completion_tokens": len(result.outputs[0].token_ids)}}
        writer.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, required=True, help="one executor iteration of the double")
    parser.add_argument("--llm-args", default="{}", help="JSON of LLM(...) keywords, as trtllm-serve's options")
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.doubles.trtllm import install

    tensorrt_llm = install()
    tensorrt_llm._double.SIMULATION.step_seconds = opts.step_seconds
    llm = tensorrt_llm.LLM(model="rillet-double/tiny", **json.loads(opts.llm_args))
    try:
        asyncio.run(serve(opts.port, llm, tensorrt_llm.SamplingParams))
    except KeyboardInterrupt:
        pass
    finally:
        llm.shutdown()


if __name__ == "__main__":
    main()
