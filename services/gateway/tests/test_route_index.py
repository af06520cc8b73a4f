"""The gateway's route index (services/gateway/api.py RouteIndex) picks, for every route of the
real API and each of its methods, the route the router's own rule picks: the first whose
`matches` is FULL; and none for an unknown path or a method the path does not take."""

from __future__ import annotations

import re

from fastapi.routing import APIRoute
from starlette.routing import Match

from services.gateway.api import ROUTE_MODULES, RouteIndex

ROUTES = [route for module in ROUTE_MODULES for route in module.router.routes if isinstance(route, APIRoute)]


def _first_full(scope: dict[str, object]) -> APIRoute | None:
    return next((route for route in ROUTES if route.matches(scope)[0] is Match.FULL), None)


def _scope(method: str, path: str) -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": ""}


def test_every_route_and_method_is_found_as_the_router_finds_it() -> None:
    index = RouteIndex(ROUTES)
    assert len(ROUTES) > 30
    checked = 0
    for route in ROUTES:
        path = re.sub(r"\{[^}]+\}", "an-id", route.path)  # a value for each path parameter
        for method in route.methods or ():
            scope = _scope(method, path)
            expected = _first_full(scope)
            assert expected is not None
            assert index.route_for(scope) is expected, f"{method} {path}"
            checked += 1
    assert checked >= len(ROUTES)


def test_no_route_for_an_unknown_path_or_method() -> None:
    index = RouteIndex(ROUTES)
    assert index.route_for(_scope("GET", "/api/v1/no/such/thing")) is None
    assert index.route_for(_scope("BREW", "/api/v1/avatar/speak")) is None
    assert index.route_for(_scope("DELETE", "/api/v1/avatar/speak")) is None  # a path for POST only
    assert index.route_for(_scope("POST", "/api/v1/avatar/speak/more")) is None  # anchored at the end
    assert index.route_for(_scope("POST", "/api/v1/avatar/speak")) is _first_full(_scope("POST", "/api/v1/avatar/speak"))
