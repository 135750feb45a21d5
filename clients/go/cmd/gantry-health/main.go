// Command gantry-health checks that a Gantry server is SERVING: `gantry-health -addr 127.0.0.1:50051`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gantry-network/gantry/clients/go/gantry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:50051", "Gantry gRPC address")
	flag.Parse()
	c, err := gantry.Dial(*addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ok, err := c.Serving(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gantry-health:", err)
		os.Exit(1)
	}
	fmt.Println(map[bool]string{true: "SERVING", false: "NOT_SERVING"}[ok])
	if !ok {
		os.Exit(1)
	}
}
