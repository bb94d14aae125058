"""The cluster's own controllers that volume code relies on, each switchable by name."""
