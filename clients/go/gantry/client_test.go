package gantry

import (
	"context"
	"os"
	"testing"
	"time"

	opsv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/ops/v1"
)

// liveAddr is the address of a server started by the Python test suite (tests/e2e/test_go_client.py).
func liveAddr(t *testing.T) string {
	addr := os.Getenv("GANTRY_TEST_GRPC_ADDR")
	if addr == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("GANTRY_TEST_GRPC_ADDR is not set: CI must run this test against a live server")
		}
		t.Skip("GANTRY_TEST_GRPC_ADDR not set; run through pytest tests/e2e/test_go_client.py")
	}
	return addr
}

func TestHealthIsServing(t *testing.T) {
	c, err := Dial(liveAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := c.Serving(ctx)
	if err != nil {
		t.Fatalf("health check: %v", err)
	}
	if !ok {
		t.Fatal("server is not SERVING")
	}
}

func TestReadyOverOpsService(t *testing.T) {
	c, err := Dial(liveAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Ops.GetReady(ctx, &opsv1.GetReadyRequest{})
	if err != nil {
		t.Fatalf("GetReady: %v", err)
	}
	if !resp.GetReady() || resp.GetTimestamp() == "" {
		t.Fatalf("unexpected readiness %+v", resp)
	}
}
