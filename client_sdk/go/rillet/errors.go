package rillet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Error is a failed request, a failed call or a rejected session message: a canonical gRPC code with the
// server's google.rpc.ErrorInfo (Reason, Domain, Metadata) and, for RESOURCE_EXHAUSTED, its google.rpc.RetryInfo.
//
// It implements GRPCStatus, so status.Code(err) and status.FromError(err) work on it, and errors.As(err, &e)
// finds it in any error the package returns.
type Error struct {
	// Code is the canonical status code, e.g. codes.InvalidArgument.
	Code codes.Code
	// Message is the server's human-readable message.
	Message string
	// Reason is ErrorInfo.reason, UPPER_SNAKE_CASE (e.g. "MAX_TOKENS_OUT_OF_RANGE"); empty without ErrorInfo.
	Reason string
	// Domain is ErrorInfo.domain ("rillet.dev" for the server's own errors).
	Domain string
	// Metadata is ErrorInfo.metadata (e.g. "field").
	Metadata map[string]string
	// RetryDelay is RetryInfo.retry_delay: how long to wait before retrying; 0 when the server sent none.
	RetryDelay time.Duration
	// RequestID is the session request the error belongs to; empty for a call's own failure.
	RequestID string
	// Rejected is true for a session message the server could not apply (SessionResponse.rejected): it changed
	// no request.
	Rejected bool
	// ClientMessageIndex, on a rejection, is which of the session's messages it answers: counted from 0 in the
	// order the session sent them (SessionResponse.client_message_index). Nil otherwise.
	ClientMessageIndex *uint64

	status *status.Status
}

func (e *Error) Error() string {
	s := e.Code.String() + ": " + e.Message
	if e.Reason != "" {
		s += " [" + e.Reason + "]"
	}
	if e.RequestID != "" {
		s = fmt.Sprintf("request %q: %s", e.RequestID, s)
	}
	return s
}

// GRPCStatus returns the status the error was built from, details included.
func (e *Error) GRPCStatus() *status.Status { return e.status }

// Retryable reports whether the same request may succeed later: UNAVAILABLE (starting, draining) and
// RESOURCE_EXHAUSTED (limits; wait RetryDelay first).
func (e *Error) Retryable() bool {
	return e.Code == codes.Unavailable || e.Code == codes.ResourceExhausted
}

func fromStatus(st *status.Status, requestID string) *Error {
	e := &Error{Code: st.Code(), Message: st.Message(), RequestID: requestID, status: st}
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Domain, e.Metadata = d.GetReason(), d.GetDomain(), d.GetMetadata()
		case *errdetails.RetryInfo:
			e.RetryDelay = d.GetRetryDelay().AsDuration()
		}
	}
	return e
}

// FromProto builds an Error from a google.rpc.Status, as sent in-band in SessionResponse.error and .rejected.
func FromProto(s *spb.Status, requestID string) *Error {
	return fromStatus(status.FromProto(s), requestID)
}

// FromError turns an error from a gRPC call into an *Error (details decoded from grpc-status-details-bin).
// A context's own error (cancelled or past its deadline before the call saw it) becomes CANCELLED or
// DEADLINE_EXCEEDED; nil stays nil.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	switch {
	case errors.Is(err, context.Canceled):
		return fromStatus(status.New(codes.Canceled, err.Error()), "")
	case errors.Is(err, context.DeadlineExceeded):
		return fromStatus(status.New(codes.DeadlineExceeded, err.Error()), "")
	}
	return fromStatus(status.Convert(err), "")
}
