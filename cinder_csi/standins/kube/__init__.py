"""A stand-in for kube-apiserver and the cluster controllers around volumes (see kube_api.py)."""
