// Package gantry is a small Go client for the Gantry control plane: one connection, typed stubs for every
// service, and the standard health service.
package gantry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
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

// WithCAFile returns the dial option for TLS to a server whose certificate caFile (PEM) signed, e.g.
//
//	tls, err := gantry.WithCAFile("ca.pem")
//	c, err := gantry.Dial("gantry.example:50051", tls)
func WithCAFile(caFile string) (grpc.DialOption, error) {
	creds, err := credentials.NewClientTLSFromFile(caFile, "")
	if err != nil {
		return nil, fmt.Errorf("gantry: CA file %s: %w", caFile, err)
	}
	return grpc.WithTransportCredentials(creds), nil
}

// WithClientCert is WithCAFile for a server that requires client certificates (GANTRY_TLS_CLIENT_CA_FILE):
// it also presents certFile with its keyFile (PEM).
func WithClientCert(caFile, certFile, keyFile string) (grpc.DialOption, error) {
	roots, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("gantry: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("gantry: CA file %s holds no PEM certificate", caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("gantry: client certificate: %w", err)
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12})), nil
}

// Dial connects to a Gantry server at addr (host:port). Plaintext suits loopback and tests; pass
// WithCAFile (or grpc.WithTransportCredentials) for TLS.
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
