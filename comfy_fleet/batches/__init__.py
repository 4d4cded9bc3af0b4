"""Batches and sweeps (POST /batches): expanding a sweep, and the batch's state as a fold."""
