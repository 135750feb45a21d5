package gantry

// Hotkey-signed calls against a live server started by tests/e2e/test_go_signer.py, which registers the two
// hotkeys (random seeds) on the metagraph first and passes them in GANTRY_TEST_SR25519_SEED / _HOTKEY and
// GANTRY_TEST_ED25519_SEED / _HOTKEY. MinerService.ReleaseJob and ListNodes have the policy
// hotkey("miner", registered=True): ReleaseJob's NOT_FOUND JOB_NOT_FOUND (nobody claimed the job) and ListNodes
// ending cleanly (the hotkey has no GPUs) mean the call got past auth and its handler ran.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	minerv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/miner/v1"
)

// liveKey is the registered key of one type, or a skip when the signer driver did not start this run.
func liveKey(t *testing.T, keyType string) Keypair {
	t.Helper()
	prefix := "GANTRY_TEST_" + strings.ToUpper(keyType)
	seedHex, hotkey := os.Getenv(prefix+"_SEED"), os.Getenv(prefix+"_HOTKEY")
	if seedHex == "" || hotkey == "" {
		t.Skip(prefix + "_SEED/_HOTKEY not set; run through pytest tests/e2e/test_go_signer.py")
	}
	seed, err := hex.DecodeString(seedHex)
	if err != nil {
		t.Fatal(err)
	}
	var key Keypair
	if keyType == "sr25519" {
		key, err = NewSr25519FromSeed(seed)
	} else {
		key, err = NewEd25519FromSeed(seed)
	}
	if err != nil {
		t.Fatal(err)
	}
	if key.Address() != hotkey { // the Python side derived the address with bittensor_wallet / cryptography
		t.Fatalf("Go derives %s from the seed, Python %s", key.Address(), hotkey)
	}
	return key
}

func liveClient(t *testing.T, opts ...grpc.DialOption) *Client {
	t.Helper()
	c, err := Dial(liveAddr(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func liveCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantStatus checks the code and, when reason is set, the ErrorInfo reason of err.
func wantStatus(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("status %v %q, want %v", st.Code(), st.Message(), code)
	}
	if reason == "" {
		return
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == reason {
			return
		}
	}
	t.Fatalf("status %v %q: no ErrorInfo reason %s in %v", st.Code(), st.Message(), reason, st.Details())
}

func TestLiveSignedUnaryCallPassesAuth(t *testing.T) {
	for _, keyType := range []string{"sr25519", "ed25519"} {
		t.Run(keyType, func(t *testing.T) {
			key := liveKey(t, keyType)
			c := liveClient(t, NewSigner(key).DialOptions()...)
			_, err := c.Miner.ReleaseJob(liveCtx(t), &minerv1.ReleaseJobRequest{JobId: "job-1"})
			wantStatus(t, err, codes.NotFound, "JOB_NOT_FOUND")
		})
	}
}

func TestLiveSignedServerStreamPassesAuth(t *testing.T) {
	c := liveClient(t, NewSigner(liveKey(t, "sr25519")).DialOptions()...)
	stream, err := c.Miner.ListNodes(liveCtx(t), &minerv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if !errors.Is(err, io.EOF) {
		t.Fatalf("ListNodes of a hotkey without GPUs: want a clean end (OK), got %v", err)
	}
}

func TestLiveUnsignedCallIsUnauthenticated(t *testing.T) {
	c := liveClient(t)
	_, err := c.Miner.ReleaseJob(liveCtx(t), &minerv1.ReleaseJobRequest{JobId: "job-1"})
	wantStatus(t, err, codes.Unauthenticated, "HOTKEY_AUTH_MISSING")
}

func TestLiveWrongSignatureIsUnauthenticated(t *testing.T) {
	key := liveKey(t, "sr25519")
	signer := NewSigner(key)
	c := liveClient(t)
	req := &minerv1.ReleaseJobRequest{JobId: "job-1"}

	// Signed over another request: the server's canonical string has another hash.
	md, err := signer.Metadata(releaseRPC, &minerv1.ReleaseJobRequest{JobId: "job-2"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Miner.ReleaseJob(metadata.NewOutgoingContext(liveCtx(t), md), req)
	wantStatus(t, err, codes.Unauthenticated, "SIGNATURE_INVALID")

	// A corrupted signature.
	md, err = signer.Metadata(releaseRPC, req)
	if err != nil {
		t.Fatal(err)
	}
	sig := []byte(md.Get(HeaderSignature)[0])
	sig[0] ^= 1
	md.Set(HeaderSignature, string(sig))
	_, err = c.Miner.ReleaseJob(metadata.NewOutgoingContext(liveCtx(t), md), req)
	wantStatus(t, err, codes.Unauthenticated, "SIGNATURE_INVALID")

	// Signed for another RPC.
	md, err = signer.Metadata("/gantry.miner.v1.MinerService/ListAvailableJobs", req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Miner.ReleaseJob(metadata.NewOutgoingContext(liveCtx(t), md), req)
	wantStatus(t, err, codes.Unauthenticated, "SIGNATURE_INVALID")
}

func TestLiveReplayedNonceIsRefused(t *testing.T) {
	nonce, err := V2Nonce(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	signer := &Signer{Key: liveKey(t, "ed25519"), Nonce: func(time.Time) (string, error) { return nonce, nil }}
	c := liveClient(t, signer.DialOptions()...)
	req := &minerv1.ReleaseJobRequest{JobId: "job-replay"}
	_, err = c.Miner.ReleaseJob(liveCtx(t), req)
	wantStatus(t, err, codes.NotFound, "JOB_NOT_FOUND")
	_, err = c.Miner.ReleaseJob(liveCtx(t), req)
	wantStatus(t, err, codes.Unauthenticated, "NONCE_REPLAYED")
}

func TestLiveUnregisteredHotkeyIsRefused(t *testing.T) {
	liveKey(t, "sr25519") // only with the signer driver
	seed := make([]byte, 32)
	if _, err := io.ReadFull(rand.Reader, seed); err != nil {
		t.Fatal(err)
	}
	stranger, err := NewSr25519FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	c := liveClient(t, NewSigner(stranger).DialOptions()...)
	_, err = c.Miner.ReleaseJob(liveCtx(t), &minerv1.ReleaseJobRequest{JobId: "job-1"})
	wantStatus(t, err, codes.Unauthenticated, "HOTKEY_NOT_REGISTERED")
}
