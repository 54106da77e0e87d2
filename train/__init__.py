"""Product training: `run.py` trains the recipe named in `recipe.py` end to end, from a library of the network
(`model.py`), augmentation, the loop (`loop.py`) and the exported file with its card (`exported.py`); `cv.py`
estimates a recipe over five folds of people, `calibrate.py` fits the served confidence on a fold's
held-out people, `report.py` draws its figures. Studies live in `studies/`."""
