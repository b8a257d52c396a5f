"""Jinja templates of the Hub cards merge-proxy writes: read them through merge_proxy.resources."""
