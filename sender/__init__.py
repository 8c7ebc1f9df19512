"""The sender service: pushes each subscription's messages to its connected subscribers."""
