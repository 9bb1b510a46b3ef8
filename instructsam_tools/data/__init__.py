"""Datasets: the Inst2Seg instruction→instance-set format, loaders for public layouts, synthetic data."""
