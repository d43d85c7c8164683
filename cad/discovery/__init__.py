"""Pseudo-label discovery: LOST, MaskCut and VoteCut behind one two-stage, resumable pipeline.

Modules are imported on use (`cad.discovery.method.build_method` imports `cad.discovery.<name>`),
so importing this package is cheap.
"""
