"""TorchServe handler for the keypoint model: plain processing functions and a thin class."""
