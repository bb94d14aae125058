"""Everything that talks to OpenStack. Nothing outside this package imports openstacksdk.

    connection.py  `Cloud`: the lazily made connection, its services, a cached probe
    session.py     one service's HTTP seam: requests, safe retries, errors
    translate.py   an OpenStack error answer -> the project's exception
    volumes.py     Cinder volumes, their metadata and types
    snapshots.py   Cinder snapshots
    backups.py     Cinder backups (VolumeSnapshotClass type: backup)
    clouds.py      the named clouds of a controller ([Global "name"] sections)
    messages.py    Cinder's user messages about a volume
    quotas.py      Cinder quotas, for GetCapacity
    compute.py     Nova servers and their volume attachments
    collection.py  show, look up, list, delete and wait: what snapshots and backups share
    waits.py       waiting for a volume or snapshot status, or its deletion
    listing.py     Cinder list paging (sort, marker, next link)
    models.py      our immutable views of what the APIs return
"""
