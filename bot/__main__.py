"""`python -m bot`: the Telegram and/or Discord front-ends plus an embedded engine worker.

python -m bot                 run every front-end that has a token
python -m bot --console DIR   try the whole conversation in this terminal; portraits land in DIR
python -m bot --console --demo   the same, with a ready set of demo photos (a public-domain face) in DIR
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from engine.errors import StartupError, VaultError
from engine.runtime import install_stop_signals, setup_logging
from engine.settings import SettingsError, load_settings


def prepare_demo(console_dir: Path) -> None:
    """Write the demo photos next to the console's results and say how to send them."""
    from bot.demo import send_line, write_demo_photos

    paths = write_demo_photos(console_dir / "demo-photos")
    print(
        f"Demo: {len(paths)} photos of Grace Hopper (public domain, from matplotlib) are in "
        f"{paths[0].parent}; they stand in for your own. After /start and agreeing, send them all with "
        "this line, then /train:\n"
        f"{send_line(paths)}\n",
        flush=True,
    )


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
        const=Path("likeness-results"),
        type=Path,
        help="run in this terminal instead of Telegram/Discord; portraits are written to DIR",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="with --console: write demo photos of a public-domain face into DIR/demo-photos to try it with",
    )
    args = parser.parse_args(argv)
    if args.demo and args.console is None:
        args.console = Path("likeness-results")
    try:
        settings = load_settings()
        from bot.platforms import platform_settings

        platform_settings(settings)  # a bad platform setting stops here, in one line, like any other
    except SettingsError as error:
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level if args.console is None else "WARNING")
    from bot.app import NoFrontend
    from bot.demo import DemoUnavailable

    try:
        if args.demo:
            prepare_demo(args.console)
        asyncio.run(run(args.console))
    except (NoFrontend, SettingsError, StartupError, VaultError, DemoUnavailable) as error:
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
