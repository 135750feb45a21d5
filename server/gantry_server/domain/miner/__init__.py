"""The miner face's logic (seed 003): rows miners read, their stats and scores. Importable without gRPC."""
