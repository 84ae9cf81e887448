"""Constrained-generation benchmark: Rillet's llguidance masks against llama-server's GBNF, same GGUF and threads.

Both servers run greedy on the same GGUF, threads, slots and context; Rillet through its gRPC SDK (`json_schema`),
llama-server through its own streaming /completion (`json_schema`, which it turns into a GBNF grammar), prompt
caches on for both. Over the JSON Schema corpus (corpus.json: realistic schemas and ones hypothesis-jsonschema drew;
each prompt carries its schema), it measures:
- validity: every schema once, --slots streams at a time; every finished (STOP) output is checked with the
  jsonschema library, formats included (a schema a system cannot enforce is counted as refused);
- TTFT and tokens/s at each of --levels streams, side by side: schemas new to the server (TTFT includes compiling
  them), then the same requests again (a repeated schema: Rillet's compile cache);
- on Rillet, what constraining costs at --slots streams: the corpus's prompts with and without their schemas, each
  free request given its constrained output's length;
- the per-token mask cost: Rillet's outputs replayed in process through a fresh matcher (llguidance's mask, and
  applying it to a logits row of the model's vocabulary).
Writes bench/results/constraints_<time>.json and .md. Needs bench/build_llama_server.sh's llama-server for the
side-by-side (skipped with a note without it).
Run: .venv/bin/python bench/bench_constraints.py [--threads 2] [--slots 8] [--limit N] [--max-tokens 256]
"""
