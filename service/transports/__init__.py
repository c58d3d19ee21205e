"""Transports: how clients and operators reach the node (aiohttp handlers)."""
