"""The test suite: unit tests, training runs of under a minute, and a real TorchServe on free ports."""
