"""`cinder-csi sandbox`: the whole deployment on the stand-ins, and its demo."""
