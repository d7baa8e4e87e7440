"""Settings package: `base` holds everything; `test` only changes what tests need."""
