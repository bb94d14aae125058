"""`cinder-csi sandbox`: the whole deployment on the stand-ins, and its demo.

    environment.py  the stand-ins in process, controller and node plugins as children
    demo.py         `--demo`: a claim and a pod through the whole flow, narrated
"""
