"""Helpers of the ``decoder`` module: capture opening/reconnection and preprocessing."""
