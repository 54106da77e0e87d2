"""Load tests and benchmarks of the keypoint service: client side, served path, model cost, reports.

Kept flat (every module is run as ``python -m loadtest.<name>`` by the Makefile, the docs and the tests):

- load generation, the client side: ``images`` (the upload mix), ``loadgen`` (asyncio keep-alive client),
  ``locustfile`` and ``run`` (``make loadtest``), ``cpu`` (who used the cores, waiting for quiet);
- the served path against the in-process ceiling: ``ceiling``, ``torchserve_grid`` (a TorchServe per configuration),
  ``benchmark`` (``make bench``, second half), ``photo_bench`` (the photo mix), ``report`` (bench.csv,
  bench.png and the generated block of docs/performance.md);
- model cost: ``models_compare`` (``make bench``, first half: the shipped model against an earlier one),
  ``model_costs`` (GFLOP, faces/s and score of any TorchScript files);
- ``overload`` (``make overload``: more clients than the service can take, recovery);
- ``kserve_compare`` (the KServe routes side by side).
"""
