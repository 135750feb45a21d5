// Command gantry-events prints a miner's Gantry event feed, one JSON object per line, reconnecting and resuming
// by cursor when the server restarts:
//
//	gantry-events -addr 127.0.0.1:50051 -seed-hex e5be9a50…5c0a [-key-type sr25519] [-cursor 0] [-reasons job_created]
//
// The seed may come from GANTRY_MINER_SEED (or MINER_SEED, as the chutes-miner chart names it) instead of
// -seed-hex. Each line is {"cursor","reason","message"?,"data","created_at"}; save the last cursor and pass it
// as -cursor to resume. Exit status 3 means the cursor expired: re-sync by listing, then start without one.
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gantry-network/gantry/clients/go/gantry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "Gantry gRPC address")
	seedHex := flag.String("seed-hex", firstEnv("GANTRY_MINER_SEED", "MINER_SEED"),
		"32-byte hotkey seed, hex (default $GANTRY_MINER_SEED or $MINER_SEED)")
	keyType := flag.String("key-type", "sr25519", "sr25519 or ed25519")
	cursor := flag.String("cursor", "", "resume after this cursor (\"0\": everything retained; empty: from now on)")
	reasons := flag.String("reasons", "", "comma-separated reasons to receive (empty: all)")
	flag.Parse()

	key, err := keyFrom(*seedHex, *keyType)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gantry-events:", err)
		os.Exit(2)
	}
	c, err := gantry.Dial(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gantry-events:", err)
		os.Exit(2)
	}
	defer c.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := gantry.WatchOptions{Cursor: *cursor, OnRetry: func(err error, delay time.Duration) {
		fmt.Fprintf(os.Stderr, "gantry-events: stream dropped (%v); reconnecting in %s\n", err, delay.Round(time.Millisecond))
	}}
	if *reasons != "" {
		opts.Reasons = strings.Split(*reasons, ",")
	}
	events := c.WatchEvents(ctx, gantry.NewSigner(key), opts)
	defer events.Close()
	out := json.NewEncoder(os.Stdout)
	for {
		ev, err := events.Next()
		switch {
		case errors.Is(err, context.Canceled):
			return
		case errors.Is(err, gantry.ErrCursorExpired):
			fmt.Fprintln(os.Stderr, "gantry-events:", err)
			os.Exit(3)
		case err != nil:
			fmt.Fprintln(os.Stderr, "gantry-events:", err)
			os.Exit(1)
		}
		line := map[string]any{"cursor": ev.GetCursor(), "reason": ev.GetReason(), "data": ev.GetData().AsMap(),
			"created_at": ev.GetCreatedAt().AsTime().UTC().Format(time.RFC3339Nano)}
		if ev.Message != nil {
			line["message"] = ev.GetMessage()
		}
		if err := out.Encode(line); err != nil {
			fmt.Fprintln(os.Stderr, "gantry-events:", err)
			os.Exit(1)
		}
	}
}

func firstEnv(names ...string) string {
	for _, name := range names {
		if v := os.Getenv(name); v != "" {
			return v
		}
	}
	return ""
}

func keyFrom(seedHex, keyType string) (gantry.Keypair, error) {
	if seedHex == "" {
		return nil, errors.New("a hotkey seed is required: -seed-hex or GANTRY_MINER_SEED")
	}
	seed, err := hex.DecodeString(strings.TrimPrefix(seedHex, "0x"))
	if err != nil {
		return nil, fmt.Errorf("-seed-hex: %w", err)
	}
	switch keyType {
	case "sr25519":
		return gantry.NewSr25519FromSeed(seed)
	case "ed25519":
		return gantry.NewEd25519FromSeed(seed)
	}
	return nil, fmt.Errorf("-key-type must be sr25519 or ed25519, got %q", keyType)
}
