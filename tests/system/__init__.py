"""The whole system under stress, with real processes (issues 7 and 10): concurrency, crashes, hostile input,
tampering, replicas. These check properties that no single module owns."""
