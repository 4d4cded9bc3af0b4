"""Webhook delivery: signing, the retry policy, the sender, and delivery slots."""
