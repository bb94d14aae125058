"""CSI over gRPC: the generated stubs, the server that hosts the services, Identity.

    csi_pb2, csi_pb2_grpc  generated from proto/csi.proto (hack/ regenerates them)
    server.py        the gRPC server on a unix socket or TCP port, with grpc.health.v1
    interceptors.py  per-call logging, metrics and error mapping
    call_context.py  the served call's request id and deadline
    redaction.py     CSI messages as log-safe dicts (secret fields masked)
    identity.py      the Identity service
    validation.py    request checks shared by the Controller and Node services
"""
