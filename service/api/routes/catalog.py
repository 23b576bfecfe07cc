"""``/search-spaces`` and ``/experiments``: what a study can name."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from service.api import choices as catalog
from service.api.deps import Authenticated
from service.api.schemas import CatalogPublic, ErrorPublic, SearchSpacesPublic

router = APIRouter(tags=["catalog"], dependencies=[Authenticated],
                   responses={401: {"model": ErrorPublic}, 403: {"model": ErrorPublic}})


@router.get("/search-spaces", response_model=SearchSpacesPublic)
def list_search_spaces() -> Any:
    """The search-space presets a study can name as its `space`."""
    spaces = catalog.search_spaces()
    return SearchSpacesPublic(data=spaces, count=len(spaces))


@router.get("/search-spaces/{name}", responses={404: {"model": ErrorPublic}})
def get_search_space(name: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
    """One preset in full: experiment, rule, fixed values and each parameter's
    distribution — the schema an inline `space` follows."""
    return catalog.search_space(name)


@router.get("/experiments", response_model=CatalogPublic)
def get_catalog() -> Any:
    """The experiments (networks), learning rules and datasets a study can name."""
    return CatalogPublic(**catalog.catalog())
