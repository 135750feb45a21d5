package gantry

// Hotkey signatures (docs/auth.md "Hotkey signatures"): SS58 addresses, sr25519 and ed25519 keys, the four
// signed strings, and gRPC interceptors that sign every call with the grpc-v1 scheme (x-chutes-sig-version: 2).

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"strconv"
	"strings"
	"time"

	schnorrkel "github.com/ChainSafe/go-schnorrkel"
	"golang.org/x/crypto/blake2b"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// Metadata keys of a hotkey-signed call (REST headers map 1:1).
const (
	HeaderHotkey     = "x-chutes-hotkey"
	HeaderSignature  = "x-chutes-signature"
	HeaderNonce      = "x-chutes-nonce"
	HeaderSigVersion = "x-chutes-sig-version"
)

// SubstrateSigningContext is the schnorrkel signing context of Substrate (and Bittensor) sr25519 signatures.
var SubstrateSigningContext = []byte("substrate")

// ---------------------------------------------------------------------------------------------------------
// SS58

const ss58Alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

// DefaultSS58Prefix is the generic Substrate/Bittensor address format (addresses starting with 5).
const DefaultSS58Prefix = 42

var errSS58 = errors.New("gantry: invalid SS58 address")

func ss58Checksum(payload []byte) []byte {
	h, _ := blake2b.New512(nil)
	h.Write([]byte("SS58PRE"))
	h.Write(payload)
	return h.Sum(nil)[:2]
}

func base58Encode(data []byte) string {
	n := new(big.Int).SetBytes(data)
	base, mod := big.NewInt(58), new(big.Int)
	var out []byte
	for n.Sign() > 0 {
		n.DivMod(n, base, mod)
		out = append(out, ss58Alphabet[mod.Int64()])
	}
	for _, b := range data {
		if b != 0 {
			break
		}
		out = append(out, '1')
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return string(out)
}

func base58Decode(text string) ([]byte, error) {
	n, base := new(big.Int), big.NewInt(58)
	for _, ch := range text {
		d := strings.IndexRune(ss58Alphabet, ch)
		if d < 0 {
			return nil, fmt.Errorf("%w: %q is not a base58 character", errSS58, ch)
		}
		n.Mul(n, base).Add(n, big.NewInt(int64(d)))
	}
	leading := len(text) - len(strings.TrimLeft(text, "1"))
	return append(make([]byte, leading), n.Bytes()...), nil
}

// EncodeSS58 is the SS58 address of a 32-byte public key under a network prefix (0..16383; 42 is generic).
func EncodeSS58(publicKey []byte, prefix uint16) (string, error) {
	if len(publicKey) != 32 {
		return "", fmt.Errorf("gantry: an SS58 address holds a 32-byte public key, got %d bytes", len(publicKey))
	}
	var payload []byte
	switch {
	case prefix < 64:
		payload = []byte{byte(prefix)}
	case prefix < 16384:
		payload = []byte{byte((prefix&0xfc)>>2) | 0x40, byte(prefix>>8) | byte((prefix&0x03)<<6)}
	default:
		return "", fmt.Errorf("gantry: SS58 prefix %d is out of range (0..16383)", prefix)
	}
	payload = append(payload, publicKey...)
	return base58Encode(append(payload, ss58Checksum(payload)...)), nil
}

// DecodeSS58 returns the 32-byte public key and network prefix of an SS58 address, checking its checksum.
func DecodeSS58(address string) ([]byte, uint16, error) {
	if len(address) < 40 || len(address) > 50 {
		return nil, 0, fmt.Errorf("%w: an SS58 address has 46 to 48 characters", errSS58)
	}
	raw, err := base58Decode(address)
	if err != nil {
		return nil, 0, err
	}
	if len(raw) == 0 || raw[0] >= 128 {
		return nil, 0, fmt.Errorf("%w: reserved address type", errSS58)
	}
	prefixLen, prefix := 1, uint16(raw[0])
	if raw[0] >= 64 {
		prefixLen = 2
		if len(raw) > 1 {
			prefix = uint16(raw[0]&0x3f)<<2 | uint16(raw[1]>>6) | uint16(raw[1]&0x3f)<<8
		}
	}
	if len(raw) != prefixLen+32+2 {
		return nil, 0, fmt.Errorf("%w: it must hold a 32-byte public key", errSS58)
	}
	payload, check := raw[:len(raw)-2], raw[len(raw)-2:]
	if sum := ss58Checksum(payload); sum[0] != check[0] || sum[1] != check[1] {
		return nil, 0, fmt.Errorf("%w: checksum mismatch", errSS58)
	}
	return append([]byte(nil), payload[prefixLen:]...), prefix, nil
}

// ---------------------------------------------------------------------------------------------------------
// Signed strings (docs/auth.md table "scheme / signed string")

// SHA256Hex is the lowercase hex SHA-256 of data.
func SHA256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// RequestSHA256 is the hex SHA-256 of a message's deterministic serialisation (what grpc-v1 signs).
func RequestSHA256(msg proto.Message) (string, error) {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return "", fmt.Errorf("gantry: serialise request: %w", err)
	}
	return SHA256Hex(b), nil
}

// V1PurposeMessage is "{hotkey}:{nonce}:{purpose}" (nonce: unix seconds).
func V1PurposeMessage(hotkey, nonce, purpose string) string {
	return hotkey + ":" + nonce + ":" + purpose
}

// V1BodyMessage is "{hotkey}:{nonce}:{sha256_hex(body)}" (REST: the raw body; native gRPC: the deterministic
// serialisation, see RequestSHA256).
func V1BodyMessage(hotkey, nonce string, body []byte) string {
	return hotkey + ":" + nonce + ":" + SHA256Hex(body)
}

// V2Message is "v2:{hotkey}:{METHOD}:{path[?query]}:{nonce}:{body_sha256}" (REST gateway);
// bodySHA256 is "" for a request without a body.
func V2Message(hotkey, method, pathAndQuery, nonce, bodySHA256 string) string {
	return "v2:" + hotkey + ":" + strings.ToUpper(method) + ":" + pathAndQuery + ":" + nonce + ":" + bodySHA256
}

// GRPCMessage is "grpc-v1:{hotkey}:{/package.Service/Method}:{nonce}:{request_sha256}".
func GRPCMessage(hotkey, fullMethod, nonce, requestSHA256 string) string {
	return "grpc-v1:" + hotkey + ":" + fullMethod + ":" + nonce + ":" + requestSHA256
}

// V1Nonce is a v1 nonce: unix seconds.
func V1Nonce(now time.Time) string { return strconv.FormatInt(now.Unix(), 10) }

// V2Nonce is a single-use v2 / grpc-v1 nonce "{unix_ts}.{random}" with 22 random base64url characters.
func V2Nonce(now time.Time) (string, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	buf := make([]byte, 22)
	if _, err := io.ReadFull(rand.Reader, buf); err != nil {
		return "", fmt.Errorf("gantry: nonce randomness: %w", err)
	}
	for i, b := range buf {
		buf[i] = alphabet[b&63]
	}
	return strconv.FormatInt(now.Unix(), 10) + "." + string(buf), nil
}

// ---------------------------------------------------------------------------------------------------------
// Keys

// Keypair signs messages as a hotkey.
type Keypair interface {
	// Address is the SS58 address (prefix 42) sent as x-chutes-hotkey.
	Address() string
	// KeyType is "sr25519" or "ed25519".
	KeyType() string
	// Sign returns a 64-byte signature over message.
	Sign(message []byte) ([]byte, error)
}

type sr25519Keypair struct {
	secret  *schnorrkel.SecretKey
	public  *schnorrkel.PublicKey
	address string
}

// NewSr25519FromSeed is the sr25519 key of a 32-byte mini secret ("secret seed" in subkey), expanded the way
// Substrate does (Ed25519 expansion mode). //Alice is e5be9a50…5c0a.
func NewSr25519FromSeed(seed []byte) (Keypair, error) {
	if len(seed) != 32 {
		return nil, fmt.Errorf("gantry: an sr25519 seed has 32 bytes, got %d", len(seed))
	}
	mini, err := schnorrkel.NewMiniSecretKeyFromRaw([32]byte(seed))
	if err != nil {
		return nil, fmt.Errorf("gantry: sr25519 seed: %w", err)
	}
	secret := mini.ExpandEd25519()
	public, err := secret.Public()
	if err != nil {
		return nil, fmt.Errorf("gantry: sr25519 public key: %w", err)
	}
	pub := public.Encode()
	address, err := EncodeSS58(pub[:], DefaultSS58Prefix)
	if err != nil {
		return nil, err
	}
	return &sr25519Keypair{secret: secret, public: public, address: address}, nil
}

func (k *sr25519Keypair) Address() string { return k.address }
func (k *sr25519Keypair) KeyType() string { return "sr25519" }
func (k *sr25519Keypair) Sign(message []byte) ([]byte, error) {
	sig, err := k.secret.Sign(schnorrkel.NewSigningContext(SubstrateSigningContext, message))
	if err != nil {
		return nil, fmt.Errorf("gantry: sr25519 sign: %w", err)
	}
	out := sig.Encode()
	return out[:], nil
}

type ed25519Keypair struct {
	private ed25519.PrivateKey
	address string
}

// NewEd25519FromSeed is the ed25519 key of a 32-byte RFC 8032 seed.
func NewEd25519FromSeed(seed []byte) (Keypair, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("gantry: an ed25519 seed has 32 bytes, got %d", len(seed))
	}
	private := ed25519.NewKeyFromSeed(seed)
	address, err := EncodeSS58(private.Public().(ed25519.PublicKey), DefaultSS58Prefix)
	if err != nil {
		return nil, err
	}
	return &ed25519Keypair{private: private, address: address}, nil
}

func (k *ed25519Keypair) Address() string { return k.address }
func (k *ed25519Keypair) KeyType() string { return "ed25519" }
func (k *ed25519Keypair) Sign(message []byte) ([]byte, error) {
	return ed25519.Sign(k.private, message), nil
}

// ErrSignature is wrapped by Verify when a signature does not verify.
var ErrSignature = errors.New("gantry: signature does not verify")

func sr25519Verify(public []byte, message, signature []byte) bool {
	pk, err := schnorrkel.NewPublicKey([32]byte(public))
	if err != nil {
		return false
	}
	var sig schnorrkel.Signature
	if err := sig.Decode([64]byte(signature)); err != nil {
		return false
	}
	ok, err := pk.Verify(&sig, schnorrkel.NewSigningContext(SubstrateSigningContext, message))
	return err == nil && ok
}

// Verify checks a hex signature by hotkey over message as the server does (sr25519, then ed25519, then sr25519
// over "<Bytes>{message}</Bytes>") and returns the key type.
func Verify(hotkey, message, signatureHex string) (string, error) {
	public, _, err := DecodeSS58(hotkey)
	if err != nil {
		return "", err
	}
	if len(signatureHex) != 128 {
		return "", fmt.Errorf("%w: a signature is 128 hex characters, got %d", ErrSignature, len(signatureHex))
	}
	signature, err := hex.DecodeString(signatureHex)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrSignature, err)
	}
	data := []byte(message)
	if sr25519Verify(public, data, signature) {
		return "sr25519", nil
	}
	if ed25519.Verify(ed25519.PublicKey(public), data, signature) {
		return "ed25519", nil
	}
	if sr25519Verify(public, []byte("<Bytes>"+message+"</Bytes>"), signature) {
		return "sr25519", nil
	}
	return "", fmt.Errorf("%w: by %s over %q", ErrSignature, hotkey, message)
}

// ---------------------------------------------------------------------------------------------------------
// Signing gRPC calls (grpc-v1)

// Signer signs native gRPC calls with the grpc-v1 scheme.
type Signer struct {
	Key Keypair
	// Now is the clock of the nonce timestamp; nil means time.Now.
	Now func() time.Time
	// Nonce makes the nonce; nil means V2Nonce (tests use it to replay a nonce).
	Nonce func(now time.Time) (string, error)
}

// NewSigner signs calls as key.
func NewSigner(key Keypair) *Signer { return &Signer{Key: key} }

// Metadata is the x-chutes-* metadata of one call of fullMethod ("/package.Service/Method") with request req.
func (s *Signer) Metadata(fullMethod string, req proto.Message) (metadata.MD, error) {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	newNonce := V2Nonce
	if s.Nonce != nil {
		newNonce = s.Nonce
	}
	nonce, err := newNonce(now())
	if err != nil {
		return nil, err
	}
	digest, err := RequestSHA256(req)
	if err != nil {
		return nil, err
	}
	signature, err := s.Key.Sign([]byte(GRPCMessage(s.Key.Address(), fullMethod, nonce, digest)))
	if err != nil {
		return nil, err
	}
	return metadata.Pairs(
		HeaderHotkey, s.Key.Address(),
		HeaderSignature, hex.EncodeToString(signature),
		HeaderNonce, nonce,
		HeaderSigVersion, "2",
	), nil
}

// Context returns ctx with the signed metadata of one call appended (for a call made without the interceptors).
func (s *Signer) Context(ctx context.Context, fullMethod string, req proto.Message) (context.Context, error) {
	md, err := s.Metadata(fullMethod, req)
	if err != nil {
		return nil, err
	}
	for k, v := range md {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v[0])
	}
	return ctx, nil
}

// UnaryClientInterceptor signs every unary call (grpc.WithUnaryInterceptor).
func (s *Signer) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker,
		opts ...grpc.CallOption) error {
		msg, ok := req.(proto.Message)
		if !ok {
			return fmt.Errorf("gantry: cannot sign %s: request %T is not a proto message", method, req)
		}
		signed, err := s.Context(ctx, method, msg)
		if err != nil {
			return err
		}
		return invoker(signed, method, req, reply, cc, opts...)
	}
}

// StreamClientInterceptor signs server-streaming calls (grpc.WithStreamInterceptor): the headers depend on the
// one request, so the stream is opened at its first SendMsg. Client-streaming calls are passed through unsigned
// (the grpc-v1 scheme signs one request message).
func (s *Signer) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if desc.ClientStreams {
			return streamer(ctx, desc, cc, method, opts...)
		}
		return &lazyStream{ctx: ctx, open: func(req proto.Message) (grpc.ClientStream, error) {
			signed, err := s.Context(ctx, method, req)
			if err != nil {
				return nil, err
			}
			return streamer(signed, desc, cc, method, opts...)
		}}, nil
	}
}

var errNotOpened = errors.New("gantry: signed stream not opened yet: SendMsg the request first")

// lazyStream opens the real stream when the request is sent (generated server-streaming stubs send it at once).
type lazyStream struct {
	ctx    context.Context
	open   func(proto.Message) (grpc.ClientStream, error)
	stream grpc.ClientStream
}

func (l *lazyStream) SendMsg(m any) error {
	if l.stream != nil {
		return l.stream.SendMsg(m)
	}
	msg, ok := m.(proto.Message)
	if !ok {
		return fmt.Errorf("gantry: cannot sign request %T: not a proto message", m)
	}
	stream, err := l.open(msg)
	if err != nil {
		return err
	}
	l.stream = stream
	return stream.SendMsg(m)
}

func (l *lazyStream) RecvMsg(m any) error {
	if l.stream == nil {
		return errNotOpened
	}
	return l.stream.RecvMsg(m)
}

func (l *lazyStream) Header() (metadata.MD, error) {
	if l.stream == nil {
		return nil, errNotOpened
	}
	return l.stream.Header()
}

func (l *lazyStream) Trailer() metadata.MD {
	if l.stream == nil {
		return nil
	}
	return l.stream.Trailer()
}

func (l *lazyStream) CloseSend() error {
	if l.stream == nil {
		return errNotOpened
	}
	return l.stream.CloseSend()
}

func (l *lazyStream) Context() context.Context {
	if l.stream == nil {
		return l.ctx
	}
	return l.stream.Context()
}

// DialOptions are the interceptors that sign every unary and server-streaming call, for Dial.
func (s *Signer) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(s.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(s.StreamClientInterceptor()),
	}
}
