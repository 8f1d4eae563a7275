"""Kafka plumbing: broker address and client configs, topics, the embedded tansu broker and
its workarounds, the librdkafka publisher and readers. No faust, no torch, no pandas."""
