"""The Kubernetes side: watch loops that turn API objects into CSI calls.

Generic machinery, one concern per module:

- ``kube``: API clients (kubeconfig or in-cluster), QPS/burst throttle, raw-JSON requests;
- ``ratelimit``: token bucket and per-key exponential backoff;
- ``informer``: list+watch of one resource into an indexed cache, with add/update/delete
  handlers;
- ``workqueue``: keyed, deduplicating work queue with backoff, rate limit and workers;
- ``leader``: Lease-based leader election;
- ``events``: core/v1 Event recorder with aggregation and secret redaction.

Controllers (claims, volumes, attachments, resize) are built on these. This package talks
CSI over gRPC to any controller service and never imports ``cinder_csi.cloud``.
"""
