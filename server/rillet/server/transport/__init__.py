"""The gRPC transport: servicer, proto⇄domain converters and status mapping; the only layer that sees *_pb2."""
