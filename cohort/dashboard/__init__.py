"""``cohort serve``: the graphical cohort dashboard (a local web page over the cohort engine)."""

from cohort.dashboard.api import ApiError, Dashboard
from cohort.dashboard.server import make_server

__all__ = ["ApiError", "Dashboard", "make_server"]
