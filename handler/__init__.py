"""What serves the keypoint model: request-to-answer functions, the TorchServe handlers, the kserve predictor."""
