// Package rillet is a thin, idiomatic layer over the generated rillet.v1 gRPC stubs (package rilletv1):
// iterators over each stream, typed errors carrying the server's ErrorInfo and RetryInfo, and a Session that
// multiplexes many requests on one bidirectional call, with context cancellation sent as Cancel.
//
//	conn, err := grpc.NewClient("127.0.0.1:50051", grpc.WithTransportCredentials(insecure.NewCredentials()))
//	client := rillet.NewClient(conn)
//	for msg, err := range client.Generate(ctx, &rilletv1.GenerateParams{Prompt: &rilletv1.GenerateParams_Text{Text: "Hi"}}) {
//		if err != nil { ... } // an *rillet.Error
//		fmt.Print(msg.GetTokenDelta().GetText())
//	}
//
// The generated messages and stubs are in github.com/rillet-dev/rillet/client_sdk/go/rillet/v1; use them
// directly for anything this layer does not cover.
package rillet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"

	"google.golang.org/grpc"

	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// Client calls a Rillet server over one gRPC connection (safe for concurrent use): InferenceService and the
// control plane (ControlService).
type Client struct {
	stub    rilletv1.InferenceServiceClient
	control rilletv1.ControlServiceClient
}

// NewClient wraps a connection, e.g. from grpc.NewClient (with Balanced() for several backends); the caller owns
// and closes it.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return &Client{stub: rilletv1.NewInferenceServiceClient(conn), control: rilletv1.NewControlServiceClient(conn)}
}

// Stub is the generated client, for calls this layer does not wrap.
func (c *Client) Stub() rilletv1.InferenceServiceClient { return c.stub }

// ListModels returns every model and voice the server serves.
func (c *Client) ListModels(ctx context.Context, opts ...grpc.CallOption) ([]*rilletv1.Model, error) {
	resp, err := c.stub.ListModels(ctx, &rilletv1.ListModelsRequest{}, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp.GetModels(), nil
}

// Generate streams one generation: token deltas, then one message whose Finished is set. A failure ends the
// iteration with an *Error (the message is then nil). Breaking out of the loop, or cancelling ctx, cancels the
// call and the server aborts the request. The context's deadline is the call's deadline.
func (c *Client) Generate(
	ctx context.Context, params *rilletv1.GenerateParams, opts ...grpc.CallOption,
) iter.Seq2[*rilletv1.GenerateResponse, error] {
	return c.GenerateRequest(ctx, &rilletv1.GenerateRequest{Params: params}, opts...)
}

// GenerateRequest is Generate with the whole request: its RequestId names it for Abort from another call.
func (c *Client) GenerateRequest(
	ctx context.Context, req *rilletv1.GenerateRequest, opts ...grpc.CallOption,
) iter.Seq2[*rilletv1.GenerateResponse, error] {
	return func(yield func(*rilletv1.GenerateResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.stub.Generate(ctx, req, opts...)
		if err != nil {
			yield(nil, FromError(err))
			return
		}
		drain(stream, yield, func(m *rilletv1.GenerateResponse) uint64 { return m.GetSeq() },
			func(m *rilletv1.GenerateResponse) bool { return m.GetFinished() != nil })
	}
}

// Synthesize streams one synthesis: audio chunks, then one message whose Finished is set; as Generate.
func (c *Client) Synthesize(
	ctx context.Context, params *rilletv1.SynthesizeParams, opts ...grpc.CallOption,
) iter.Seq2[*rilletv1.SynthesizeResponse, error] {
	return c.SynthesizeRequest(ctx, &rilletv1.SynthesizeRequest{Params: params}, opts...)
}

// SynthesizeRequest is Synthesize with the whole request: its RequestId names it for Abort from another call.
func (c *Client) SynthesizeRequest(
	ctx context.Context, req *rilletv1.SynthesizeRequest, opts ...grpc.CallOption,
) iter.Seq2[*rilletv1.SynthesizeResponse, error] {
	return func(yield func(*rilletv1.SynthesizeResponse, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.stub.Synthesize(ctx, req, opts...)
		if err != nil {
			yield(nil, FromError(err))
			return
		}
		drain(stream, yield, func(m *rilletv1.SynthesizeResponse) uint64 { return m.GetSeq() },
			func(m *rilletv1.SynthesizeResponse) bool { return m.GetFinished() != nil })
	}
}

// ErrProtocol marks a server that broke the stream contract (a seq gap, a message after the terminal one, a
// message for an unknown request).
var ErrProtocol = errors.New("rillet: protocol violation")

// drain yields a one-shot stream's messages, checking that seq counts 0, 1, 2, ... and that the terminal
// message comes last.
func drain[M any](
	stream grpc.ServerStreamingClient[M], yield func(*M, error) bool, seq func(*M) uint64, terminal func(*M) bool,
) {
	var next uint64
	for {
		msg, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				yield(nil, protocolError("the stream ended with no terminal message"))
				return
			}
			yield(nil, FromError(err))
			return
		}
		if seq(msg) != next {
			yield(nil, protocolError("seq %d, expected %d", seq(msg), next))
			return
		}
		next++
		if !yield(msg, nil) || terminal(msg) {
			return
		}
	}
}

func protocolError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrProtocol}, args...)...)
}
