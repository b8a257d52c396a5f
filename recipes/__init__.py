"""Recipes shipped with merge-proxy: read them through merge_proxy.resources."""
