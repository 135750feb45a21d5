package gantry

// A miner's event feed (MinerService.WatchEvents) that survives reconnects:
//
//	events := c.WatchEvents(ctx, gantry.NewSigner(key), gantry.WatchOptions{Cursor: saved})
//	defer events.Close()
//	for {
//		ev, err := events.Next()     // never a heartbeat
//		if errors.Is(err, gantry.ErrCursorExpired) { /* re-sync by listing, then watch without a cursor */ }
//		if err != nil { return err }
//		handle(ev)
//		saved = events.Cursor()
//	}
//
// Each (re)connection is a new call signed grpc-v1 (a fresh single-use nonce). When the stream drops (server
// restart, UNAVAILABLE, a subscriber dropped for lagging), it reconnects with exponential backoff and resumes
// after the last event Next returned: nothing is lost or repeated. Before the first event there is no cursor, so
// a reconnect then starts at the live end again (Cursor "0" replays everything retained instead).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	minerv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/miner/v1"
)

// ErrCursorExpired matches (errors.Is) the error of a cursor the server no longer keeps events after.
var ErrCursorExpired = errors.New("gantry: event cursor expired")

// CursorExpiredError is OUT_OF_RANGE from WatchEvents: re-sync by listing, then watch without a cursor.
type CursorExpiredError struct {
	Cursor  string
	Details string
}

func (e *CursorExpiredError) Error() string {
	return fmt.Sprintf("gantry: event cursor %s expired: %s", e.Cursor, e.Details)
}

// Is makes errors.Is(err, ErrCursorExpired) true.
func (e *CursorExpiredError) Is(target error) bool { return target == ErrCursorExpired }

// WatchOptions configure WatchEvents. The zero value watches every reason from the live end.
type WatchOptions struct {
	// Cursor resumes after this event ("" = from now on, "0" = everything the server retains).
	Cursor string
	// Reasons filters server-side (empty = all), e.g. "job_created", "instance_deleted".
	Reasons []string
	// InitialBackoff (default 500 ms) doubles per failed reconnect up to MaxBackoff (default 30 s), with
	// jitter; it starts over once a stream delivers something.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// OnRetry, when set, is told about each reconnect (err is nil when the stream ended without a status).
	OnRetry func(err error, delay time.Duration)
}

// retryable codes: the server went away, is stopping, or dropped a slow stream; the same request may succeed.
var retryable = map[codes.Code]bool{
	codes.Unavailable: true, codes.Canceled: true, codes.Aborted: true, codes.ResourceExhausted: true,
	codes.DeadlineExceeded: true,
}

// EventStream is a resumable WatchEvents feed; see Client.WatchEvents.
type EventStream struct {
	ctx        context.Context
	cancel     context.CancelFunc
	miner      minerv1.MinerServiceClient
	signer     *Signer
	opts       WatchOptions
	cursor     string
	stream     grpc.ServerStreamingClient[minerv1.WatchEventsResponse]
	failures   int
	Reconnects int // how many times the feed reconnected
}

// WatchEvents opens the signer's event feed (public events and those addressed to its hotkey). ctx bounds the
// whole feed. Each call is signed by signer; pass nil when the client was dialed with the signer's
// DialOptions (signing twice would send two signatures).
func (c *Client) WatchEvents(ctx context.Context, signer *Signer, opts WatchOptions) *EventStream {
	if opts.InitialBackoff <= 0 {
		opts.InitialBackoff = 500 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	return &EventStream{ctx: ctx, cancel: cancel, miner: c.Miner, signer: signer, opts: opts, cursor: opts.Cursor}
}

// Cursor is the cursor of the last event Next returned (or the starting one): where a reconnect resumes.
func (s *EventStream) Cursor() string { return s.cursor }

// Close ends the feed.
func (s *EventStream) Close() { s.cancel() }

func (s *EventStream) open() error {
	req := &minerv1.WatchEventsRequest{Reasons: s.opts.Reasons}
	if s.cursor != "" {
		cursor := s.cursor
		req.Cursor = &cursor
	}
	ctx := s.ctx
	if s.signer != nil {
		signed, err := s.signer.Context(ctx, minerv1.MinerService_WatchEvents_FullMethodName, req)
		if err != nil {
			return err
		}
		ctx = signed
	}
	stream, err := s.miner.WatchEvents(ctx, req)
	if err != nil {
		return err
	}
	s.stream = stream
	return nil
}

// Next blocks until the next event (heartbeats are skipped), reconnecting as needed. It returns a
// *CursorExpiredError on OUT_OF_RANGE, ctx's error once ctx is done, and any other non-retryable status as is.
func (s *EventStream) Next() (*minerv1.WatchEventsResponse, error) {
	for {
		if err := s.ctx.Err(); err != nil {
			return nil, err
		}
		var err error
		if s.stream == nil {
			err = s.open()
		}
		if err == nil {
			var ev *minerv1.WatchEventsResponse
			ev, err = s.stream.Recv()
			if err == nil {
				s.failures = 0
				if ev.GetHeartbeat() {
					continue
				}
				s.cursor = ev.GetCursor()
				return ev, nil
			}
		}
		s.stream = nil
		if ctxErr := s.ctx.Err(); ctxErr != nil {
			return nil, ctxErr
		}
		if errors.Is(err, io.EOF) {
			err = nil // the stream ended without a status: reconnect
		} else if st, ok := status.FromError(err); ok {
			if st.Code() == codes.OutOfRange {
				return nil, &CursorExpiredError{Cursor: s.cursor, Details: st.Message()}
			}
			if !retryable[st.Code()] {
				return nil, err
			}
		} else {
			return nil, err
		}
		if waitErr := s.backoff(err); waitErr != nil {
			return nil, waitErr
		}
	}
}

func (s *EventStream) backoff(cause error) error {
	ceiling := s.opts.InitialBackoff << min(s.failures, 20)
	if ceiling > s.opts.MaxBackoff || ceiling <= 0 {
		ceiling = s.opts.MaxBackoff
	}
	delay := ceiling/2 + time.Duration(rand.Int64N(int64(ceiling/2)+1))
	s.failures++
	s.Reconnects++
	if s.opts.OnRetry != nil {
		s.opts.OnRetry(cause, delay)
	}
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-s.ctx.Done():
		return s.ctx.Err()
	case <-timer.C:
		return nil
	}
}
