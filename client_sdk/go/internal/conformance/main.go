// Command conformance is the Go runner of Rillet's conformance suite: it plays tests/conformance/scenarios.json
// through package rillet against a live server and prints one JSON line per scenario.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	orcapb "github.com/cncf/xds/go/xds/service/orca/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/rillet-dev/rillet/client_sdk/go/rillet"
	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// waitLimit bounds every wait: a scenario that would hang fails instead.
const waitLimit = 30 * time.Second

type step map[string]any

func (s step) str(key string) string { v, _ := s[key].(string); return v }
func (s step) num(key string) (int, bool) {
	v, ok := s[key].(float64)
	return int(v), ok
}
func (s step) flag(key string) bool { v, _ := s[key].(bool); return v }

type scenario struct {
	Name  string `json:"name"`
	Steps []step `json:"steps"`
}

// tracked is what one session request received, filled by its collector goroutine.
type tracked struct {
	req         *rillet.Request
	outputs     []*rilletv1.SessionResponse
	terminal    *rilletv1.SessionResponse
	err         error
	firstOutput chan struct{}
	done        chan struct{}
}

type runner struct {
	client    *rillet.Client
	conn      *grpc.ClientConn
	serverPID int
	session   *rillet.Session
	requests  map[string]*tracked
	closed    bool // half-closed
}

func (r *runner) open() (*rillet.Session, error) {
	if r.session == nil {
		s, err := r.client.Session(context.Background())
		if err != nil {
			return nil, err
		}
		r.session = s
	}
	return r.session, nil
}

func (r *runner) track(id string, req *rillet.Request) {
	t := &tracked{req: req, firstOutput: make(chan struct{}), done: make(chan struct{})}
	r.requests[id] = t
	go func() {
		defer close(t.done)
		for msg, err := range req.Events() {
			switch {
			case err != nil:
				t.terminal, t.err = msg, err
			case msg.GetFinished() != nil:
				t.terminal = msg
			default:
				t.outputs = append(t.outputs, msg)
				if len(t.outputs) == 1 {
					close(t.firstOutput)
				}
			}
		}
	}()
}

func wait(ch <-chan struct{}, what string) error {
	select {
	case <-ch:
		return nil
	case <-time.After(waitLimit):
		return fmt.Errorf("timed out waiting for %s", what)
	}
}

func (r *runner) terminal(id string) (*tracked, error) {
	t, ok := r.requests[id]
	if !ok {
		return nil, fmt.Errorf("no request %q", id)
	}
	return t, wait(t.done, id+"'s terminal message")
}

func checkError(s step, err error) error {
	var e *rillet.Error
	if !errors.As(err, &e) {
		return fmt.Errorf("expected %s, got %v", s.str("code"), err)
	}
	if name := codeName(e.Code); name != s.str("code") {
		return fmt.Errorf("code %s, expected %s (%v)", name, s.str("code"), e)
	}
	if want := s.str("reason"); want != "" && e.Reason != want {
		return fmt.Errorf("reason %q, expected %q", e.Reason, want)
	}
	if want := s.str("domain"); want != "" && e.Domain != want {
		return fmt.Errorf("domain %q, expected %q", e.Domain, want)
	}
	return nil
}

// codeName spells a code as the proto does: INVALID_ARGUMENT, DEADLINE_EXCEEDED, ...
func codeName(c codes.Code) string {
	if c == codes.Canceled {
		return "CANCELLED"
	}
	var b strings.Builder
	for i, ch := range c.String() {
		if i > 0 && ch >= 'A' && ch <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(ch)
	}
	return strings.ToUpper(b.String())
}

// checkCount checks the tokens in the deltas (the server may coalesce deltas for a slow reader, never drop or
// add tokens) and the number of outputs.
func checkCount(s step, n, tokens int) error {
	if want, ok := s.num("tokens"); ok && tokens != want {
		return fmt.Errorf("%d tokens, expected %d", tokens, want)
	}
	if want, ok := s.num("min_outputs"); ok && n < want {
		return fmt.Errorf("%d outputs, expected at least %d", n, want)
	}
	return nil
}

// withConstraint sets the params' output constraint from the step's `constraint` object (at most one key).
func withConstraint(s step, params *rilletv1.GenerateParams) (*rilletv1.GenerateParams, error) {
	c, ok := s["constraint"].(map[string]any)
	if !ok {
		return params, nil
	}
	for kind, value := range c {
		switch kind {
		case "json_schema":
			schema, err := json.Marshal(value)
			if err != nil {
				return nil, err
			}
			params.Constraint = &rilletv1.GenerateParams_JsonSchema{JsonSchema: string(schema)}
		case "regex":
			params.Constraint = &rilletv1.GenerateParams_Regex{Regex: value.(string)}
		case "grammar":
			params.Constraint = &rilletv1.GenerateParams_Grammar{Grammar: value.(string)}
		case "choice":
			choice := &rilletv1.Choice{}
			for _, option := range value.([]any) {
				choice.Options = append(choice.Options, option.(string))
			}
			params.Constraint = &rilletv1.GenerateParams_Choice{Choice: choice}
		case "json_object":
			params.Constraint = &rilletv1.GenerateParams_JsonObject{JsonObject: &rilletv1.JsonObject{}}
		default:
			return nil, fmt.Errorf("unknown constraint %q", kind)
		}
	}
	return params, nil
}

// checkText checks the whole text: it matches `matches` (a regular expression, whole text) and parses as one JSON
// document when `json` is true.
func checkText(s step, text string) error {
	if pattern := s.str("matches"); pattern != "" {
		if !regexp.MustCompile(`^(?:` + pattern + `)$`).MatchString(text) {
			return fmt.Errorf("text %q does not match %s", text, pattern)
		}
	}
	if s.flag("json") {
		var value any
		if err := json.Unmarshal([]byte(text), &value); err != nil {
			return fmt.Errorf("text %q is not JSON: %v", text, err)
		}
	}
	return nil
}

// checkAudio: each chunk starts at the sample where the previous one ended.
func checkAudio(chunks []*rilletv1.AudioChunk) error {
	var expected uint64
	for _, c := range chunks {
		if c.GetOffsetSamples() != expected {
			return fmt.Errorf("audio offset %d, expected %d", c.GetOffsetSamples(), expected)
		}
		expected += uint64(c.GetSampleCount())
	}
	return nil
}

// checkSpoken: `spoken_at_most`, the Finished says what was heard, of at most that many samples; `spoken_as`, the
// same as another request's Finished.
func (r *runner) checkSpoken(s step, f *rilletv1.Finished) error {
	spoken := f.GetSpoken()
	if most, ok := s.num("spoken_at_most"); ok {
		if spoken == nil {
			return fmt.Errorf("no spoken text")
		}
		if spoken.GetPlayedSamples() > uint64(most) {
			return fmt.Errorf("played %d samples, more than %d", spoken.GetPlayedSamples(), most)
		}
		if uint32(utf8.RuneCountInString(spoken.GetText())) != spoken.GetEndChar()-spoken.GetStartChar() {
			return fmt.Errorf("spoken %q is not [%d, %d)", spoken.GetText(), spoken.GetStartChar(), spoken.GetEndChar())
		}
	}
	if as := s.str("spoken_as"); as != "" {
		other, err := r.terminal(as)
		if err != nil {
			return err
		}
		if !proto.Equal(other.terminal.GetFinished().GetSpoken(), spoken) {
			return fmt.Errorf("spoken %v, not %v as %s", spoken, other.terminal.GetFinished().GetSpoken(), as)
		}
	}
	return nil
}

func (r *runner) step(s step) error {
	ctx := context.Background()
	id := s.str("id")
	switch op := s.str("op"); op {
	case "generate":
		session, err := r.open()
		if err != nil {
			return err
		}
		maxTokens, _ := s.num("max_tokens")
		mt := uint32(maxTokens)
		params, err := withConstraint(s, &rilletv1.GenerateParams{
			Prompt: &rilletv1.GenerateParams_Text{Text: s.str("prompt")}, MaxTokens: &mt,
		})
		if err != nil {
			return err
		}
		if s.str("priority") == "batch" {
			params.Priority = rilletv1.Priority_PRIORITY_BATCH
		}
		start := &rilletv1.StartGenerate{Params: params}
		if ms, ok := s.num("timeout_ms"); ok {
			start.Timeout = durationpb.New(time.Duration(ms) * time.Millisecond)
		}
		req, err := session.Generate(ctx, id, start)
		if err != nil {
			return err
		}
		r.track(id, req)
	case "synthesize":
		session, err := r.open()
		if err != nil {
			return err
		}
		req, err := session.Synthesize(ctx, id, &rilletv1.StartSynthesize{
			Params:            &rilletv1.SynthesizeParams{Text: s.str("text")},
			StreamingInput:    s.flag("streaming_input"),
			TextFromRequestId: s.str("text_from"),
		})
		if err != nil {
			return err
		}
		r.track(id, req)
	case "append_text":
		return r.requests[id].req.AppendText(s.str("text"))
	case "end_input":
		return r.requests[id].req.EndInput()
	case "cancel":
		if t, ok := r.requests[id]; ok {
			return t.req.Cancel()
		}
		session, err := r.open()
		if err != nil {
			return err
		}
		return session.Send(&rilletv1.SessionRequest{RequestId: id, Kind: &rilletv1.SessionRequest_Cancel{Cancel: &rilletv1.Cancel{}}})
	case "interrupt":
		played, _ := s.num("played_samples")
		return r.requests[id].req.Interrupt(uint64(played))
	case "half_close":
		r.closed = true
		return r.session.CloseSend()
	case "await_output":
		return wait(r.requests[id].firstOutput, id+"'s first output")
	case "expect_finished":
		t, err := r.terminal(id)
		if err != nil {
			return err
		}
		if t.err != nil {
			return fmt.Errorf("%s failed: %v", id, t.err)
		}
		if got := t.terminal.GetFinished().GetReason().String(); got != s.str("reason") {
			return fmt.Errorf("%s: reason %s, expected %s", id, got, s.str("reason"))
		}
		var chunks []*rilletv1.AudioChunk
		var text strings.Builder
		tokens := 0
		for _, m := range t.outputs {
			if c := m.GetAudioChunk(); c != nil {
				chunks = append(chunks, c)
			}
			tokens += len(m.GetTokenDelta().GetTokenIds())
			text.WriteString(m.GetTokenDelta().GetText())
		}
		if err := checkCount(s, len(t.outputs), tokens); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		if err := checkText(s, text.String()); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		if err := r.checkSpoken(s, t.terminal.GetFinished()); err != nil {
			return fmt.Errorf("%s: %w", id, err)
		}
		return checkAudio(chunks)
	case "expect_error":
		t, err := r.terminal(id)
		if err != nil {
			return err
		}
		return checkError(s, t.err)
	case "expect_rejected":
		session, err := r.open()
		if err != nil {
			return err
		}
		timeout := time.After(waitLimit)
		for {
			select {
			case rejection := <-session.Rejections():
				if rejection.RequestID == id {
					return checkError(s, rejection)
				}
			case <-timeout:
				return fmt.Errorf("no rejection for %q", id)
			}
		}
	case "expect_call_end":
		if !r.closed {
			r.closed = true
			if err := r.session.CloseSend(); err != nil && s.str("code") == "OK" {
				return err
			}
		}
		done := make(chan error, 1)
		go func() { done <- r.session.Wait() }()
		select {
		case err := <-done:
			if s.str("code") == "OK" {
				return err
			}
			return checkError(s, err)
		case <-time.After(waitLimit):
			return errors.New("the call never ended")
		}
	case "drain":
		return r.drain()
	case "call_generate":
		maxTokens, _ := s.num("max_tokens")
		mt := uint32(maxTokens)
		if ms, ok := s.num("deadline_ms"); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
			defer cancel()
		}
		params, err := withConstraint(s, &rilletv1.GenerateParams{
			Prompt: &rilletv1.GenerateParams_Text{Text: s.str("prompt")}, MaxTokens: &mt,
		})
		if err != nil {
			return err
		}
		var outputs, tokens int
		var text strings.Builder
		for msg, err := range r.client.Generate(ctx, params) {
			if err != nil {
				return checkError(s, err)
			}
			if f := msg.GetFinished(); f != nil {
				if err := finishedOneShot(s, f, outputs, tokens, nil); err != nil {
					return err
				}
				return checkText(s, text.String())
			}
			outputs++
			tokens += len(msg.GetTokenDelta().GetTokenIds())
			text.WriteString(msg.GetTokenDelta().GetText())
		}
		return errors.New("the stream ended with no terminal message")
	case "call_synthesize":
		var chunks []*rilletv1.AudioChunk
		for msg, err := range r.client.Synthesize(ctx, &rilletv1.SynthesizeParams{Text: s.str("text")}) {
			if err != nil {
				return checkError(s, err)
			}
			if f := msg.GetFinished(); f != nil {
				return finishedOneShot(s, f, len(chunks), 0, chunks)
			}
			chunks = append(chunks, msg.GetAudioChunk())
		}
		return errors.New("the stream ended with no terminal message")
	case "list_models":
		models, err := r.client.ListModels(ctx)
		if err != nil {
			return err
		}
		for _, raw := range s["expect"].([]any) {
			if !anyModelLike(models, raw.(map[string]any)) {
				return fmt.Errorf("no model like %v", raw)
			}
		}
	case "server_info", "tokenize", "count_tokens", "detokenize", "abort", "load", "orca":
		err := r.control(ctx, s)
		if _, wantError := s["code"]; wantError {
			return checkError(s, err)
		}
		return err
	default:
		return fmt.Errorf("unknown op %q", op)
	}
	return nil
}

// control plays the ControlService steps; their failure is returned for the step to check.
func (r *runner) control(ctx context.Context, s step) error {
	var chat []*rilletv1.ChatMessage
	if raw, ok := s["chat"].([]any); ok {
		for _, m := range raw {
			pair := m.([]any)
			chat = append(chat, &rilletv1.ChatMessage{Role: pair[0].(string), Content: pair[1].(string)})
		}
	}
	ids := func(key string) []int32 {
		var out []int32
		for _, v := range s[key].([]any) {
			out = append(out, int32(v.(float64)))
		}
		return out
	}
	switch s.str("op") {
	case "server_info":
		info, err := r.client.ServerInfo(ctx)
		if err != nil {
			return err
		}
		for _, raw := range s["engines"].([]any) {
			want := raw.(map[string]any)
			found := false
			for _, e := range info.GetEngines() {
				if e.GetName() == want["name"] {
					found = true
					if e.GetTokenizer() != want["tokenizer"] {
						return fmt.Errorf("engine %s: tokenizer %v", e.GetName(), e.GetTokenizer())
					}
				}
			}
			if !found {
				return fmt.Errorf("no engine %v", want["name"])
			}
		}
	case "tokenize":
		req := &rilletv1.TokenizeRequest{Prompt: &rilletv1.TokenizeRequest_Text{Text: s.str("prompt")}}
		if chat != nil {
			req.Prompt = &rilletv1.TokenizeRequest_Chat{Chat: &rilletv1.ChatPrompt{Messages: chat}}
		}
		got, err := r.client.Tokenize(ctx, req)
		if err != nil {
			return err
		}
		if fmt.Sprint(got) != fmt.Sprint(ids("ids")) {
			return fmt.Errorf("ids %v, expected %v", got, ids("ids"))
		}
	case "count_tokens":
		resp, err := r.client.CountTokens(ctx, &rilletv1.CountTokensRequest{
			Prompt: &rilletv1.CountTokensRequest_Text{Text: s.str("prompt")},
		})
		if err != nil {
			return err
		}
		if want, _ := s.num("tokens"); int(resp.GetTokenCount()) != want {
			return fmt.Errorf("%d tokens, expected %d", resp.GetTokenCount(), want)
		}
	case "detokenize":
		text, err := r.client.Detokenize(ctx, "", ids("ids"))
		if err != nil {
			return err
		}
		if text != s.str("text") {
			return fmt.Errorf("text %q, expected %q", text, s.str("text"))
		}
	case "abort":
		ended, err := r.client.Abort(ctx, s.str("target"))
		if err != nil {
			return err
		}
		if fmt.Sprint(ended) != fmt.Sprint(s["ended"]) {
			return fmt.Errorf("ended %v, expected %v", ended, s["ended"])
		}
	case "load":
		load, err := r.client.Load(ctx)
		if err != nil {
			return err
		}
		for _, e := range load.GetEngines() {
			if e.GetEngine() == s.str("engine") {
				running, _ := s.num("running")
				waiting, _ := s.num("waiting")
				slots, _ := s.num("slots")
				if int(e.GetRunning()) != running || int(e.GetWaiting()) != waiting || int(e.GetSlots()) != slots {
					return fmt.Errorf("running %d, waiting %d, slots %d", e.GetRunning(), e.GetWaiting(), e.GetSlots())
				}
				return nil
			}
		}
		return fmt.Errorf("no engine %s in the load", s.str("engine"))
	case "orca":
		return r.orca(ctx, s)
	}
	return nil
}

// orca reads one report of gRPC's standard out-of-band load stream with the cncf/xds Go stubs grpc-go itself uses.
func (r *runner) orca(ctx context.Context, s step) error {
	ctx, cancel := context.WithTimeout(ctx, waitLimit)
	defer cancel()
	stream, err := orcapb.NewOpenRcaServiceClient(r.conn).StreamCoreMetrics(ctx, &orcapb.OrcaLoadReportRequest{})
	if err != nil {
		return err
	}
	report, err := stream.Recv()
	if err != nil {
		return err
	}
	running, _ := s.num("running")
	if got := report.GetNamedMetrics()["running"]; got != float64(running) {
		return fmt.Errorf("running %v, expected %d", got, running)
	}
	if _, ok := report.GetNamedMetrics()["waiting"]; !ok {
		return errors.New("no waiting metric")
	}
	if want, _ := s["utilization"].(float64); report.GetApplicationUtilization() != want {
		return fmt.Errorf("application_utilization %v, expected %v", report.GetApplicationUtilization(), want)
	}
	if report.GetRpsFractional() < 0 || report.GetCpuUtilization() < 0 {
		return errors.New("negative rates")
	}
	return nil
}

func finishedOneShot(s step, f *rilletv1.Finished, outputs, tokens int, chunks []*rilletv1.AudioChunk) error {
	if s.str("code") != "OK" {
		return fmt.Errorf("finished, expected %s", s.str("code"))
	}
	if got := f.GetReason().String(); got != s.str("reason") {
		return fmt.Errorf("reason %s, expected %s", got, s.str("reason"))
	}
	if err := checkCount(s, outputs, tokens); err != nil {
		return err
	}
	return checkAudio(chunks)
}

func anyModelLike(models []*rilletv1.Model, want map[string]any) bool {
	for _, m := range models {
		fields := map[string]any{
			"name": m.GetName(), "kind": m.GetKind().String(), "engine": m.GetEngine(),
			"is_default": m.GetIsDefault(), "is_test_engine": m.GetIsTestEngine(),
		}
		like := true
		for k, v := range want {
			like = like && fields[k] == v
		}
		if like {
			return true
		}
	}
	return false
}

// drain sends SIGTERM to the server, then waits until its health says NOT_SERVING: from then on it refuses
// new work.
func (r *runner) drain() error {
	if err := syscall.Kill(r.serverPID, syscall.SIGTERM); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	watch, err := healthpb.NewHealthClient(r.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: "rillet.v1.InferenceService"})
	if err != nil {
		return err
	}
	for {
		resp, err := watch.Recv()
		if err != nil {
			return err
		}
		if resp.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			return nil
		}
	}
}

// finish: every request ended, and a session still open ends with OK after a half-close (no stray messages).
func (r *runner) finish() error {
	if r.session != nil && !r.closed {
		if err := r.step(step{"op": "expect_call_end", "code": "OK"}); err != nil {
			return err
		}
	}
	for id := range r.requests {
		if _, err := r.terminal(id); err != nil {
			return err
		}
	}
	return nil
}

func main() {
	scenariosPath := flag.String("scenarios", "", "scenarios.json")
	target := flag.String("target", "", "host:port of the server")
	serverPID := flag.Int("server-pid", 0, "the server's process id (the drain scenario signals it)")
	flag.Parse()
	data, err := os.ReadFile(*scenariosPath)
	if err != nil {
		panic(err)
	}
	var suite struct {
		Scenarios []scenario `json:"scenarios"`
	}
	if err := json.Unmarshal(data, &suite); err != nil {
		panic(err)
	}
	// Balanced (grpc-go's weighted_round_robin on the server's ORCA reports, health-checked) over the one backend:
	// the SDK's fleet mode, played throughout.
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()), rillet.Balanced())
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	failed := false
	for _, sc := range suite.Scenarios {
		r := &runner{client: rillet.NewClient(conn), conn: conn, serverPID: *serverPID, requests: map[string]*tracked{}}
		var err error
		for _, s := range sc.Steps {
			if err = r.step(s); err != nil {
				err = fmt.Errorf("step %v: %w", s["op"], err)
				break
			}
		}
		if err == nil {
			err = r.finish()
		}
		if r.session != nil {
			r.session.Close()
		}
		detail := ""
		if err != nil {
			detail, failed = err.Error(), true
		}
		line, _ := json.Marshal(map[string]any{"scenario": sc.Name, "passed": err == nil, "detail": detail})
		fmt.Println(string(line))
	}
	if failed {
		os.Exit(1)
	}
}
