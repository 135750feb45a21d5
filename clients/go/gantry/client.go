// Package gantry is a small Go client for the Gantry control plane: one connection, typed stubs for every
// service, and the standard health service.
package gantry

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	adminv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/admin/v1"
	brokerv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/broker/v1"
	instancesv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/instances/v1"
	minerv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/miner/v1"
	opsv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/ops/v1"
	serversv1 "github.com/gantry-network/gantry/clients/go/gen/gantry/servers/v1"
)

// Client holds one gRPC connection and a stub per Gantry service.
type Client struct {
	conn      *grpc.ClientConn
	Health    healthpb.HealthClient
	Ops       opsv1.OpsServiceClient
	Admin     adminv1.AdminServiceClient
	Instances instancesv1.InstanceServiceClient
	Servers   serversv1.ServerServiceClient
	Miner     minerv1.MinerServiceClient
	Inventory brokerv1.InventoryServiceClient
	Templates brokerv1.TemplateServiceClient
	Sessions  brokerv1.SessionServiceClient
	Costs     brokerv1.CostServiceClient
}

// Dial connects to a Gantry server at addr (host:port). Plaintext suits loopback and tests; pass
// grpc.WithTransportCredentials to override.
func Dial(addr string, opts ...grpc.DialOption) (*Client, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("gantry: dial %s: %w", addr, err)
	}
	return &Client{
		conn:      conn,
		Health:    healthpb.NewHealthClient(conn),
		Ops:       opsv1.NewOpsServiceClient(conn),
		Admin:     adminv1.NewAdminServiceClient(conn),
		Instances: instancesv1.NewInstanceServiceClient(conn),
		Servers:   serversv1.NewServerServiceClient(conn),
		Miner:     minerv1.NewMinerServiceClient(conn),
		Inventory: brokerv1.NewInventoryServiceClient(conn),
		Templates: brokerv1.NewTemplateServiceClient(conn),
		Sessions:  brokerv1.NewSessionServiceClient(conn),
		Costs:     brokerv1.NewCostServiceClient(conn),
	}, nil
}

// Serving reports whether the whole server answers SERVING on the standard health service.
func (c *Client) Serving(ctx context.Context) (bool, error) {
	resp, err := c.Health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return false, err
	}
	return resp.GetStatus() == healthpb.HealthCheckResponse_SERVING, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.conn.Close() }
