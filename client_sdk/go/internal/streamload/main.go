// Command streamload is a lean load client for Rillet's benchmarks (and the floor's: bench/floor.py speaks the same
// contract). It keeps N streams busy for a while: one-shot Generate calls back to back (-rpc generate), or requests
// back to back on one Session per stream (-rpc session); each stream's first request is shorter by its index so
// restarts spread evenly. Every request is checked (seq contiguous from 0, exactly one Finished and last, LENGTH,
// token ids = usage = max_tokens), and it prints one JSON object: counts, the tokens in the measurement window, the
// gaps between a request's token messages, and its own CPU, a few µs per message where a grpc.aio client takes 30-50.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// result matches rillet.bench.frontend.ClientResult field for field; times are CLOCK_MONOTONIC seconds, the clock
// Python's time.perf_counter() and time.monotonic() read on Linux, so windows line up across processes.
type result struct {
	Requests     int     `json:"requests"`
	Tokens       int     `json:"tokens"`
	Messages     int     `json:"messages"`
	BadStreams   int     `json:"bad_streams"`
	FirstError   string  `json:"first_error"`
	WindowTokens int     `json:"window_tokens"` // tokens that arrived between warm-up and `seconds`
	Started      float64 `json:"started"`
	Ended        float64 `json:"ended"`
	CPUSeconds   float64 `json:"cpu_seconds"`
	// Gaps between consecutive token messages of one request inside the window, milliseconds: p50, p99, max.
	GapP50Ms float64 `json:"gap_p50_ms"`
	GapP99Ms float64 `json:"gap_p99_ms"`
	GapMaxMs float64 `json:"gap_max_ms"`
	// Time to first token: from sending a request to its first token delta, requests that began in the window.
	TTFTP50Ms float64 `json:"ttft_p50_ms"`
	TTFTP99Ms float64 `json:"ttft_p99_ms"`
	gaps      []float64
	ttfts     []float64
}

// warmAt: tokens and gaps before it are not counted in the window (set once, before the streams start).
var warmAt float64

func monotonic() float64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return float64(ts.Sec) + float64(ts.Nsec)/1e9
}

func processCPU() float64 {
	var usage unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &usage)
	return float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
}

func main() {
	address := flag.String("address", "127.0.0.1:50051", "server address")
	streams := flag.Int("streams", 256, "concurrent streams")
	conns := flag.Int("conns", 2, "HTTP/2 connections the streams share")
	seconds := flag.Float64("seconds", 20, "open new requests for this long, then let the last ones finish")
	maxTokens := flag.Uint("max-tokens", 256, "tokens per request")
	rpc := flag.String("rpc", "generate", "generate: one-shot Generate calls; session: requests back to back on one Session each")
	warmup := flag.Float64("warmup", 0, "seconds at the start whose tokens and gaps are not counted in the window")
	stagger := flag.Bool("stagger", true, "each stream's first request shorter by its index (restarts spread evenly)")
	flag.Parse()

	channels := make([]*grpc.ClientConn, *conns)
	for i := range channels {
		conn, err := grpc.NewClient(*address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		defer conn.Close()
		conn.Connect()
		channels[i] = conn
	}

	var mu sync.Mutex
	total := result{}
	cpuBefore := processCPU()
	total.Started = monotonic()
	stopAt := total.Started + *seconds
	warmAt = total.Started + *warmup
	var wg sync.WaitGroup
	for index := 0; index < *streams; index++ {
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			client := rilletv1.NewInferenceServiceClient(channels[index%len(channels)])
			mine := result{}
			// The first request's length is staggered so that the streams' restarts spread evenly over time
			// (a steady state) instead of all 256 finishing and restarting in one burst.
			tokens := uint32(*maxTokens)
			if *stagger {
				tokens = uint32(1 + index*int(*maxTokens) / *streams)
			}
			fail := func(problem string) {
				if problem != "" {
					mine.BadStreams++
					if mine.FirstError == "" {
						mine.FirstError = problem
					}
				}
			}
			if *rpc == "session" {
				fail(session(client, index, tokens, uint32(*maxTokens), stopAt, &mine))
			} else {
				for monotonic() < stopAt {
					fail(stream(client, index, tokens, stopAt, &mine))
					mine.Requests++
					tokens = uint32(*maxTokens)
				}
			}
			mu.Lock()
			total.Requests += mine.Requests
			total.Tokens += mine.Tokens
			total.Messages += mine.Messages
			total.BadStreams += mine.BadStreams
			total.WindowTokens += mine.WindowTokens
			total.gaps = append(total.gaps, mine.gaps...)
			total.ttfts = append(total.ttfts, mine.ttfts...)
			if total.FirstError == "" {
				total.FirstError = mine.FirstError
			}
			mu.Unlock()
		}(index)
	}
	wg.Wait()
	total.Ended = monotonic()
	total.CPUSeconds = processCPU() - cpuBefore
	if len(total.gaps) > 0 {
		sort.Float64s(total.gaps)
		total.GapP50Ms, total.GapP99Ms = percentile(total.gaps, 50), percentile(total.gaps, 99)
		total.GapMaxMs = total.gaps[len(total.gaps)-1]
	}
	if len(total.ttfts) > 0 {
		sort.Float64s(total.ttfts)
		total.TTFTP50Ms, total.TTFTP99Ms = percentile(total.ttfts, 50), percentile(total.ttfts, 99)
	}
	_ = json.NewEncoder(os.Stdout).Encode(total)
}

// percentile is the q-th percentile (0-100) of ascending samples by the benchmarks' one definition
// (rillet.bench.stats.percentile, Hyndman and Fan's 7, numpy's default): the value at the 0-based position
// (n-1)*q/100, interpolated linearly between the two samples around it.
func percentile(sorted []float64, q float64) float64 {
	position := float64(len(sorted)-1) * q / 100
	low := int(position)
	high := min(low+1, len(sorted)-1)
	return sorted[low] + (sorted[high]-sorted[low])*(position-float64(low))
}

// stream runs one request to its end and returns what was wrong with it ("" when nothing).
func stream(client rilletv1.InferenceServiceClient, index int, maxTokens uint32, stopAt float64, out *result) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sent := monotonic()
	responses, err := client.Generate(ctx, &rilletv1.GenerateRequest{Params: params("stream", index, maxTokens)})
	if err != nil {
		return err.Error()
	}
	expected := uint64(0)
	tokens := 0
	last := 0.0
	var finished *rilletv1.Finished
	problem := ""
	for {
		response, err := responses.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) && problem == "" {
				problem = err.Error()
			}
			break
		}
		out.Messages++
		if response.GetSeq() != expected || finished != nil {
			problem = fmt.Sprintf("seq %d where %d was due (or after the finish)", response.GetSeq(), expected)
		}
		expected++
		switch kind := response.GetKind().(type) {
		case *rilletv1.GenerateResponse_TokenDelta:
			tokens += out.arrived(len(kind.TokenDelta.GetTokenIds()), &last, sent, stopAt)
		case *rilletv1.GenerateResponse_Finished:
			finished = kind.Finished
		default:
			problem = fmt.Sprintf("unexpected %T", kind)
		}
	}
	out.Tokens += tokens
	if problem != "" {
		return problem
	}
	if finished == nil {
		return "no Finished"
	}
	return finishProblem(finished, tokens, maxTokens)
}

// session runs requests back to back on one Session stream until stopAt, then half-closes; it returns what was
// wrong with the first bad request ("" when nothing).
func session(client rilletv1.InferenceServiceClient, index int, first, maxTokens uint32, stopAt float64, out *result) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	calls, err := client.Session(ctx)
	if err != nil {
		return err.Error()
	}
	problem := ""
	tokens := first
	for n := 0; monotonic() < stopAt; n++ {
		id := fmt.Sprintf("s%d-r%d", index, n)
		start := &rilletv1.SessionRequest{RequestId: id, Kind: &rilletv1.SessionRequest_StartGenerate{
			StartGenerate: &rilletv1.StartGenerate{Params: params("session", index, tokens)},
		}}
		sent := monotonic()
		if err := calls.Send(start); err != nil {
			return err.Error()
		}
		out.Requests++
		expected, got, last := uint64(0), 0, 0.0
		var finished *rilletv1.Finished
		for finished == nil {
			response, err := calls.Recv()
			if err != nil {
				return fmt.Sprintf("request %s: %v", id, err)
			}
			out.Messages++
			if response.GetRequestId() != id || response.GetSeq() != expected {
				problem = fmt.Sprintf("request %q seq %d where %s seq %d was due", response.GetRequestId(), response.GetSeq(), id, expected)
			}
			expected++
			switch kind := response.GetKind().(type) {
			case *rilletv1.SessionResponse_TokenDelta:
				got += out.arrived(len(kind.TokenDelta.GetTokenIds()), &last, sent, stopAt)
			case *rilletv1.SessionResponse_Finished:
				finished = kind.Finished
			default:
				return fmt.Sprintf("request %s: unexpected %T", id, kind)
			}
		}
		out.Tokens += got
		if wrong := finishProblem(finished, got, tokens); problem == "" && wrong != "" {
			problem = fmt.Sprintf("request %s: %s", id, wrong)
		}
		tokens = maxTokens
	}
	if err := calls.CloseSend(); err != nil {
		return err.Error()
	}
	if _, err := calls.Recv(); !errors.Is(err, io.EOF) && problem == "" {
		problem = fmt.Sprintf("after the half-close: %v", err)
	}
	return problem
}

// params asks for maxTokens tokens, greedy, from a prompt naming the stream.
func params(what string, index int, maxTokens uint32) *rilletv1.GenerateParams {
	return &rilletv1.GenerateParams{
		Prompt:    &rilletv1.GenerateParams_Text{Text: fmt.Sprintf("%s %d: the river runs quietly past the mill ", what, index)},
		MaxTokens: proto.Uint32(maxTokens),
		Sampling:  &rilletv1.SamplingParams{Temperature: proto.Float32(0)},
	}
}

// arrived counts a message of n token ids arriving now: in the window, its tokens and the gap since the request's
// previous message (`last`, updated), or for its first message the time since the request was sent (`sent`).
// It returns n.
func (out *result) arrived(n int, last *float64, sent float64, stopAt float64) int {
	now := monotonic()
	if warmAt <= now && now < stopAt {
		out.WindowTokens += n
		if *last > 0 {
			out.gaps = append(out.gaps, (now-*last)*1e3)
		} else if warmAt <= sent {
			out.ttfts = append(out.ttfts, (now-sent)*1e3)
		}
	}
	*last = now
	return n
}

// finishProblem says what is wrong with a request's end ("" when nothing): it must end LENGTH with want token ids,
// as many as its usage reports.
func finishProblem(finished *rilletv1.Finished, got int, want uint32) string {
	if finished.GetReason() != rilletv1.FinishReason_FINISH_REASON_LENGTH || got != int(want) ||
		finished.GetUsage().GetOutputTokens() != want {
		return fmt.Sprintf("finish %v, %d ids, usage %d", finished.GetReason(), got, finished.GetUsage().GetOutputTokens())
	}
	return ""
}
