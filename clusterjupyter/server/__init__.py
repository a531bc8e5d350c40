"""Jupyter server extension: authenticated REST routes over the journal, profiles, logs and cancel.

Routes (under the server's ``base_url``)::

    GET  /clusterjupyter/jobs?state=pending,running&profile=NAME&limit=N   {"jobs": [...]}
    GET  /clusterjupyter/jobs/<ref>                                         one job, full
    GET  /clusterjupyter/jobs/<ref>/logs?stream=stdout&tail=200             {"text": ...}
    POST /clusterjupyter/jobs/<ref>/cancel                                  the updated job
    GET  /clusterjupyter/profiles                                           {"profiles": [...]}
    GET  /clusterjupyter/queue?profile=NAME&all_users=1                     the scheduler's queue
    POST /clusterjupyter/queue/<profile>/<cancel|hold|release>  {"ids": [...]}   {"failed": {}}
    POST /clusterjupyter/notebooks/rename  {"old": PATH, "new": PATH}       jobs follow a rename

A listing carries each job's ``preview`` (first lines of the cell) and the failure's summary;
one job carries its ``cell`` and its full ``error`` (remote traceback, log tail). The routes
only read the journal and files that the backends return as text; nothing is
unpickled here.
"""

from __future__ import annotations

import os
from typing import Any

from .handlers import route_table

#: npm name of the sidebar: its folder in share/jupyter/labextensions
LABEXTENSION_NAME = "clusterjupyter-labextension"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    """Tell Jupyter server which module holds ``_load_jupyter_server_extension``."""
    return [{"module": "clusterjupyter.server"}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where the built sidebar lives (``clusterjupyter/labextension``).

    The path is absolute, so it is right whichever module re-exports this function.
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [{"src": os.path.join(package, "labextension"), "dest": LABEXTENSION_NAME}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the routes on the running server."""
    web_app = serverapp.web_app
    if web_app.settings.get("clusterjupyter_routes"):
        return  # enabled under two names (clusterjupyter and clusterjupyter.server)
    web_app.settings["clusterjupyter_routes"] = True
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(".*$", route_table(base_url))
    serverapp.log.info("clusterjupyter: server extension loaded at %sclusterjupyter/", base_url)
