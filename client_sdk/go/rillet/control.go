package rillet

import (
	"context"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// The control plane (rillet.v1.ControlService). On a balanced connection each call goes to the backend the
// balancer picks: to ask one backend (Abort, notably, reaches only the requests of the server it lands on), use a
// connection to its own address.

// ServerInfo returns what the server is: version, engines (and which tokenize), models, limits, drain state.
func (c *Client) ServerInfo(ctx context.Context, opts ...grpc.CallOption) (*rilletv1.GetServerInfoResponse, error) {
	resp, err := c.control.GetServerInfo(ctx, &rilletv1.GetServerInfoRequest{}, opts...)
	return resp, FromError(err)
}

// Load returns the server's load now: per engine, requests running and waiting, KV cache use, recent throughput.
func (c *Client) Load(ctx context.Context, opts ...grpc.CallOption) (*rilletv1.ServerLoad, error) {
	resp, err := c.control.GetLoad(ctx, &rilletv1.GetLoadRequest{}, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp.GetLoad(), nil
}

// WatchLoad yields the server's load at once, then every interval (clamped by the server), until the loop
// breaks, ctx ends, or the server drains (the iteration then ends without an error).
func (c *Client) WatchLoad(
	ctx context.Context, interval time.Duration, opts ...grpc.CallOption,
) iter.Seq2[*rilletv1.ServerLoad, error] {
	return func(yield func(*rilletv1.ServerLoad, error) bool) {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := c.control.WatchLoad(ctx, &rilletv1.WatchLoadRequest{Interval: durationpb.New(interval)}, opts...)
		if err != nil {
			yield(nil, FromError(err))
			return
		}
		for {
			msg, err := stream.Recv()
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(nil, FromError(err))
				return
			}
			if !yield(msg.GetLoad(), nil) {
				return
			}
		}
	}
}

// Tokenize returns the token ids of a prompt (Prompt: TokenizeRequest_Text or _Chat) as the model reads it for
// generation; an empty model is the server's default.
func (c *Client) Tokenize(ctx context.Context, req *rilletv1.TokenizeRequest, opts ...grpc.CallOption) ([]int32, error) {
	resp, err := c.control.Tokenize(ctx, req, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp.GetTokenIds(), nil
}

// Detokenize returns the text of token ids, as the model would print them.
func (c *Client) Detokenize(ctx context.Context, model string, ids []int32, opts ...grpc.CallOption) (string, error) {
	resp, err := c.control.Detokenize(ctx, &rilletv1.DetokenizeRequest{Model: model, TokenIds: ids}, opts...)
	if err != nil {
		return "", FromError(err)
	}
	return resp.GetText(), nil
}

// CountTokens returns how many tokens a prompt takes, and the model's context length.
func (c *Client) CountTokens(
	ctx context.Context, req *rilletv1.CountTokensRequest, opts ...grpc.CallOption,
) (*rilletv1.CountTokensResponse, error) {
	resp, err := c.control.CountTokens(ctx, req, opts...)
	return resp, FromError(err)
}

// Abort ends the caller's tenant's requests in flight under requestID, from whichever call carries them: each
// ends in its own stream with FINISH_REASON_CANCELLED. It returns the ids ended (one per request); an *Error with
// codes.NotFound, Reason REQUEST_NOT_FOUND, when the tenant has none in flight under that id.
func (c *Client) Abort(ctx context.Context, requestID string, opts ...grpc.CallOption) ([]string, error) {
	req := &rilletv1.AbortRequest{Target: &rilletv1.AbortRequest_RequestId{RequestId: requestID}}
	return c.abort(ctx, req, opts)
}

// AbortAll ends every request of the caller's tenant in flight on the server; the ids ended.
func (c *Client) AbortAll(ctx context.Context, opts ...grpc.CallOption) ([]string, error) {
	req := &rilletv1.AbortRequest{Target: &rilletv1.AbortRequest_AllRequests{AllRequests: &rilletv1.AllRequests{}}}
	return c.abort(ctx, req, opts)
}

func (c *Client) abort(ctx context.Context, req *rilletv1.AbortRequest, opts []grpc.CallOption) ([]string, error) {
	resp, err := c.control.Abort(ctx, req, opts...)
	if err != nil {
		return nil, FromError(err)
	}
	return resp.GetRequestIds(), nil
}
