"""Where inputs and outputs live: the blob store port and its S3 implementation."""
