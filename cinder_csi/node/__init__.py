"""The CSI Node service (it reaches the node's OS only through host/).

    service.py  the Node servicer: stage, publish, expand, stats, info
    wiring.py   `cinder-csi node`: configuration, host objects, the servicer and its server
"""
