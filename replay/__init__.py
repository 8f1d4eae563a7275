"""Dataset -> timeline of events -> Kafka producer."""
