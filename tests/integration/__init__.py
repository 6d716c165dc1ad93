"""Tests against the real local Kafka broker (deploy.localkafka)."""
