"""`make benchmark`: figures measured side by side in one run (`python -m benchmarks.run`)."""
