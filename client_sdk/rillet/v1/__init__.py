"""Generated protobuf messages and gRPC stubs of the rillet.v1 contract (see GENERATED.md)."""
