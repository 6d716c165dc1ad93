"""Local infrastructure: the Maven-fetched Kafka broker, and (later) compose and k8s files."""
