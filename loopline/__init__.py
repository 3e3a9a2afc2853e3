"""Loopline's shared core: config, feature schema, artifact paths and errors.

Every other package (dataprep, models, serving, monitoring, flows) imports from here; this package
imports none of them.
"""
