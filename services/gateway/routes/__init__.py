"""HTTP routes, one module per domain; each exposes `router(clients) -> APIRouter`."""
