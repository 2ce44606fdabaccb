"""Point discord.py at a Discord-compatible API instead of discord.com.

discord.py builds every REST URL, interaction callbacks and webhooks included, from the class attribute
``discord.http.Route.BASE``; the library itself rewrites that attribute to switch API versions, so
setting it is the supported knob. The gateway is separate: a plain ``discord.Client`` dials
``DiscordWebSocket.DEFAULT_GATEWAY`` (``wss://gateway.discord.gg/``) without asking the API.
``ApiGatewayMixin`` asks ``GET /gateway/bot`` first, as ``AutoShardedClient`` does, and dials that URL.

    configure_api_root(os.environ.get("LIKENESS_DISCORD_API_URL", DEFAULT_API_URL))

    class LikenessClient(ApiGatewayMixin, discord.Client): ...

Both settings are process-wide: one bot process talks to one Discord.
"""

from __future__ import annotations

import re

import discord
import yarl
from discord.gateway import DiscordWebSocket

__all__ = ["DEFAULT_API_URL", "ApiGatewayMixin", "configure_api_root", "rest_base"]

DEFAULT_API_URL = "https://discord.com/api"


def rest_base(api_url: str) -> str:
    """``https://host/api`` -> ``https://host/api/v10`` (the version discord.py speaks)."""
    root = api_url.strip().rstrip("/")
    if not root.startswith(("http://", "https://")):
        raise ValueError("the Discord API URL must start with http:// or https://")
    if re.search(r"/v\d+$", root):
        raise ValueError("give the API root without a version, e.g. https://discord.com/api")
    return f"{root}/v{discord.http.INTERNAL_API_VERSION}"


def configure_api_root(api_url: str = DEFAULT_API_URL) -> None:
    """Send all of discord.py's REST calls to ``api_url`` (e.g. ``http://127.0.0.1:8080/api``)."""
    discord.http.Route.BASE = rest_base(api_url)


class ApiGatewayMixin:
    """``discord.Client`` mixin: connect to the gateway URL that ``GET /gateway/bot`` returns.

    Put it before the client class: ``class MyBot(ApiGatewayMixin, commands.Bot)``. Resumes then go to
    the ``resume_gateway_url`` from READY, as usual.
    """

    http: discord.http.HTTPClient

    async def connect(self, *, reconnect: bool = True) -> None:
        _shards, url, _session_start_limit = await self.http.get_bot_gateway()
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
        await super().connect(reconnect=reconnect)  # type: ignore[misc]
