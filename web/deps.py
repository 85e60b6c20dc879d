"""Names of the app's dependencies, as handlers declare them."""

from __future__ import annotations

from litestar.di import NamedDependency

from web.services import Chirp, Principal

ChirpDep = NamedDependency[Chirp]
PrincipalDep = NamedDependency[Principal]
ViewerDep = NamedDependency[Principal | None]
