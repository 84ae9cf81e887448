package rillet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	rilletv1 "github.com/rillet-dev/rillet/client_sdk/go/rillet/v1"
)

// rejectionBuffer is how many unread rejections Rejections keeps; older ones are dropped.
const rejectionBuffer = 64

// Session is one bidirectional Session call carrying many requests at once, each with its own Request and
// event iterator. It is safe for concurrent use. A slow reader of one request never holds up the others: each
// request's messages queue in memory (the server bounds how much it sends ahead).
type Session struct {
	stream grpc.BidiStreamingClient[rilletv1.SessionRequest, rilletv1.SessionResponse]
	cancel context.CancelFunc
	sendMu sync.Mutex
	sent   int64 // messages written, under sendMu: the next one's index, as the server counts them

	mu       sync.Mutex
	requests map[string]*Request // in flight: started, no terminal message yet
	ended    bool

	rejections chan *Error
	done       chan struct{}
	err        error // how the call ended: nil for OK
	ids        atomic.Uint64
}

// Session opens a session. Cancelling ctx cancels the call, and the server then aborts every request in it.
func (c *Client) Session(ctx context.Context, opts ...grpc.CallOption) (*Session, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.stub.Session(ctx, opts...)
	if err != nil {
		cancel()
		return nil, FromError(err)
	}
	s := &Session{
		stream:     stream,
		cancel:     cancel,
		requests:   map[string]*Request{},
		rejections: make(chan *Error, rejectionBuffer),
		done:       make(chan struct{}),
	}
	go s.read()
	return s, nil
}

// Generate starts a generation. An empty id picks a fresh one. Cancelling ctx sends Cancel for this request
// (the request then ends with FINISH_REASON_CANCELLED); it does not end the session.
func (s *Session) Generate(ctx context.Context, id string, start *rilletv1.StartGenerate) (*Request, error) {
	return s.start(ctx, id, &rilletv1.SessionRequest{Kind: &rilletv1.SessionRequest_StartGenerate{StartGenerate: start}})
}

// Synthesize starts a synthesis; with StreamingInput, send the rest of the text with AppendText and EndInput.
// Cancelling ctx sends Cancel, as Generate.
func (s *Session) Synthesize(ctx context.Context, id string, start *rilletv1.StartSynthesize) (*Request, error) {
	return s.start(ctx, id, &rilletv1.SessionRequest{Kind: &rilletv1.SessionRequest_StartSynthesize{StartSynthesize: start}})
}

func (s *Session) start(ctx context.Context, id string, msg *rilletv1.SessionRequest) (*Request, error) {
	if id == "" {
		id = fmt.Sprintf("r%d", s.ids.Add(1))
	}
	msg.RequestId = id
	r := &Request{ID: id, session: s, notify: make(chan struct{}, 1), startIndex: -1}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, s.endError()
	}
	if _, taken := s.requests[id]; taken {
		s.mu.Unlock()
		return nil, fmt.Errorf("rillet: request id %q is already in flight in this session", id)
	}
	s.requests[id] = r
	s.mu.Unlock()
	if err := s.send(msg, r); err != nil {
		s.mu.Lock()
		delete(s.requests, id)
		s.mu.Unlock()
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = r.Cancel() })
	r.mu.Lock()
	if r.ended { // finished (or refused) already: nothing left to cancel
		r.mu.Unlock()
		stop()
	} else {
		r.stopCancel = stop
		r.mu.Unlock()
	}
	return r, nil
}

// Send writes one raw message: for what the helpers do not cover. Messages are written one at a time.
func (s *Session) Send(msg *rilletv1.SessionRequest) error {
	return s.send(msg, nil)
}

// send writes one message; `starts`, the request it starts, learns the message's index first (a rejection of it
// may come back at once).
func (s *Session) send(msg *rilletv1.SessionRequest, starts *Request) error {
	s.sendMu.Lock()
	if starts != nil {
		s.mu.Lock()
		starts.startIndex = s.sent
		s.mu.Unlock()
	}
	s.sent++
	err := s.stream.Send(msg)
	s.sendMu.Unlock()
	if errors.Is(err, io.EOF) { // the call has ended; Recv has its status
		<-s.done
		return s.endError()
	}
	return FromError(err)
}

// CloseSend half-closes the session: no new requests; those in flight run to completion, then the server ends
// the call (Wait returns).
func (s *Session) CloseSend() error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return FromError(s.stream.CloseSend())
}

// Wait blocks until the call has ended and returns how: nil for OK, else an *Error (e.g. UNAVAILABLE when the
// server drained) or an ErrProtocol error.
func (s *Session) Wait() error {
	<-s.done
	return s.err
}

// Close cancels the call (the server aborts every request still running) and waits for it to end.
func (s *Session) Close() {
	s.cancel()
	<-s.done
}

// Rejections delivers the server's replies to messages it could not apply (a Cancel for an unknown request, a
// duplicate start, ...): *Error values with Rejected set. They never end a request, except a refused start,
// which also ends that request's Events. Each names the message it answers by ClientMessageIndex: the session's
// messages counted from 0 in the order it sent them (Send's included), as the server counts them. The latest
// unread ones are kept, older ones dropped.
func (s *Session) Rejections() <-chan *Error { return s.rejections }

func (s *Session) endError() error {
	if s.err != nil {
		return s.err
	}
	return &Error{Code: codes.Unavailable, Message: "the session has ended", status: status.New(codes.Unavailable, "the session has ended")}
}

func (s *Session) read() {
	for {
		msg, err := s.stream.Recv()
		if err == nil {
			err = s.dispatch(msg)
		}
		if err != nil {
			s.cancel()
			s.finish(err)
			return
		}
	}
}

// finish records how the call ended and ends every request still in flight with that error.
func (s *Session) finish(err error) {
	switch {
	case errors.Is(err, io.EOF):
		s.err = nil
	case errors.Is(err, ErrProtocol):
		s.err = err
	default:
		s.err = FromError(err)
	}
	s.mu.Lock()
	s.ended = true
	open := s.requests
	s.requests = map[string]*Request{}
	s.mu.Unlock()
	for _, r := range open {
		reason := s.err
		if reason == nil {
			reason = protocolError("the call ended OK before request %q finished", r.ID)
		}
		r.push(nil, reason, true)
	}
	close(s.done)
}

func (s *Session) dispatch(msg *rilletv1.SessionResponse) error {
	id := msg.GetRequestId()
	if rejected := msg.GetRejected(); rejected != nil {
		// Matched by the message's index, never by its echoed id (clipped when long, empty when undecodable).
		var refused *Request
		s.mu.Lock()
		if msg.ClientMessageIndex != nil {
			for _, r := range s.requests {
				if r.startIndex == int64(*msg.ClientMessageIndex) {
					refused = r
					delete(s.requests, r.ID)
					break
				}
			}
		}
		s.mu.Unlock()
		if refused != nil {
			id = refused.ID
		}
		e := FromProto(rejected, id)
		e.Rejected = true
		e.ClientMessageIndex = msg.ClientMessageIndex
		s.reject(e)
		if refused != nil {
			refused.push(nil, e, true)
		}
		return nil
	}
	s.mu.Lock()
	r := s.requests[id]
	s.mu.Unlock()
	if r == nil {
		return protocolError("a message for request %q, which is not in flight", id)
	}
	if msg.GetSeq() != r.nextSeq {
		return protocolError("request %q: seq %d, expected %d", id, msg.GetSeq(), r.nextSeq)
	}
	r.nextSeq++
	var err error
	terminal := false
	switch kind := msg.GetKind().(type) {
	case *rilletv1.SessionResponse_TokenDelta, *rilletv1.SessionResponse_AudioChunk:
	case *rilletv1.SessionResponse_Finished:
		terminal = true
	case *rilletv1.SessionResponse_Error:
		err, terminal = FromProto(kind.Error, id), true
	default:
		return protocolError("request %q: a message with no known kind", id)
	}
	if terminal {
		s.mu.Lock()
		delete(s.requests, id)
		s.mu.Unlock()
	}
	r.push(msg, err, terminal)
	return nil
}

func (s *Session) reject(e *Error) {
	for {
		select {
		case s.rejections <- e:
			return
		default: // full: drop the oldest unread one
			select {
			case <-s.rejections:
			default:
			}
		}
	}
}

// Request is one request of a session.
type Request struct {
	// ID is the request's id in its session.
	ID string

	session    *Session
	nextSeq    uint64 // only the session's reader touches it
	startIndex int64  // the index of the message that started it (under the session's mu): a rejection of it refused the start

	mu         sync.Mutex
	queue      []event
	ended      bool        // the terminal event is queued
	stopCancel func() bool // stops the context watch that sends Cancel
	notify     chan struct{}
	consumed   atomic.Bool
}

type event struct {
	msg *rilletv1.SessionResponse
	err error
}

func (r *Request) push(msg *rilletv1.SessionResponse, err error, terminal bool) {
	r.mu.Lock()
	r.queue = append(r.queue, event{msg, err})
	r.ended = r.ended || terminal
	stop := r.stopCancel
	r.mu.Unlock()
	if terminal && stop != nil {
		stop()
	}
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// Events yields the request's messages in order: outputs (TokenDelta or AudioChunk), then the terminal one.
// When the request ends with Finished, that message is the last one yielded with a nil error. When it fails,
// the last pair carries an *Error: with the server's in-band error message, or a nil message when the call
// itself ended first. Iterate once, from one goroutine.
func (r *Request) Events() iter.Seq2[*rilletv1.SessionResponse, error] {
	return func(yield func(*rilletv1.SessionResponse, error) bool) {
		if r.consumed.Swap(true) {
			yield(nil, errors.New("rillet: a request's events can be iterated only once"))
			return
		}
		for {
			r.mu.Lock()
			pending := r.queue
			r.queue = nil
			r.mu.Unlock()
			for _, ev := range pending {
				last := ev.err != nil || ev.msg.GetFinished() != nil
				if !yield(ev.msg, ev.err) || last {
					return
				}
			}
			<-r.notify
		}
	}
}

// AppendText sends more input to a synthesis started with StreamingInput.
func (r *Request) AppendText(text string) error {
	return r.session.Send(&rilletv1.SessionRequest{
		RequestId: r.ID, Kind: &rilletv1.SessionRequest_AppendText{AppendText: &rilletv1.AppendText{Text: text}},
	})
}

// EndInput ends a streaming input: the rest is synthesized, then the request finishes.
func (r *Request) EndInput() error {
	return r.session.Send(&rilletv1.SessionRequest{
		RequestId: r.ID, Kind: &rilletv1.SessionRequest_EndInput{EndInput: &rilletv1.EndInput{}},
	})
}

// Cancel asks the server to stop the request; it then ends with FINISH_REASON_CANCELLED. It does nothing once
// the request's terminal message has arrived.
func (r *Request) Cancel() error { return r.cancel(&rilletv1.Cancel{}) }

// Interrupt is a barge-in on a synthesis: it cancels the request saying how much of its audio was played
// (samples at its chunks' rate). Its Finished (read from Events) then carries Spoken: the text through the last
// word played in full, which is where an agent cuts its history; so does the Finished of the generation it
// speaks, if that is cancelled next, while still in flight. It does nothing once the terminal message arrived.
func (r *Request) Interrupt(playedSamples uint64) error {
	return r.cancel(&rilletv1.Cancel{PlayedSamples: &playedSamples})
}

func (r *Request) cancel(c *rilletv1.Cancel) error {
	r.mu.Lock()
	ended := r.ended
	r.mu.Unlock()
	if ended {
		return nil
	}
	return r.session.Send(&rilletv1.SessionRequest{RequestId: r.ID, Kind: &rilletv1.SessionRequest_Cancel{Cancel: c}})
}
