"""Facial keypoint detection: the pieces shared by training, the TorchServe handler and clients."""
