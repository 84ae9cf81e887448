package rillet

import (
	"encoding/json"

	"google.golang.org/grpc"
	// weighted_round_robin is registered by this package's init; grpc-go imports it only for xDS itself.
	_ "google.golang.org/grpc/balancer/weightedroundrobin"
	// Client-side health checking (healthCheckConfig) is registered by this package's init.
	_ "google.golang.org/grpc/health"
)

// HealthService is the grpc.health.v1 service a balanced connection watches on each backend: NOT_SERVING while
// it warms up or drains, and such a backend gets no new calls.
const HealthService = "rillet.v1.InferenceService"

// WeightedRoundRobin is grpc-go's weighted_round_robin configuration (gRFC A58) on the servers' out-of-band ORCA
// load reports: a backend's weight is its requests per second over its utilization (slots, queue and KV cache in
// use), so new calls go where there is room. Reports come every second on one stream per connection; a weight is
// used once reports have come for the blackout period. A backend that reports nothing gets the mean weight.
var WeightedRoundRobin = map[string]any{
	"enableOobLoadReport":    true,
	"oobReportingPeriod":     "1s",
	"blackoutPeriod":         "2s",
	"weightUpdatePeriod":     "1s",
	"weightExpirationPeriod": "60s",
}

// ServiceConfig is the service config of a connection balanced over every address its target resolves to (a
// list as "ipv4:a:p,b:p", or "dns:///name:port": a Kubernetes headless Service): weighted by the backends' load
// reports, or plain round_robin when weighted is false; either way skipping backends whose health is NOT_SERVING.
// One-shot calls and the control plane's reads are retried on UNAVAILABLE before their first response, never
// after (a started stream is never replayed); sessions and Abort are never retried.
func ServiceConfig(weighted bool) string {
	policy := map[string]any{"round_robin": map[string]any{}}
	if weighted {
		policy = map[string]any{"weighted_round_robin": WeightedRoundRobin}
	}
	var names []map[string]string
	for _, m := range []string{"ListModels", "Generate", "Synthesize"} {
		names = append(names, map[string]string{"service": "rillet.v1.InferenceService", "method": m})
	}
	for _, m := range []string{"GetServerInfo", "GetLoad", "WatchLoad", "Tokenize", "Detokenize", "CountTokens"} {
		names = append(names, map[string]string{"service": "rillet.v1.ControlService", "method": m})
	}
	config := map[string]any{
		"loadBalancingConfig": []any{policy},
		"healthCheckConfig":   map[string]string{"serviceName": HealthService},
		"methodConfig": []any{map[string]any{
			"name": names,
			"retryPolicy": map[string]any{
				"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s", "backoffMultiplier": 2,
				"retryableStatusCodes": []string{"UNAVAILABLE"},
			},
		}},
	}
	out, err := json.Marshal(config)
	if err != nil {
		panic(err) // a literal: cannot fail
	}
	return string(out)
}

// Balanced is the dial option of a balanced connection (ServiceConfig(true)):
//
//	conn, err := grpc.NewClient("dns:///rillet-headless.ns.svc.cluster.local:50051",
//		grpc.WithTransportCredentials(creds), rillet.Balanced())
func Balanced() grpc.DialOption {
	return grpc.WithDefaultServiceConfig(ServiceConfig(true))
}
