"""The CSI Node service and its wiring."""
