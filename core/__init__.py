"""What every stage and the wiring share, and that depends on nothing above it: the error tree,
the typed settings (and their loading), the metrics, rate-limited logging."""
