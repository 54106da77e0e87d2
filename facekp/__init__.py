"""Facial keypoint detection: the model's contract, data and clients, and building and running the service."""
