package gantry

// A live test of TLS: tests/integration/test_tls.py starts a server with a throwaway CA and passes its address
// and the CA file in GANTRY_TEST_TLS_GRPC_ADDR / GANTRY_TEST_CA_FILE.

import (
	"context"
	"os"
	"testing"
	"time"
)

func TestDialWithCAFile(t *testing.T) {
	addr, caFile := os.Getenv("GANTRY_TEST_TLS_GRPC_ADDR"), os.Getenv("GANTRY_TEST_CA_FILE")
	if addr == "" || caFile == "" {
		t.Skip("GANTRY_TEST_TLS_GRPC_ADDR / GANTRY_TEST_CA_FILE not set; run through pytest tests/integration/test_tls.py")
	}
	tls, err := WithCAFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(addr, tls)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ok, err := c.Serving(ctx)
	if err != nil {
		t.Fatalf("health check over TLS: %v", err)
	}
	if !ok {
		t.Fatal("server is not SERVING")
	}
}

// With GANTRY_TEST_MTLS_GRPC_ADDR (a server requiring client certificates): the VM's certificate gets in.
func TestDialWithClientCert(t *testing.T) {
	addr := os.Getenv("GANTRY_TEST_MTLS_GRPC_ADDR")
	ca, cert, key := os.Getenv("GANTRY_TEST_CA_FILE"), os.Getenv("GANTRY_TEST_CERT_FILE"), os.Getenv("GANTRY_TEST_KEY_FILE")
	if addr == "" || cert == "" {
		t.Skip("GANTRY_TEST_MTLS_GRPC_ADDR not set; run through pytest tests/integration/test_tls.py")
	}
	opt, err := WithClientCert(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(addr, opt)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ok, err := c.Serving(ctx); err != nil || !ok {
		t.Fatalf("health check over mTLS: %v %v", ok, err)
	}
}

func TestWithCAFileRefusesAMissingFile(t *testing.T) {
	if _, err := WithCAFile("/nonexistent/ca.pem"); err == nil {
		t.Fatal("a missing CA file was accepted")
	}
}
