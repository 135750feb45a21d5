package gantry

// The resumable event feed against a live server started by tests/integration/test_client_events.py, which
// registers the sr25519 hotkey (GANTRY_TEST_SR25519_SEED / _HOTKEY) and passes the admin token
// (GANTRY_TEST_ADMIN_TOKEN) so the test can make events: each AdminService.UpsertImage of a new image announces
// image_created to every miner. The same driver restarts the server under `gantry-events` (cmd/gantry-events).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	adminv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/admin/v1"
	minerv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/miner/v1"
)

func liveAdmin(t *testing.T) context.Context {
	t.Helper()
	token := os.Getenv("GANTRY_TEST_ADMIN_TOKEN")
	if token == "" {
		t.Skip("GANTRY_TEST_ADMIN_TOKEN not set; run through pytest tests/integration/test_client_events.py")
	}
	return metadata.AppendToOutgoingContext(liveCtx(t), "authorization", "Bearer "+token)
}

func randomID(t *testing.T) string {
	raw := make([]byte, 6)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(raw)
}

// newImages announces image_created for n new images and returns their ids in order.
func newImages(t *testing.T, c *Client, admin context.Context, n int) []string {
	t.Helper()
	user, err := c.Admin.CreateUser(admin, &adminv1.CreateUserRequest{Username: "go" + randomID(t)})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 0; i < n; i++ {
		id := "img-" + randomID(t)
		_, err := c.Admin.UpsertImage(admin, &adminv1.UpsertImageRequest{ImageId: id, UserId: user.GetUserId(),
			Name: "vllm", Tag: "0.8.4", ComputeType: "gpu"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

// nextImage is the next image_created among `ids` (other tests' events may be retained in the stream).
func nextImage(t *testing.T, events *EventStream, ids []string) *minerv1.WatchEventsResponse {
	t.Helper()
	for {
		ev, err := events.Next()
		if err != nil {
			t.Fatal(err)
		}
		if ev.GetHeartbeat() || ev.GetCursor() == "" {
			t.Fatalf("Next returned a heartbeat: %v", ev)
		}
		id := ev.GetData().AsMap()["image_id"]
		for _, want := range ids {
			if id == want {
				return ev
			}
		}
	}
}

func TestLiveEventsResumeAfterTheirCursor(t *testing.T) {
	key := liveKey(t, "sr25519")
	admin := liveAdmin(t)
	c := liveClient(t)
	ids := newImages(t, c, admin, 3)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := c.WatchEvents(ctx, NewSigner(key), WatchOptions{Cursor: "0", Reasons: []string{"image_created"}})
	got := nextImage(t, first, ids)
	if got.GetData().AsMap()["image_id"] != ids[0] || got.GetReason() != "image_created" {
		t.Fatalf("first event %v, want image_created of %s", got, ids[0])
	}
	saved := first.Cursor()
	first.Close()

	// A later run resumes after the saved cursor: the second image next, never the first again.
	again := c.WatchEvents(ctx, NewSigner(key), WatchOptions{Cursor: saved, Reasons: []string{"image_created"}})
	defer again.Close()
	for _, want := range ids[1:] {
		ev := nextImage(t, again, ids)
		if ev.GetData().AsMap()["image_id"] != want {
			t.Fatalf("after cursor %s got %v, want image %s", saved, ev.GetData().AsMap(), want)
		}
	}
}

func TestLiveEventsExpiredCursorIsCursorExpired(t *testing.T) {
	key := liveKey(t, "sr25519")
	liveAdmin(t)
	c := liveClient(t)
	trimmed := os.Getenv("GANTRY_TEST_TRIMMED_CURSOR")
	if trimmed == "" {
		t.Skip("GANTRY_TEST_TRIMMED_CURSOR not set")
	}
	events := c.WatchEvents(liveCtx(t), NewSigner(key), WatchOptions{Cursor: trimmed})
	defer events.Close()
	_, err := events.Next()
	var expired *CursorExpiredError
	if !errors.As(err, &expired) || !errors.Is(err, ErrCursorExpired) || expired.Cursor != trimmed {
		t.Fatalf("Next() = %v, want a CursorExpiredError for %s", err, trimmed)
	}
	if events.Reconnects != 0 {
		t.Fatalf("an expired cursor was retried %d times", events.Reconnects)
	}
}

func TestLiveEventsUnregisteredHotkeyFailsAtOnce(t *testing.T) {
	liveKey(t, "sr25519")
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		t.Fatal(err)
	}
	stranger, err := NewSr25519FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	events := liveClient(t).WatchEvents(liveCtx(t), NewSigner(stranger), WatchOptions{})
	defer events.Close()
	_, err = events.Next()
	wantStatus(t, err, codes.Unauthenticated, "HOTKEY_NOT_REGISTERED")
	if events.Reconnects != 0 {
		t.Fatalf("an unauthenticated feed was retried %d times", events.Reconnects)
	}
}
