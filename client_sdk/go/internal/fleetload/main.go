// Command fleetload is the Go client of bench/fleet_routing.py: it opens one Session per arrival, at the arrival
// times it is given (seconds from its start, a Poisson stream the bench draws once for every client and mode), over
// a connection balanced across the target's backends (weighted_round_robin on ORCA reports, or round_robin), runs
// one generation in each, and prints one JSON object: each session's time to first token, and how sessions ended.
// A session refused with UNAVAILABLE before its first token reached a draining replica: it is opened again (up to
// 5 times), and the refusal's time is reported (CLOCK_MONOTONIC seconds, Python's time.monotonic() on Linux).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/proto"

	"github.com/rillet-dev/rillet/client_sdk/go/rillet"
	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

type result struct {
	TTFTSeconds   []float64      `json:"ttft_s"`         // per session that got a token, in arrival order of completion
	OK            int            `json:"ok"`             // sessions whose generation finished LENGTH with every token
	Lost          int            `json:"lost"`           // sessions that failed (after the retries of refusals)
	LostReasons   map[string]int `json:"lost_reasons"`   // what failed them, by code and reason
	DrainRefusals []float64      `json:"drain_refusals"` // monotonic times of UNAVAILABLE refusals before output
	Started       float64        `json:"started"`        // monotonic time of arrival 0
	ClientCPUSecs float64        `json:"cpu_seconds"`
}

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func main() {
	addresses := flag.String("addresses", "", "every backend, host:port,host:port,...")
	arrivalsPath := flag.String("arrivals", "", "JSON list of arrival times, seconds from the start")
	balancing := flag.String("balancing", "weighted", "weighted (weighted_round_robin on ORCA) or round_robin")
	maxTokens := flag.Uint("max-tokens", 32, "tokens per session's generation")
	priority := flag.String("priority", "", "batch: the generations' admission class")
	flag.Parse()
	data, err := os.ReadFile(*arrivalsPath)
	if err != nil {
		panic(err)
	}
	var arrivals []float64
	if err := json.Unmarshal(data, &arrivals); err != nil {
		panic(err)
	}
	// grpc-go resolves no "ipv4:" list: a manual resolver hands it the addresses, as DNS would a headless Service's.
	fleet := manual.NewBuilderWithScheme("fleet")
	var state resolver.State
	for _, address := range strings.Split(*addresses, ",") {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: address})
	}
	fleet.InitialState(state)
	conn, err := grpc.NewClient("fleet:///replicas", grpc.WithResolvers(fleet),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(rillet.ServiceConfig(*balancing == "weighted")))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	client := rillet.NewClient(conn)

	out := result{LostReasons: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	out.Started = monotonic()
	for index, at := range arrivals {
		if wait := out.Started + at - monotonic(); wait > 0 {
			time.Sleep(time.Duration(wait * float64(time.Second)))
		}
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			for attempt := 0; ; attempt++ {
				ttft, reason, refused := one(client, index, uint32(*maxTokens), *priority == "batch")
				mu.Lock()
				switch {
				case refused && attempt < 5:
					out.DrainRefusals = append(out.DrainRefusals, monotonic())
					mu.Unlock()
					continue
				case reason != "":
					out.Lost++
					out.LostReasons[reason]++
				default:
					out.OK++
					out.TTFTSeconds = append(out.TTFTSeconds, ttft)
				}
				mu.Unlock()
				return
			}
		}(index)
	}
	wg.Wait()
	_ = json.NewEncoder(os.Stdout).Encode(out)
}

// one runs a session with one generation: its time to first token, what went wrong ("" when nothing), and whether
// it was refused UNAVAILABLE before any output (a draining replica: safe to open again).
func one(client *rillet.Client, index int, maxTokens uint32, batch bool) (float64, string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	session, err := client.Session(ctx)
	if err != nil {
		return 0, describe(err), unavailable(err)
	}
	defer session.Close()
	params := &rilletv1.GenerateParams{
		Prompt:    &rilletv1.GenerateParams_Text{Text: fmt.Sprintf("session %d: the river runs past the mill", index)},
		MaxTokens: proto.Uint32(maxTokens),
	}
	if batch {
		params.Priority = rilletv1.Priority_PRIORITY_BATCH
	}
	sent := monotonic()
	request, err := session.Generate(ctx, "g", &rilletv1.StartGenerate{Params: params})
	if err != nil {
		return 0, describe(err), unavailable(err)
	}
	ttft, tokens := 0.0, 0
	for msg, err := range request.Events() {
		if err != nil {
			return 0, describe(err), tokens == 0 && unavailable(err)
		}
		if delta := msg.GetTokenDelta(); delta != nil {
			if tokens == 0 {
				ttft = monotonic() - sent
			}
			tokens += len(delta.GetTokenIds())
		}
		if finished := msg.GetFinished(); finished != nil {
			if finished.GetReason() != rilletv1.FinishReason_FINISH_REASON_LENGTH || tokens != int(maxTokens) {
				return 0, fmt.Sprintf("finished %v with %d tokens", finished.GetReason(), tokens), false
			}
		}
	}
	if err := session.CloseSend(); err != nil {
		return 0, describe(err), false
	}
	if err := session.Wait(); err != nil {
		return 0, describe(err), false
	}
	return ttft, "", false
}

func unavailable(err error) bool {
	var e *rillet.Error
	return errors.As(err, &e) && e.Code == codes.Unavailable
}

func describe(err error) string {
	var e *rillet.Error
	if errors.As(err, &e) {
		return fmt.Sprintf("%v %s", e.Code, e.Reason)
	}
	return err.Error()
}
