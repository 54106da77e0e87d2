"""Study tools around the training: compare recipes, probe views, time steps, keep and restore folds."""
