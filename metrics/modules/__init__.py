"""Local `evaluate` modules (one script per metric, loaded by path with `evaluate.load`) and their shared definitions.

The scripts are not imported as part of this package: `metrics.compute.load_metric` hands their paths to
`evaluate.load`, which copies each script (with `medmnist_definitions.py`, its one relative import) into the
`evaluate` modules cache and imports it from there. Nothing is fetched from the Hub.
"""
