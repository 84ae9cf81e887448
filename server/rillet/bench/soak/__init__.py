"""The soak: `rillet serve` on its real engines under hundreds of concurrent clients for minutes, every stream verified.

Parts: `catalog` (what the clients send: prompts, texts, undecodable frames), `tally` (what they count and how a
stream is judged), `context` (the state every scenario shares, and its accounting: retries, finishes, expected
errors), `session` (the soak's Session call: the raw client's, knowing which rejections it provoked), the scenarios
(`oneshot`, `sessions`, `bad_input`, `sdk`), `clients` (the client loop over the scenarios, with its hang watch),
`leaks` (slot checks and /proc readings), `report` (the verdict and the Markdown) and `run` (the command).
"""
