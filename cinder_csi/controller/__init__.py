"""The CSI Controller service: CSI requests in, Cinder and Nova calls (through cloud/) out.

    service.py          the Controller servicer: request checks, per-volume guard, responses
    create_or_adopt.py  CreateVolume's core: one Cinder volume per CSI name, adopted after a lost
                        answer, a failed one deleted before the call fails
    publishing.py       ControllerPublish/Unpublish: Nova attach/detach until Cinder agrees
    snapshots.py        CSI snapshots as Cinder snapshots or backups (VolumeSnapshotClass type)
    paging.py           ListVolumes tokens that survive the deletion of their marker volume, and
                        the walk across several clouds

Each call works in the cloud its secrets name (``cloud``, upstream's multi-cloud key).
"""
