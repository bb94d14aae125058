"""Keystone v3 + Cinder v3 + Nova v2.1 stand-in; the entry point is ``openstack_api``."""
