"""Speech output beside the engines: resampling, encoding and chunking, and what a listener heard."""

OPUS_RATE = 48_000
"""Ogg Opus is produced at 48 kHz, the rate every Opus decoder outputs (RFC 7845 §5.1)."""
OPUS_FRAME_MS = 20
"""libopus frame length: 20 ms, its default, the usual one for speech and WebRTC."""
OPUS_FRAME_SAMPLES = OPUS_RATE * OPUS_FRAME_MS // 1000
"""One Opus frame at 48 kHz: Ogg Opus chunks hold whole frames."""
