"""The method's mathematics, no torch: designs, surrogates, fronts, preferences, groups, adaptive
sampling, metrics and ground-truth indicators. Depends only on mapmerge's base modules (errors, io)."""
