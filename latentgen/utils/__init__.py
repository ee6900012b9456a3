"""Shared helpers: config resolvers, instantiation, run bookkeeping, logging."""

from latentgen.utils.resolvers import register_resolvers

register_resolvers()
