"""`python -m bot`: the Telegram and/or Discord front-ends plus an embedded engine worker.

python -m bot                 run every front-end that has a token
python -m bot --console DIR   try the whole conversation in this terminal; portraits land in DIR
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine.errors import StartupError, VaultError
from engine.runtime import install_stop_signals, setup_logging
from engine.settings import SettingsError, load_settings


async def run(console_dir: Path | None) -> None:
    from bot.app import App

    settings = load_settings()
    console = None
    if console_dir is not None:
        from bot.console import ConsoleFrontend

        console = ConsoleFrontend(console_dir)
    app = await App.create(settings, console=console)
    install_stop_signals(app.stop_event)
    if console is not None:
        console.on_quit = app.stop_event.set
    try:
        await app.start()
        await app.wait()
    finally:
        await app.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Likeness portrait bot")
    parser.add_argument(
        "--console",
        metavar="DIR",
        nargs="?",
        const="likeness-results",
        type=Path,
        help="run in this terminal instead of Telegram/Discord; portraits are written to DIR",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        from bot.platforms import platform_settings

        platform_settings(settings)  # a bad platform setting stops here, in one line, like any other
    except SettingsError as error:
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level if args.console is None else "WARNING")
    from bot.app import NoFrontend

    try:
        asyncio.run(run(args.console))
    except (NoFrontend, SettingsError, StartupError, VaultError) as error:
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
