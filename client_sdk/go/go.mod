module github.com/rillet-dev/rillet/client_sdk/go

go 1.24.0

require (
	github.com/cncf/xds/go v0.0.0-20251210132809-ee656c7534f5
	golang.org/x/sys v0.40.0
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260120221211-b8f7ae30c516
	google.golang.org/grpc v1.80.0
	google.golang.org/protobuf v1.36.11
)

require (
	github.com/envoyproxy/protoc-gen-validate v1.3.0 // indirect
	golang.org/x/net v0.49.0 // indirect
	golang.org/x/text v0.33.0 // indirect
)
