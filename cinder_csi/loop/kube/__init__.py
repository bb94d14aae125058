"""Kubernetes machinery of the watch loop: clients and throttle, informers, work queue,
leader election, events, object helpers."""
