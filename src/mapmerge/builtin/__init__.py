"""The built-in benchmark: a small CNN on scikit-learn's digits (or Fashion-MNIST) and its task transforms."""
