"""Every billing platform the pipeline can ingest from, in one list.

Adding a platform: a package ``billing_ai/platforms/<name>/`` with a ``SPEC``,
a connector and a resource, SQL in ``sql/core/<name>/``, a sandbox facade, and
one line here and in ``definitions.default_resources``.
"""

from billing_ai.platforms.chargebee import SPEC as CHARGEBEE
from billing_ai.platforms.recurly import SPEC as RECURLY
from billing_ai.platforms.spec import PlatformSpec
from billing_ai.platforms.stripe import SPEC as STRIPE
from billing_ai.platforms.zuora import SPEC as ZUORA

PLATFORM_SPECS: tuple[PlatformSpec, ...] = (STRIPE, CHARGEBEE, RECURLY, ZUORA)
PLATFORMS: tuple[str, ...] = tuple(s.name for s in PLATFORM_SPECS)
