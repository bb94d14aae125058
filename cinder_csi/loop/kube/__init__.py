"""Kubernetes machinery of the watch loop; none of it knows CSI or the loop's duties.

- ``client``: API clients over urllib3, raw-JSON requests, Retry-After, API errors;
- ``kubeconfig``: kubeconfig files (exec plugins included) and in-cluster config, without the
  ``kubernetes`` package (which the loop never imports);
- ``apierror``: ``ApiException``, the API server's non-2xx answer;
- ``compact``: decoding that shares equal subtrees between the cached objects of an informer;
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
