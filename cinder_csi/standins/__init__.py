"""Stand-ins for the services the driver talks to, for tests, benchmarks and the sandbox."""
