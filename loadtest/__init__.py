"""Load test (Locust) and benchmark (in-process ceiling vs served path) of the keypoint service."""
