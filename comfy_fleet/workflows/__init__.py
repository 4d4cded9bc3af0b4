"""Workflows: manifests, parameters, graphs, and the registry of a folder."""
