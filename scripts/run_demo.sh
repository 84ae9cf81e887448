#!/usr/bin/env bash
# `make run`: serve the default engines (and the demo page on the WebSocket edge), wait until healthy, stream a demo
# completion, then keep serving.
set -euo pipefail
BIN=.venv/bin
TARGET="${RILLET_HOST:-127.0.0.1}:${RILLET_PORT:-50051}"
PAGE="http://${RILLET_HOST:-127.0.0.1}:${RILLET_WEBSOCKET__PORT:-50080}/"
RILLET_WEBSOCKET__ENABLED=true RILLET_WEBSOCKET__PAGE=true "$BIN/rillet" serve &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true; wait "$server" || true' EXIT
"$BIN/rillet" health --target "$TARGET" --wait 600
"$BIN/rillet" models --target "$TARGET"
"$BIN/rillet" generate --target "$TARGET" --max-tokens 48 "The river ran past the old mill, and"
"$BIN/rillet" speak --target "$TARGET" --from-generate --max-tokens 32 -o demo.wav "A short weather report: today will be"
echo
echo "Serving gRPC on $TARGET. Try: $BIN/rillet generate --target $TARGET \"Once upon a time\""
echo "Chat and voice in a browser: open $PAGE   (Ctrl-C stops the server)"
wait "$server"
