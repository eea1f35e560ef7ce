"""Console scripts: thin entry points that nothing imports."""
