"""Settings shared by the unit tests."""

from __future__ import annotations

from hypothesis import settings

# No example database in the work tree, and no per-example deadline: the machine is shared,
# so wall-clock deadlines would make property tests flaky without finding anything.
settings.register_profile("unit", database=None, deadline=None, max_examples=200)
settings.load_profile("unit")
