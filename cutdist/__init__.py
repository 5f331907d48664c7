"""cutdist: CUT and FastCUT (Park et al., ECCV 2020) trained as Ray cluster jobs."""
__version__ = "0.1.0"
