"""gRPC metadata keys Gantry reads, in one place (lower-case, as on the wire).

Legacy REST headers map 1:1 onto the `x-chutes-*`, `authorization`, `x-boot-token` and `x-request-id`
keys. The REST gateway adds the `x-gantry-*` keys so the server can check legacy signatures that cover the
raw HTTP request (the gRPC message is not byte-identical to what a REST client hashed).
"""

HOTKEY = "x-chutes-hotkey"
SIGNATURE = "x-chutes-signature"
NONCE = "x-chutes-nonce"
SIG_VERSION = "x-chutes-sig-version"
AUTHORIZATION = "authorization"
BOOT_TOKEN = "x-boot-token"
REQUEST_ID = "x-request-id"
CLIENT_CERT = "x-client-cert"  # URL-encoded PEM forwarded by a TLS terminator (mTLS TEE VMs)
FORWARDED_FOR = "x-forwarded-for"  # trusted only when the peer is a configured trusted proxy
IDEMPOTENCY_KEY = "idempotency-key"

# Set by the REST gateway only (stripped from client-supplied headers):
HTTP_METHOD = "x-gantry-http-method"  # e.g. "POST"
HTTP_PATH = "x-gantry-http-path"  # raw path plus "?query" when present, as the client sent it
BODY_SHA256 = "x-gantry-body-sha256"  # hex SHA-256 of the raw request body ("" for no body)

# Headers the gateway forwards from HTTP to metadata (case-insensitive names).
# x-forwarded-for goes as sent (several header lines joined by ", "), beside the TCP peer: the server's one
# trusted-proxy rule (domain/auth/caller.py TrustedProxies) decides whether to believe it, on both faces.
FORWARDED_HEADERS = (HOTKEY, SIGNATURE, NONCE, SIG_VERSION, AUTHORIZATION, BOOT_TOKEN, REQUEST_ID, CLIENT_CERT,
                     IDEMPOTENCY_KEY, FORWARDED_FOR)
GATEWAY_ONLY = (HTTP_METHOD, HTTP_PATH, BODY_SHA256)
