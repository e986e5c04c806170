"""Lambda entry points (the predictors issue): lean, no torch on this path (250 MB limit)."""
