"""The watch loop: Kubernetes objects in, CSI calls out, as the kubernetes-csi sidecars do.

It speaks CSI over gRPC to any controller service (ours, in-process through its own socket,
or another driver's) and imports neither ``cinder_csi.cloud`` nor ``cinder_csi.controller``.
One concept per module:

- ``runner``: the loop as a whole: clients, informers, duties, leader election, /metrics;
- ``context``: what every duty is given (``LoopContext``) and what a duty is (``Controller``);
- ``caches``: the shared informers and the indexes the duties look objects up by;
- ``csi_client``: the CSI controller client, with the sidecars' call metrics; paged ListVolumes;
- ``capabilities``: the driver's capabilities (one cache) and what a PV's CSI request needs;
- ``errors``: the loop's exception tree and the one ``rpc error: code = ...`` formatter;
- ``protocol``: the sidecars' annotation, finalizer and parameter names; our claim intent;
- ``claims``: provisioning (external-provisioner's protocol), crash-safe, with failure hold-off;
- ``datasources``: a claim's clone or snapshot source, and the clone source's protection;
- ``pvspec``: a claim's CreateVolume request and the PV that records the answer (pure);
- ``topology``: where a new volume may live, from CSINodes and Nodes (pure);
- ``deletion``: deletion of Released PVs and the deletion finalizer;
- ``attacher``: attach and detach of VolumeAttachments (external-attacher's protocol);
- ``attach_reconcile``: which attachments the driver no longer reports published;
- ``resizer``: volume expansion (external-resizer's protocol);
- ``orphans``: volumes of this cluster that no PV accounts for: reported, deleted if asked;
- ``registry``: the image registry's claim, dynamic or on a pre-created volume, kept Retain;
- ``kube``: generic Kubernetes machinery (clients, informers, work queue, leader election,
  Events, object helpers).
"""
