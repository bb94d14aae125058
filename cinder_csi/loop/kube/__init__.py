"""Kubernetes machinery of the watch loop; none of it knows CSI or the loop's duties.

- ``client``: API clients (kubeconfig or in-cluster), raw-JSON requests, Retry-After, API errors;
- ``throttle``: token bucket and per-key exponential backoff;
- ``informer``: list+watch of one resource into an indexed cache, with event handlers;
- ``workqueue``: keyed, deduplicating work queue with backoff, rate limit and workers;
- ``leader``: Lease-based leader election;
- ``events``: core/v1 Events with aggregation and secret redaction;
- ``objects``: API paths, metadata readers, finalizer and annotation edits, Secrets as text;
- ``quantity``: storage sizes as Kubernetes quantities.

The errors it raises or takes (``RetryAfter`` and ``DoNotRetrySoon`` steer the work queue,
``QuantityError``) live in the loop's one exception tree, ``cinder_csi.loop.errors``.
"""
