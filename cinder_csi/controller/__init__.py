"""The CSI Controller service: create-or-adopt, attach via Nova, snapshots, paging, checks."""
