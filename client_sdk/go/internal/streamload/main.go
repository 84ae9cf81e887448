// Command streamload keeps N one-shot Generate streams open against a Rillet server for a while (each stream's first
// request shorter by its index, so that restarts spread evenly), checks every stream (seq contiguous from 0, exactly one Finished and last, LENGTH, token ids = usage = max_tokens) and prints
// one JSON object: what bench/bench_frontend.py's Python clients report, at a fraction of their CPU per message.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// result matches bench_frontend.ClientResult field for field; times are CLOCK_MONOTONIC seconds, the clock
// Python's time.monotonic() reads on Linux, so windows line up across processes.
type result struct {
	Requests     int     `json:"requests"`
	Tokens       int     `json:"tokens"`
	Messages     int     `json:"messages"`
	BadStreams   int     `json:"bad_streams"`
	FirstError   string  `json:"first_error"`
	WindowTokens int     `json:"window_tokens"`
	Started      float64 `json:"started"`
	Ended        float64 `json:"ended"`
	CPUSeconds   float64 `json:"cpu_seconds"`
}

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
	var wg sync.WaitGroup
	for index := 0; index < *streams; index++ {
		wg.Add(1)
		go func(index int) {
			defer wg.Done()
			client := rilletv1.NewInferenceServiceClient(channels[index%len(channels)])
			mine := result{}
			// The first request's length is staggered so that the streams' restarts spread evenly over time
			// (a steady state) instead of all 256 finishing and restarting in one burst.
			tokens := uint32(1 + index*int(*maxTokens) / *streams)
			for monotonic() < stopAt {
				problem := stream(client, index, tokens, stopAt, &mine)
				tokens = uint32(*maxTokens)
				mine.Requests++
				if problem != "" {
					mine.BadStreams++
					if mine.FirstError == "" {
						mine.FirstError = problem
					}
				}
			}
			mu.Lock()
			total.Requests += mine.Requests
			total.Tokens += mine.Tokens
			total.Messages += mine.Messages
			total.BadStreams += mine.BadStreams
			total.WindowTokens += mine.WindowTokens
			if total.FirstError == "" {
				total.FirstError = mine.FirstError
			}
			mu.Unlock()
		}(index)
	}
	wg.Wait()
	total.Ended = monotonic()
	total.CPUSeconds = processCPU() - cpuBefore
	_ = json.NewEncoder(os.Stdout).Encode(total)
}

// stream runs one request to its end and returns what was wrong with it ("" when nothing).
func stream(client rilletv1.InferenceServiceClient, index int, maxTokens uint32, stopAt float64, out *result) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	request := &rilletv1.GenerateRequest{Params: &rilletv1.GenerateParams{
		Prompt:    &rilletv1.GenerateParams_Text{Text: fmt.Sprintf("stream %d: the river runs quietly past the mill ", index)},
		MaxTokens: proto.Uint32(maxTokens),
		Sampling:  &rilletv1.SamplingParams{Temperature: proto.Float32(0)},
	}}
	responses, err := client.Generate(ctx, request)
	if err != nil {
		return err.Error()
	}
	expected := uint64(0)
	tokens := 0
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
			n := len(kind.TokenDelta.GetTokenIds())
			tokens += n
			if monotonic() < stopAt {
				out.WindowTokens += n
			}
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
	if finished.GetReason() != rilletv1.FinishReason_FINISH_REASON_LENGTH || tokens != int(maxTokens) ||
		finished.GetUsage().GetOutputTokens() != maxTokens {
		return fmt.Sprintf("finish %v, %d ids, usage %d", finished.GetReason(), tokens, finished.GetUsage().GetOutputTokens())
	}
	return ""
}
