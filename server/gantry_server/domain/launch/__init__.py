"""Launch configs and instances (seeds 000/002): who may start an instance of a chute, how it proves itself
(plain, TEE attestation or Graval proof of work), and how it becomes active. Importable without gRPC."""
