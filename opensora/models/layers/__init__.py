"""Portable building blocks shared by all models; nothing here knows which Open-Sora version it serves."""
