package rillet_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rillet-dev/rillet/client_sdk/go/rillet"
	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// fakeServer is a scripted InferenceService: it tests this package's layer, not the real server (the
// conformance suite in tests/conformance runs this package against `rillet serve`).
type fakeServer struct {
	rilletv1.UnimplementedInferenceServiceServer
	cancels chan string
}

func exhausted() *status.Status {
	st, _ := status.New(codes.ResourceExhausted, "queue full").WithDetails(
		&errdetails.ErrorInfo{Reason: "QUEUE_FULL", Domain: "rillet.dev", Metadata: map[string]string{"limit": "64"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)},
	)
	return st
}

func (f *fakeServer) Generate(req *rilletv1.GenerateRequest, stream grpc.ServerStreamingServer[rilletv1.GenerateResponse]) error {
	if req.GetParams().GetText() == "busy" {
		return exhausted().Err()
	}
	for i, text := range []string{"a ", "b "} {
		delta := &rilletv1.GenerateResponse_TokenDelta{TokenDelta: &rilletv1.TokenDelta{Text: text}}
		if err := stream.Send(&rilletv1.GenerateResponse{Seq: uint64(i), Kind: delta}); err != nil {
			return err
		}
	}
	done := &rilletv1.Finished{Reason: rilletv1.FinishReason_FINISH_REASON_LENGTH}
	return stream.Send(&rilletv1.GenerateResponse{Seq: 2, Kind: &rilletv1.GenerateResponse_Finished{Finished: done}})
}

func (f *fakeServer) Session(stream grpc.BidiStreamingServer[rilletv1.SessionRequest, rilletv1.SessionResponse]) error {
	hanging := map[string]bool{}
	for index := uint64(0); ; index++ {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		id := msg.GetRequestId()
		var out []*rilletv1.SessionResponse
		if len(id) > 128 { // refused, echoed clipped as the real server does
			st, _ := status.New(codes.InvalidArgument, "id too long").WithDetails(&errdetails.ErrorInfo{Reason: "REQUEST_ID_TOO_LONG", Domain: "rillet.dev"})
			rejected := &rilletv1.SessionResponse{RequestId: id[:64] + "…", Kind: &rilletv1.SessionResponse_Rejected{Rejected: st.Proto()}, ClientMessageIndex: &index}
			if err := stream.Send(rejected); err != nil {
				return err
			}
			continue
		}
		switch kind := msg.GetKind().(type) {
		case *rilletv1.SessionRequest_StartGenerate:
			switch kind.StartGenerate.GetParams().GetText() {
			case "hang":
				hanging[id] = true
				out = append(out, delta(id, 0))
			case "bad":
				out = append(out, &rilletv1.SessionResponse{RequestId: id, Kind: &rilletv1.SessionResponse_Error{Error: exhausted().Proto()}})
			case "gap":
				out = append(out, delta(id, 5))
			default:
				out = append(out, delta(id, 0), finished(id, 1, rilletv1.FinishReason_FINISH_REASON_LENGTH))
			}
		case *rilletv1.SessionRequest_Cancel:
			f.cancels <- id
			if !hanging[id] {
				st, _ := status.New(codes.NotFound, "no such request").WithDetails(&errdetails.ErrorInfo{Reason: "UNKNOWN_REQUEST_ID", Domain: "rillet.dev"})
				out = append(out, &rilletv1.SessionResponse{RequestId: id, Kind: &rilletv1.SessionResponse_Rejected{Rejected: st.Proto()}, ClientMessageIndex: &index})
			} else {
				delete(hanging, id)
				out = append(out, finished(id, 1, rilletv1.FinishReason_FINISH_REASON_CANCELLED))
			}
		}
		for _, m := range out {
			if err := stream.Send(m); err != nil {
				return err
			}
		}
	}
}

func delta(id string, seq uint64) *rilletv1.SessionResponse {
	return &rilletv1.SessionResponse{RequestId: id, Seq: seq, Kind: &rilletv1.SessionResponse_TokenDelta{TokenDelta: &rilletv1.TokenDelta{Text: "x "}}}
}

func finished(id string, seq uint64, reason rilletv1.FinishReason) *rilletv1.SessionResponse {
	return &rilletv1.SessionResponse{RequestId: id, Seq: seq, Kind: &rilletv1.SessionResponse_Finished{Finished: &rilletv1.Finished{Reason: reason}}}
}

func start(t *testing.T) (*rillet.Client, *fakeServer) {
	t.Helper()
	listener := bufconn.Listen(1 << 20)
	server := grpc.NewServer()
	fake := &fakeServer{cancels: make(chan string, 16)}
	rilletv1.RegisterInferenceServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return listener.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); server.Stop() })
	return rillet.NewClient(conn), fake
}

func text(s string) *rilletv1.GenerateParams {
	return &rilletv1.GenerateParams{Prompt: &rilletv1.GenerateParams_Text{Text: s}}
}

func TestGenerateYieldsDeltasThenFinished(t *testing.T) {
	client, _ := start(t)
	var got string
	var reason rilletv1.FinishReason
	for msg, err := range client.Generate(context.Background(), text("hi")) {
		if err != nil {
			t.Fatal(err)
		}
		got += msg.GetTokenDelta().GetText()
		reason = msg.GetFinished().GetReason()
	}
	if got != "a b " || reason != rilletv1.FinishReason_FINISH_REASON_LENGTH {
		t.Fatalf("got %q, %v", got, reason)
	}
}

func TestCallErrorCarriesErrorInfoAndRetryInfo(t *testing.T) {
	client, _ := start(t)
	for _, err := range client.Generate(context.Background(), text("busy")) {
		var e *rillet.Error
		if !errors.As(err, &e) {
			t.Fatalf("not an *rillet.Error: %v", err)
		}
		if e.Code != codes.ResourceExhausted || e.Reason != "QUEUE_FULL" || e.Domain != "rillet.dev" ||
			e.Metadata["limit"] != "64" || e.RetryDelay != 1500*time.Millisecond || !e.Retryable() {
			t.Fatalf("details lost: %+v", e)
		}
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("status.Code: %v", status.Code(err))
		}
		return
	}
	t.Fatal("no error yielded")
}

func TestSessionInBandErrorLeavesTheNeighbourAlone(t *testing.T) {
	client, _ := start(t)
	ctx := context.Background()
	session, err := client.Session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := session.Generate(ctx, "good", &rilletv1.StartGenerate{Params: text("ok")})
	bad, _ := session.Generate(ctx, "", &rilletv1.StartGenerate{Params: text("bad")})
	if bad.ID == "" {
		t.Fatal("no id picked")
	}
	for msg, err := range bad.Events() {
		var e *rillet.Error
		if !errors.As(err, &e) || e.Reason != "QUEUE_FULL" || e.RequestID != bad.ID || msg.GetError() == nil {
			t.Fatalf("in-band error: %v %v", msg, err)
		}
	}
	var last *rilletv1.SessionResponse
	for msg, err := range good.Events() {
		if err != nil {
			t.Fatal(err)
		}
		last = msg
	}
	if last.GetFinished().GetReason() != rilletv1.FinishReason_FINISH_REASON_LENGTH {
		t.Fatalf("neighbour: %v", last)
	}
	if err := session.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := session.Wait(); err != nil {
		t.Fatalf("call ended with %v", err)
	}
}

func TestContextCancellationSendsCancel(t *testing.T) {
	client, fake := start(t)
	session, err := client.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := session.Generate(ctx, "long", &rilletv1.StartGenerate{Params: text("hang")})
	if err != nil {
		t.Fatal(err)
	}
	var reasons []rilletv1.FinishReason
	for msg, err := range req.Events() {
		if err != nil {
			t.Fatal(err)
		}
		if msg.GetTokenDelta() != nil {
			cancel() // the first output is here: cancel through the context
		}
		if f := msg.GetFinished(); f != nil {
			reasons = append(reasons, f.GetReason())
		}
	}
	if got := <-fake.cancels; got != "long" {
		t.Fatalf("cancel for %q", got)
	}
	if len(reasons) != 1 || reasons[0] != rilletv1.FinishReason_FINISH_REASON_CANCELLED {
		t.Fatalf("reasons %v", reasons)
	}
}

func TestRejectionIsDeliveredAndEndsNoRequest(t *testing.T) {
	client, _ := start(t)
	session, err := client.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	if err := session.Send(&rilletv1.SessionRequest{RequestId: "ghost", Kind: &rilletv1.SessionRequest_Cancel{Cancel: &rilletv1.Cancel{}}}); err != nil {
		t.Fatal(err)
	}
	rejection := <-session.Rejections()
	if !rejection.Rejected || rejection.Code != codes.NotFound || rejection.Reason != "UNKNOWN_REQUEST_ID" || rejection.RequestID != "ghost" {
		t.Fatalf("rejection: %+v", rejection)
	}
}

func TestARefusedStartIsMatchedByItsMessageIndexNotItsClippedID(t *testing.T) {
	client, _ := start(t)
	session, err := client.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer session.Close()
	prefix := strings.Repeat("p", 64)
	valid, err := session.Generate(context.Background(), prefix+"-valid", &rilletv1.StartGenerate{Params: text("hang")})
	if err != nil {
		t.Fatal(err)
	}
	refused, err := session.Generate(context.Background(), prefix+strings.Repeat("x", 100), &rilletv1.StartGenerate{Params: text("hi")})
	if err != nil {
		t.Fatal(err)
	}
	for msg, err := range refused.Events() {
		var e *rillet.Error
		if msg != nil || !errors.As(err, &e) || !e.Rejected || e.Reason != "REQUEST_ID_TOO_LONG" || e.RequestID != refused.ID ||
			e.ClientMessageIndex == nil || *e.ClientMessageIndex != 1 {
			t.Fatalf("refused start: %v, %v", msg, err)
		}
	}
	for msg, err := range valid.Events() { // its first output arrives: the rejection did not end it
		if err != nil || msg.GetTokenDelta() == nil {
			t.Fatalf("valid: %v, %v", msg, err)
		}
		break
	}
	rejection := <-session.Rejections()
	if rejection.ClientMessageIndex == nil || *rejection.ClientMessageIndex != 1 {
		t.Fatalf("rejection: %+v", rejection)
	}
}

func TestSeqGapIsAProtocolViolation(t *testing.T) {
	client, _ := start(t)
	session, err := client.Session(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	req, _ := session.Generate(context.Background(), "g", &rilletv1.StartGenerate{Params: text("gap")})
	for _, err := range req.Events() {
		if !errors.Is(err, rillet.ErrProtocol) {
			t.Fatalf("want a protocol error, got %v", err)
		}
	}
	if err := session.Wait(); !errors.Is(err, rillet.ErrProtocol) {
		t.Fatalf("call: %v", err)
	}
}

func TestServiceConfigWeighsByOutOfBandReportsAndChecksHealth(t *testing.T) {
	var weighted, plain map[string]any
	if err := json.Unmarshal([]byte(rillet.ServiceConfig(true)), &weighted); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(rillet.ServiceConfig(false)), &plain); err != nil {
		t.Fatal(err)
	}
	policy := weighted["loadBalancingConfig"].([]any)[0].(map[string]any)
	wrr, ok := policy["weighted_round_robin"].(map[string]any)
	if !ok || wrr["enableOobLoadReport"] != true {
		t.Fatalf("weighted config: %v", policy)
	}
	if _, ok := plain["loadBalancingConfig"].([]any)[0].(map[string]any)["round_robin"]; !ok {
		t.Fatalf("plain config: %v", plain)
	}
	for _, config := range []map[string]any{weighted, plain} {
		if config["healthCheckConfig"].(map[string]any)["serviceName"] != rillet.HealthService {
			t.Fatalf("health: %v", config["healthCheckConfig"])
		}
	}
	// The options parse: grpc-go knows weighted_round_robin (the blank import registered it).
	conn, err := grpc.NewClient("127.0.0.1:1", grpc.WithTransportCredentials(insecure.NewCredentials()), rillet.Balanced())
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
}
